//! `cargo dist` (an alias for `cargo run --release -p paperclip-dist --`): builds the shipped
//! host statically with the `dist` profile and has it package the plugin.
//!
//! - `cargo dist --out DIR`: the installable folder, with a static `x86_64-unknown-linux-musl`
//!   host (`paperclip-wasm-host package --out DIR`).
//! - `cargo dist --npm DIR`: the npm release, `npm pack` tarballs of `@paperclipai/plugin-exe-dev`
//!   and of its `linux-x64` and `linux-arm64` host packages, with their `SHA256SUMS`
//!   (`paperclip-wasm-host package --npm DIR --host linux-arm64=…`). The arm64 host is
//!   cross-built: it needs `rustup target add aarch64-unknown-linux-musl` and an aarch64 C
//!   compiler for `ring` (Debian: `gcc-aarch64-linux-gnu`; `.cargo/config.toml` names it).
//!
//! The packaging itself is the host's `package` command (`paperclip_wasm_host::package`); this
//! tool only builds the binaries and runs it, so the shipped binary never drives cargo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;

/// The host of the folder, and of the npm `linux-x64` package.
const X64: &str = "x86_64-unknown-linux-musl";
/// The host of the npm `linux-arm64` package.
const ARM64: &str = "aarch64-unknown-linux-musl";
/// The C compiler `.cargo/config.toml` sets for `ring` on [`ARM64`] (and as its linker).
const ARM64_CC: &str = "aarch64-linux-gnu-gcc";

#[derive(Parser)]
#[command(
    name = "cargo dist",
    about = "Build the static hosts (profile dist) and package the exe.dev plugin for Paperclip"
)]
#[command(group(clap::ArgGroup::new("dest").required(true).args(["out", "npm"])))]
struct Cli {
    /// Write the installable plugin folder (static x86_64 Linux host) to DIR.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the npm tarballs (main package, linux-x64 and linux-arm64 hosts) into DIR.
    #[arg(long, value_name = "DIR")]
    npm: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let targets: &[&str] = if cli.npm.is_some() {
        &[X64, ARM64]
    } else {
        &[X64]
    };
    check_prerequisites(targets)?;
    let mut built = Vec::new();
    for target in targets {
        built.push(build_host(Path::new(&cargo), target)?);
    }
    let x64 = &built[0];
    let mut package = Command::new(x64);
    package.arg("package");
    match (&cli.out, &cli.npm) {
        (Some(out), _) => package.arg("--out").arg(absolute(out)?),
        (None, Some(npm)) => package
            .arg("--npm")
            .arg(absolute(npm)?)
            .arg("--host")
            .arg(format!("linux-arm64={}", built[1].display())),
        (None, None) => unreachable!("clap requires --out or --npm"),
    };
    let status = package
        .status()
        .with_context(|| format!("running {}", x64.display()))?;
    ensure!(
        status.success(),
        "{} package failed ({status})",
        x64.display()
    );
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Say what is missing before minutes of building, not after.
fn check_prerequisites(targets: &[&str]) -> anyhow::Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    ensure!(sysroot.status.success(), "rustc --print sysroot failed");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    for target in targets {
        if !sysroot.join("lib/rustlib").join(target).is_dir() {
            bail!("the Rust target {target} is not installed: run `rustup target add {target}`");
        }
    }
    if targets.contains(&ARM64) {
        let cc = Command::new(ARM64_CC)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !cc.is_ok_and(|s| s.success()) {
            bail!(
                "the arm64 host needs an aarch64 C cross compiler for ring, `{ARM64_CC}` \
                 (Debian/Ubuntu: `apt-get install gcc-aarch64-linux-gnu`)"
            );
        }
    }
    Ok(())
}

/// `cargo build --profile dist --target <target> -p paperclip-wasm-host`; returns the binary.
fn build_host(cargo: &Path, target: &str) -> anyhow::Result<PathBuf> {
    eprintln!(
        "cargo dist: building paperclip-wasm-host for {target} (profile dist: LTO, takes minutes)"
    );
    let mut child = Command::new(cargo)
        .args(["build", "--profile", "dist", "--target", target])
        .args(["-p", "paperclip-wasm-host", "--bin", "paperclip-wasm-host"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let stdout = child.stdout.take().expect("piped");
    let mut executable = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "paperclip-wasm-host" {
            if let Some(exe) = msg["executable"].as_str() {
                executable = Some(PathBuf::from(exe));
            }
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    ensure!(
        status.success(),
        "building paperclip-wasm-host for {target} failed ({status})"
    );
    let exe = executable.context("cargo build reported no paperclip-wasm-host executable")?;
    let size = std::fs::metadata(&exe)
        .with_context(|| format!("reading {}", exe.display()))?
        .len();
    eprintln!(
        "cargo dist: {target}: {} ({:.1} MB)",
        exe.display(),
        size as f64 / 1e6
    );
    Ok(exe)
}
