//! `cargo xtask build-ebpf`: installs the pinned eBPF toolchain when missing and
//! builds the kernel probe object (`ebpf/probe`).
//!
//! Steps, each skipped when already done:
//! 1. The pinned nightly ([`TOOLCHAIN`]) with `rust-src`, through rustup.
//! 2. `bpf-linker` [`BPF_LINKER_VERSION`], built against the libLLVM that ships in
//!    that toolchain (no system LLVM needed), installed under
//!    `$HOME/.local/share/hypergate-ebpf` (or `$HYPERGATE_EBPF_HOME`). It is bound to
//!    that toolchain's libLLVM, so both are pinned together.
//! 3. `cargo +TOOLCHAIN build --release --locked` in `ebpf/probe` (its own
//!    workspace: `build-std`, target `bpfel-unknown-none`, BTF on).
//!
//! Progress goes to stderr; the object's absolute path is the only line on stdout,
//! so `OBJ=$(cargo xtask build-ebpf)` works. The gateway's `build.rs` embeds that
//! same path when it is built with `--features ebpf`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The nightly the probe builds with; `ebpf/probe/rust-toolchain.toml` names the same.
pub const TOOLCHAIN: &str = "nightly-2026-05-20";
/// The bpf-linker release that builds against [`TOOLCHAIN`]'s LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Options of `cargo xtask build-ebpf`.
#[derive(Debug, clap::Args)]
pub struct BuildEbpfArgs {
    /// Reinstall bpf-linker even when the installed one answers with the right version.
    #[arg(long)]
    pub reinstall_linker: bool,
}

/// Environment that an outer `cargo` run sets and that would redirect or reconfigure
/// the probe's build (toolchain, flags, target directory); removed for it.
const INHERITED_ENV: [&str; 12] = [
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO",
];

/// The workspace root (parent of `xtask/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// Where the probe object lands.
pub fn object_path() -> PathBuf {
    workspace_root().join("ebpf/probe/target/bpfel-unknown-none/release/hypergate-probe")
}

/// Where bpf-linker and the libLLVM links live.
fn tools_home() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HYPERGATE_EBPF_HOME") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/hypergate-ebpf"))
}

/// A command with the outer cargo's build settings removed.
fn clean_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in INHERITED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Step 1: the pinned toolchain with rust-src.
fn ensure_toolchain() -> Result<PathBuf> {
    let installed = output(clean_command("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]))
    .is_some_and(|list| list.lines().any(|l| l.trim() == "rust-src"));
    if !installed {
        eprintln!("==> installing toolchain {TOOLCHAIN} with rust-src");
        run(
            clean_command("rustup").args([
                "toolchain",
                "install",
                TOOLCHAIN,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "rustup toolchain install",
        )?;
    }
    let sysroot =
        output(clean_command("rustc").args([&format!("+{TOOLCHAIN}"), "--print", "sysroot"]))
            .context("rustc --print sysroot failed for the pinned toolchain")?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// The toolchain's libLLVM shared object (`libLLVM.so.<version>-rust-...`): its SONAME.
fn libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("read {}", lib.display()))? {
        let path = entry?.path();
        let is_soname = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libLLVM.so."));
        if is_soname {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.* in {} (is the toolchain's llvm shipped with it?)",
        lib.display()
    )
}

fn symlink_force(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("remove {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlink {} -> {}", link.display(), target.display()))
}

/// Step 2: bpf-linker built against the toolchain's libLLVM.
fn ensure_bpf_linker(sysroot: &Path, home: &Path, reinstall: bool) -> Result<PathBuf> {
    let linker = home.join("bin/bpf-linker");
    let llvm_lib = home.join("llvm/lib");
    let so = libllvm(sysroot)?;
    let so_name = so.file_name().context("libLLVM has a file name")?;
    std::fs::create_dir_all(&llvm_lib).with_context(|| format!("mkdir {}", llvm_lib.display()))?;
    // The SONAME is what bpf-linker loads at run time; `libLLVM.so` is what it links.
    symlink_force(&so, &llvm_lib.join(so_name))?;
    symlink_force(&so, &llvm_lib.join("libLLVM.so"))?;
    let version = output(clean_command(linker.to_str().unwrap_or("bpf-linker")).arg("--version"));
    if !reinstall
        && version
            .as_deref()
            .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(linker);
    }
    eprintln!(
        "==> building bpf-linker {BPF_LINKER_VERSION} against {} (a few minutes)",
        so.display()
    );
    run(
        clean_command("cargo")
            .arg(format!("+{TOOLCHAIN}"))
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args([
                "--no-default-features",
                "--features",
                "llvm-22",
                "--locked",
                "--force",
            ])
            .arg("--root")
            .arg(home)
            .env("LLVM_PREFIX", home.join("llvm")),
        "cargo install bpf-linker",
    )?;
    let version = output(clean_command(linker.to_str().unwrap_or("bpf-linker")).arg("--version"))
        .with_context(|| format!("{} does not run after install", linker.display()))?;
    eprintln!("==> {}", version.trim());
    Ok(linker)
}

/// Step 3: the probe object.
fn build_probe(linker: &Path) -> Result<PathBuf> {
    let probe_dir = workspace_root().join("ebpf/probe");
    let bin_dir = linker.parent().context("bpf-linker has a directory")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    eprintln!("==> building the probe in {}", probe_dir.display());
    run(
        clean_command("cargo")
            .arg(format!("+{TOOLCHAIN}"))
            .args(["build", "--release", "--locked"])
            .current_dir(&probe_dir)
            .env("CARGO_TARGET_DIR", probe_dir.join("target"))
            .env("PATH", std::env::join_paths(paths)?),
        "probe build",
    )?;
    let obj = object_path();
    if !obj.is_file() {
        bail!("the probe build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}

/// Runs `cargo xtask build-ebpf`.
pub fn run_build(args: BuildEbpfArgs) -> Result<()> {
    let sysroot = ensure_toolchain()?;
    let home = tools_home()?;
    let linker = ensure_bpf_linker(&sysroot, &home, args.reinstall_linker)?;
    let obj = build_probe(&linker)?;
    println!("{}", obj.display());
    Ok(())
}
