//! `exe-dev-sim`: runs the exe.dev simulator until Ctrl-C and prints how to reach it (its API
//! URL, token, ssh config and key), for experiments and for `scripts/paperclip-smoke.sh`.

use std::path::PathBuf;

use clap::Parser;
use exe_dev_sim::cli::LinkArgs;
use exe_dev_sim::{serve, SimOptions};

#[derive(Parser)]
#[command(
    name = "exe-dev-sim",
    version,
    about = "Run the exe.dev simulator until Ctrl-C (prints its API URL, token, ssh config and key)"
)]
struct Cli {
    /// What to log on stderr (tracing filter syntax: `info`, `debug`, `exe_dev_sim=debug`, …).
    /// Default: `info`. Without the flag, `PAPERCLIP_WASM_HOST_LOG` applies.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Directory for the simulator's keys, ssh config and VM homes (default: a temp dir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Every VM that `new` creates starts with a copy of DIR as its home (files, directories,
    /// symlinks and modes), as an image's files would: e.g. fake CLIs in `DIR/.local/bin`.
    #[arg(long, value_name = "DIR")]
    home_template: Option<PathBuf>,
    #[command(flatten)]
    link: LinkArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(cli.log_level.as_deref()) {
        eprintln!("exe-dev-sim: --log-level: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let opts = SimOptions {
        state_dir: cli.state_dir,
        link: cli.link.model(),
        home_template: cli.home_template,
        ..Default::default()
    };
    match runtime.block_on(serve(opts)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("exe-dev-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr only: stdout carries the lines that say how to reach the simulator. The
/// flag wins over the environment variable, which wins over `info`.
fn init_tracing(flag: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_env("PAPERCLIP_WASM_HOST_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
}
