//! The offline demo: the whole provider lifecycle through the real worker binary and component,
//! against the embedded exe.dev simulator over real HTTP and real SSH.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use exe_dev_sim::{LinkModel, SimOptions, Simulator};
use paperclip_test_support::client::WorkerClient;
use paperclip_test_support::harness;

/// Run the demo, printing each step with its duration. Fails if any step fails or a VM is left.
/// `link` puts the simulator's SSH path behind a link model (round trip, bandwidth cap).
pub async fn run(host_binary: &Path, link: Option<LinkModel>) -> anyhow::Result<()> {
    let total = Instant::now();
    println!("paperclip-exe-dev demo: the full lifecycle against the embedded exe.dev simulator\n");
    let sim = Simulator::start(SimOptions {
        link,
        ..SimOptions::default()
    })
    .await
    .context("starting the simulator")?;
    println!(
        "  simulator  API {}  (SSH routed by {}, link: {})",
        sim.api_url(),
        sim.ssh_config_path().display(),
        link.map_or_else(|| "loopback".to_string(), |l| l.describe())
    );
    let state = tempfile::tempdir()?;
    let outcome = lifecycle(host_binary, &sim, state.path()).await;
    let left = sim.vm_names();
    sim.shutdown().await;
    outcome?;
    ensure!(left.is_empty(), "VMs left behind: {left:?}");
    println!(
        "\ndone in {} ms: every step passed, 0 VMs left on the simulator.",
        total.elapsed().as_millis()
    );
    Ok(())
}

async fn lifecycle(host_binary: &Path, sim: &Simulator, state: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let worker = WorkerClient::spawn(
        host_binary,
        &harness::worker_args(sim, state),
        &harness::quiet_env(),
    )
    .await?;
    let init = worker
        .request(
            "initialize",
            json!({"manifest": {}, "config": {}, "apiVersion": 1}),
        )
        .await?;
    ensure!(init["ok"] == true, "initialize answered {init}");
    step("worker ready (spawn + initialize)", t, "ok");

    let config = harness::driver_config(sim, 60_000);
    let base = |extra: Value| harness::call_params(&config, "demo-company", "demo-env", extra);

    let t = Instant::now();
    let v = worker
        .request(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": config}),
        )
        .await?;
    ensure!(v["ok"] == true, "validate-config: {v}");
    step(
        "validate-config",
        t,
        &format!(
            "ok, {} warning(s)",
            v["warnings"].as_array().map_or(0, Vec::len)
        ),
    );

    let t = Instant::now();
    let probe = worker.request("environmentProbe", base(json!({}))).await?;
    ensure!(probe["ok"] == true, "probe: {probe}");
    step(
        "probe (create, SSH, inspect, delete)",
        t,
        probe["summary"].as_str().unwrap_or(""),
    );

    let t = Instant::now();
    let lease = worker
        .request(
            "environmentAcquireLease",
            base(json!({"runId": "demo-run-1"})),
        )
        .await?;
    let vm = lease["providerLeaseId"]
        .as_str()
        .context("acquire returned no lease id")?
        .to_string();
    step(
        "acquire-lease",
        t,
        &format!("VM {vm}, cwd {}", lease["metadata"]["remoteCwd"]),
    );

    let t = Instant::now();
    let realized = worker
        .request(
            "environmentRealizeWorkspace",
            base(json!({"lease": lease, "workspace": {"localPath": "/tmp/demo-workspace"}})),
        )
        .await?;
    let cwd = realized["cwd"].as_str().unwrap_or_default().to_string();
    step("realize-workspace", t, &cwd);

    let exec = |command: &str, stdin: Option<&str>| {
        let mut p = base(json!({
            "lease": lease,
            "command": "sh",
            "args": ["-c", command],
            "cwd": cwd,
            "env": {"GREETING": "hello from Paperclip"},
        }));
        if let Some(s) = stdin {
            p["stdin"] = json!(s);
        }
        p
    };
    let runs = [
        ("execute: stdout", exec("echo \"$GREETING\"; pwd", None), 0),
        (
            "execute: stderr + exit code",
            exec("echo oops >&2; exit 3", None),
            3,
        ),
        (
            "execute: stdin",
            exec("wc -c; cat", Some("bytes through stdin\n")),
            0,
        ),
        (
            "execute: non-ASCII",
            exec("printf 'héllo wörld €\\n'", None),
            0,
        ),
    ];
    for (name, params, expected_code) in runs {
        let t = Instant::now();
        let r = worker.request("environmentExecute", params).await?;
        if r["exitCode"] != json!(expected_code) {
            bail!("{name}: expected exit {expected_code}, got {r}");
        }
        let shown = format!(
            "exit {} stdout={:?} stderr={:?}",
            r["exitCode"],
            r["stdout"].as_str().unwrap_or_default(),
            r["stderr"].as_str().unwrap_or_default()
        );
        step(name, t, &shown);
    }

    let t = Instant::now();
    let receipt = worker
        .request(
            "environmentReleaseLease",
            base(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await?;
    step("release-lease", t, &receipt.to_string());

    let t = Instant::now();
    let code = worker.shutdown().await?;
    ensure!(code == 0, "worker exited with {code}");
    step("shutdown", t, "exit 0");
    Ok(())
}

fn step(name: &str, started: Instant, detail: &str) {
    println!(
        "  ok  {name:<38} {:>6} ms  {detail}",
        started.elapsed().as_millis()
    );
}
