//! The one-round-trip path of durable executions: one serving VM agent per master connection
//! (`paperclip-vm-agent serve`, see `paperclip_vm_agent::serve`), started once over a session
//! of its own and kept open, carrying every run's request and frames as tagged messages.
//!
//! An execute then costs what the protocol cannot avoid: its request reaches the VM (half a
//! round trip), the command runs, its frames come back (half a round trip). The per-execute
//! session it replaces cost a channel open and an exec request first (one round trip more,
//! plus the program start of the agent on the VM).
//!
//! A served run is the same run as one in a session of its own (same header, spool and
//! frames), so `ssh_durable` treats both alike: on a lost connection it reconnects and
//! attaches, here through the serving agent of the new connection. This module only moves
//! bytes: it starts the session, sends messages (stdin in bounded chunks, so concurrent runs
//! share the channel fairly), and hands each run its frames.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paperclip_vm_agent::serve::{self as wire, msg, TaggedReader};
use paperclip_vm_agent::{Header, MAX_CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ssh_mux::{self, MuxUnavailable, StdinEnd};

/// A serving agent with no run in flight for this long is closed: it holds a channel of the
/// master connection open, and a master with an open channel never reaches its idle timeout
/// (`ControlPersist`), so an idle VM's connection would otherwise never close.
const IDLE: Duration = Duration::from_secs(30);
/// What is kept of the serving agent's own stderr, for the operator's log.
const STDERR_CAP: usize = 4096;
/// What a session may print before the agent's hello (a login banner) before it is taken for
/// a session in which no agent answers.
const BEFORE_HELLO_CAP: usize = 64 * 1024;

/// Why a session ended before its VM agent's hello: `Some("exit status N: <what it printed>")`
/// when the remote shell exited (it could not start the agent), `None` when no status came
/// (the connection died first).
pub(super) async fn no_agent_status(
    session: openssh_mux_client::EstablishedSession,
    said: tokio::task::JoinHandle<String>,
    before: &[u8],
) -> Option<String> {
    let status = tokio::time::timeout(Duration::from_secs(2), session.wait()).await;
    let said = tokio::time::timeout(Duration::from_secs(1), said)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    match status {
        Ok(Ok(openssh_mux_client::SessionStatus::Exited {
            exit_value: Some(code),
        })) => Some(format!(
            "exit status {code}: {} {}",
            String::from_utf8_lossy(before).trim(),
            said.trim()
        )),
        _ => None,
    }
}

/// Read an agent session's stderr to its end in a task of its own, keeping the first `cap`
/// bytes (for the operator: what the agent or the login shell said).
pub(super) fn keep_stderr(
    mut stderr: pipe::Receiver,
    cap: usize,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = cap.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Why no serving agent could be started.
pub(super) enum StartError {
    /// The session ran, and no agent answered (the shell's exit status and what it said): the
    /// agent is missing or cannot run there.
    AgentMissing(String),
    /// The session did not come up or ended before the agent's hello (why).
    Broken(String),
}

/// A run's frames: `(kind, payload)`.
type Frames = mpsc::UnboundedSender<(u8, Vec<u8>)>;

/// One serving agent on one master connection.
pub(super) struct Server {
    /// Our end of the agent's stdin; `None` once closed.
    writer: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// The runs that wait for frames, by id.
    runs: Mutex<HashMap<u64, Frames>>,
    /// The session ended (or was closed): no new run may use it.
    dead: AtomicBool,
    /// When the last run was sent or finished.
    last_used: Mutex<std::time::Instant>,
}

impl Server {
    /// Start a serving agent with `command` on the master at `control`, waiting (until
    /// `give_up`) for its hello.
    pub(super) async fn start(
        control: &Path,
        command: &str,
        give_up: Instant,
    ) -> Result<Arc<Server>, StartError> {
        let open = ssh_mux::open(control, command, StdinEnd::Pipe, None);
        let session = match tokio::time::timeout_at(give_up, open).await {
            Err(_) => return Err(StartError::Broken("no session in time".into())),
            Ok(Err(MuxUnavailable::NotStarted(why) | MuxUnavailable::Ambiguous(why))) => {
                return Err(StartError::Broken(why))
            }
            Ok(Ok(s)) => s,
        };
        let (session, stdin, stdout, stderr) = session.into_parts();
        let (Some(stdin), Some(mut stdout)) = (stdin, stdout) else {
            return Err(StartError::Broken("the session has no pipes".into()));
        };
        let said = keep_stderr(stderr, STDERR_CAP);
        let hello = wire::hello_frame();
        let mut before = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let rest = loop {
            let n = match tokio::time::timeout_at(give_up, stdout.read(&mut buf)).await {
                Err(_) => {
                    said.abort();
                    return Err(StartError::Broken(
                        "no answer from the VM agent in time".into(),
                    ));
                }
                Ok(Ok(0)) | Ok(Err(_)) => break None,
                Ok(Ok(n)) => n,
            };
            before.extend_from_slice(&buf[..n]);
            if let Some(at) = before.windows(hello.len()).position(|w| w == hello) {
                break Some(before.split_off(at + hello.len()));
            }
            if before.len() > BEFORE_HELLO_CAP {
                said.abort();
                return Err(StartError::AgentMissing(format!(
                    "the session printed {} bytes and no agent answered",
                    before.len()
                )));
            }
        };
        let Some(rest) = rest else {
            // No agent answered. An exit status means the shell ran and could not start it;
            // none means the connection died first.
            return Err(match no_agent_status(session, said, &before).await {
                Some(what) => StartError::AgentMissing(what),
                None => {
                    StartError::Broken("the connection closed before the VM agent answered".into())
                }
            });
        };
        let server = Arc::new(Server {
            writer: tokio::sync::Mutex::new(Some(stdin)),
            runs: Mutex::default(),
            dead: AtomicBool::new(false),
            last_used: Mutex::new(std::time::Instant::now()),
        });
        let reader = server.clone();
        tokio::spawn(async move {
            let why = reader.read_frames(stdout, rest).await;
            reader.end();
            // The session (and its control connection) lives until its stream ended.
            drop(session);
            let said = said.await.unwrap_or_default();
            tracing::debug!(%why, agent_stderr = %said.trim(), "a serving VM agent's session ended");
        });
        let idle = Arc::downgrade(&server);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE / 4).await;
                let Some(server) = idle.upgrade() else { return };
                if server.is_dead() {
                    return;
                }
                let quiet = server.runs.lock().unwrap().is_empty()
                    && server.last_used.lock().unwrap().elapsed() >= IDLE;
                if quiet {
                    // Closing its stdin ends the agent (it has no run left) and the session.
                    server.dead.store(true, Ordering::SeqCst);
                    server.writer.lock().await.take();
                    return;
                }
            }
        });
        Ok(server)
    }

    /// True once the session ended or was closed.
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Hand every frame to its run until the stream ends; returns why it ended.
    async fn read_frames(&self, mut stdout: pipe::Receiver, rest: Vec<u8>) -> String {
        let mut frames = TaggedReader::default();
        frames.push(&rest);
        let mut buf = vec![0u8; MAX_CHUNK + 4096];
        loop {
            loop {
                match frames.next_frame() {
                    Ok(Some((kind, id, payload))) => {
                        // A run the host stopped waiting for (its call ended) is not listed:
                        // its frames are dropped.
                        if let Some(run) = self.runs.lock().unwrap().get(&id) {
                            let _ = run.send((kind, payload));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return format!("the serving VM agent's stream is corrupt: {}", e.0),
                }
            }
            match stdout.read(&mut buf).await {
                Ok(0) => return "end of stream".into(),
                Err(e) => return format!("reading the stream: {e}"),
                Ok(n) => frames.push(&buf[..n]),
            }
        }
    }

    /// The session is over: every waiting run sees its stream end.
    fn end(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.runs.lock().unwrap().clear();
    }

    /// Send one run's request (and its stdin, in chunks); its frames arrive on the returned
    /// stream. Writing goes on in a task of its own, so a large stdin and the run's output
    /// never wait for each other.
    pub(super) fn run(
        self: &Arc<Self>,
        header: &Header,
        script: &[u8],
        stdin: Arc<[u8]>,
    ) -> Result<RunStream, String> {
        if self.is_dead() {
            return Err("the serving VM agent's session ended".into());
        }
        let id = header.id;
        let (tx, rx) = mpsc::unbounded_channel();
        self.runs.lock().unwrap().insert(id, tx);
        *self.last_used.lock().unwrap() = std::time::Instant::now();
        let request = wire::tagged(msg::REQUEST, id, &wire::request(header, script));
        let me = self.clone();
        // Never aborted: a message cut in the middle would corrupt the channel for every run.
        tokio::spawn(async move {
            if let Err(why) = me.send(id, request, &stdin).await {
                // The run cannot go on over this session: its stream ends now.
                tracing::debug!(%why, "writing to the serving VM agent failed");
                me.runs.lock().unwrap().remove(&id);
            }
        });
        Ok(RunStream {
            server: self.clone(),
            id,
            rx,
        })
    }

    /// Write the request, then stdin chunk by chunk, each message whole (the lock is taken per
    /// message, in arrival order, so runs interleave instead of queueing behind a large stdin).
    /// A run whose caller stopped waiting gets no more of its stdin: it never starts, and the
    /// agent forgets it when the session ends.
    async fn send(&self, id: u64, request: Vec<u8>, stdin: &[u8]) -> Result<(), String> {
        self.write(&request).await?;
        for chunk in stdin.chunks(wire::MAX_STDIN_CHUNK) {
            if !self.runs.lock().unwrap().contains_key(&id) {
                return Ok(());
            }
            self.write(&wire::tagged(msg::STDIN, id, chunk)).await?;
        }
        Ok(())
    }

    async fn write(&self, message: &[u8]) -> Result<(), String> {
        let mut w = self.writer.lock().await;
        let Some(pipe) = w.as_mut() else {
            return Err("the session is closed".into());
        };
        if let Err(e) = pipe.write_all(message).await {
            *w = None;
            self.dead.store(true, Ordering::SeqCst);
            return Err(e.to_string());
        }
        Ok(())
    }
}

/// One run's frames from a serving agent.
pub(super) struct RunStream {
    server: Arc<Server>,
    id: u64,
    rx: mpsc::UnboundedReceiver<(u8, Vec<u8>)>,
}

impl RunStream {
    /// The run's next frame; `None` when its stream ended (the session did, or writing failed).
    pub(super) async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        self.rx.recv().await
    }

    /// The host holds the run's exit frame: the agent may remove its spool.
    pub(super) fn acknowledge(self) {
        let server = self.server.clone();
        let id = self.id;
        tokio::spawn(async move {
            let _ = server.write(&wire::tagged(msg::ACK, id, b"")).await;
        });
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        self.server.runs.lock().unwrap().remove(&self.id);
        *self.server.last_used.lock().unwrap() = std::time::Instant::now();
    }
}
