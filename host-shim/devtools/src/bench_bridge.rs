//! The agent-bridge workload of `cargo bench-host`: Paperclip's `queue_v1` callback bridge
//! (`../shared/reference/paperclip-interactive.md` §B.5), emulated against the simulator.
//!
//! In the VM an "agent" (this binary's hidden `bridge-agent` command, started as the run's one
//! long execute) makes API calls as the bridge's gateway turns them into files: it writes
//! `requests/<id>.json` (atomically, by rename), then looks for `responses/<id>.json` every
//! 100 ms, and times each answer. On the host side the bench plays Paperclip's poll loop: one
//! listing execute, and while it finds nothing, another 100 ms later; for each request found,
//! `wc -c` (its size), `head -c N | base64` (its body), the response written through stdin
//! (renamed into place under a `mkdir` lock) and `rm`; beside it, the run-log tail
//! (`tail -c +N | head -c 65536 | base64`) every 250 ms. Every bridge execute is `sh -c
//! <script>` in the lease's `remoteCwd` with `PAPERCLIP_SANDBOX_EXEC_CHANNEL=bridge`, timeout
//! the adapter's 4 h (the tail's 15 s), as the reference says.
//!
//! The same workload runs three ways in the same run: through the worker (ours), through the
//! system `ssh` over a ControlMaster (the baseline: each step `cd <cwd> && sh -c <script>`),
//! and through a model of the protocol's own cost (the floor): each execute costs one round
//! trip of the link, then our exact remote command runs in the VM with no SSH at all.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};

use exe_dev_sim::Simulator;
use paperclip_test_support::client::WorkerClient;

/// Where Paperclip keeps the bridge's queue, relative to the lease's `remoteCwd`
/// (`.paperclip-runtime/<adapterKey>/paperclip-bridge/queue`).
const QUEUE: &str = ".paperclip-runtime/claude_local/paperclip-bridge/queue";
/// The run log the agent command is tee'd into, relative to the queue.
const RUN_LOG: &str = "logs/run-1-stdout.log";
/// How often the gateway looks for a response, and the host lists requests when idle.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// How often the host tails the run log.
const TAIL_EVERY: Duration = Duration::from_millis(250);
/// The adapter run timeout every bridge execute carries (Paperclip's sandbox default).
const BRIDGE_TIMEOUT_MS: u64 = 14_400_000;
/// The log tail's timeout.
const TAIL_TIMEOUT_MS: u64 = 15_000;
/// How long the gateway waits for a response before it answers 504.
const GATEWAY_WAIT: Duration = Duration::from_secs(30);

/// The workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// API calls the agent makes.
    pub calls: usize,
    /// One call every this long (the next waits for the previous answer).
    pub every: Duration,
}

/// How a bridge execute reaches the VM.
pub enum Via<'a> {
    /// `environmentExecute` through the worker, as Paperclip sends it.
    Ours {
        worker: &'a WorkerClient,
        params: &'a dyn Fn(Value) -> Value,
        lease: &'a Value,
    },
    /// The system `ssh` over a ControlMaster.
    Raw(&'a crate::bench::RawSsh),
    /// One round trip, then our remote command in the VM without SSH.
    Floor {
        sim: &'a Simulator,
        vm: &'a str,
        rtt: Duration,
        /// The CPU time the commands spent in the VM, in nanoseconds, added up.
        cpu_ns: &'a std::sync::atomic::AtomicU64,
    },
}

