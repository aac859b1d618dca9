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
use std::path::PathBuf;
use std::process::Command;

/// The VMs' architecture: exe.dev VMs are x86_64, whatever the host runs on.
const VM_AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

fn main() {
    build_vm_agent();
    println!("cargo:rerun-if-env-changed=PAPERCLIP_EXE_DEV_WASM");
    if let Ok(prebuilt) = env::var("PAPERCLIP_EXE_DEV_WASM") {
        println!("cargo:rustc-env=PAPERCLIP_EXE_DEV_WASM={prebuilt}");
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .and_then(|host_shim| host_shim.parent())
        .expect("the crate sits in host-shim/ of the workspace root");
    for input in ["src", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    ensure_wasm_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .args(["-p", "paperclip-exe-dev", "--target-dir"])
        .arg(&target_dir)
        // The outer build's wrappers and flags are for the host; clippy's wrapper in particular
        // must not run on the nested guest build.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build the guest component");
    if !status.success() {
        panic!(
            "building the guest component failed (is the target installed? \
             `rustup target add wasm32-wasip2`)"
        );
    }
    let wasm = target_dir.join("wasm32-wasip2/guest/paperclip_exe_dev.wasm");
    println!("cargo:rustc-env=PAPERCLIP_EXE_DEV_WASM={}", wasm.display());
}

/// Build the VM agent (static, for the VMs' architecture) and hand its path to the crate.
fn build_vm_agent() {
    println!("cargo:rerun-if-env-changed=PAPERCLIP_VM_AGENT");
    if let Ok(prebuilt) = env::var("PAPERCLIP_VM_AGENT") {
        println!("cargo:rustc-env=PAPERCLIP_VM_AGENT={prebuilt}");
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .and_then(|host_shim| host_shim.parent())
        .expect("the crate sits in host-shim/ of the workspace root");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("host-shim/vm-agent").display()
    );
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--target",
            VM_AGENT_TARGET,
            "--profile",
            "vm-agent",
        ])
        .args(["-p", "paperclip-vm-agent", "--bin", "paperclip-vm-agent"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build the VM agent");
    if !status.success() {
        panic!(
            "building the VM agent failed (is the target installed? \
             `rustup target add {VM_AGENT_TARGET}`)"
        );
    }
    let agent = target_dir.join(format!("{VM_AGENT_TARGET}/vm-agent/paperclip-vm-agent"));
    println!("cargo:rustc-env=PAPERCLIP_VM_AGENT={}", agent.display());
}

/// A fresh rustup install has no wasm32-wasip2 standard library; add it so `cargo build` of the
/// workspace works as the first command on a new machine.
fn ensure_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot
        .as_ref()
        .is_some_and(|s| s.join("lib/rustlib/wasm32-wasip2").is_dir());
    if installed {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup (needed to build the component)");
    let ok = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "cargo:warning=`rustup target add wasm32-wasip2` failed; install the target by hand"
        );
    }
}
