//! `paperclip-wasm-host bench`: performance against the simulator, each figure beside a
//! baseline measured in the same run (a plain `ssh` per command, and `ssh` over an established
//! master connection), reported as ratios. Timings vary between machines; ratios in one run
//! are what to compare.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};

use crate::client::WorkerClient;
use crate::sim::{SimOptions, Simulator};

/// Iteration counts; small enough for a 2-core machine to finish in well under a minute.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Serial executes (and master-connection baseline commands).
    pub serial: usize,
    /// Rounds of 8 concurrent executes.
    pub rounds: usize,
    /// Fresh-connection `ssh` baseline commands.
    pub fresh: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            serial: 40,
            rounds: 10,
            fresh: 10,
        }
    }
}

const TWENTY_MIB: usize = 20 << 20;

/// Run the benchmark and print the table. `wasm_size` is the shipped component's size.
pub async fn run(host_binary: &Path, wasm_size: usize, opts: BenchOptions) -> anyhow::Result<()> {
    let sim = Simulator::start(SimOptions::default()).await?;
    let result = measure(host_binary, &sim, wasm_size, opts).await;
    let left = sim.vm_names();
    sim.shutdown().await;
    let rows = result?;
    ensure!(left.is_empty(), "VMs left behind: {left:?}");
    print_table(&rows, wasm_size);
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
}

