//! What each command of `paperclip-wasm-host` does: the worker (the Paperclip protocol over
//! stdio), `package`, and the operator commands (`validate`, `probe`, `exec`, `orphans`), which
//! call the component directly with the params Paperclip would send.

use paperclip_provider_types::LedgerReason;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;

use crate::dispatch::dispatch;
use paperclip_wasm_runtime::caps::log::CallSink;
use paperclip_wasm_runtime::engine::ProviderHost;

use crate::cli::{Command, HostArgs};
use crate::{orphans, package, worker};

/// Run one command of `paperclip-wasm-host`.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Worker(args) => run_worker(args).await,
        Command::Package {
            out,
            npm,
            hosts,
            component,
            manifest,
        } => package_command(out, npm, &hosts, component, manifest),
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

/// `package`: the folder (`--out`) or the npm release (`--npm`), from this binary and the
/// embedded component and manifest unless others are given.
fn package_command(
    out: Option<std::path::PathBuf>,
    npm: Option<std::path::PathBuf>,
    hosts: &[String],
    component: Option<std::path::PathBuf>,
    manifest: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let component = match component {
        Some(p) => p,
        None => {
            let p = scratch.path().join(package::COMPONENT_NAME);
            std::fs::write(&p, crate::EMBEDDED_COMPONENT)?;
            p
        }
    };
    let manifest = match manifest {
        Some(p) => p,
        None => {
            let p = scratch.path().join("manifest.json");
            std::fs::write(&p, crate::EMBEDDED_MANIFEST)?;
            p
        }
    };
    let me = std::env::current_exe().context("locating this binary")?;
    if let Some(out) = out {
        let files = package::build_package(&out, &me, &component, &manifest)?;
        println!("Paperclip plugin package written to {}", out.display());
        for (name, digest) in files {
            println!("  sha256:{digest}  {name}");
        }
        println!("  (recorded in {})", out.join(package::SUMS_FILE).display());
        return Ok(());
    }
    let out = npm.context("--out or --npm is required")?;
    let mut chosen: Vec<(&package::Platform, std::path::PathBuf)> = Vec::new();
    for spec in hosts {
        let (key, path) = spec
            .split_once('=')
            .with_context(|| format!("--host {spec:?}: expected PLATFORM=PATH"))?;
        let platform = package::Platform::by_key(key).with_context(|| {
            let known: Vec<&str> = package::PLATFORMS.iter().map(|p| p.key).collect();
            format!(
                "--host {spec:?}: unknown platform {key:?} (known: {})",
                known.join(", ")
            )
        })?;
        anyhow::ensure!(
            chosen.iter().all(|(p, _)| *p != platform),
            "--host {key} is given twice"
        );
        chosen.push((platform, path.into()));
    }
    if let Some(own) = package::Platform::current() {
        if chosen.iter().all(|(p, _)| *p != own) {
            chosen.push((own, me));
        }
    }
    for platform in package::PLATFORMS {
        let (_, path) = chosen
            .iter()
            .find(|(p, _)| *p == platform)
            .with_context(|| {
                format!(
                    "no host binary for {}: pass --host {}=PATH (a static build for {})",
                    platform.key, platform.key, platform.rust_target
                )
            })?;
        platform.check_host_binary(path)?;
    }
    let tarballs = package::build_npm(&out, &chosen, &component, &manifest)?;
    println!("npm release written to {}", out.display());
    for t in &tarballs {
        println!("  sha256:{}  {}  ({})", t.sha256, t.file_name, t.package);
    }
    println!("  (recorded in {})", out.join(package::SUMS_FILE).display());
    Ok(())
}

/// `worker`: speak Paperclip's plugin-worker protocol on stdin/stdout until `shutdown` or EOF.
/// `paperclip-dev worker` runs exactly this, so the demo and the benchmark go through it too.
pub async fn run_worker(args: HostArgs) -> anyhow::Result<()> {
    let (input, output) = crate::stdio::protocol_streams();
    let host = Arc::new(args.load()?);
    let exit = worker::serve(host.clone(), input, output).await;
    // Masters would otherwise idle on until ControlPersist ends them.
    host.close_connections().await;
    tracing::debug!("worker exiting: {:?}", exit?);
    Ok(())
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
            l.orphan.map_or("", LedgerReason::as_str),
            if l.present {
                l.status.as_deref().unwrap_or("present")
            } else {
                "not present"
            },
            l.name
        );
    }
    let pending = orphans::pending(provider)?;
    if !pending.is_empty() {
        eprintln!("  the reconciler is waiting for:");
    }
    for p in &pending {
        let j = p.to_json();
        eprintln!(
            "  {:<16} {}  since {}  next try {}  tries {}{}",
            p.reason,
            p.name,
            j["since"].as_str().unwrap_or(""),
            j["nextTry"].as_str().unwrap_or(""),
            p.attempts,
            p.last_error
                .as_deref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
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
    let pending: Vec<serde_json::Value> = pending.iter().map(orphans::Pending::to_json).collect();
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({ "vms": vms, "deleted": deleted, "pending": pending })
        )?
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
