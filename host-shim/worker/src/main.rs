//! `paperclip-wasm-host`: the command-line entry point.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use exe_dev_sim::cli::LinkArgs;
use exe_dev_sim::LinkModel;
use paperclip_wasm_host::{bench, demo, orphans, package, worker};
use paperclip_wasm_runtime::caps::log::CallSink;
use paperclip_wasm_runtime::dispatch::dispatch;
use paperclip_wasm_runtime::engine::{Limits, ProviderHost};
use paperclip_wasm_runtime::{grants, statedir};
use serde_json::json;

/// The exe.dev provider component, built by `build.rs` and embedded so the binary works alone.
static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("PAPERCLIP_EXE_DEV_WASM"));

#[derive(Parser)]
#[command(
    name = "paperclip-wasm-host",
    version,
    about = "Runs the exe.dev sandbox provider component for Paperclip"
)]
struct Cli {
    /// What to log on stderr (tracing filter syntax: `info`, `debug`,
    /// `paperclip_wasm_host=debug`, …). Default: `warn` for `worker`, because Paperclip records
    /// every stderr line of a worker as a warning (guest logs reach it as `log` notifications
    /// instead); `info` for the other commands. Without the flag, `PAPERCLIP_WASM_HOST_LOG` applies.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Speak Paperclip's plugin-worker protocol (JSON-RPC lines) on stdin/stdout.
    Worker(HostArgs),
    /// Run the full lifecycle offline against the embedded exe.dev simulator.
    Demo {
        #[command(flatten)]
        link: LinkArgs,
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
    },
    /// Build an installable Paperclip plugin folder (package.json, dist/, bin/).
    Package {
        /// The folder to create (or update).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
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
        let manifest: serde_json::Value = match &self.manifest {
            Some(path) => serde_json::from_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading manifest {}", path.display()))?,
            )
            .with_context(|| format!("parsing manifest {}", path.display()))?,
            None => serde_json::from_str(paperclip_wasm_host::EMBEDDED_MANIFEST)
                .expect("embedded manifest is JSON"),
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
            worker_args: std::env::current_exe()
                .ok()
                .and_then(|exe| package::worker_args_beside(&exe)),
        })?;
        ProviderHost::load(&wasm, Some(&state_dir.join("cache")), grants, limits)
    }
}

/// The WIT package the embedded component was built against (from `wit/world.wit`).
fn wit_package() -> &'static str {
    include_str!("../../../wit/world.wit")
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map_or("unknown", |p| p.trim_end_matches(';'))
}

/// `--version`: this binary's version, the embedded component's SHA-256 and the WIT package, so
/// an operator can tell exactly what a package runs. Computed only when asked for.
fn long_version() -> String {
    use sha2::{Digest, Sha256};
    let digest = paperclip_wasm_runtime::hex::hex(&Sha256::digest(EMBEDDED_COMPONENT));
    format!(
        "{}\ncomponent sha256:{digest} ({} bytes)\nwit {}",
        env!("CARGO_PKG_VERSION"),
        EMBEDDED_COMPONENT.len(),
        wit_package()
    )
}