impl Via<'_> {
    /// Run `script` with `sh -c` in `cwd`; its exit code and stdout.
    async fn exec(
        &self,
        cwd: &str,
        script: &str,
        stdin: Option<&str>,
        timeout_ms: u64,
    ) -> anyhow::Result<(i64, String)> {
        match self {
            Via::Ours {
                worker,
                params,
                lease,
            } => {
                let mut p = json!({
                    "lease": lease,
                    "command": "sh",
                    "args": ["-c", script],
                    "cwd": cwd,
                    "env": {"PAPERCLIP_SANDBOX_EXEC_CHANNEL": "bridge"},
                    "timeoutMs": timeout_ms,
                });
                if let Some(stdin) = stdin {
                    p["stdin"] = json!(stdin);
                }
                let r = worker.request("environmentExecute", params(p)).await?;
                let code = r["exitCode"]
                    .as_i64()
                    .with_context(|| format!("no exit code: {r}"))?;
                Ok((code, r["stdout"].as_str().unwrap_or_default().to_string()))
            }
            Via::Raw(raw) => {
                let remote = format!(
                    "cd {} && PAPERCLIP_SANDBOX_EXEC_CHANNEL=bridge sh -c {}",
                    quote(cwd),
                    quote(script)
                );
                let out = raw.output(&remote, stdin.map(str::as_bytes)).await?;
                Ok((
                    out.status.code().map_or(-1, i64::from),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                ))
            }
            Via::Floor {
                sim,
                vm,
                rtt,
                cpu_ns,
            } => {
                // As precise as the link model's own delays (tokio's timer would add up to a
                // millisecond or two).
                exe_dev_sim::sleep_until_precisely(tokio::time::Instant::now() + *rtt).await;
                let command = floor_command(cwd, script);
                let (out, cpu) = sim
                    .run_in_vm_measured(vm, &command, stdin.map_or(&[][..], str::as_bytes))
                    .await?;
                let ns = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
                cpu_ns.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
                Ok((
                    out.status.code().map_or(-1, i64::from),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                ))
            }
        }
    }
}

/// The remote command our execute of `sh -c <script>` runs (the guest's own login wrapper),
/// for the floor.
fn floor_command(cwd: &str, script: &str) -> String {
    paperclip_exe_dev::remote::durable_exec_script(
        "00000000000000b2",
        Some(cwd),
        &[(
            "PAPERCLIP_SANDBOX_EXEC_CHANNEL".to_string(),
            "bridge".to_string(),
        )],
        "sh",
        &["-c".to_string(), script.to_string()],
    )
}

fn quote(s: &str) -> String {
    paperclip_exe_dev::shell::shell_quote(s)
}

/// What one run of the workload gave.
#[derive(Debug, Clone, Default)]
pub struct BridgeRun {
    /// Each API call's latency, as the agent in the VM timed it.
    pub latencies: Vec<Duration>,
    /// Each call's time from the request to its response's arrival in the queue (the file's
    /// modification time), before the gateway's next look: the host side's share of a call,
    /// not rounded up to the gateway's 100 ms polls (file times tick coarser than the clock,
    /// so each is up to a few milliseconds early). Empty for a duplex channel.
    pub ready: Vec<Duration>,
    /// Bridge executes the host side completed (listings, the four per call, log tails).
    pub executes: usize,
    /// Wall time of the workload (the agent's start to its end).
    pub wall: Duration,
    /// Each bridge execute's time as the host side saw it, by step.
    pub steps: Steps,
}

