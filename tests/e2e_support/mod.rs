//! Shared harness of the end-to-end tests: the real worker binary (with the component embedded)
//! over stdio, the exe.dev simulator over real HTTP, and the system OpenSSH client.
//!
//! Every test builds an [`Env`] and ends with [`Env::finish`], which fails the test if any VM is
//! left on the simulator, then shuts the worker down (it must exit 0) and stops the simulator.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exe_dev_sim::{LinkModel, SimOptions, Simulator};
use paperclip_test_support::client::WorkerClient;
use paperclip_test_support::harness;
use serde_json::{json, Value};

/// The worker binary under test (built by cargo for this test target).
pub fn worker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_paperclip-wasm-host"))
}

/// A setup script that finishes at once (the default one would try to install Node).
pub const QUICK_SETUP: &str = "#!/bin/sh\necho setup-ran > \"$HOME/.setup-ran\"\n";

/// How to start an [`Env`].
pub struct EnvOptions {
    /// Simulator options (token, allowed commands, …).
    pub sim: SimOptions,
    /// `config.timeoutMs`.
    pub timeout_ms: u64,
    /// Extra keys merged into the driver config.
    pub config_extra: Value,
    /// Capture the worker's stderr into this file instead of inheriting it.
    pub stderr_file: Option<PathBuf>,
    /// Extra environment of the worker process (e.g. `TMPDIR`).
    pub worker_env: Vec<(String, String)>,
    /// The worker's log filter (`PAPERCLIP_WASM_HOST_LOG`); `None` leaves the worker's default.
    pub log_filter: Option<String>,
    /// Extra `worker` command-line arguments (e.g. `--no-ssh-connection-reuse`).
    pub worker_args: Vec<String>,
}

impl EnvOptions {
    /// Defaults, with the simulator's SSH path behind `link` (`None`: plain loopback).
    pub fn over(link: Option<LinkModel>) -> Self {
        let mut opts = EnvOptions::default();
        opts.sim.link = link;
        opts
    }
}

/// The links the byte-moving suites run over: loopback, and two real-world links (added round
/// trip, bandwidth cap) from the simulator's link model.
pub const LINK_30MS_100MBIT: Option<LinkModel> = Some(LinkModel {
    rtt: Duration::from_millis(30),
    bits_per_sec: Some(100_000_000),
});
pub const LINK_60MS_50MBIT: Option<LinkModel> = Some(LinkModel {
    rtt: Duration::from_millis(60),
    bits_per_sec: Some(50_000_000),
});

/// How many times the repeated byte-exactness checks run (`E2E_REPEAT`, default `default`):
/// an intermittent loss must show up, so the closing runs of an issue raise it.
pub fn repeats(default: usize) -> usize {
    std::env::var("E2E_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            sim: SimOptions::default(),
            timeout_ms: 60_000,
            config_extra: json!({}),
            stderr_file: None,
            worker_env: Vec::new(),
            log_filter: Some("warn".to_string()),
            worker_args: Vec::new(),
        }
    }
}

