//! A JSON-RPC client for a worker process: spawns `paperclip-wasm-host worker` (or
//! `paperclip-dev worker`, the same entry point) exactly as Paperclip does (pipes, scrubbed
//! environment) and sends concurrent requests. Used by the demo, the benchmark and the
//! end-to-end tests.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Mutex as AsyncMutex};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running worker and the notifications it has sent so far.
pub struct WorkerClient {
    child: Child,
    stdin: AsyncMutex<ChildStdin>,
    pending: Pending,
    notifications: Arc<Mutex<Vec<Value>>>,
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
        let notifications: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (p, n) = (pending.clone(), notifications.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    // stdout must carry protocol lines only; make a violation visible.
                    n.lock().unwrap().push(json!({ "nonProtocolLine": line }));
                    continue;
                };
                match msg.get("id").and_then(Value::as_u64) {
                    Some(id) if msg.get("method").is_none() => {
                        if let Some(tx) = p.lock().unwrap().remove(&id) {
                            let _ = tx.send(msg);
                        }
                    }
                    _ => n.lock().unwrap().push(msg),
                }
            }
            // EOF: wake every caller still waiting.
            p.lock().unwrap().clear();
        });
        Ok(Self {
            child,
            stdin: AsyncMutex::new(stdin),
            pending,
            notifications,
            next_id: AtomicU64::new(1),
        })
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

    /// Notifications received so far (drained).
    pub fn take_notifications(&self) -> Vec<Value> {
        std::mem::take(&mut *self.notifications.lock().unwrap())
    }

    /// Send `shutdown`, then wait for the process; returns its exit code.
    pub async fn shutdown(mut self) -> anyhow::Result<i32> {
        self.request("shutdown", json!({})).await?;
        let status = self.child.wait().await?;
        Ok(status.code().unwrap_or(-1))
    }
}
