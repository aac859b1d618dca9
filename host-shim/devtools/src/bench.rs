//! `paperclip-dev bench` (`cargo bench-host`): performance against the simulator, each figure beside a
//! baseline measured in the same run (a plain `ssh` per command, and `ssh` over an established
//! master connection), reported as ratios. Timings vary between machines; ratios in one run
//! are what to compare.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};

use exe_dev_sim::{LinkModel, SimOptions, Simulator};
use paperclip_test_support::client::WorkerClient;
use paperclip_test_support::harness;
use paperclip_wasm_runtime::caps::ssh::{
    HostKeyPolicy, Identity, SshRequest, SshRunner, SshSettings, SshTarget,
};
use paperclip_wasm_runtime::policy::Policy;

/// Iteration counts; small enough for a 2-core machine to finish in well under a minute.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// The link model of the link rows (execute and 20 MiB over an added round trip and a
    /// bandwidth cap).
    pub link: LinkModel,
    /// Serial executes (and master-connection baseline commands).
    pub serial: usize,
    /// Rounds of 8 concurrent executes.
    pub rounds: usize,
    /// Fresh-connection `ssh` baseline commands.
    pub fresh: usize,
    /// Also run the sync rows (100 MiB in and out, on loopback and over the link).
    pub sync: bool,
    /// The agent-bridge workload (no bridge rows with 0 calls).
    pub bridge: crate::bench_bridge::Workload,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            serial: 40,
            rounds: 10,
            fresh: 10,
            link: LinkModel::new(30, 100),
            sync: true,
            bridge: crate::bench_bridge::Workload {
                calls: 24,
                every: Duration::from_millis(600),
            },
        }
    }
}

const TWENTY_MIB: usize = 20 << 20;

/// Pause after each sample, untimed.
const SETTLE: Duration = Duration::from_millis(30);

/// Run the benchmark and print the table. `wasm_size` is the shipped component's size.
pub async fn run(host_binary: &Path, wasm_size: usize, opts: BenchOptions) -> anyhow::Result<()> {
    let sim = Simulator::start(SimOptions::default()).await?;
    let result = measure(host_binary, &sim, opts).await;
    let left = sim.vm_names();
    sim.shutdown().await;
    let rows = result?;
    ensure!(left.is_empty(), "VMs left behind: {left:?}");

    let sim = Simulator::start(SimOptions {
        link: Some(opts.link),
        ..SimOptions::default()
    })
    .await?;
    let result = measure_link(host_binary, &sim, opts).await;
    let left = sim.vm_names();
    sim.shutdown().await;
    let link_rows = result?;
    ensure!(left.is_empty(), "VMs left behind: {left:?}");

    print_table(&rows, wasm_size);
    println!();
    print_link_table(&link_rows, &opts.link);
    if opts.bridge.calls > 0 {
        println!();
        print_bridge_table(&[
            ("loopback".to_string(), Duration::ZERO, &rows.bridge),
            (opts.link.describe(), opts.link.rtt, &link_rows.bridge),
        ]);
    }
    if opts.sync {
        for link in [None, Some(opts.link)] {
            let sim = Simulator::start(SimOptions {
                link,
                ..SimOptions::default()
            })
            .await?;
            let result = sync_rows(host_binary, &sim).await;
            let left = sim.vm_names();
            sim.shutdown().await;
            let figures = result?;
            ensure!(left.is_empty(), "VMs left behind: {left:?}");
            println!();
            crate::bench_sync::print(
                &figures,
                &link.map_or_else(|| "loopback".to_string(), |l| l.describe()),
            );
        }
    }
    Ok(())
}

