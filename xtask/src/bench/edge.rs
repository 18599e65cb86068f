//! Credentials and certificates for the edge and TLS scenarios.
//!
//! [`EdgeMaterial::prepare`] makes, in the scenario's scratch directory and with
//! the `openssl` tool, whatever the scenario needs:
//! - API key: the key the load sends as `x-api-key` and its `sha256:<hex>` form
//!   for Hypergate's config;
//! - JWT: an RSA-2048 key pair and one RS256 token (valid for a week), signed
//!   with `openssl dgst -sign` and sent as `Authorization: Bearer`;
//! - TLS: one self-signed EC P-256 certificate for `localhost` / `127.0.0.1`,
//!   as separate PEM files (Hypergate, nginx) and certificate-plus-key (HAProxy),
//!   so every proxy serves the same certificate.
//!
//! Plain scenarios get [`EdgeMaterial::NONE`] and never run openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::scenario::{Edge, Scenario};

/// The API key the load sends in the API-key scenario.
const API_KEY: &str = "bench-api-key-0123456789abcdef";

/// `iss` and `aud` of the benchmark token (Hypergate checks both).
pub const JWT_ISSUER: &str = "hypergate-bench";
/// See [`JWT_ISSUER`].
pub const JWT_AUDIENCE: &str = "bench";
/// The consumer the benchmark credentials map to.
pub const CONSUMER: &str = "bench";

/// PEM files of the TLS certificate every proxy serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate.
    pub cert: PathBuf,
    /// PKCS#8 private key.
    pub key: PathBuf,
    /// Certificate followed by the key (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// What one scenario's proxies and load need beyond the plain setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeMaterial {
    /// Extra request headers (`Name: value`) the load and the readiness probe send.
    pub headers: Vec<String>,
    /// `sha256:<hex>` of the API key, for Hypergate's consumer.
    pub api_key_hash: Option<String>,
    /// Public key (SPKI PEM) that verifies the JWT.
    pub jwt_public_key: Option<PathBuf>,
    /// The TLS certificate, for TLS scenarios.
    pub tls: Option<TlsFiles>,
}

impl EdgeMaterial {
    /// Nothing: the plain proxy path.
    pub const NONE: EdgeMaterial = EdgeMaterial {
        headers: Vec::new(),
        api_key_hash: None,
        jwt_public_key: None,
        tls: None,
    };

    /// Makes what `scenario` needs in `dir`.
    pub fn prepare(scenario: &Scenario, dir: &Path) -> anyhow::Result<EdgeMaterial> {
        let mut material = EdgeMaterial::NONE;
        if scenario.edge == Edge::None && !scenario.tls {
            return Ok(material);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        match scenario.edge {
            Edge::None => {}
            Edge::ApiKeyRateLimit => {
                let key_file = dir.join("api-key.txt");
                std::fs::write(&key_file, API_KEY)?;
                let digest = openssl(&["dgst", "-sha256", "-r", path(&key_file)?])?;
                let hex = String::from_utf8_lossy(&digest)
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if hex.len() != 64 {
                    bail!("openssl dgst printed {hex:?}, not a SHA-256 digest");
                }
                material.api_key_hash = Some(format!("sha256:{hex}"));
                material.headers.push(format!("x-api-key: {API_KEY}"));
            }
            Edge::JwtRs256 => {
                let private = dir.join("jwt.key");
                let public = dir.join("jwt.pub");
                openssl(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    path(&private)?,
                ])?;
                openssl(&[
                    "pkey",
                    "-in",
                    path(&private)?,
                    "-pubout",
                    "-out",
                    path(&public)?,
                ])?;
                let token = rs256_token(&private, dir)?;
                material
                    .headers
                    .push(format!("Authorization: Bearer {token}"));
                material.jwt_public_key = Some(public);
            }
        }
        if scenario.tls {
            let cert = dir.join("tls.crt");
            let key = dir.join("tls.key");
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                path(&key)?,
                "-out",
                path(&cert)?,
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ])?;
            let combined = dir.join("tls.pem");
            let mut both = std::fs::read(&cert)?;
            both.extend(std::fs::read(&key)?);
            std::fs::write(&combined, both)?;
            material.tls = Some(TlsFiles {
                cert,
                key,
                combined,
            });
        }
        Ok(material)
    }
}

/// An RS256 token for [`CONSUMER`], signed with the PEM key at `private`.
fn rs256_token(private: &Path, dir: &Path) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let header = r#"{"alg":"RS256","typ":"JWT","kid":"bench"}"#;
    let claims = serde_json::json!({
        "sub": CONSUMER,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + 7 * 24 * 3600,
    })
    .to_string();
    let signing_input = format!(
        "{}.{}",
        base64url(header.as_bytes()),
        base64url(claims.as_bytes())
    );
    let input = dir.join("jwt.input");
    let signature = dir.join("jwt.sig");
    std::fs::write(&input, &signing_input)?;
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        path(private)?,
        "-out",
        path(&signature)?,
        path(&input)?,
    ])?;
    let signature = std::fs::read(&signature)?;
    Ok(format!("{signing_input}.{}", base64url(&signature)))
}

/// Base64url without padding (RFC 7515 §2).
fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for index in 0..=chunk.len() {
            out.push(char::from(
                ALPHABET[((n >> (18 - 6 * index)) & 63) as usize],
            ));
        }
    }
    out
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs `openssl <args>` and returns its stdout.
fn openssl(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context(
            "running openssl (the edge and TLS scenarios need it: apt-get install -y openssl)",
        )?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"\xfb\xff", "-_8"),
        ];
        for (input, want) in cases {
            assert_eq!(base64url(input), want);
        }
    }

    #[test]
    fn plain_scenarios_need_nothing() {
        let scenario = crate::bench::scenario::find("get-c64").expect("exists");
        let material =
            EdgeMaterial::prepare(scenario, Path::new("/nonexistent/never-created")).expect("ok");
        assert_eq!(material, EdgeMaterial::NONE);
    }
}