/// A simulator plus one worker process talking to it.
pub struct Env {
    pub sim: Simulator,
    worker: Option<WorkerClient>,
    /// The worker's `--state-dir` (known_hosts, compiled-component cache).
    pub state: tempfile::TempDir,
    /// The driver config every call carries (secrets as plaintext, as at runtime).
    pub config: Value,
    pub environment_id: String,
    pub company_id: String,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(EnvOptions::default()).await
    }

    pub async fn start_with(opts: EnvOptions) -> Env {
        let sim = Simulator::start(opts.sim).await.expect("simulator starts");
        let state = tempfile::tempdir().expect("state dir");
        let mut args = harness::worker_args(&sim, state.path());
        args.extend(opts.worker_args);
        let mut env: Vec<(String, String)> = opts
            .log_filter
            .map(|f| ("PAPERCLIP_WASM_HOST_LOG".to_string(), f))
            .into_iter()
            .collect();
        env.extend(opts.worker_env);
        let worker = initialized_worker(&args, &env, opts.stderr_file.as_deref()).await;
        let mut config = json!({
            "apiKey": sim.token(),
            "apiUrl": sim.api_url(),
            "sshPrivateKey": sim.client_key_pem(),
            "timeoutMs": opts.timeout_ms,
            "setupScript": QUICK_SETUP,
        });
        merge(&mut config, &opts.config_extra);
        Env {
            sim,
            worker: Some(worker),
            state,
            config,
            environment_id: "e2e-env-0001".to_string(),
            company_id: "e2e-company".to_string(),
        }
    }

    pub fn worker(&self) -> &WorkerClient {
        self.worker.as_ref().expect("worker running")
    }

    /// SIGKILL the worker (no shutdown, nothing flushed: a crash) and wait until it is gone.
    pub async fn kill_worker(&mut self) {
        let worker = self.worker.take().expect("worker running");
        if let Some(pid) = worker.pid() {
            // SAFETY: plain kill(2) of the child this harness spawned.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        drop(worker);
    }

    /// An orderly `shutdown` of the worker (as Paperclip stops it); returns its exit code.
    pub async fn stop_worker(&mut self) -> i32 {
        let worker = self.worker.take().expect("worker running");
        worker.shutdown().await.expect("worker shutdown")
    }

    /// Start a new worker on the same simulator and state directory, with `env` (e.g.
    /// `EXE_API_KEY`) in its environment.
    pub async fn start_worker(&mut self, env: &[(String, String)]) {
        assert!(self.worker.is_none(), "a worker is running");
        let args = harness::worker_args(&self.sim, self.state.path());
        let mut all = vec![("PAPERCLIP_WASM_HOST_LOG".to_string(), "warn".to_string())];
        all.extend(env.iter().cloned());
        self.worker = Some(initialized_worker(&args, &all, None).await);
    }

    /// The base params of a runtime call plus `extra`.
    pub fn params(&self, extra: Value) -> Value {
        self.params_with_config(&self.config, extra)
    }

    /// Like [`Env::params`] with another config.
    pub fn params_with_config(&self, config: &Value, extra: Value) -> Value {
        let mut p = json!({
            "driverKey": "exe-dev",
            "companyId": self.company_id,
            "environmentId": self.environment_id,
            "config": config,
            "paperclipInvocation": {"id": format!("inv-{}", unique())},
        });
        merge(&mut p, &extra);
        p
    }

    /// The config with `extra` merged in.
    pub fn config_with(&self, extra: Value) -> Value {
        let mut c = self.config.clone();
        merge(&mut c, &extra);
        c
    }

    /// Full response envelope of one call.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.worker()
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e:#}"))
    }

    /// `result` of one call; panics on a JSON-RPC error.
    pub async fn ok(&self, method: &str, params: Value) -> Value {
        let resp = self.call(method, params).await;
        assert!(resp.get("error").is_none(), "{method} failed: {resp}");
        resp["result"].clone()
    }

    /// The `error` object of one call; panics when it succeeded.
    pub async fn err(&self, method: &str, params: Value) -> Value {
        let resp = self.call(method, params).await;
        assert!(
            resp.get("error").is_some(),
            "{method} was expected to fail: {resp}"
        );
        resp["error"].clone()
    }

    /// Acquire a lease for `run_id`; returns the lease (`{providerLeaseId, metadata, expiresAt}`).
    pub async fn acquire(&self, run_id: &str) -> Value {
        let lease = self
            .ok(
                "environmentAcquireLease",
                self.params(json!({"runId": run_id})),
            )
            .await;
        assert!(
            lease["providerLeaseId"].is_string(),
            "acquire gave no lease id: {lease}"
        );
        lease
    }

    /// Execute `command args…` in the lease; `extra` adds `cwd`, `env`, `stdin`, `timeoutMs`.
    pub fn exec_params(&self, lease: &Value, command: &str, args: &[&str], extra: Value) -> Value {
        self.params(json!({
            "lease": lease,
            "command": command,
            "args": args,
        }))
        .merged(extra)
    }

    /// Execute and return the result (panics on an RPC error).
    pub async fn exec(&self, lease: &Value, command: &str, args: &[&str], extra: Value) -> Value {
        self.ok(
            "environmentExecute",
            self.exec_params(lease, command, args, extra),
        )
        .await
    }

    /// `sh -c <script>` in the lease; returns the result.
    pub async fn sh(&self, lease: &Value, script: &str) -> Value {
        self.exec(lease, "sh", &["-c", script], json!({})).await
    }

    /// SIGKILL the worker's pooled SSH master connections (the `ssh: <state>/cm/… [mux]`
    /// processes), as an idle timeout or a network drop would end them; returns how many.
    pub fn kill_ssh_masters(&self) -> usize {
        let pids = self.ssh_masters();
        for pid in &pids {
            // SAFETY: plain kill(2) of a process found above.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        pids.len()
    }

    /// The worker's pooled SSH master connections alive now (`ssh: <state>/cm/… [mux]`).
    pub fn ssh_masters(&self) -> Vec<i32> {
        let needle = self.state.path().join("cm").display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains(&needle) && c.contains("[mux]")
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Destroy a lease; returns the receipt.
    pub async fn destroy(&self, lease: &Value) -> Value {
        self.ok(
            "environmentDestroyLease",
            self.params(json!({
                "providerLeaseId": lease["providerLeaseId"],
                "leaseMetadata": lease["metadata"],
            })),
        )
        .await
    }

    /// Release a lease (with the env's config); returns the receipt (or null).
    pub async fn release(&self, lease: &Value) -> Value {
        self.ok(
            "environmentReleaseLease",
            self.params(json!({
                "providerLeaseId": lease["providerLeaseId"],
                "leaseMetadata": lease["metadata"],
            })),
        )
        .await
    }

    /// Notifications received so far (drained).
    pub fn take_notifications(&self) -> Vec<Value> {
        self.worker().take_notifications()
    }

    /// The API calls the simulator saw for command `cmd`, as `(status, body)`.
    pub fn api_calls(&self, cmd: &str) -> Vec<(u16, String)> {
        self.sim
            .api_log()
            .into_iter()
            .filter(|c| c.command == cmd)
            .map(|c| (c.status, c.body))
            .collect()
    }

    /// The leak check, then an orderly shutdown: no VM may be left, the worker must exit 0,
    /// and nothing it printed on stdout may be a non-protocol line.
    pub async fn finish(mut self) {
        let left = self.sim.vm_names();
        let worker = self.worker.take().expect("worker running");
        let notes = worker.take_notifications();
        let stray: Vec<&Value> = notes
            .iter()
            .filter(|n| n.get("nonProtocolLine").is_some())
            .collect();
        assert!(stray.is_empty(), "non-protocol stdout lines: {stray:?}");
        let code = worker.shutdown().await.expect("worker shutdown");
        self.sim.shutdown().await;
        assert!(left.is_empty(), "VMs leaked: {left:?}");
        assert_eq!(code, 0, "worker exit code");
    }
}

/// The worker binary spawned with `args` and `env` (stderr into `stderr_file`, else inherited),
/// after a successful `initialize`.
async fn initialized_worker(
    args: &[String],
    env: &[(String, String)],
    stderr_file: Option<&Path>,
) -> WorkerClient {
    let worker = WorkerClient::spawn_with_stderr(&worker_binary(), args, env, stderr_file)
        .await
        .expect("worker spawns");
    let init = worker
        .request(
            "initialize",
            json!({"manifest": {}, "config": {}, "apiVersion": 1}),
        )
        .await
        .expect("initialize");
    assert_eq!(init["ok"], true, "initialize: {init}");
    worker
}

/// Merge the keys of object `extra` into object `into`.
pub fn merge(into: &mut Value, extra: &Value) {
    if let (Some(into), Some(extra)) = (into.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            into.insert(k.clone(), v.clone());
        }
    }
}

