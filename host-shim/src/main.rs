//! `paperclip-wasm-host`: the command-line entry point.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use paperclip_wasm_host::engine::{Limits, ProviderHost};
use paperclip_wasm_host::{grants, statedir, worker};

/// The exe.dev provider component, built by `build.rs` and embedded so the binary works alone.
static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("PAPERCLIP_EXE_DEV_WASM"));

#[derive(Parser)]
#[command(
    name = "paperclip-wasm-host",
    version,
    about = "Runs the exe.dev sandbox provider component for Paperclip"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Speak Paperclip's plugin-worker protocol (JSON-RPC lines) on stdin/stdout.
    Worker(HostArgs),
}

/// Options shared by every command that runs the component.
#[derive(Args, Clone)]
struct HostArgs {
    /// The provider component (.wasm); defaults to the one embedded in this binary.
    #[arg(long, value_name = "PATH")]
    component: Option<PathBuf>,
    /// Directory for the compiled-component cache and SSH known_hosts
    /// (default: $XDG_STATE_HOME or $HOME/.local/state/paperclip-wasm-host, else a per-user temp dir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Linear-memory cap per call, in MiB.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    max_memory_mb: usize,
    /// Added to each call's own timeout to form its hard deadline, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    call_grace_ms: u64,
}

impl HostArgs {
    fn load(&self) -> anyhow::Result<ProviderHost> {
        let state_dir = statedir::resolve(self.state_dir.as_deref());
        statedir::ensure_private_dir(&state_dir)?;
        let wasm = match &self.component {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading component {}", path.display()))?,
            None => EMBEDDED_COMPONENT.to_vec(),
        };
        let limits = Limits {
            max_memory_bytes: self.max_memory_mb << 20,
            call_grace: Duration::from_millis(self.call_grace_ms),
        };
        let exe_api_key = std::env::var("EXE_API_KEY").ok().filter(|k| !k.is_empty());
        ProviderHost::load(
            &wasm,
            Some(&state_dir.join("cache")),
            grants::nothing(exe_api_key),
            limits,
        )
    }
}

fn main() -> std::process::ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => {
            // Exit at once: tokio's stdin reader may be parked in a blocking read that would
            // otherwise keep the process alive.
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("paperclip-wasm-host: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(args) => {
            clear_nonblocking_stdio();
            let host = Arc::new(args.load()?);
            let exit = worker::serve(host, tokio::io::stdin(), tokio::io::stdout()).await?;
            tracing::debug!("worker exiting: {exit:?}");
            Ok(())
        }
    }
}

/// Logs go to stderr only: stdout carries protocol lines.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAPERCLIP_WASM_HOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Paperclip hands the worker Unix-socket stdio that may be non-blocking; blocking reads and
/// writes expect blocking descriptors.
fn clear_nonblocking_stdio() {
    for fd in 0..=2 {
        // SAFETY: fcntl on the standard descriptors with valid commands; failure is harmless.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 && flags & libc::O_NONBLOCK != 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
}
