//! Shared helpers for the worker's integration tests: the real worker binary, the real
//! component, and the test-fixture component (the components come from
//! `paperclip-test-support`).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub use paperclip_test_support::components::{fixture_wasm, product_wasm};
use serde_json::{json, Value};

/// The worker binary under test.
pub fn host_binary() -> &'static str {
    env!("CARGO_BIN_EXE_paperclip-wasm-host")
}

/// A running worker process speaking JSON-RPC over pipes.
pub struct Worker {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub state_dir: tempfile::TempDir,
}

impl Worker {
    /// Spawn `paperclip-wasm-host worker` with `args` and a private state dir.
    pub fn spawn(args: &[&str]) -> Worker {
        Self::spawn_with_env(args, &[])
    }

    /// Like `spawn`, with extra environment variables (the environment is otherwise cleared,
    /// as Paperclip does).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Worker {
        let state_dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(host_binary());
        cmd.arg("worker")
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning the worker");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Worker {
            child,
            stdin,
            stdout,
            state_dir,
        }
    }

    /// Write one raw line.
    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Write one raw line of bytes (which need not be UTF-8).
    pub fn send_bytes(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Send a request.
    pub fn send(&mut self, id: u64, method: &str, params: Value) {
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(&msg.to_string());
    }

    /// Read the next stdout line as JSON (panics on EOF or non-JSON: stdout must carry
    /// protocol lines only).
    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "worker closed stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("non-JSON stdout line {line:?}: {e}"))
    }

    /// Read lines until the response with `id`, returning it and the notifications before it.
    pub fn response(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let msg = self.recv();
            assert_eq!(msg["jsonrpc"], "2.0", "{msg}");
            if msg.get("id") == Some(&json!(id)) {
                return (msg, notes);
            }
            notes.push(msg);
        }
    }

    /// Send a request and wait for its response.
    pub fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(id, method, params);
        self.response(id).0
    }

    /// Close stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Read everything left on stdout (after EOF/shutdown) as JSON lines.
    pub fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap() > 0 {
            out.push(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("non-JSON stdout line {line:?}: {e}")),
            );
            line.clear();
        }
        out
    }

    /// Wait for exit and return the exit code.
    pub fn wait(mut self) -> i32 {
        self.close_stdin();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

/// `initialize` params as Paperclip sends them.
pub fn initialize_params() -> Value {
    json!({
        "manifest": {"id": "paperclip.exe-dev-sandbox-provider"},
        "config": {},
        "instanceInfo": {"instanceId": "test", "hostVersion": "2026.916.1"},
        "apiVersion": 1,
        "databaseNamespace": null
    })
}
