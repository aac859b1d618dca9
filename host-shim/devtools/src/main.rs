//! `paperclip-dev`: development tools for the exe.dev provider host, never shipped. `demo` runs
//! the whole lifecycle offline against the exe.dev simulator; `bench` measures against it. Both
//! spawn this binary's hidden `worker` subcommand, which is the shipped worker's entry point
//! (`paperclip_wasm_host::commands::run_worker`, with the component embedded in the worker
//! library), so they go through the real worker protocol and component over stdio.

mod bench;
mod bench_bridge;
mod bench_sync;
mod bridge_model;
mod demo;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use exe_dev_sim::cli::LinkArgs;
use exe_dev_sim::LinkModel;
use paperclip_wasm_host::cli::{execute, HostArgs};
use paperclip_wasm_host::commands::run_worker;

#[derive(Parser)]
#[command(
    name = "paperclip-dev",
    about = "Development tools for the exe.dev provider host: the offline demo and the benchmark"
)]
struct Cli {
    /// What to log on stderr (tracing filter syntax, as for `paperclip-wasm-host`). Default:
    /// `warn` for `worker`, `info` for the other commands. Without the flag,
    /// `PAPERCLIP_WASM_HOST_LOG` applies.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The worker of `paperclip-wasm-host worker`, with the same flags: what `demo` and `bench`
    /// spawn.
    #[command(hide = true)]
    Worker(HostArgs),
    /// Run the full lifecycle offline against the embedded exe.dev simulator.
    Demo {
        #[command(flatten)]
        link: LinkArgs,
        /// Run the demo against this worker program (started as `PROGRAM worker …`) instead
        /// of this binary's own worker: another build of `paperclip-wasm-host`, or a wrapper
        /// that runs the arm64 host under `qemu-aarch64` (scripts/arm64-check.sh).
        #[arg(long, value_name = "PROGRAM")]
        worker: Option<std::path::PathBuf>,
    },
    /// Measure against the simulator, beside raw-ssh baselines from the same run.
    Bench {
        /// Serial executes (and master-connection baseline commands).
        #[arg(long, default_value_t = 40)]
        serial: usize,
        /// Rounds of 8 concurrent executes.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Fresh-connection ssh baseline commands.
        #[arg(long, default_value_t = 10)]
        fresh: usize,
        /// Round-trip time of the link model the link rows run over, in milliseconds.
        #[arg(long, default_value_t = 30, value_name = "MS")]
        link_rtt_ms: u64,
        /// Bandwidth of the link model the link rows run over, in Mbit/s (0: uncapped).
        #[arg(long, default_value_t = 100, value_name = "MBIT")]
        link_mbit: u64,
        /// Skip the sync rows (100 MiB in and out, three ways, on loopback and over the link).
        #[arg(long)]
        no_sync: bool,
        /// API calls the emulated agent makes in each bridge series (0: no bridge rows).
        #[arg(long, default_value_t = 24)]
        bridge_calls: usize,
        /// The emulated agent makes one API call every this many milliseconds.
        #[arg(long, default_value_t = 600, value_name = "MS")]
        bridge_every_ms: u64,
    },
    /// The VM side of the bench's bridge workload: an agent making API calls through
    /// Paperclip's `queue_v1` file queue (started in the simulated VM by `bench`).
    #[command(hide = true)]
    BridgeAgent {
        /// The queue directory (`requests/`, `responses/`).
        #[arg(long)]
        queue: std::path::PathBuf,
        /// How many calls.
        #[arg(long)]
        calls: usize,
        /// One call every this many milliseconds.
        #[arg(long)]
        every_ms: u64,
    },
    /// The VM side of the agent-bridge workload over a duplex channel (`http2_v1`'s transport),
    /// started through `duplexChannelOpen` by `bench`: requests on stdout, answers on stdin.
    #[command(hide = true)]
    DuplexAgent {
        /// How many calls.
        #[arg(long)]
        calls: usize,
        /// One call every this many milliseconds.
        #[arg(long)]
        every_ms: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Worker(_) | Command::BridgeAgent { .. } | Command::DuplexAgent { .. } => "warn",
        _ => "info",
    };
    execute(
        "paperclip-dev",
        cli.log_level.as_deref(),
        default_filter,
        run(cli.command),
    )
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Worker(args) => run_worker(args).await,
        Command::BridgeAgent {
            queue,
            calls,
            every_ms,
        } => {
            let every = std::time::Duration::from_millis(every_ms);
            tokio::task::spawn_blocking(move || bench_bridge::agent_main(&queue, calls, every))
                .await?
        }
        Command::DuplexAgent { calls, every_ms } => {
            let every = std::time::Duration::from_millis(every_ms);
            tokio::task::spawn_blocking(move || bench_bridge::duplex_agent_main(calls, every))
                .await?
        }
        Command::Demo { link, worker } => {
            let worker = match worker {
                Some(program) => program,
                None => std::env::current_exe().context("locating this binary")?,
            };
            demo::run(&worker, link.model()).await
        }
        Command::Bench {
            serial,
            rounds,
            fresh,
            link_rtt_ms,
            link_mbit,
            no_sync,
            bridge_calls,
            bridge_every_ms,
        } => {
            let me = std::env::current_exe().context("locating this binary")?;
            let opts = bench::BenchOptions {
                serial,
                rounds,
                fresh,
                link: LinkModel::new(link_rtt_ms, link_mbit),
                sync: !no_sync,
                bridge: bench_bridge::Workload {
                    calls: bridge_calls,
                    every: std::time::Duration::from_millis(bridge_every_ms),
                },
            };
            bench::run(&me, paperclip_wasm_host::EMBEDDED_COMPONENT.len(), opts).await
        }
    }
}