/// Execute times by step of the bridge (`list`, `wc`, `head`, `write`, `rm`, `tail`).
#[derive(Debug, Clone, Default)]
pub struct Steps(pub std::collections::BTreeMap<&'static str, Vec<Duration>>);

impl Steps {
    /// Time `step`'s execute.
    async fn time<T>(&mut self, step: &'static str, f: impl Future<Output = T>) -> T {
        let t = Instant::now();
        let r = f.await;
        self.0.entry(step).or_default().push(t.elapsed());
        r
    }

    fn add(&mut self, other: Steps) {
        for (k, v) in other.0 {
            self.0.entry(k).or_default().extend(v);
        }
    }
}

impl BridgeRun {
    /// Fold another run of the same series in.
    pub fn add(&mut self, other: BridgeRun) {
        self.latencies.extend(other.latencies);
        self.ready.extend(other.ready);
        self.executes += other.executes;
        self.wall += other.wall;
        self.steps.add(other.steps);
    }

    /// Executes per second sustained.
    pub fn rate(&self) -> f64 {
        self.executes as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Run the workload once through `via`: the agent's own execute (through the same path) and
/// the host's poll loop and log tail beside it, until the agent is done.
pub async fn run(
    via: &Via<'_>,
    cwd: &str,
    agent_program: &Path,
    w: Workload,
) -> anyhow::Result<BridgeRun> {
    let setup = format!(
        "rm -rf {q} && mkdir -p {q}/requests {q}/responses {q}/logs && : > {q}/{RUN_LOG}",
        q = QUEUE
    );
    let (code, _) = via.exec(cwd, &setup, None, BRIDGE_TIMEOUT_MS).await?;
    ensure!(code == 0, "setting up the queue failed ({code})");
    let agent = format!(
        "exec {} bridge-agent --queue {} --calls {} --every-ms {} >> {}/{RUN_LOG} 2>&1",
        quote(&agent_program.display().to_string()),
        QUEUE,
        w.calls,
        w.every.as_millis(),
        QUEUE,
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let agent_run = async {
        let r = via.exec(cwd, &agent, None, BRIDGE_TIMEOUT_MS).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    };
    let is_done = || done.load(std::sync::atomic::Ordering::SeqCst);
    let (agent_result, polled, tailed) = tokio::join!(
        agent_run,
        poll_loop(via, cwd, &is_done),
        tail_loop(via, cwd, &is_done)
    );
    let wall = started.elapsed();
    let (code, _) = agent_result?;
    ensure!(code == 0, "the bridge agent exited with {code}");
    let ((poll_executes, answered, mut steps), (tails, _, tail_steps)) = (polled?, tailed?);
    steps.add(tail_steps);
    // The agent's report is in the run log (its output goes there, as Paperclip tees it).
    let (code, log) = via
        .exec(
            cwd,
            &format!("cat {QUEUE}/{RUN_LOG}"),
            None,
            TAIL_TIMEOUT_MS,
        )
        .await?;
    ensure!(code == 0, "reading the run log failed ({code})");
    let reported = |key: &str| -> Vec<Duration> {
        log.lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter_map(|n| n.trim().parse().ok())
            .map(Duration::from_micros)
            .collect()
    };
    let (latencies, ready) = (reported("latency_us "), reported("ready_us "));
    ensure!(
        latencies.len() == w.calls && ready.len() == w.calls && answered == w.calls,
        "the agent reported {} of {} calls ({} answered): {log}",
        latencies.len(),
        w.calls,
        answered
    );
    Ok(BridgeRun {
        latencies,
        ready,
        executes: poll_executes + tails,
        wall,
        steps,
    })
}

/// The host's poll loop until the agent is done: (executes, requests answered, their times).
async fn poll_loop(
    via: &Via<'_>,
    cwd: &str,
    done: &impl Fn() -> bool,
) -> anyhow::Result<(usize, usize, Steps)> {
    let list = format!(
        "cd {QUEUE}/requests 2>/dev/null || exit 0; for f in *.json; do [ -e \"$f\" ] || continue; \
         printf '%s\\n' \"${{f%.json}}\"; done"
    );
    let mut executes = 0;
    let mut answered = 0;
    let mut steps = Steps::default();
    while !done() {
        let (code, ids) = steps
            .time("list", via.exec(cwd, &list, None, BRIDGE_TIMEOUT_MS))
            .await?;
        executes += 1;
        ensure!(code == 0, "listing failed ({code})");
        let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
        if ids.is_empty() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        for id in ids {
            let req = format!("{QUEUE}/requests/{id}.json");
            let wc = format!("wc -c < {req}");
            let (code, size) = steps
                .time("wc", via.exec(cwd, &wc, None, BRIDGE_TIMEOUT_MS))
                .await?;
            ensure!(code == 0, "wc failed ({code})");
            let n: usize = size.trim().parse().context("wc -c")?;
            let head = format!("head -c {n} {req} | base64");
            let (code, b64) = steps
                .time("head", via.exec(cwd, &head, None, BRIDGE_TIMEOUT_MS))
                .await?;
            ensure!(code == 0, "read failed ({code})");
            let compact: String = b64.split_whitespace().collect();
            let body = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .context("the request's base64")?;
            ensure!(body.len() == n, "read {} of {n} bytes", body.len());
            let request: Value = serde_json::from_slice(&body).context("the request's JSON")?;
            // What Paperclip's API would answer, here an echo that names the request.
            let response = json!({
                "status": 200,
                "headers": {"content-type": "application/json"},
                "body": json!({"id": request["id"], "echo": request["body"]}).to_string(),
            })
            .to_string();
            let write = format!(
                "cd {QUEUE}/responses && until mkdir .lock 2>/dev/null; do sleep 0.01; done; \
                 cat > .{id}.tmp && mv .{id}.tmp {id}.json; rc=$?; rmdir .lock; exit $rc"
            );
            let (code, _) = steps
                .time(
                    "write",
                    via.exec(cwd, &write, Some(&response), BRIDGE_TIMEOUT_MS),
                )
                .await?;
            ensure!(code == 0, "writing the response failed ({code})");
            let rm = format!("rm -f {req}");
            let (code, _) = steps
                .time("rm", via.exec(cwd, &rm, None, BRIDGE_TIMEOUT_MS))
                .await?;
            ensure!(code == 0, "rm failed ({code})");
            executes += 4;
            answered += 1;
        }
    }
    Ok((executes, answered, steps))
}

/// The run-log tail every 250 ms until the agent is done: (executes, the log as read, their
/// times).
async fn tail_loop(
    via: &Via<'_>,
    cwd: &str,
    done: &impl Fn() -> bool,
) -> anyhow::Result<(usize, String, Steps)> {
    let mut executes = 0;
    let mut steps = Steps::default();
    let mut log = Vec::new();
    let mut next = Instant::now();
    while !done() {
        let script = format!(
            "tail -c +{} {QUEUE}/{RUN_LOG} | head -c 65536 | base64",
            log.len() + 1
        );
        let (code, b64) = steps
            .time("tail", via.exec(cwd, &script, None, TAIL_TIMEOUT_MS))
            .await?;
        executes += 1;
        ensure!(code == 0, "tail failed ({code})");
        let compact: String = b64.split_whitespace().collect();
        log.extend(
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .context("the tail's base64")?,
        );
        next += TAIL_EVERY;
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
    Ok((executes, String::from_utf8_lossy(&log).into_owned(), steps))
}

/// The agent's call `i`, sent on schedule (one every `every` from `start`, each shifted by
/// [`offset`]): its id and its request, a typical call of an agent's with a small JSON body
/// (an issue comment). Both bridge agents make the same calls, so their latencies compare.
fn next_call(start: Instant, every: Duration, i: usize) -> (String, String) {
    let due = start + every * i as u32 + offset(every, i);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let id = format!("req-{}-{i:04}", std::process::id());
    let request = json!({
        "id": id,
        "method": "POST",
        "path": "/api/issues/PAP-1/comments",
        "headers": {"accept": "application/json", "content-type": "application/json"},
        "body": json!({"body": "x".repeat(480)}).to_string(),
    })
    .to_string();
    (id, request)
}

/// How far call `i` falls behind its slot: between 0 and a third of `every`, the same for
/// every path and run. A real agent's calls fall at any point of the host's poll loop; on an
/// exact grid each call would meet the loop at the phase the previous call left it in, so a
/// run's latencies would hang on one accident of timing (a median a whole 100 ms poll apart
/// between two runs of the same build). A third of 600 ms spans more than one cycle of the
/// loop (a listing plus its 100 ms pause), and leaves a previous answer time to arrive.
fn offset(every: Duration, i: usize) -> Duration {
    // splitmix64's output function: a fixed, well-spread sequence without a random source.
    let mut z = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let span = u64::try_from((every / 3).as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_micros(z % span)
}

/// The answer the agent got for call `id` must be that call's echo.
fn check_answer(id: &str, text: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_str(text).context("the answer's JSON")?;
    let inner: Value = serde_json::from_str(v["body"].as_str().unwrap_or_default())?;
    ensure!(inner["id"] == id, "the answer to {id} is {text}");
    Ok(())
}

/// The VM side: the agent and its gateway, as one program. Prints `latency_us N` and
/// `ready_us N` per call on stdout (the run log), fails when an answer takes longer than the
/// gateway waits.
pub fn agent_main(queue: &Path, calls: usize, every: Duration) -> anyhow::Result<()> {
    use std::io::Write as _;
    let requests = queue.join("requests");
    let responses = queue.join("responses");
    let start = Instant::now();
    let stdout = std::io::stdout();
    for i in 0..calls {
        let (id, body) = next_call(start, every, i);
        let tmp = requests.join(format!(".{id}.tmp"));
        std::fs::write(&tmp, &body)?;
        let t0 = Instant::now();
        let sent = std::time::SystemTime::now();
        std::fs::rename(&tmp, requests.join(format!("{id}.json")))?;
        let answer = responses.join(format!("{id}.json"));
        let text = loop {
            match std::fs::read_to_string(&answer) {
                Ok(t) => break t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            ensure!(t0.elapsed() < GATEWAY_WAIT, "no answer to {id} in 30 s");
            std::thread::sleep(POLL);
        };
        let took = t0.elapsed();
        // The response was written just before its rename into place (`cat > tmp && mv`), so
        // its modification time is when it arrived, on this same clock.
        let arrived = std::fs::metadata(&answer)?.modified()?;
        let ready = arrived.duration_since(sent).unwrap_or_default();
        let _ = std::fs::remove_file(&answer);
        check_answer(&id, &text)?;
        let mut out = stdout.lock();
        writeln!(out, "call {i}: answered")?;
        writeln!(out, "latency_us {}", took.as_micros())?;
        writeln!(out, "ready_us {}", ready.as_micros())?;
        out.flush()?;
    }
    Ok(())
}

/// Paperclip's `http2_v1` bridge runs HTTP/2 over one duplex channel's stdin and stdout: an
/// API call is a request the agent writes and a response the host writes back. Emulated here
/// with the same calls as [`run`]: the agent in the VM (`duplex-agent`) writes one JSON line
/// per call on stdout and times the answer line on its stdin; the bench answers each through
/// `duplexChannelWrite` as it arrives. The latencies come back as the channel's last line.
pub async fn run_duplex(
    worker: &WorkerClient,
    lease: &Value,
    agent_program: &Path,
    w: Workload,
) -> anyhow::Result<BridgeRun> {
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    // A route id is never reused (the worker refuses a closed one, as Paperclip never reuses).
    static ROUTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ROUTES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let route = format!("bench-duplex-{}-{n}", std::process::id());
    let opened = worker
        .request(
            "duplexChannelOpen",
            json!({
                "hostRouteId": route,
                "providerLeaseId": lease["providerLeaseId"],
                "command": [
                    agent_program.display().to_string(), "duplex-agent",
                    "--calls", w.calls.to_string(),
                    "--every-ms", w.every.as_millis().to_string(),
                ],
            }),
        )
        .await?;
    let session = opened["workerSessionId"]
        .as_str()
        .context("duplexChannelOpen without workerSessionId")?
        .to_string();
    let started = Instant::now();
    let mut pending: Vec<u8> = Vec::new();
    let mut report = None;
    let mut answered = 0;
    let exit = loop {
        let msg = worker.recv().await?;
        let p = &msg["params"];
        if p["hostRouteId"] != route.as_str() {
            continue;
        }
        match msg["method"].as_str() {
            Some("duplexChannel.data") => {
                pending.extend(B64.decode(p["chunk"].as_str().unwrap_or_default())?);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let v: Value = serde_json::from_slice(&line).context("an agent line")?;
                    if v.get("latencies_us").is_some() {
                        report = Some(v);
                        continue;
                    }
                    let mut answer = json!({
                        "status": 200,
                        "body": json!({"id": v["id"], "echo": v["body"]}).to_string(),
                    })
                    .to_string();
                    answer.push('\n');
                    worker
                        .request(
                            "duplexChannelWrite",
                            json!({"hostRouteId": route, "workerSessionId": session,
                                "data": B64.encode(answer)}),
                        )
                        .await?;
                    answered += 1;
                }
            }
            Some("duplexChannel.exit") => break p.clone(),
            _ => {}
        }
    };
    let wall = started.elapsed();
    worker
        .request("duplexChannelClose", json!({"hostRouteId": route}))
        .await?;
    ensure!(exit["exitCode"] == 0, "the duplex agent ended with {exit}");
    let report = report.context("the duplex agent sent no report")?;
    let latencies: Vec<Duration> = report["latencies_us"]
        .as_array()
        .context("latencies_us")?
        .iter()
        .filter_map(Value::as_u64)
        .map(Duration::from_micros)
        .collect();
    ensure!(
        latencies.len() == w.calls && answered == w.calls,
        "the duplex agent reported {} of {} calls ({answered} answered)",
        latencies.len(),
        w.calls
    );
    Ok(BridgeRun {
        latencies,
        ready: Vec::new(),
        executes: 0,
        wall,
        steps: Steps::default(),
    })
}

/// The VM side of [`run_duplex`]: one request line per call on stdout, the answer line read
/// from stdin and timed; the last line is `{"latencies_us": [...]}`.
pub fn duplex_agent_main(calls: usize, every: Duration) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let start = Instant::now();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut latencies = Vec::with_capacity(calls);
    let mut answer = String::new();
    for i in 0..calls {
        let (id, mut line) = next_call(start, every, i);
        line.push('\n');
        let t0 = Instant::now();
        stdout.write_all(line.as_bytes())?;
        stdout.flush()?;
        answer.clear();
        ensure!(stdin.read_line(&mut answer)? > 0, "stdin ended at call {i}");
        latencies.push(t0.elapsed().as_micros() as u64);
        check_answer(&id, &answer)?;
    }
    writeln!(stdout, "{}", json!({ "latencies_us": latencies }))?;
    stdout.flush()?;
    Ok(())
}
