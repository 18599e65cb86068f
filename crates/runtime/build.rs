//! Build script: with the `ebpf` feature, points the loader at the probe object.
//!
//! The object is built by `cargo xtask build-ebpf` (its own toolchain and workspace,
//! see `ebpf/probe`); this script does not build it. It passes the object's path to
//! the compiler as `HYPERGATE_EBPF_OBJECT` for `include_bytes!`, from the variable
//! of that name if set, else the default output path, and fails with the command to
//! run when the object is missing. Without the feature it does nothing.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=HYPERGATE_EBPF_OBJECT");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return;
    }
    let object = match std::env::var_os("HYPERGATE_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../ebpf/probe/target/bpfel-unknown-none/release/hypergate-probe"),
    };
    let object = object.canonicalize().unwrap_or_else(|_| {
        panic!(
            "\n\nthe `ebpf` feature needs the probe object, and {} does not exist.\n\
             Build it first with:\n\n    cargo xtask build-ebpf\n\n\
             (or set HYPERGATE_EBPF_OBJECT to an object built elsewhere)\n",
            object.display()
        )
    });
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=HYPERGATE_EBPF_OBJECT={}", object.display());
}
