//! The `paperclip-wasm-host` command line: its subcommands and flags, how the component is
//! loaded for them ([`HostArgs`]), and how a command runs ([`execute`]: logging, the tokio
//! runtime, the exit status). What each command does is in [`crate::commands`].

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use paperclip_wasm_runtime::engine::{Limits, ProviderHost};
use paperclip_wasm_runtime::{grants, statedir};

use crate::{commands, package};

// The command line of `paperclip-wasm-host` (no doc comment: clap would show it as help).
#[derive(Parser)]
#[command(
    name = "paperclip-wasm-host",
    version,
    about = "Runs the exe.dev sandbox provider component for Paperclip"
)]
pub struct Cli {
    /// What to log on stderr (tracing filter syntax: `info`, `debug`,
    /// `paperclip_wasm_host=debug`, `paperclip_wasm_runtime=debug`, …). Default: `warn` for
    /// `worker`, because Paperclip records every stderr line of a worker as a warning (guest logs
    /// reach it as `log` notifications instead); `info` for the other commands. Without the flag,
    /// `PAPERCLIP_WASM_HOST_LOG` applies.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Its subcommands; `paperclip-dev` reuses `worker`'s flags ([`HostArgs`]).
#[derive(Subcommand)]
pub enum Command {
    /// Speak Paperclip's plugin-worker protocol (JSON-RPC lines) on stdin/stdout.
    Worker(HostArgs),
    /// Build the shipped plugin: the installable folder (`--out`), or the npm release (`--npm`).
    #[command(group(clap::ArgGroup::new("dest").required(true).args(["out", "npm"])))]
    Package {
        /// The plugin folder to create (or update): package.json, dist/, bin/ with this binary
        /// as the host.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Write the npm tarballs of @paperclipai/plugin-exe-dev and of its host packages (one
        /// per platform, each a static binary) into DIR, with their SHA256SUMS.
        #[arg(long, value_name = "DIR")]
        npm: Option<PathBuf>,
        /// With --npm: the host binary of a platform (linux-x64, linux-arm64), as
        /// PLATFORM=PATH. Repeatable; this binary serves its own platform by default.
        #[arg(long = "host", value_name = "PLATFORM=PATH", requires = "npm")]
        hosts: Vec<String>,
        /// The component to ship (default: the one embedded in this binary).
        #[arg(long, value_name = "PATH")]
        component: Option<PathBuf>,
        /// The manifest to ship (default: the embedded manifest.json).
        #[arg(long, value_name = "PATH")]
        manifest: Option<PathBuf>,
    },
    /// Validate a driver config file (JSON) as Paperclip would, and print the result.
    Validate {
        /// The environment config, a JSON object.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Probe: create a throwaway VM, check SSH, delete it, and print each step.
    Probe {
        /// The environment config, a JSON object (secrets as plaintext).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run one command in an existing VM by name, printing its output; exits with its code.
    Exec {
        /// The environment config, a JSON object (secrets as plaintext).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The VM (lease id) to run in.
        #[arg(long, value_name = "NAME")]
        vm: String,
        /// Working directory in the VM.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        #[command(flatten)]
        host: HostArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List the VMs this provider created for a config (by its name prefix), marking as orphans
    /// the ones the host's VM ledger (in --state-dir) records; delete the ones named, or every
    /// orphan with --yes.
    Orphans {
        /// The environment config, a JSON object (secrets as plaintext).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Delete this VM (it must be in the listing). Repeatable.
        #[arg(long = "delete", value_name = "NAME")]
        delete: Vec<String>,
        /// Delete every VM listed as an orphan.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        host: HostArgs,
    },
}

/// Options shared by every command that runs the component.
#[derive(Args, Clone)]
pub struct HostArgs {
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
    /// The plugin manifest whose `x-wasm-host` key declares the grants (default: embedded).
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Also allow HTTP to HOST[:PORT] (HTTPS; plus plain HTTP when HOST is loopback), or an
    /// explicit `https://HOST[:PORT]` / `http://LOOPBACK[:PORT]`. Repeatable.
    #[arg(long = "allow-http", value_name = "HOST[:PORT]")]
    allow_http: Vec<String>,
    /// Also allow SSH to hosts matching PATTERN (e.g. `*.example.internal`). Repeatable.
    #[arg(long = "allow-ssh", value_name = "PATTERN")]
    allow_ssh: Vec<String>,
    /// Also let file transfers (native workspace sync) read and write under DIR, besides the
    /// system temp dir and the Paperclip home (`$PAPERCLIP_HOME`, else `~/.paperclip`).
    /// Repeatable.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// An OpenSSH client config file, passed to ssh as `-F` (default: none, `-F /dev/null`).
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// The OpenSSH client binary.
    #[arg(long, default_value = "ssh", value_name = "PATH")]
    ssh_binary: PathBuf,
    /// Start a new SSH connection (an `ssh` process and a handshake) for every command instead
    /// of sharing one master connection per VM. Slower; for SSH setups that refuse sharing.
    #[arg(long)]
    no_ssh_connection_reuse: bool,
}

impl HostArgs {
    pub fn load(&self) -> anyhow::Result<ProviderHost> {
        let state_dir = statedir::resolve(self.state_dir.as_deref());
        statedir::ensure_private_dir(&state_dir)?;
        let wasm = match &self.component {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading component {}", path.display()))?,
            None => crate::EMBEDDED_COMPONENT.to_vec(),
        };
        let limits = Limits {
            max_memory_bytes: self.max_memory_mb << 20,
            call_grace: Duration::from_millis(self.call_grace_ms),
        };
        let manifest: serde_json::Value = match &self.manifest {
            Some(path) => serde_json::from_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading manifest {}", path.display()))?,
            )
            .with_context(|| format!("parsing manifest {}", path.display()))?,
            None => {
                serde_json::from_str(crate::EMBEDDED_MANIFEST).expect("embedded manifest is JSON")
            }
        };
        let grants = grants::production(grants::GrantOptions {
            manifest,
            allow_http: self.allow_http.clone(),
            allow_ssh: self.allow_ssh.clone(),
            ssh_config: self.ssh_config.clone(),
            ssh_binary: self.ssh_binary.clone(),
            state_dir: state_dir.clone(),
            exe_api_key: std::env::var("EXE_API_KEY").ok().filter(|k| !k.is_empty()),
            reuse_ssh_connections: !self.no_ssh_connection_reuse,
            allow_paths: self.allow_path.clone(),
            // The launcher passes the package's bin/manifest.json; the flags file is beside it
            // (an npm install's host binary sits in another package).
            worker_args: self
                .manifest
                .as_deref()
                .and_then(package::worker_args_beside_manifest)
                .or_else(|| {
                    std::env::current_exe()
                        .ok()
                        .and_then(|exe| package::worker_args_beside(&exe))
                }),
            vm_agent: Some(crate::EMBEDDED_VM_AGENT),
        })?;
        ProviderHost::load(&wasm, Some(&state_dir.join("cache")), grants, limits)
    }
}

/// `--version`: this binary's version, the embedded component's SHA-256 and the WIT package, so
/// an operator can tell exactly what a package runs. Computed only when asked for.
fn long_version() -> String {
    use sha2::{Digest, Sha256};
    let digest = paperclip_wasm_runtime::hex::hex(&Sha256::digest(crate::EMBEDDED_COMPONENT));
    format!(
        "{}\ncomponent sha256:{digest} ({} bytes)\nwit {}",
        env!("CARGO_PKG_VERSION"),
        crate::EMBEDDED_COMPONENT.len(),
        paperclip_wasm_runtime::engine::contract_package()
    )
}

/// The entry point of `paperclip-wasm-host`: parse the command line (with the long `--version`
/// when asked for) and run the command.
pub fn main() -> ExitCode {
    let wants_version = std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--version" || a == "-V");
    let cli = if wants_version {
        use clap::{CommandFactory as _, FromArgMatches as _};
        // clap takes a `&'static str`; this runs once, right before the process prints and
        // exits.
        let version: &'static str = Box::leak(long_version().into_boxed_str());
        let matches = Cli::command().version(version).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    } else {
        Cli::parse()
    };
    let default_filter = match cli.command {
        Command::Worker(_) => "warn",
        _ => "info",
    };
    execute(
        "paperclip-wasm-host",
        cli.log_level.as_deref(),
        default_filter,
        commands::run(cli.command),
    )
}

/// Run a command as every command of this binary runs: logs on stderr only (filter: `log_level`,
/// else `PAPERCLIP_WASM_HOST_LOG`, else `default_filter`), on a multi-threaded tokio runtime;
/// exit status 0 at once on success, 1 with `<program>: <error>` on stderr on failure, 2 for a
/// bad `--log-level`. The dev tools run the worker through this too, under their own `program`
/// name.
pub fn execute(
    program: &str,
    log_level: Option<&str>,
    default_filter: &str,
    command: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    if let Err(e) = init_tracing(log_level, default_filter) {
        eprintln!("{program}: --log-level: {e}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(command) {
        Ok(()) => {
            // Exit at once: tokio's stdin reader may be parked in a blocking read that would
            // otherwise keep the process alive.
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr only: stdout carries protocol lines. The flag wins over the environment
/// variable, which wins over the command's default.
///
/// The filter is a list of `LEVEL` and `target=LEVEL` directives (`Targets`), not the full
/// `EnvFilter` syntax: span and field filters would bring a regex engine into the shipped binary
/// for a feature an operator never needs here.
fn init_tracing(flag: Option<&str>, default: &str) -> anyhow::Result<()> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter: Targets = match flag {
        Some(f) => f
            .parse()
            .map_err(|e| anyhow::anyhow!("--log-level {f:?}: {e}"))?,
        None => std::env::var("PAPERCLIP_WASM_HOST_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| default.parse().expect("a valid default filter")),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .init();
    Ok(())
}
