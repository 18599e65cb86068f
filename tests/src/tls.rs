//! TLS test material and real TLS clients, all through the `openssl` and `curl` tools.
//!
//! [`Pki`] makes a throwaway CA in a temp dir and issues server certificates
//! from it (EC P-256 keys, `subjectAltName` for each name, one day of validity),
//! so a test can serve several names and have a real client verify them
//! against the CA. [`keypair`] makes signing keys (RSA, EC P-256, Ed25519) as
//! PKCS#8 private and SPKI public PEM files for JWT tests. [`curl`] and
//! [`s_client`] run the real clients with `--resolve` / `-servername` against
//! an ephemeral port and hand back what they printed; [`fingerprint`] and
//! [`served_certificate`] let a test compare the certificate a server sent
//! with the file it was meant to send. Every tool failure panics with the
//! tool's own output.

use crate::util::TempDir;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs `openssl <args>`; panics with its output when it fails.
pub fn openssl(args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A throwaway certificate authority in its own temp dir.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
    ca_cert: PathBuf,
    ca_key: PathBuf,
}

/// A server certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// Certificate (leaf only; the CA is [`Pki::ca_cert`]).
    pub cert: PathBuf,
    /// PKCS#8 private key.
    pub key: PathBuf,
}

impl Pki {
    /// Creates the CA (EC P-256, `CN=Hypergate Test CA`).
    pub fn new() -> Pki {
        let dir = TempDir::new();
        let ca_key = dir.path().join("ca.key");
        let ca_cert = dir.path().join("ca.crt");
        let cnf = dir.write(
            "ca.cnf",
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = Hypergate Test CA\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n",
        );
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&ca_key),
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-config",
            path_str(&cnf),
            "-extensions",
            "v3_ca",
            "-key",
            path_str(&ca_key),
            "-days",
            "2",
            "-out",
            path_str(&ca_cert),
        ]);
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    /// The CA certificate (what clients trust).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The directory holding everything this CA issued.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate for `names` (DNS names, or IP addresses) with
    /// `CN` = the first name, written as `<stem>.crt` / `<stem>.key` (replacing
    /// any earlier files of that stem, with a fresh key).
    pub fn issue(&self, stem: &str, names: &[&str]) -> ServerCert {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let key = self.dir.path().join(format!("{stem}.key"));
        let cert = self.dir.path().join(format!("{stem}.crt"));
        let csr = self.dir.path().join(format!("{stem}.csr"));
        let sans: Vec<String> = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect();
        let ext = self.dir.write(
            &format!("{stem}.ext"),
            &format!(
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = serverAuth\nsubjectAltName = {}\n",
                sans.join(",")
            ),
        );
        let req_cnf = self.dir.write(
            &format!("{stem}.cnf"),
            &format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {}\n",
                names[0]
            ),
        );
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&key),
        ]);
        openssl(&[
            "req",
            "-new",
            "-config",
            path_str(&req_cnf),
            "-key",
            path_str(&key),
            "-out",
            path_str(&csr),
        ]);
        let serial = format!(
            "{}",
            SERIAL.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1000
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.ca_cert),
            "-CAkey",
            path_str(&self.ca_key),
            "-set_serial",
            &serial,
            "-days",
            "1",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&cert),
        ]);
        ServerCert { cert, key }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// SHA-256 fingerprint of a PEM certificate file, as `openssl x509 -fingerprint` prints it.
