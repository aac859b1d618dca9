//! A JSON-RPC client for a worker process: spawns `paperclip-wasm-host worker` (or
//! `paperclip-dev worker`, the same entry point) exactly as Paperclip does (pipes, scrubbed
//! environment) and sends concurrent requests, or raw lines of bytes whose answers the caller
//! reads in order. Used by the demo, the benchmark, the end-to-end tests and the worker's
//! protocol tests.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Mutex as AsyncMutex, Notify};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// What the worker wrote that no [`call`](WorkerClient::call) is waiting for, in arrival order:
/// notifications, answers to lines sent with [`send_raw`](WorkerClient::send_raw), and stdout
/// lines that are not JSON (as `{"nonProtocolLine": line}`, so a violation stays visible).
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    changed: Notify,
}

#[derive(Default)]
struct InboxState {
    messages: VecDeque<Value>,
    /// The worker closed its stdout: no message follows those queued.
    closed: bool,
}

/// A running worker and the messages it has sent that no call has claimed.
pub struct WorkerClient {
    child: Child,
    /// `None` once [`close_stdin`](Self::close_stdin) has sent EOF.
    stdin: AsyncMutex<Option<ChildStdin>>,
    pending: Pending,
    inbox: Arc<Inbox>,
    next_id: AtomicU64,
}

impl WorkerClient {
    /// The worker's process id (none once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Spawn `program worker <args>` with only `PATH` and `env` in its environment.
    pub async fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::spawn_with_stderr(program, args, env, None).await
    }

    /// Like [`spawn`](Self::spawn), but the worker's stderr goes to `stderr_file` (created or
    /// truncated) when given, e.g. so a test can inspect everything the worker logged.
    pub async fn spawn_with_stderr(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        stderr_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let stderr = match stderr_file {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(program);
        cmd.arg("worker")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let pending: Pending = Arc::default();
        let inbox: Arc<Inbox> = Arc::default();
        let (p, n) = (pending.clone(), inbox.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let msg = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| json!({ "nonProtocolLine": line }));
                let waiting = match msg.get("id").and_then(Value::as_u64) {
                    Some(id) if msg.get("method").is_none() => p.lock().unwrap().remove(&id),
                    _ => None,
                };
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(msg);
                    }
                    None => {
                        n.state.lock().unwrap().messages.push_back(msg);
                        n.changed.notify_waiters();
                    }
                }
            }
            // EOF: wake every caller still waiting.
            p.lock().unwrap().clear();
            n.state.lock().unwrap().closed = true;
            n.changed.notify_waiters();
        });
        Ok(Self {
            child,
            stdin: AsyncMutex::new(Some(stdin)),
            pending,
            inbox,
            next_id: AtomicU64::new(1),
        })
    }

    /// Write `line` (any bytes, not necessarily JSON or UTF-8) and a newline. Its answer, if any,
    /// arrives through [`recv`](Self::recv); give such lines ids that no concurrent
    /// [`call`](Self::call) uses (calls number their requests 1, 2, 3, … per client).
    pub async fn send_raw(&self, line: &[u8]) -> anyhow::Result<()> {
        let mut stdin = self.stdin.lock().await;
        let stdin = stdin.as_mut().context("the worker's stdin is closed")?;
        stdin.write_all(line).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Close the worker's stdin (EOF), as Paperclip does when it lets a worker go.
    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }

    /// The next message no call is waiting for (see [`send_raw`](Self::send_raw)), waiting for
    /// one. An error once the worker has closed stdout, or for a stdout line that is not JSON
    /// (stdout carries protocol lines only).
    pub async fn recv(&self) -> anyhow::Result<Value> {
        protocol_line(
            self.inbox
                .next()
                .await
                .context("the worker closed stdout")?,
        )
    }

    /// Read messages (see [`recv`](Self::recv)) up to the answer with `id`; returns it and the
    /// messages before it.
    pub async fn response(&self, id: u64) -> anyhow::Result<(Value, Vec<Value>)> {
        let mut before = Vec::new();
        loop {
            let msg = self.recv().await?;
            if msg["jsonrpc"] != "2.0" {
                bail!("not a JSON-RPC 2.0 message: {msg}");
            }
            if msg.get("id") == Some(&json!(id)) {
                return Ok((msg, before));
            }
            before.push(msg);
        }
    }

    /// Every message left once the worker has closed stdout (after EOF or `shutdown`); waits
    /// for it to close.
    pub async fn drain(&self) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        while let Some(msg) = self.inbox.next().await {
            out.push(protocol_line(msg)?);
        }
        Ok(out)
    }

    /// Send a request and wait for its full response envelope (`result` or `error`).
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        {
            let mut stdin = self.stdin.lock().await;
            let stdin = stdin.as_mut().context("the worker's stdin is closed")?;
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
        }
        rx.await
            .with_context(|| format!("the worker exited before answering {method}"))
    }

    /// Like [`call`](Self::call), but returns `result` and turns a JSON-RPC error into `Err`.
    pub async fn request(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let resp = self.call(method, params).await?;
        if let Some(err) = resp.get("error") {
            bail!(
                "{method} failed ({}): {}",
                err["code"],
                err["message"].as_str().unwrap_or_default()
            );
        }
        Ok(resp.get("result").cloned().unwrap_or(Value::Null))
    }

    /// The messages no call has claimed so far (notifications, answers to lines sent with
    /// [`send_raw`](Self::send_raw), non-protocol lines as `{"nonProtocolLine": …}`), drained.
    pub fn take_notifications(&self) -> Vec<Value> {
        self.inbox
            .state
            .lock()
            .unwrap()
            .messages
            .drain(..)
            .collect()
    }

    /// Send `shutdown`, then wait for the process; returns its exit code.
    pub async fn shutdown(mut self) -> anyhow::Result<i32> {
        self.request("shutdown", json!({})).await?;
        let status = self.child.wait().await?;
        Ok(status.code().unwrap_or(-1))
    }

    /// Close stdin, then wait for the process; returns its exit code.
    pub async fn wait(mut self) -> anyhow::Result<i32> {
        self.close_stdin().await;
        let status = self.child.wait().await?;
        Ok(status.code().unwrap_or(-1))
    }
}

impl Inbox {
    /// The next queued message, waiting for one; `None` once stdout is closed and none is left.
    async fn next(&self) -> Option<Value> {
        loop {
            // Registered before the look, so a message or EOF that lands in between still
            // wakes this wait.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                if let Some(msg) = state.messages.pop_front() {
                    return Some(msg);
                }
                if state.closed {
                    return None;
                }
            }
            changed.await;
        }
    }
}

/// `msg`, unless it stands for a stdout line that was not JSON.
fn protocol_line(msg: Value) -> anyhow::Result<Value> {
    match msg.get("nonProtocolLine") {
        Some(line) => bail!("non-JSON stdout line {line}"),
        None => Ok(msg),
    }
}