fn main() -> std::process::ExitCode {
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
    if let Err(e) = init_tracing(cli.log_level.as_deref(), default_filter) {
        eprintln!("paperclip-wasm-host: --log-level: {e}");
        return std::process::ExitCode::from(2);
    }
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
            let exit = worker::serve(host.clone(), tokio::io::stdin(), tokio::io::stdout()).await;
            // Masters would otherwise idle on until ControlPersist ends them.
            host.close_connections().await;
            tracing::debug!("worker exiting: {:?}", exit?);
            Ok(())
        }
        Command::Demo { link } => {
            let me = std::env::current_exe().context("locating this binary")?;
            demo::run(&me, link.model()).await
        }
        Command::Bench {
            serial,
            rounds,
            fresh,
            link_rtt_ms,
            link_mbit,
        } => {
            let me = std::env::current_exe().context("locating this binary")?;
            let opts = bench::BenchOptions {
                serial,
                rounds,
                fresh,
                link: LinkModel::new(link_rtt_ms, link_mbit),
            };
            bench::run(&me, EMBEDDED_COMPONENT.len(), opts).await
        }
        Command::Package {
            out,
            component,
            manifest,
        } => {
            let scratch = tempfile::tempdir()?;
            let component = match component {
                Some(p) => p,
                None => {
                    let p = scratch.path().join("paperclip_exe_dev.wasm");
                    std::fs::write(&p, EMBEDDED_COMPONENT)?;
                    p
                }
            };
            let manifest = match manifest {
                Some(p) => p,
                None => {
                    let p = scratch.path().join("manifest.json");
                    std::fs::write(&p, paperclip_wasm_host::EMBEDDED_MANIFEST)?;
                    p
                }
            };
            let me = std::env::current_exe().context("locating this binary")?;
            package::build_package(&out, &me, &component, &manifest)?;
            println!("Paperclip plugin package written to {}", out.display());
            Ok(())
        }
        Command::Validate { config, host } => {
            let config = read_config(&config)?;
            let provider = host.load()?;
            let params = json!({ "driverKey": "exe-dev", "config": config });
            let r = ops_call(&provider, "environmentValidateConfig", params).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if r["ok"] != true {
                anyhow::bail!("the config is invalid: {}", r["errors"][0]);
            }
            Ok(())
        }
        Command::Probe { config, host } => {
            let config = read_config(&config)?;
            let provider = host.load()?;
            let params =
                json!({ "driverKey": "exe-dev", "environmentId": "cli-probe", "config": config });
            let r = ops_call(&provider, "environmentProbe", params).await?;
            for d in r["diagnostics"].as_array().into_iter().flatten() {
                eprintln!(
                    "  {:<7} {:<12} {}  {}",
                    d["severity"].as_str().unwrap_or(""),
                    d["code"].as_str().unwrap_or(""),
                    d["message"].as_str().unwrap_or(""),
                    d.get("details").map(|v| v.to_string()).unwrap_or_default()
                );
            }
            println!("{}", serde_json::to_string_pretty(&r)?);
            if r["ok"] != true {
                anyhow::bail!("{}", r["summary"].as_str().unwrap_or("probe failed"));
            }
            Ok(())
        }
        Command::Exec {
            config,
            vm,
            cwd,
            host,
            command,
        } => {
            let config = read_config(&config)?;
            let provider = host.load()?;
            let (program, args) = command.split_first().expect("clap requires a command");
            let params = json!({
                "driverKey": "exe-dev", "environmentId": "cli-exec", "config": config,
                "lease": { "providerLeaseId": vm, "metadata": {} },
                "command": program, "args": args, "cwd": cwd,
            });
            let r = ops_call(&provider, "environmentExecute", params).await?;
            use std::io::Write as _;
            std::io::stdout().write_all(r["stdout"].as_str().unwrap_or("").as_bytes())?;
            std::io::stderr().write_all(r["stderr"].as_str().unwrap_or("").as_bytes())?;
            if r["timedOut"] == true {
                anyhow::bail!("the command timed out and was terminated");
            }
            let code = r["exitCode"].as_i64().unwrap_or(1);
            std::process::exit(code as i32);
        }
        Command::Orphans {
            config,
            delete,
            yes,
            host,
        } => {
            let config = read_config(&config)?;
            let provider = host.load()?;
            run_orphans(&config, &provider, &delete, yes).await
        }
    }
}

/// `orphans`: the listing (JSON on stdout, one line per VM on stderr), then the deletions.
async fn run_orphans(
    config: &serde_json::Value,
    provider: &ProviderHost,
    delete: &[String],
    yes: bool,
) -> anyhow::Result<()> {
    let listing = orphans::list(provider, config).await?;
    for l in &listing {
        eprintln!(
            "  {:<7} {:<16} {:<12} {}",
            if l.orphan.is_some() { "orphan" } else { "" },
            l.orphan.unwrap_or(""),
            if l.present {
                l.status.as_deref().unwrap_or("present")
            } else {
                "not present"
            },
            l.name
        );
    }
    let doomed = orphans::to_delete(&listing, delete, yes)?;
    let mut deleted = Vec::new();
    for name in &doomed {
        let params = json!({
            "driverKey": "exe-dev", "environmentId": "cli-orphans", "config": config,
            "providerLeaseId": name,
        });
        ops_call(provider, "environmentDestroyLease", params).await?;
        deleted.push(name.clone());
    }
    let vms: Vec<serde_json::Value> = listing.iter().map(orphans::Listed::to_json).collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "vms": vms, "deleted": deleted }))?
    );
    Ok(())
}

fn read_config(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("parsing config {} as JSON", path.display()))
}

/// Call the component directly (no worker process), logging guest progress to stderr.
async fn ops_call(
    provider: &ProviderHost,
    method: &str,
    params: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    eprintln!("paperclip-wasm-host: {method}…");
    dispatch(provider, method, params, CallSink::stderr_only())
        .await
        .map_err(|e| anyhow::anyhow!("{method} failed ({}): {}", e.code, e.message))
}

/// Logs go to stderr only: stdout carries protocol lines. The flag wins over the environment
/// variable, which wins over the command's default.
fn init_tracing(flag: Option<&str>, default: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_env("PAPERCLIP_WASM_HOST_LOG")
            .unwrap_or_else(|_| EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
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