async fn measure(
    host_binary: &Path,
    sim: &Simulator,
    _wasm_size: usize,
    opts: BenchOptions,
) -> anyhow::Result<Figures> {
    let scratch = tempfile::tempdir()?;
    let args = |state: &Path| {
        vec![
            "--state-dir".to_string(),
            state.display().to_string(),
            "--allow-http".to_string(),
            sim.api_authority(),
            "--ssh-config".to_string(),
            sim.ssh_config_path().display().to_string(),
        ]
    };
    let quiet = [("PAPERCLIP_WASM_HOST_LOG".to_string(), "warn".to_string())];

    // Worker ready: spawn → initialize answered. Cold = empty state dir (compiles the
    // component); warm = the compiled artifact is cached.
    let mut cold = Vec::new();
    for i in 0..3 {
        let state = scratch.path().join(format!("cold-{i}"));
        let (d, w) = ready(host_binary, &args(&state), &quiet).await?;
        cold.push(d);
        w.shutdown().await?;
    }
    let warm_state = scratch.path().join("cold-0");
    let mut warm = Vec::new();
    for _ in 0..10 {
        let (d, w) = ready(host_binary, &args(&warm_state), &quiet).await?;
        warm.push(d);
        w.shutdown().await?;
    }
    let (_, worker) = ready(host_binary, &args(&warm_state), &quiet).await?;

    let config = json!({
        "apiKey": sim.token(),
        "apiUrl": sim.api_url(),
        "sshPrivateKey": sim.client_key_pem(),
        "timeoutMs": 60000,
    });
    let base = |extra: Value| {
        let mut p = json!({"driverKey": "exe-dev", "companyId": "bench", "environmentId": "bench-env", "config": config});
        if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(extra.clone());
        }
        p
    };

    // Acquire: create + readiness + one SSH round trip. Three leases; the first is used below.
    let mut acquires = Vec::new();
    let mut leases = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let lease = worker
            .request(
                "environmentAcquireLease",
                base(json!({"runId": format!("bench-run-{i}")})),
            )
            .await?;
        acquires.push(t.elapsed());
        leases.push(lease);
    }
    let lease = leases[0].clone();
    let exec =
        |script: &str| base(json!({"lease": lease, "command": "sh", "args": ["-c", script]}));

    // Warm up the connection, then serial `true`.
    worker.request("environmentExecute", exec("true")).await?;
    let mut serial = Vec::new();
    for _ in 0..opts.serial {
        let t = Instant::now();
        let r = worker.request("environmentExecute", exec("true")).await?;
        serial.push(t.elapsed());
        ensure!(r["exitCode"] == 0, "execute true: {r}");
    }

    let mut rounds = Vec::new();
    for _ in 0..opts.rounds {
        let t = Instant::now();
        let calls = (0..8).map(|_| worker.request("environmentExecute", exec("true")));
        for r in futures_join_all(calls).await {
            ensure!(r?["exitCode"] == 0, "concurrent execute failed");
        }
        rounds.push(t.elapsed());
    }

    let big = format!("head -c {TWENTY_MIB} /dev/zero | tr '\\0' a");
    let mut big_runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = worker.request("environmentExecute", exec(&big)).await?;
        big_runs.push(t.elapsed());
        ensure!(
            r["stdout"].as_str().map(str::len) == Some(TWENTY_MIB),
            "20 MiB stdout came back with {:?} bytes",
            r["stdout"].as_str().map(str::len)
        );
    }

    for l in &leases {
        worker
            .request(
                "environmentDestroyLease",
                base(json!({"providerLeaseId": l["providerLeaseId"], "leaseMetadata": l["metadata"]})),
            )
            .await?;
    }

    // Baselines: the same VM kind, reached the same way, with the system ssh client.
    let vm = worker
        .request(
            "environmentAcquireLease",
            base(json!({"runId": "bench-baseline"})),
        )
        .await?;
    let host = vm["metadata"]["sshHost"]
        .as_str()
        .or(vm["metadata"]["sshDest"].as_str())
        .context("lease metadata without sshHost")?
        .to_string();
    let port = vm["metadata"]["sshPort"].as_u64().unwrap_or(22).to_string();
    let vm_name = vm["providerLeaseId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    worker
        .request(
            "environmentExecute",
            base(json!({"lease": vm, "command": "sh", "args": ["-c", "true"]})),
        )
        .await?;
    let raw = RawSsh::new(sim, scratch.path(), &host, &port);
    let mut fresh = Vec::new();
    for _ in 0..opts.fresh {
        fresh.push(raw.run(false, "true").await?);
    }
    let mut fresh_rounds = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let calls = (0..8).map(|_| raw.run(false, "true"));
        for r in futures_join_all(calls).await {
            r?;
        }
        fresh_rounds.push(t.elapsed());
    }
    raw.start_master().await?;
    let mut master = Vec::new();
    for _ in 0..opts.serial {
        master.push(raw.run(true, "true").await?);
    }
    // The exact remote command our execute of `true` sent (the seed's login-shell wrapper:
    // profile sourcing, cd, exec env …), replayed over the master: same remote work, raw client.
    let wrapper = sim
        .ssh_log()
        .into_iter()
        .rev()
        .filter(|c| c.vm == vm_name)
        .filter_map(|c| c.command)
        .find(|c| c.contains("PAPERCLIP_EXEC_ID") && c.contains("'true'"))
        .context("the simulator logged no execute of `true`")?;
    let mut master_wrapper = Vec::new();
    for _ in 0..opts.serial {
        master_wrapper.push(raw.run(true, &wrapper).await?);
    }
    let mut master_rounds = Vec::new();
    for _ in 0..opts.rounds {
        let t = Instant::now();
        let calls = (0..8).map(|_| raw.run(true, "true"));
        for r in futures_join_all(calls).await {
            r?;
        }
        master_rounds.push(t.elapsed());
    }
    let mut master_wrapper_rounds = Vec::new();
    for _ in 0..opts.rounds {
        let t = Instant::now();
        let calls = (0..8).map(|_| raw.run(true, &wrapper));
        for r in futures_join_all(calls).await {
            r?;
        }
        master_wrapper_rounds.push(t.elapsed());
    }
    let mut master_big = Vec::new();
    for _ in 0..3 {
        master_big.push(raw.run(true, &big).await?);
    }
    raw.stop_master().await;
    worker
        .request(
            "environmentDestroyLease",
            base(
                json!({"providerLeaseId": vm["providerLeaseId"], "leaseMetadata": vm["metadata"]}),
            ),
        )
        .await?;
    worker.shutdown().await?;

    Ok(Figures {
        ready_cold: median(&mut cold),
        ready_warm: median(&mut warm),
        serial_median: median(&mut serial.clone()),
        serial_p90: percentile(&mut serial, 0.9),
        round_median: median(&mut rounds),
        acquire: median(&mut acquires),
        stdout_20mib: median(&mut big_runs),
        ssh_fresh: median(&mut fresh),
        ssh_master: median(&mut master),
        ssh_fresh_round: median(&mut fresh_rounds),
        ssh_master_20mib: median(&mut master_big),
        ssh_master_wrapper: median(&mut master_wrapper),
        ssh_master_round: median(&mut master_rounds),
        ssh_master_wrapper_round: median(&mut master_wrapper_rounds),
    })
}

