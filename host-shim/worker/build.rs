//! Builds the guest component (`paperclip_exe_dev.wasm`) so the host binary can embed it and
//! tests can load it: one `cargo build` of the workspace gives a working worker. It is also the
//! build script of `paperclip-test-support` (host-shim/test-support), which hands the same
//! component to the tests of the other crates.
//!
//! The guest is built by a nested cargo into its own target directory (so the outer build's
//! lock is not contended) with the small `guest` profile. Set `PAPERCLIP_EXE_DEV_WASM` to use
//! a prebuilt component instead.
//!
//! The same nested build makes the VM agent (`host-shim/vm-agent`), the static
//! `x86_64-unknown-linux-musl` program the host uploads to VMs for durable executions, which
//! the host embeds as well (`PAPERCLIP_VM_AGENT`; set it to use a prebuilt agent).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The VMs' architecture: exe.dev VMs are x86_64, whatever the host runs on.
const VM_AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .and_then(|host_shim| host_shim.parent())
        .expect("the crate sits in host-shim/ of the workspace root")
        .to_path_buf();
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");

    // The VM agent (static, for the VMs' architecture).
    println!(
        "cargo:rerun-if-changed={}",
        root.join("host-shim/vm-agent").display()
    );
    if env::var_os("PAPERCLIP_VM_AGENT").is_none() {
        require_target(VM_AGENT_TARGET);
    }
    built(
        "PAPERCLIP_VM_AGENT",
        &root,
        &target_dir,
        &["--target", VM_AGENT_TARGET, "--profile", "vm-agent"],
        &["-p", "paperclip-vm-agent", "--bin", "paperclip-vm-agent"],
        &format!("{VM_AGENT_TARGET}/vm-agent/paperclip-vm-agent"),
    );

    // The guest component.
    for input in ["src", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    if env::var_os("PAPERCLIP_EXE_DEV_WASM").is_none() {
        require_target("wasm32-wasip2");
    }
    built(
        "PAPERCLIP_EXE_DEV_WASM",
        &root,
        &target_dir,
        &["--target", "wasm32-wasip2", "--profile", "guest"],
        &["-p", "paperclip-exe-dev"],
        "wasm32-wasip2/guest/paperclip_exe_dev.wasm",
    );
}

/// Hand the crate the artifact's path in env var `var`: the prebuilt one the variable names
/// when it is set, else the one a nested `cargo build <how> <what>` makes at `artifact` below
/// `target_dir`.
fn built(var: &str, root: &Path, target_dir: &Path, how: &[&str], what: &[&str], artifact: &str) {
    println!("cargo:rerun-if-env-changed={var}");
    if let Ok(prebuilt) = env::var(var) {
        println!("cargo:rustc-env={var}={prebuilt}");
        return;
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .arg("build")
        .args(how)
        .args(what)
        .arg("--target-dir")
        .arg(target_dir)
        // The outer build's wrappers and flags are for the host; clippy's wrapper in particular
        // must not run on the nested builds.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {}: {e}", what.join(" ")));
    if !status.success() {
        panic!(
            "building {} ({}) failed (is the target installed? `rustup target add {}`)",
            what.join(" "),
            how.join(" "),
            how[1]
        );
    }
    println!(
        "cargo:rustc-env={var}={}",
        target_dir.join(artifact).display()
    );
}

/// Fail the build, saying how to fix it, when the standard library of `target` is missing. A
/// build script does not manage the toolchain: `rust-toolchain.toml` names both targets, so
/// rustup installs them with the toolchain, and on a toolchain installed before they were named
/// (or without rustup) whoever builds adds them.
fn require_target(target: &str) {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    // No sysroot to look in: leave the verdict to the nested build, whose failure names the
    // target too.
    let Some(sysroot) = sysroot else { return };
    if !sysroot.join("lib/rustlib").join(target).is_dir() {
        panic!(
            "the Rust standard library for {target} is not installed (looked in {}). It is \
             needed to build the component (wasm32-wasip2) and the VM agent \
             (x86_64-unknown-linux-musl); rust-toolchain.toml lists both targets. Install them \
             with `rustup target add wasm32-wasip2 x86_64-unknown-linux-musl`",
            sysroot.display()
        );
    }
}