/// The sync rows on one simulator: its own worker, lease and baseline master connection.
async fn sync_rows(
    host_binary: &Path,
    sim: &Simulator,
) -> anyhow::Result<crate::bench_sync::SyncFigures> {
    let scratch = tempfile::tempdir()?;
    let worker = ready(
        host_binary,
        &harness::worker_args(sim, &scratch.path().join("state")),
        &harness::quiet_env(),
    )
    .await?;
    let config = harness::driver_config(sim, 600_000);
    let base = |extra: Value| harness::call_params(&config, "bench", "bench-sync", extra);
    let lease = worker
        .request(
            "environmentAcquireLease",
            base(json!({ "runId": "bench-sync" })),
        )
        .await?;
    let vm = lease["providerLeaseId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let home = sim
        .vm_home(&vm)
        .ok_or_else(|| anyhow::anyhow!("no VM {vm} in the simulator"))?;
    let (host, port, _) = lease_destination(&lease)?;
    let raw = RawSsh::new(sim, scratch.path(), &host, &port.to_string());
    raw.start_master().await?;
    let figures =
        crate::bench_sync::measure(&worker, worker.pid(), &base, &lease, &home, &|remote| {
            raw.command(remote)
        })
        .await;
    raw.stop_master().await?;
    destroy(&worker, &base, &lease).await?;
    figures
}

/// The link rows: what a command and a large output cost over a real link's round trip and
/// bandwidth, beside the system ssh client over a master connection on the same link.
struct LinkFigures {
    rtt: Duration,
    serial_median: Duration,
    serial_p90: Duration,
    ssh_master: Duration,
    stdout_20mib: Duration,
    ssh_master_20mib: Duration,
    /// Rounds of 8 and of 32 concurrent executes.
    concurrent: Vec<Concurrent>,
    bridge: BridgeFigures,
}

/// Rounds of `n` concurrent executes of `true` on one VM.
struct Concurrent {
    n: usize,
    ours: Duration,
    ssh_master: Duration,
    /// The same remote work, `n` at once in the VM with no SSH (the floor is one round trip
    /// more).
    remote_alone: Duration,
}

/// The bridge workload three ways (empty when it was not run).
#[derive(Default)]
struct BridgeFigures {
    ours: crate::bench_bridge::BridgeRun,
    raw: crate::bench_bridge::BridgeRun,
    floor: crate::bench_bridge::BridgeRun,
    /// The same calls over one duplex channel (`http2_v1`'s transport) through the worker.
    duplex: crate::bench_bridge::BridgeRun,
    /// What `ours` cost the VM: its session processes (our serving agent) and what they ran.
    ours_cpu: exe_dev_sim::CpuTime,
    /// SSH sessions of the VM that ran a command and ended during `ours` (none when every
    /// execute is a request to the serving agent of the live connection).
    ours_sessions: usize,
    /// What the floor's commands (the same workload, no SSH, no agent) cost the VM.
    floor_cpu: Duration,
    /// What `ours` cost the host side: the worker (with the component) and its ssh master.
    ours_host_cpu: exe_dev_sim::CpuTime,
}

async fn measure_link(
    host_binary: &Path,
    sim: &Simulator,
    opts: BenchOptions,
) -> anyhow::Result<LinkFigures> {
    let scratch = tempfile::tempdir()?;
    let worker = ready(
        host_binary,
        &harness::worker_args(sim, &scratch.path().join("state")),
        &harness::quiet_env(),
    )
    .await?;
    let config = harness::driver_config(sim, 120_000);
    let base = |extra: Value| harness::call_params(&config, "bench", "bench-link", extra);
    let lease = worker
        .request(
            "environmentAcquireLease",
            base(json!({ "runId": "bench-link" })),
        )
        .await?;
    let exec_true = async || execute_true(&worker, &base, &lease).await;
    exec_true().await?; // opens the shared connection
    let (host, port, vm_name) = lease_destination(&lease)?;
    let raw = RawSsh::new(sim, scratch.path(), &host, &port.to_string());
    raw.start_master().await?;
    let cwd = lease["metadata"]["remoteCwd"]
        .as_str()
        .context("lease metadata without remoteCwd")?
        .to_string();
    let wrapper = true_wrapper(Some(&cwd));
    let in_vm = async || {
        let code = sim.run_in_vm(&vm_name, &wrapper).await?;
        ensure!(code == Some(0), "the wrapper alone exited with {code:?}");
        Ok(())
    };

    let mut serial = Samples::default();
    for _ in 0..opts.serial.min(15) {
        serial.time("ours", &exec_true).await?;
        serial
            .time("master", async || raw.run(true, "true").await)
            .await?;
    }
    let mut concurrent = Vec::new();
    for n in [8, 32] {
        let mut rounds = Samples::default();
        for _ in 0..opts.rounds.clamp(1, 5) {
            rounds
                .time("ours", async || round_of(n, &exec_true).await)
                .await?;
            rounds
                .time("master", async || {
                    round_of(n, async || raw.run(true, "true").await).await
                })
                .await?;
            rounds
                .time("remote alone", async || round_of(n, &in_vm).await)
                .await?;
        }
        concurrent.push(Concurrent {
            n,
            ours: median(rounds.take("ours")),
            ssh_master: median(rounds.take("master")),
            remote_alone: median(rounds.take("remote alone")),
        });
    }
    let big = twenty_mib_command();
    let big_params = base(json!({"lease": &lease, "command": "sh", "args": ["-c", &big]}));
    let mut bulk = Samples::default();
    for _ in 0..2 {
        bulk.time("ours", async || {
            execute_twenty_mib(&worker, big_params.clone()).await
        })
        .await?;
        bulk.time("master", async || raw.run(true, &big).await)
            .await?;
    }
    let bridge = bridge_rows(
        opts.bridge,
        host_binary,
        &cwd,
        &worker,
        &base,
        &lease,
        &raw,
        sim,
        &vm_name,
        opts.link.rtt,
        &scratch.path().join("state"),
    )
    .await?;
    raw.stop_master().await?;
    destroy(&worker, &base, &lease).await?;
    worker.shutdown().await?;
    let mut serial_ours = serial.take("ours");
    Ok(LinkFigures {
        rtt: opts.link.rtt,
        serial_median: median(serial_ours.clone()),
        serial_p90: percentile(&mut serial_ours, 0.9),
        concurrent,
        bridge,
        ssh_master: median(serial.take("master")),
        stdout_20mib: median(bulk.take("ours")),
        ssh_master_20mib: median(bulk.take("master")),
    })
}

/// The remote command line our execute of `true` runs (the seed's login-shell wrapper:
/// profile sourcing, cd, export, exec; the VM agent receives it in its request and runs it with
/// `sh -c`, so it is built here by the guest's own function), for the baselines that replay
/// the same remote work.
fn true_wrapper(cwd: Option<&str>) -> String {
    paperclip_exe_dev::remote::sh_c(&paperclip_exe_dev::remote::durable_exec_script(
        "00000000000000b1",
        cwd,
        &[],
        "true",
        &[],
    ))
}

/// The bridge workload through the worker, the system `ssh` over a master, and the floor
/// model, in two interleaved passes of half the calls each (so drift weighs on all three).
#[allow(clippy::too_many_arguments)]
async fn bridge_rows(
    w: crate::bench_bridge::Workload,
    agent_program: &Path,
    cwd: &str,
    worker: &WorkerClient,
    base: &impl Fn(Value) -> Value,
    lease: &Value,
    raw: &RawSsh,
    sim: &Simulator,
    vm: &str,
    rtt: Duration,
    worker_state: &Path,
) -> anyhow::Result<BridgeFigures> {
    use crate::bench_bridge::{run, run_duplex, Via, Workload};
    let mut f = BridgeFigures::default();
    if w.calls == 0 {
        return Ok(f);
    }
    let ours = Via::Ours {
        worker,
        params: base,
        lease,
    };
    let floor_cpu_ns = std::sync::atomic::AtomicU64::new(0);
    let floor = Via::Floor {
        sim,
        vm,
        rtt,
        cpu_ns: &floor_cpu_ns,
    };
    let halves = [w.calls / 2, w.calls - w.calls / 2];
    for calls in halves.into_iter().filter(|&c| c > 0) {
        let part = Workload { calls, ..w };
        let sessions = || sim.ssh_log().iter().filter(|c| c.vm == vm).count();
        // The worker and its ssh master name its state directory on their command lines.
        let host_side = || exe_dev_sim::cpu::of_command_lines(&worker_state.display().to_string());
        let (cpu, host, before) = (vm_cpu(sim, vm)?, host_side(), sessions());
        f.ours.add(run(&ours, cwd, agent_program, part).await?);
        f.ours_sessions += sessions() - before;
        f.ours_cpu += vm_cpu(sim, vm)?.since(&cpu);
        f.ours_host_cpu += host_side().since(&host);
        // The worker's `log` notifications of the run are not needed.
        drop(worker.take_notifications());
        raw.check_master().await?;
        f.raw
            .add(run(&Via::Raw(raw), cwd, agent_program, part).await?);
        raw.check_master().await?;
        f.floor.add(run(&floor, cwd, agent_program, part).await?);
        drop(worker.take_notifications());
        f.duplex
            .add(run_duplex(worker, lease, agent_program, part).await?);
    }
    f.floor_cpu = Duration::from_nanos(floor_cpu_ns.into_inner());
    Ok(f)
}

fn vm_cpu(sim: &Simulator, vm: &str) -> anyhow::Result<exe_dev_sim::CpuTime> {
    sim.vm_cpu(vm).with_context(|| format!("no VM {vm}"))
}

/// One round: `n` concurrent runs of `f`.
async fn round_of<T>(n: usize, f: impl AsyncFn() -> anyhow::Result<T>) -> anyhow::Result<()> {
    for r in harness::join_all((0..n).map(|_| f())).await {
        r?;
    }
    Ok(())
}

/// Execute literally `true` in `lease`: the command with no arguments, as Paperclip would send
/// it.
async fn execute_true(
    worker: &WorkerClient,
    base: &impl Fn(Value) -> Value,
    lease: &Value,
) -> anyhow::Result<()> {
    let r = worker
        .request(
            "environmentExecute",
            base(json!({"lease": lease, "command": "true"})),
        )
        .await?;
    ensure!(r["exitCode"] == 0, "execute true: {r}");
    Ok(())
}

/// `sshHost`, `sshPort` and the VM name of a lease, as the baselines need them.
fn lease_destination(lease: &Value) -> anyhow::Result<(String, u64, String)> {
    let host = lease["metadata"]["sshHost"]
        .as_str()
        .or(lease["metadata"]["sshDest"].as_str())
        .context("lease metadata without sshHost")?
        .to_string();
    let port = lease["metadata"]["sshPort"].as_u64().unwrap_or(22);
    let vm_name = lease["providerLeaseId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((host, port, vm_name))
}

/// A remote command printing exactly 20 MiB.
fn twenty_mib_command() -> String {
    format!("head -c {TWENTY_MIB} /dev/zero | tr '\\0' a")
}

/// Execute the 20 MiB command and check every byte came back.
async fn execute_twenty_mib(worker: &WorkerClient, params: Value) -> anyhow::Result<()> {
    let r = worker.request("environmentExecute", params).await?;
    let len = r["stdout"].as_str().map(str::len);
    ensure!(
        len == Some(TWENTY_MIB),
        "20 MiB stdout came back with {len:?} bytes"
    );
    Ok(())
}

struct Figures {
    ready_cold: Duration,
    ready_warm: Duration,
    serial_median: Duration,
    serial_p90: Duration,
    round_median: Duration,
    acquire: Duration,
    stdout_20mib: Duration,
    ssh_fresh: Duration,
    ssh_master: Duration,
    ssh_fresh_round: Duration,
    ssh_master_20mib: Duration,
    ssh_master_wrapper: Duration,
    ssh_master_round: Duration,
    ssh_master_wrapper_round: Duration,
    remote_alone: Duration,
    remote_alone_round: Duration,
    capability_alone: Duration,
    bridge: BridgeFigures,
}

async fn measure(
    host_binary: &Path,
    sim: &Simulator,
    opts: BenchOptions,
) -> anyhow::Result<Figures> {
    let scratch = tempfile::tempdir()?;
    let quiet = harness::quiet_env();
    let args = |dir: &str| harness::worker_args(sim, &scratch.path().join(dir));

    // Worker ready: spawn → initialize answered. Cold = empty state dir (compiles the
    // component); warm = the compiled artifact is cached.
    let mut i = 0;
    let cold = timed_serial(3, async || {
        i += 1;
        ready(host_binary, &args(&format!("cold-{i}")), &quiet)
            .await?
            .shutdown()
            .await
    })
    .await?;
    let warm = timed_serial(10, async || {
        ready(host_binary, &args("cold-1"), &quiet)
            .await?
            .shutdown()
            .await
    })
    .await?;
    let worker = ready(host_binary, &args("cold-1"), &quiet).await?;

    let config = harness::driver_config(sim, 60_000);
    let base = |extra: Value| harness::call_params(&config, "bench", "bench-env", extra);
    let exec_on = |lease: &Value, script: &str| {
        base(json!({"lease": lease, "command": "sh", "args": ["-c", script]}))
    };

    // Acquire: create + readiness + one SSH round trip. Three leases; the first is used below.
    let mut leases = Vec::new();
    let acquires = timed_serial(3, async || {
        let run_id = format!("bench-run-{}", leases.len());
        let lease = worker
            .request("environmentAcquireLease", base(json!({ "runId": run_id })))
            .await?;
        leases.push(lease);
        Ok(())
    })
    .await?;
    let lease = leases[0].clone();
    let exec_true = async || execute_true(&worker, &base, &lease).await;
    exec_true().await?; // the first call opens the shared connection

    // The baselines reach the same VM the same way, with the system ssh client.
    let (host, port, vm_name) = lease_destination(&lease)?;
    // The baselines replay the remote command line our execute of `true` runs: same work.
    let cwd = lease["metadata"]["remoteCwd"].as_str();
    let wrapper = true_wrapper(cwd);
    let raw = RawSsh::new(sim, scratch.path(), &host, &port.to_string());
    raw.start_master().await?;
    // The same remote work with no SSH at all, started the way the VM's SSH server starts a
    // command. The simulated VMs share this machine's cores, so this is also where concurrent
    // executes queue.
    let in_vm = async || {
        let code = sim.run_in_vm(&vm_name, &wrapper).await?;
        ensure!(code == Some(0), "the wrapper alone exited with {code:?}");
        Ok(())
    };
    // Our SSH capability alone (no worker, no component) sending the same command over its
    // shared connection: splits our overhead into transport and worker + component.
    let capability = capability_runner(sim, &scratch.path().join("capability"))?;
    let cap_request = SshRequest {
        target: SshTarget {
            host: host.clone(),
            port: u16::try_from(port).context("sshPort")?,
            user: lease["metadata"]["sshUser"].as_str().map(str::to_string),
            identity: Identity::KeyMaterial(sim.client_key_pem()),
            host_key_policy: HostKeyPolicy::AcceptNew,
        },
        command: wrapper.clone(),
        stdin: None,
        timeout_ms: 60_000,
        max_output_bytes: 1 << 20,
        stream_output: false,
        durable: false,
    };
    let via_capability = async || {
        let out = capability.exec(cap_request.clone(), None).await?;
        ensure!(out.exit_code == Some(0), "capability run: {out:?}");
        Ok(())
    };
    via_capability().await?; // starts its shared connection

    // Samples are interleaved (one of each per iteration), so drift in this machine's speed
    // during the run weighs on every column alike.
    let mut serial = Samples::default();
    for i in 0..opts.serial {
        serial.time("ours", &exec_true).await?;
        serial
            .time("master", async || raw.run(true, "true").await)
            .await?;
        serial
            .time("master wrapper", async || raw.run(true, &wrapper).await)
            .await?;
        serial.time("remote alone", &in_vm).await?;
        serial.time("capability", &via_capability).await?;
        if i < opts.fresh {
            serial
                .time("fresh", async || raw.run(false, "true").await)
                .await?;
        }
    }
    let mut rounds = Samples::default();
    for i in 0..opts.rounds {
        rounds
            .time("ours", async || round(&exec_true).await)
            .await?;
        rounds
            .time("master", async || {
                round(async || raw.run(true, "true").await).await
            })
            .await?;
        rounds
            .time("master wrapper", async || {
                round(async || raw.run(true, &wrapper).await).await
            })
            .await?;
        rounds
            .time("remote alone", async || round(&in_vm).await)
            .await?;
        if i < 3 {
            rounds
                .time("fresh", async || {
                    round(async || raw.run(false, "true").await).await
                })
                .await?;
        }
    }
    let big = twenty_mib_command();
    let mut bulk = Samples::default();
    for _ in 0..3 {
        bulk.time("ours", async || {
            execute_twenty_mib(&worker, exec_on(&lease, &big)).await
        })
        .await?;
        bulk.time("master", async || raw.run(true, &big).await)
            .await?;
    }
    let bridge = bridge_rows(
        opts.bridge,
        host_binary,
        cwd.context("lease metadata without remoteCwd")?,
        &worker,
        &base,
        &lease,
        &raw,
        sim,
        &vm_name,
        Duration::ZERO,
        &scratch.path().join("cold-1"),
    )
    .await?;
    capability.close_all().await;
    raw.stop_master().await?;
    for l in &leases {
        destroy(&worker, &base, l).await?;
    }
    worker.shutdown().await?;

    let mut serial_ours = serial.take("ours");
    Ok(Figures {
        ready_cold: median(cold),
        ready_warm: median(warm),
        serial_median: median(serial_ours.clone()),
        serial_p90: percentile(&mut serial_ours, 0.9),
        round_median: median(rounds.take("ours")),
        acquire: median(acquires),
        stdout_20mib: median(bulk.take("ours")),
        ssh_fresh: median(serial.take("fresh")),
        ssh_master: median(serial.take("master")),
        ssh_fresh_round: median(rounds.take("fresh")),
        ssh_master_20mib: median(bulk.take("master")),
        ssh_master_wrapper: median(serial.take("master wrapper")),
        ssh_master_round: median(rounds.take("master")),
        ssh_master_wrapper_round: median(rounds.take("master wrapper")),
        remote_alone: median(serial.take("remote alone")),
        remote_alone_round: median(rounds.take("remote alone")),
        capability_alone: median(serial.take("capability")),
        bridge,
    })
}

/// Wall times by series name.
#[derive(Default)]
struct Samples(std::collections::HashMap<&'static str, Vec<Duration>>);

impl Samples {
    /// Time one run of `f` into series `name`.
    async fn time<T>(
        &mut self,
        name: &'static str,
        f: impl AsyncFnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        f().await?;
        self.0.entry(name).or_default().push(t.elapsed());
        // Let the sample's teardown (client exits, session close, reaping) finish before the
        // next one starts, so no sample pays for its predecessor.
        tokio::time::sleep(SETTLE).await;
        Ok(())
    }

    fn take(&mut self, name: &str) -> Vec<Duration> {
        self.0.remove(name).unwrap_or_default()
    }
}

/// One round: 8 concurrent runs of `f`.
async fn round<T>(f: impl AsyncFn() -> anyhow::Result<T>) -> anyhow::Result<()> {
    round_of(8, f).await
}

async fn destroy(
    worker: &WorkerClient,
    base: &impl Fn(Value) -> Value,
    lease: &Value,
) -> anyhow::Result<()> {
    let params =
        json!({"providerLeaseId": lease["providerLeaseId"], "leaseMetadata": lease["metadata"]});
    worker
        .request("environmentDestroyLease", base(params))
        .await?;
    Ok(())
}

/// Wall time of each of `n` runs of `f`, one after another.
async fn timed_serial<T>(
    n: usize,
    mut f: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed());
    }
    Ok(times)
}

async fn ready(
    host_binary: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<WorkerClient> {
    let w = WorkerClient::spawn(host_binary, args, env).await?;
    let init = w
        .request(
            "initialize",
            json!({"manifest": {}, "config": {}, "apiVersion": 1}),
        )
        .await?;
    ensure!(init["ok"] == true, "initialize: {init}");
    Ok(w)
}

/// An [`SshRunner`] as the worker builds one for the simulator (its config, its host policy).
fn capability_runner(sim: &Simulator, state_dir: &Path) -> anyhow::Result<SshRunner> {
    let manifest: Value = serde_json::from_str(paperclip_wasm_host::EMBEDDED_MANIFEST)?;
    let policy = Policy::from_manifest(&manifest, &[sim.api_authority()], &[])?;
    let mut settings = SshSettings::new(state_dir);
    settings.ssh_config = Some(sim.ssh_config_path());
    SshRunner::new(settings, Arc::new(policy))
}

/// The baseline: the system OpenSSH client run by hand, as a script would.
pub(crate) struct RawSsh {
    common: Vec<String>,
    control: PathBuf,
    host: String,
}

impl RawSsh {
    fn new(sim: &Simulator, scratch: &Path, host: &str, port: &str) -> Self {
        let common = vec![
            "-F".into(),
            sim.ssh_config_path().display().to_string(),
            "-T".into(),
            "-i".into(),
            sim.client_key_path().display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "StrictHostKeyChecking=accept-new".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                scratch.join("baseline_known_hosts").display()
            ),
            "-p".into(),
            port.into(),
        ];
        Self {
            common,
            control: scratch.join("baseline-master.sock"),
            host: host.to_string(),
        }
    }

    /// `ssh … host <remote>` over the master, for a pipeline the caller wires up.
    fn command(&self, remote: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(&self.common)
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .arg(&self.host)
            .arg(remote);
        cmd
    }

    async fn run(&self, via_master: bool, command: &str) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(&self.common);
        if via_master {
            cmd.arg("-o")
                .arg(format!("ControlPath={}", self.control.display()));
        }
        cmd.arg(&self.host).arg(command);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().await?;
        ensure!(
            out.status.success(),
            "baseline ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `ssh … host <remote>` over the master with `stdin` fed to it (else `/dev/null`): its
    /// output, whatever the exit status.
    pub(crate) async fn output(
        &self,
        remote: &str,
        stdin: Option<&[u8]>,
    ) -> anyhow::Result<std::process::Output> {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = self.command(remote);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(mut pipe), Some(data)) = (child.stdin.take(), stdin) {
            pipe.write_all(data).await?;
        }
        Ok(child.wait_with_output().await?)
    }

    async fn start_master(&self) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("ssh")
            .args(&self.common)
            .args([
                "-o",
                "ControlMaster=yes",
                "-o",
                // Until `stop_master`: a timed persist ended the master while the other paths
                // ran (an idle minute between two halves of a long bridge series), and the
                // baseline's clients silently fell back to fresh connections.
                "ControlPersist=yes",
                "-f",
                "-N",
            ])
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .arg(&self.host)
            .stdin(Stdio::null())
            .status()
            .await?;
        ensure!(
            status.success(),
            "starting the baseline master connection failed"
        );
        Ok(())
    }

    /// `ssh -O <op>` to the master: its exit status.
    async fn control_op(&self, op: &str) -> std::io::Result<std::process::ExitStatus> {
        tokio::process::Command::new("ssh")
            .args(&self.common)
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .args(["-O", op])
            .arg(&self.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
    }

    /// Fail unless the master still runs: a client whose master is gone makes a fresh
    /// connection instead, without a word, and the baseline would no longer be one.
    async fn check_master(&self) -> anyhow::Result<()> {
        let status = self.control_op("check").await?;
        ensure!(
            status.success(),
            "the baseline's master connection is gone: its figures would be fresh connections'"
        );
        Ok(())
    }

    /// Stop the master, and fail if it had already gone: every baseline figure taken since
    /// `start_master` was meant to go over it.
    async fn stop_master(&self) -> anyhow::Result<()> {
        let alive = self.check_master().await;
        let _ = self.control_op("exit").await;
        alive
    }
}

fn print_link_table(f: &LinkFigures, link: &LinkModel) {
    println!("Over the simulator's link model ({}):", link.describe());
    println!();
    println!("| measure | ours | baseline (same run, same link) | ratio |");
    println!("|---|---|---|---|");
    for (measure, ours, base) in [
        (
            "execute `true`, serial median",
            f.serial_median,
            f.ssh_master,
        ),
        ("20 MiB stdout", f.stdout_20mib, f.ssh_master_20mib),
    ] {
        println!(
            "| {measure} | {} | ssh over master {} | {:.2}× |",
            ms(ours),
            ms(base),
            ratio(ours, base)
        );
    }
    println!(
        "| execute `true`, serial p90 | {} | — | — |",
        ms(f.serial_p90)
    );
    for c in &f.concurrent {
        // What a round cannot go below: one round trip, plus the remote work of n at once.
        let floor = f.rtt + c.remote_alone;
        println!(
            "| {n} concurrent executes, round median | {} | {n} × ssh over master {} | {:.2}× |",
            ms(c.ours),
            ms(c.ssh_master),
            ratio(c.ours, c.ssh_master),
            n = c.n
        );
        println!(
            "| {n} concurrent executes, round median | {} | floor: 1 round trip + remote work alone, {n} at once {} (remote {}) | {:.2}× |",
            ms(c.ours),
            ms(floor),
            ms(c.remote_alone),
            ratio(c.ours, floor),
            n = c.n
        );
    }
}

/// The bridge rows: API-call latency (as timed in the VM) and executes per second, three ways
/// over `queue_v1`, and the same calls over a duplex channel.
fn print_bridge_table(links: &[(String, Duration, &BridgeFigures)]) {
    println!(
        "Agent bridge (`queue_v1`: listing every 100 ms while idle, 4 executes per API call, \
         run-log tail every 250 ms; `http2_v1`'s transport: one duplex channel), API-call \
         latency as the agent in the VM times it:"
    );
    println!();
    println!(
        "| link | path | calls | median | p90 | mean | executes/s | median vs raw ssh | \
         median vs floor | mean vs raw ssh | answer ready: median | mean | mean vs raw ssh |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let stats = |v: &[Duration]| {
        let mut v = v.to_vec();
        (median(v.clone()), percentile(&mut v, 0.9), mean(&v))
    };
    for (link, _, f) in links {
        let (raw_median, _, raw_mean) = stats(&f.raw.latencies);
        let floor_median = stats(&f.floor.latencies).0;
        let raw_ready = stats(&f.raw.ready).2;
        for (name, r) in [
            ("ours (worker), queue_v1", &f.ours),
            ("raw ssh over master, queue_v1", &f.raw),
            ("floor (1 round trip + remote work per execute)", &f.floor),
            ("ours (worker), duplex channel", &f.duplex),
        ] {
            let (m, p90, mean) = stats(&r.latencies);
            // A duplex channel runs no executes: its calls travel the one open channel.
            let (rate, ready) = if std::ptr::eq(r, &f.duplex) {
                ("— (one channel)".to_string(), "— | — | —".to_string())
            } else {
                let (rm, _, rmean) = stats(&r.ready);
                (
                    format!("{:.1}", r.rate()),
                    format!(
                        "{} | {} | {:.2}×",
                        ms(rm),
                        ms(rmean),
                        ratio(rmean, raw_ready)
                    ),
                )
            };
            println!(
                "| {link} | {name} | {} | {} | {} | {} | {rate} | {:.2}× | {:.2}× | {:.2}× | \
                 {ready} |",
                r.latencies.len(),
                ms(m),
                ms(p90),
                ms(mean),
                ratio(m, raw_median),
                ratio(m, floor_median),
                ratio(mean, raw_mean),
            );
        }
    }
    println!();
    println!(
        "The VM's CPU during the `queue_v1` workload (user + system, as the kernel accounted \
         it to the VM's processes):"
    );
    println!();
    println!(
        "| link | executes | ours: serving agent | ours: the commands it ran | ours: total, \
         per execute | ours: serving agent, per execute | floor (same commands, no SSH, no \
         agent), per execute | ours, share of one core | SSH sessions besides the agent | \
         host side (worker and its ssh master), per execute |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (link, _, f) in links {
        let per = |d: Duration, n: usize| ms(d / (n.max(1) as u32));
        println!(
            "| {link} | {} | {} | {} | {} | {} | {} | {:.1} % | {} | {} |",
            f.ours.executes,
            ms(f.ours_cpu.own),
            ms(f.ours_cpu.children),
            per(f.ours_cpu.total(), f.ours.executes),
            per(f.ours_cpu.own, f.ours.executes),
            per(f.floor_cpu, f.floor.executes),
            100.0 * ratio(f.ours_cpu.total(), f.ours.wall),
            f.ours_sessions,
            per(f.ours_host_cpu.total(), f.ours.executes),
        );
    }
    println!();
    println!(
        "Each `queue_v1` execute by step, median as the host side timed it (what ours adds to \
         the floor is the worker, the component, both SSH ends and the agent):"
    );
    println!();
    println!(
        "| link | step | executes (ours) | ours | raw ssh over master | floor | ours − floor |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (link, _, f) in links {
        for (step, ours) in &f.ours.steps.0 {
            let of = |r: &crate::bench_bridge::BridgeRun| step_median(r, step);
            let (o, floor) = (median(ours.clone()), of(&f.floor));
            println!(
                "| {link} | {step} | {} | {} | {} | {} | {:+.1} ms |",
                ours.len(),
                ms(o),
                ms(of(&f.raw)),
                ms(floor),
                (o.as_secs_f64() - floor.as_secs_f64()) * 1e3,
            );
        }
    }
    println!();
    print_bridge_model(links);
    println!();
    for (link, rtt, f) in links {
        let duplex = stats(&f.duplex.latencies).0;
        let trips = if rtt.is_zero() {
            "no added round trip".to_string()
        } else {
            format!(
                "{:.2} round trips of the link (target ≤ 1.50)",
                ratio(duplex, *rtt)
            )
        };
        println!(
            "{link}: a duplex API call takes {} = {trips}, {:.1}× faster than ours over queue_v1 \
             (target ≥ 5×).",
            ms(duplex),
            ratio(stats(&f.ours.latencies).0, duplex)
        );
    }
}

/// The poll mechanics' model of `queue_v1` (`bridge_model`) beside what each path measured, and
/// what it says of the ≤ 0.6× target: the least mean any provider reaches at one round trip
/// per execute, and the execute time the target leaves.
fn print_bridge_model(links: &[(String, Duration, &BridgeFigures)]) {
    use crate::bench_bridge::POLL;
    use crate::bridge_model::{longest_execute_within, mean_latency, mean_ready, StepTimes};
    let steps_of = |r: &crate::bench_bridge::BridgeRun| StepTimes {
        list: step_median(r, "list"),
        wc: step_median(r, "wc"),
        head: step_median(r, "head"),
    };
    println!(
        "The `queue_v1` poll mechanics as a model (a listing every `list` + 100 ms while idle; \
         an answer lands `list` + `wc` + `head` after the listing's command saw the request; \
         the gateway sees it at its next 100 ms look), from each path's median step times:"
    );
    println!();
    println!(
        "| link | path | list / wc / head | model: mean latency | measured mean | measured / \
         model | model: answer ready, mean | measured |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (link, _, f) in links {
        for (name, r) in [
            ("ours (worker)", &f.ours),
            ("raw ssh over master", &f.raw),
            ("floor", &f.floor),
        ] {
            let s = steps_of(r);
            let (model, measured) = (mean_latency(s, POLL), mean(&r.latencies));
            println!(
                "| {link} | {name} | {} / {} / {} | {} | {} | {:.2}× | {} | {} |",
                ms(s.list),
                ms(s.wc),
                ms(s.head),
                ms(model),
                ms(measured),
                ratio(measured, model),
                ms(mean_ready(s, POLL)),
                ms(mean(&r.ready)),
            );
        }
    }
    println!();
    for (link, rtt, f) in links {
        let raw = mean(&f.raw.latencies);
        let bound = mean_latency(StepTimes::all(*rtt), POLL);
        let target = raw.mul_f64(0.6);
        let floor_list = steps_of(&f.floor).list;
        let leaves = match longest_execute_within(target, POLL) {
            Some(e) if e >= *rtt => format!(
                "every execute within {} (the round trip + {})",
                ms(e),
                ms(e - *rtt)
            ),
            Some(e) => format!("every execute within {}, under the round trip", ms(e)),
            None => "an answer before the gateway's first look: unreachable".to_string(),
        };
        println!(
            "{link}: one round trip per execute and nothing else (no command, no login shell, no \
             provider) gives a mean of {} by the model = {:.2}× the raw client's measured mean \
             {}; ≤ 0.6× of it ({}) needs {leaves}; the floor's listing takes {} (the round trip \
             + {} of remote work).",
            ms(bound),
            ratio(bound, raw),
            ms(raw),
            ms(target),
            ms(floor_list),
            ms(floor_list.saturating_sub(*rtt)),
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    percentile(&mut v, 0.5)
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / (v.len().max(1) as u32)
}

/// The median execute time of one step of a bridge run (zero when the run had none).
fn step_median(r: &crate::bench_bridge::BridgeRun, step: &str) -> Duration {
    r.steps.0.get(step).cloned().map(median).unwrap_or_default()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn print_table(f: &Figures, wasm_size: usize) {
    let row = |measure: &str, ours: String, baseline: String, ratio: String, target: &str| {
        println!("| {measure} | {ours} | {baseline} | {ratio} | {target} |");
    };
    let times = |a: Duration, b: Duration| format!("{:.2}×", ratio(a, b));
    let faster = |slow: Duration, fast: Duration| format!("{:.1}× faster", ratio(slow, fast));
    let none = || "—".to_string();
    println!("| measure | ours | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    row(
        "worker ready, cold (compile)",
        ms(f.ready_cold),
        none(),
        none(),
        "—",
    );
    row(
        "worker ready, warm (cached)",
        ms(f.ready_warm),
        none(),
        none(),
        "≤ 50 ms",
    );
    let serial = "execute `true`, serial median";
    row(
        serial,
        ms(f.serial_median),
        format!("ssh over master {}", ms(f.ssh_master)),
        times(f.serial_median, f.ssh_master),
        "≤ 1.5×",
    );
    row(
        serial,
        ms(f.serial_median),
        format!(
            "ssh over master, same remote wrapper {}",
            ms(f.ssh_master_wrapper)
        ),
        times(f.serial_median, f.ssh_master_wrapper),
        "—",
    );
    row(
        serial,
        ms(f.serial_median),
        format!("fresh ssh {}", ms(f.ssh_fresh)),
        faster(f.ssh_fresh, f.serial_median),
        "≥ 10×",
    );
    row(
        "execute `true`, serial p90",
        ms(f.serial_p90),
        none(),
        none(),
        "—",
    );
    let round = "8 concurrent executes, round median";
    row(
        round,
        ms(f.round_median),
        format!("our serial median {}", ms(f.serial_median)),
        times(f.round_median, f.serial_median),
        "≤ 2×",
    );
    row(
        "8 concurrent, raw baseline",
        format!("8 × ssh over master {}", ms(f.ssh_master_round)),
        format!("ssh over master {}", ms(f.ssh_master)),
        times(f.ssh_master_round, f.ssh_master),
        "—",
    );
    row(
        round,
        ms(f.round_median),
        format!(
            "8 × ssh over master, same remote wrapper {}",
            ms(f.ssh_master_wrapper_round)
        ),
        times(f.round_median, f.ssh_master_wrapper_round),
        "—",
    );
    row(
        "remote work alone (the wrapper, no SSH), serial median",
        ms(f.remote_alone),
        none(),
        none(),
        "—",
    );
    row(
        "our SSH capability alone (no worker), same remote wrapper, serial median",
        ms(f.capability_alone),
        format!("remote work alone {}", ms(f.remote_alone)),
        times(f.capability_alone, f.remote_alone),
        "—",
    );
    row(
        "remote work alone, 8 concurrent, round median",
        ms(f.remote_alone_round),
        format!("remote work alone, serial {}", ms(f.remote_alone)),
        times(f.remote_alone_round, f.remote_alone),
        "—",
    );
    row(
        round,
        ms(f.round_median),
        format!(
            "remote work alone, 8 concurrent {}",
            ms(f.remote_alone_round)
        ),
        times(f.round_median, f.remote_alone_round),
        "—",
    );
    row(
        "8 concurrent, vs 8 fresh ssh",
        ms(f.round_median),
        format!("8 fresh ssh {}", ms(f.ssh_fresh_round)),
        faster(f.ssh_fresh_round, f.round_median),
        "—",
    );
    row(
        "acquire (create + ready + 1 SSH round trip)",
        ms(f.acquire),
        none(),
        none(),
        "—",
    );
    row(
        "20 MiB stdout",
        ms(f.stdout_20mib),
        format!("ssh over master {}", ms(f.ssh_master_20mib)),
        times(f.stdout_20mib, f.ssh_master_20mib),
        "—",
    );
    row(
        "component size (release)",
        format!("{} KB", wasm_size / 1000),
        none(),
        none(),
        "≤ 700 KB",
    );
}