async fn ready(
    host_binary: &Path,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<(Duration, WorkerClient)> {
    let t = Instant::now();
    let w = WorkerClient::spawn(host_binary, args, env).await?;
    let init = w
        .request(
            "initialize",
            json!({"manifest": {}, "config": {}, "apiVersion": 1}),
        )
        .await?;
    ensure!(init["ok"] == true, "initialize: {init}");
    Ok((t.elapsed(), w))
}

/// Await all futures concurrently (no extra dependency for one helper).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    join_vec(futs.map(Box::pin).collect()).await
}

async fn join_vec<F: std::future::Future>(futs: Vec<std::pin::Pin<Box<F>>>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        outs[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// The baseline: the system OpenSSH client run by hand, as a script would.
struct RawSsh {
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

    async fn run(&self, via_master: bool, command: &str) -> anyhow::Result<Duration> {
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
        let t = Instant::now();
        let out = cmd.output().await?;
        let d = t.elapsed();
        ensure!(
            out.status.success(),
            "baseline ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(d)
    }

    async fn start_master(&self) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("ssh")
            .args(&self.common)
            .args([
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=60",
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

    async fn stop_master(&self) {
        let _ = tokio::process::Command::new("ssh")
            .args(&self.common)
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .args(["-O", "exit"])
            .arg(&self.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

fn median(v: &mut [Duration]) -> Duration {
    percentile(v, 0.5)
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
    println!("| measure | ours | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| worker ready, cold (compile) | {} | — | — | — |",
        ms(f.ready_cold)
    );
    println!(
        "| worker ready, warm (cached) | {} | — | — | ≤ 50 ms |",
        ms(f.ready_warm)
    );
    println!(
        "| execute `true`, serial median | {} | ssh over master {} | {:.2}× | ≤ 1.5× |",
        ms(f.serial_median),
        ms(f.ssh_master),
        ratio(f.serial_median, f.ssh_master)
    );
    println!(
        "| execute `true`, serial median | {} | ssh over master, same remote wrapper {} | {:.2}× | — |",
        ms(f.serial_median),
        ms(f.ssh_master_wrapper),
        ratio(f.serial_median, f.ssh_master_wrapper)
    );
    println!(
        "| execute `true`, serial median | {} | fresh ssh {} | {:.1}× faster | ≥ 10× |",
        ms(f.serial_median),
        ms(f.ssh_fresh),
        ratio(f.ssh_fresh, f.serial_median)
    );
    println!(
        "| execute `true`, serial p90 | {} | — | — | — |",
        ms(f.serial_p90)
    );
    println!(
        "| 8 concurrent executes, round median | {} | our serial median {} | {:.2}× | ≤ 2× |",
        ms(f.round_median),
        ms(f.serial_median),
        ratio(f.round_median, f.serial_median)
    );
    println!(
        "| 8 concurrent, raw baseline | 8 × ssh over master {} | ssh over master {} | {:.2}× | — |",
        ms(f.ssh_master_round),
        ms(f.ssh_master),
        ratio(f.ssh_master_round, f.ssh_master)
    );
    println!(
        "| 8 concurrent executes, round median | {} | 8 × ssh over master, same remote wrapper {} | {:.2}× | — |",
        ms(f.round_median),
        ms(f.ssh_master_wrapper_round),
        ratio(f.round_median, f.ssh_master_wrapper_round)
    );
    println!(
        "| 8 concurrent, vs 8 fresh ssh | {} | 8 fresh ssh {} | {:.1}× faster | — |",
        ms(f.round_median),
        ms(f.ssh_fresh_round),
        ratio(f.ssh_fresh_round, f.round_median)
    );
    println!(
        "| acquire (create + ready + 1 SSH round trip) | {} | — | — | — |",
        ms(f.acquire)
    );
    println!(
        "| 20 MiB stdout | {} | ssh over master {} | {:.2}× | — |",
        ms(f.stdout_20mib),
        ms(f.ssh_master_20mib),
        ratio(f.stdout_20mib, f.ssh_master_20mib)
    );
    println!(
        "| component size (release) | {} KB | — | — | ≤ 400 KB |",
        wasm_size / 1000
    );
}