pub fn fingerprint(cert_pem: &Path) -> String {
    let out = openssl(&[
        "x509",
        "-in",
        path_str(cert_pem),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What `openssl s_client` reported about one handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// Whether a session was established (the tool printed a cipher other than `(NONE)`).
    pub established: bool,
    /// Everything it printed (stdout and stderr).
    pub output: String,
    /// The server's leaf certificate as PEM, when one was sent.
    pub leaf_pem: Option<String>,
}

impl Handshake {
    /// The negotiated protocol (`TLSv1.2`, `TLSv1.3`), from the `Protocol` line.
    pub fn protocol(&self) -> Option<&str> {
        self.output.lines().find_map(|l| {
            let l = l.trim();
            l.strip_prefix("Protocol")
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .map(str::trim)
                .or_else(|| {
                    l.strip_prefix("New, ")
                        .and_then(|r| r.split(',').next())
                        .map(str::trim)
                        .filter(|p| p.starts_with("TLS"))
                })
        })
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<&str> {
        self.output
            .lines()
            .find_map(|l| l.trim().strip_prefix("ALPN protocol:").map(str::trim))
    }
}

/// Runs `openssl s_client` against `addr` with `servername` as SNI (none when
/// empty) plus `extra` arguments, sends nothing, and reports the handshake.
pub fn s_client(addr: SocketAddr, servername: &str, extra: &[&str]) -> Handshake {
    let connect = addr.to_string();
    let mut args = vec!["s_client", "-connect", &connect, "-showcerts"];
    if servername.is_empty() {
        args.push("-noservername");
    } else {
        args.extend(["-servername", servername]);
    }
    args.extend_from_slice(extra);
    let out = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let leaf_pem = output
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|start| {
            let end_marker = "-----END CERTIFICATE-----";
            let end = output[start..].find(end_marker)? + start + end_marker.len();
            Some(format!("{}\n", &output[start..end]))
        });
    let established = output.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("Cipher is ") || l.starts_with("New, ")) && !l.contains("(NONE)")
    });
    Handshake {
        established,
        output,
        leaf_pem,
    }
}

/// The SHA-256 fingerprint of the leaf certificate a server sends for `servername`.
pub fn served_certificate(addr: SocketAddr, servername: &str, scratch: &Path) -> String {
    let hs = s_client(addr, servername, &[]);
    let pem = hs.leaf_pem.unwrap_or_else(|| {
        panic!(
            "no certificate from {addr} for {servername:?}:\n{}",
            hs.output
        )
    });
    static N: AtomicU64 = AtomicU64::new(0);
    let file = scratch.join(format!("served-{}.pem", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, pem).expect("write served certificate");
    fingerprint(&file)
}

/// What `curl` did.
#[derive(Debug, Clone)]
pub struct CurlOutcome {
    /// curl's exit code (0: transfer done; 35: TLS handshake failed; 60: verification failed).
    pub exit_code: i32,
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// The response body.
    pub body: String,
    /// curl's stderr (with `-v`: the handshake details).
    pub stderr: String,
}

/// `curl -sS -v --resolve host:port:127.0.0.1 --cacert ca https://host:port/path`
/// plus `extra` arguments (e.g. `--tlsv1.3`, `--tls-max 1.2`, `-H ...`).
pub fn curl(addr: SocketAddr, host: &str, path: &str, ca: &Path, extra: &[&str]) -> CurlOutcome {
    let port = addr.port();
    let resolve = format!("{host}:{port}:{}", addr.ip());
    let url = format!("https://{host}:{port}{path}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "--cacert",
        ])
        .arg(ca)
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl (is it installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlOutcome {
        exit_code: out.status.code().unwrap_or(-1),
        status: code.trim().parse().ok().filter(|s| *s != 0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A signing key type for [`keypair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048.
    Rsa,
    /// EC P-256 (ES256).
    EcP256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

/// Generates a key pair into `dir` as `<stem>.key` (PKCS#8 private) and
/// `<stem>.pub` (SPKI public), both PEM; returns their paths.
pub fn keypair(dir: &Path, stem: &str, kind: KeyKind) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{stem}.key"));
    let public = dir.join(format!("{stem}.pub"));
    let mut args = vec!["genpkey", "-algorithm"];
    match kind {
        KeyKind::Rsa => args.extend(["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        KeyKind::EcP256 => args.extend(["EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        KeyKind::Ed25519 => args.push("ED25519"),
    }
    args.extend(["-out", path_str(&private)]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        path_str(&private),
        "-pubout",
        "-out",
        path_str(&public),
    ]);
    (private, public)
}