pub trait Merged {
    fn merged(self, extra: Value) -> Value;
}

impl Merged for Value {
    fn merged(mut self, extra: Value) -> Value {
        merge(&mut self, &extra);
        self
    }
}

/// A process-unique suffix.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh run id (Paperclip sends a UUID-like string).
pub fn run_id(tag: &str) -> String {
    format!("run-{tag}-{}", unique())
}

/// The `execute.log` chunks of one invocation, concatenated per stream.
pub fn live_output(notes: &[Value], invocation: &str) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    for n in notes {
        if n["method"] == "execute.log" && n["paperclipInvocationId"] == invocation {
            let chunk = n["params"]["chunk"].as_str().expect("chunk is a string");
            match n["params"]["stream"].as_str() {
                Some("stdout") => out.push_str(chunk),
                Some("stderr") => err.push_str(chunk),
                other => panic!("bad stream {other:?} in {n}"),
            }
        }
    }
    (out, err)
}

/// The `log` notifications of one invocation.
pub fn logs_of<'n>(notes: &'n [Value], invocation: &str) -> Vec<&'n Value> {
    notes
        .iter()
        .filter(|n| n["method"] == "log" && n["paperclipInvocationId"] == invocation)
        .collect()
}

/// Poll `f` until it returns true or `within` passes; returns the last answer.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Local processes (the simulator's VMs run on this machine) whose environment holds
/// `PAPERCLIP_EXEC_ID=<exec_id>`.
pub fn processes_with_exec_id(exec_id: &str) -> Vec<u32> {
    processes_with_env(&format!("PAPERCLIP_EXEC_ID={exec_id}"))
}

/// Local processes whose environment holds the entry `marker` (`NAME=value`) exactly.
pub fn processes_with_env(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        env.split(|b| *b == 0)
            .any(|v| v == marker.as_bytes())
            .then_some(pid)
    })
    .collect()
}

/// Every file (not directory) below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_below(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out
}

/// Everything below `dir`, files and directories.
pub fn entries_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(entries_below(&p));
        }
    }
    out
}

/// Run the operator command `orphans` with `extra` flags against the env's simulator and state
/// directory; returns its JSON output.
pub async fn orphans_command(env: &Env, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, env.config.to_string()).unwrap();
    let out = tokio::process::Command::new(worker_binary())
        .arg("orphans")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(env.state.path())
        .arg("--allow-http")
        .arg(env.sim.api_authority())
        .arg("--ssh-config")
        .arg(env.sim.ssh_config_path())
        .args(extra)
        .env_remove("EXE_API_KEY")
        .env("PAPERCLIP_WASM_HOST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "orphans failed: {stderr}");
    assert!(!stderr.contains(env.sim.token()), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}
