//! Durable executions: a command that outlives its SSH connection.
//!
//! The command does not run in the SSH session that starts it. The session runs the VM agent
//! (`host-shim/vm-agent`, uploaded once per VM and checked by its SHA-256 there), which stores
//! the command's stdin whole, starts the command under a keeper detached from the session, and
//! streams the output the keeper spools on the VM, as frames (see `paperclip_vm_agent`). When
//! the connection drops (a reset is seen at once; silence through the master's keepalive,
//! within seconds) the command goes on; this module reconnects with backoff and *attaches* to
//! the same run from the byte offsets it already holds, so the result holds every byte once, in
//! order, with the command's own exit status, and live chunks continue with no duplicate and no
//! gap (one sink and one callback serve every attempt). The deadline is enforced on the VM as
//! well, so a timeout ends the command's process tree even while the VM cannot be reached.
//!
//! Runs go over one serving agent per connection (`ssh_serve`): the agent stays up on a channel
//! of the master connection and starts each run on request, so an execute costs one round trip
//! plus the command. Where no serving agent can be kept (its session does not come up while the
//! connection does), each run gets a session of its own with a single-run agent, as before;
//! both speak the same frames about the same spool, so a run started one way can be attached
//! the other.
//!
//! When the outcome cannot be known (the VM stays unreachable, or forgot the run), the answer
//! is [`SshError::Lost`], never an exit status the command did not produce.
//!
//! Where the agent cannot run (connections not pooled, a VM that is not x86_64 or refuses the
//! upload), commands take the direct path of [`SshRunner::exec`], as if durability was not
//! asked for; nothing of the caller's ran before that is decided.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paperclip_vm_agent::{self as agent, kind, Exit, FrameReader, Header, Op};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::ssh::{ChunkCallback, Connected, SshError, SshOutput, SshRequest, SshRunner, SshTarget};
use super::ssh_mux::{self, MuxUnavailable, StdinEnd};
use super::ssh_output::{OutputSink, StreamKind};
use super::ssh_serve::{Server, StartError};

/// How long past the command's deadline the host keeps reconnecting to collect the result (the
/// VM side ends the command at the deadline, with a second of grace before `SIGKILL`).
const RESULT_GRACE: Duration = Duration::from_secs(10);
/// First pause between reconnect attempts; doubled after each, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for one reconnect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Streams that end early while the connection stays up, in a row, before giving up (the
/// agent died each time: something on the VM kills it).
const MAX_BROKEN_WHILE_CONNECTED: u32 = 5;
/// What is kept of the agent's own stderr, for the operator.
const AGENT_STDERR_CAP: usize = 4096;

/// A durable request for the direct path. The agent runs a durable script with `/bin/sh -c`
/// itself and waits for the command the script exec's; here the SSH server waits instead, and
/// a command it saw die of a signal would come back as `exit-signal`, which the OpenSSH client
/// (and its connection sharing) can only report as 255, the code that means "SSH failed". So
/// the script runs in a subshell (`eval`, which the script's own `exec` replaces) of a guard
/// `sh`, which reports such a death the shell way, `128 + n`, as an exit status, like the agent
/// path. From the subshell on, the guard's own stderr is `/dev/null` and the script gets the
/// real one back through fd 3, so the guard's job report ("Terminated", "Killed") never lands
/// in the command's stderr. The guard is `sh -c` whatever the login shell is; the script is its
/// one argument.
pub fn direct(mut req: SshRequest) -> SshRequest {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    req.command = format!(
        "sh -c {} sh {}",
        quote("{ exec 3>&2 2>/dev/null; (eval \"$1\" 2>&3 3>&-); }; exit $?"),
        quote(&req.command)
    );
    req
}

/// The agent binary the host uploads to VMs.
#[derive(Clone)]
pub struct VmAgent {
    bytes: &'static [u8],
    digest: String,
}

impl std::fmt::Debug for VmAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmAgent")
            .field("bytes", &self.bytes.len())
            .field("digest", &self.digest)
            .finish()
    }
}

impl VmAgent {
    /// The agent built for the VMs (static x86_64 Linux).
    pub fn new(bytes: &'static [u8]) -> VmAgent {
        use sha2::{Digest, Sha256};
        VmAgent {
            bytes,
            digest: crate::hex::hex(&Sha256::digest(bytes)),
        }
    }

    /// The agent's SHA-256, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Where it lives on a VM, relative to `$HOME` (named by its digest, so a VM holding an
    /// older agent gets the new one beside it).
    fn remote_path(&self) -> String {
        format!("{}/agent-{}", agent::AGENT_DIR, &self.digest[..16])
    }

    /// The session command that starts it.
    fn run_command(&self) -> String {
        format!("exec \"$HOME/{}\"", self.remote_path())
    }

    /// The session command that starts it serving (one per connection).
    fn serve_command(&self) -> String {
        format!(
            "exec \"$HOME/{}\" {}",
            self.remote_path(),
            agent::serve::ARG
        )
    }

    /// The session command that installs it from stdin: only an x86_64 VM, only bytes with
    /// the right digest, put in place by rename (so a half upload is never run).
    fn install_command(&self) -> String {
        format!(
            "sh -c 'umask 077; case \"$(uname -m)\" in x86_64|amd64) ;; *) echo \"this VM is $(uname -m); \
             the agent is built for x86_64\" >&2; exit 3;; esac; d=\"$HOME/{dir}\"; mkdir -p \"$d\" || exit 4; \
             t=\"$d/.agent.$$\"; cat > \"$t\" || {{ rm -f \"$t\"; exit 4; }}; \
             s=$(sha256sum \"$t\" 2>/dev/null); s=${{s%% *}}; \
             if [ \"$s\" != {digest} ]; then rm -f \"$t\"; echo \"the uploaded agent has digest ${{s:-unknown}}\" >&2; exit 5; fi; \
             chmod 700 \"$t\" && mv -f \"$t\" \"$HOME/{path}\"'",
            dir = agent::AGENT_DIR,
            digest = self.digest,
            path = self.remote_path(),
        )
    }
}

/// What the host knows about the agent on one VM (one master connection).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AgentState {
    /// Installed: durable executions run through it.
    Installed,
    /// It could not run there when last tried (why, when): commands take the direct path
    /// until [`RETRY_UNAVAILABLE`] has passed (an operator may have fixed the VM or the key).
    Unavailable(String, Instant),
}

/// How long a VM where the agent could not run takes the direct path before it is tried again.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(600);
/// How long a connection whose serving agent did not come up gives each run a session of its
/// own before a serving agent is tried again.
const RETRY_SERVE: Duration = Duration::from_secs(60);

/// Runs durable executions over an [`SshRunner`]'s pooled connections.
pub struct DurableExecs {
    ssh: Arc<SshRunner>,
    agent: VmAgent,
    agents: Mutex<HashMap<PathBuf, AgentState>>,
    /// The serving agent of each master connection (by control path), behind a lock of its
    /// own so that concurrent first executes start one, not one each.
    servers: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Serving>>>>,
}

/// A connection's serving agent, as far as the host knows.
#[derive(Default)]
enum Serving {
    /// None started yet (or the last one ended).
    #[default]
    None,
    /// Up.
    Up(Arc<Server>),
    /// Its session did not come up while the connection did (when): runs get sessions of their
    /// own until [`RETRY_SERVE`] has passed.
    Failed(Instant),
}

/// How a run reaches the agent for one attempt.
enum Route {
    Served(Arc<Server>),
    Session,
    /// The attempt is over before it began.
    Done(Attempt),
}

/// One run's progress across attempts.
struct Progress {
    id: u64,
    started: bool,
    sink: OutputSink,
    stdin: Arc<[u8]>,
}

/// How one attempt (one session with the agent) ended.
enum Attempt {
    /// The command ended; every byte is in the sink.
    Exited(Exit),
    /// The run never started (its stdin never arrived whole): start it again.
    NotStarted,
    /// The agent did not start at all (what the shell reported).
    AgentMissing(String),
    /// The agent cannot tell the outcome (its message).
    Failed(String),
    /// The stream ended early (why): the connection, or the agent, died.
    Broken(String),
    /// The time to collect the result ran out while connected.
    OutOfTime,
}

impl DurableExecs {
    /// Durable executions over `ssh`'s connections, with `agent` uploaded where needed.
    pub fn new(ssh: Arc<SshRunner>, agent: VmAgent) -> DurableExecs {
        DurableExecs {
            ssh,
            agent,
            agents: Mutex::default(),
            servers: Mutex::default(),
        }
    }

    /// [`SshRunner::connect`], except that a connection whose serving agent is up is taken as
    /// up without asking its master: the agent's session would have ended with the master.
    /// Every execute asks for its connection first, so this is one exchange with the master
    /// less per execute (as in [`DurableExecs::exec`]); a master that died a moment ago is
    /// found by the execute itself, as a lost connection.
    pub async fn connect(
        &self,
        target: &SshTarget,
        timeout_ms: u32,
    ) -> Result<Connected, SshError> {
        if self
            .ssh
            .live_master(target)
            .is_some_and(|control| self.serving_up(&control))
        {
            // The policy still decides, as `connect` would.
            self.ssh.check(target)?;
            return Ok(Connected::Ready);
        }
        self.ssh.connect(target, timeout_ms).await
    }

    /// Run `req` durably (see the module docs); the direct path where that is not possible.
    pub async fn exec(
        &self,
        req: SshRequest,
        mut on_chunk: Option<ChunkCallback>,
    ) -> Result<SshOutput, SshError> {
        if req.command.trim().is_empty() || req.command.contains('\0') || req.timeout_ms == 0 {
            // The direct path refuses these with its own errors.
            return self.ssh.exec(direct(req), on_chunk).await;
        }
        let started_at = Instant::now();
        let deadline = started_at + Duration::from_millis(req.timeout_ms.into());
        let give_up = deadline + RESULT_GRACE;
        self.ssh.check(&req.target)?;
        // A serving agent that is up proves its master connection is (its session would have
        // ended with it), so the master's own liveness check, one more exchange with it per
        // execute, is not needed then.
        let serving = self
            .ssh
            .live_master(&req.target)
            .filter(|control| self.serving_up(control));
        let mut control = match serving {
            Some(control) => control,
            None => {
                match self.ssh.connect(&req.target, req.timeout_ms).await? {
                    Connected::Ready => {}
                    Connected::Unpooled => return self.ssh.exec(direct(req), on_chunk).await,
                    // Nothing ran: report the failed connection the way the direct path would.
                    Connected::Failed(out) => return Ok(out),
                }
                let Some(control) = self.ssh.live_master(&req.target) else {
                    return self.ssh.exec(direct(req), on_chunk).await;
                };
                control
            }
        };
        if let Some(AgentState::Unavailable(_, since)) = self.agent_state(&control) {
            if since.elapsed() < RETRY_UNAVAILABLE {
                return self.ssh.exec(direct(req), on_chunk).await;
            }
        }
        let cap = self.ssh.output_cap(req.max_output_bytes);
        let mut p = Progress {
            id: rand::random::<u64>(),
            started: false,
            sink: OutputSink::new(usize::try_from(cap).unwrap_or(usize::MAX)),
            stdin: Arc::from(req.stdin.clone().unwrap_or_default()),
        };
        let mut installed_now = false;
        let mut broken_in_a_row = 0;
        let mut lost: Option<(Duration, String)> = None;
        loop {
            match self
                .attempt(
                    &control,
                    &req,
                    &mut p,
                    &mut on_chunk,
                    cap,
                    deadline,
                    give_up,
                )
                .await
            {
                Attempt::Exited(exit) => {
                    if let Some((at, why)) = &lost {
                        tracing::info!(
                            host = %req.target.host,
                            lost_at_ms = at.as_millis() as u64,
                            why = %why,
                            "durable execute resumed after a lost connection and completed"
                        );
                    }
                    let out = output(p.sink, exit);
                    super::ssh::log_finished(&req.target, &out, started_at.into_std(), "durable");
                    return Ok(out);
                }
                Attempt::NotStarted => {
                    p.started = false;
                    continue;
                }
                Attempt::AgentMissing(said) if !installed_now && !p.started => {
                    match self.install(&control, give_up).await {
                        Ok(()) => {
                            installed_now = true;
                            tracing::debug!(host = %req.target.host, said = %said, "installed the VM agent");
                            self.set_agent_state(&control, AgentState::Installed);
                        }
                        // The connection died during the upload: nothing of the caller's ran.
                        Err(why) if !ssh_mux::alive(&control).await => {
                            let since = started_at.elapsed();
                            lost.get_or_insert((since, why.clone()));
                            control = self
                                .reconnect(&req, started_at, since, &why, give_up)
                                .await?;
                        }
                        Err(why) => {
                            tracing::warn!(host = %req.target.host, %why, "the VM agent cannot run there; commands take the direct path");
                            self.set_agent_state(
                                &control,
                                AgentState::Unavailable(why, Instant::now()),
                            );
                            return self.ssh.exec(direct(req), on_chunk).await;
                        }
                    }
                }
                Attempt::AgentMissing(said) => {
                    let why = format!("the VM agent does not start after its upload: {said}");
                    tracing::warn!(host = %req.target.host, %why, "commands take the direct path");
                    self.set_agent_state(&control, AgentState::Unavailable(why, Instant::now()));
                    if p.started {
                        return Err(SshError::Lost(format!(
                            "the VM agent on {} stopped starting mid-command; the command may still be running on the VM",
                            req.target.host
                        )));
                    }
                    return self.ssh.exec(direct(req), on_chunk).await;
                }
                Attempt::Failed(why) => {
                    return Err(SshError::Lost(format!(
                        "the command on {} cannot be followed any more: {why}",
                        req.target.host
                    )));
                }
                Attempt::OutOfTime => {
                    // Connected, but the exit frame did not come in time (the VM side ends the
                    // command at its deadline): report the time-out with what arrived.
                    let mut out = p.sink.finish(None, None, true);
                    out.exit_code_from_remote = false;
                    super::ssh::log_finished(&req.target, &out, started_at.into_std(), "durable");
                    return Ok(out);
                }
                Attempt::Broken(why) => {
                    let since = started_at.elapsed();
                    self.set_agent_state(&control, AgentState::Installed);
                    if ssh_mux::alive(&control).await {
                        broken_in_a_row += 1;
                        if broken_in_a_row >= MAX_BROKEN_WHILE_CONNECTED {
                            return Err(SshError::Lost(format!(
                                "the VM agent on {} kept ending mid-stream ({why}); the command may still be running on the VM",
                                req.target.host
                            )));
                        }
                        continue;
                    }
                    broken_in_a_row = 0;
                    tracing::info!(host = %req.target.host, after_ms = since.as_millis() as u64, %why, "connection lost during a durable execute; reconnecting");
                    lost.get_or_insert((since, why.clone()));
                    control = self
                        .reconnect(&req, started_at, since, &why, give_up)
                        .await?;
                }
            }
        }
    }

    /// One session with the agent: run or attach, and read frames until the run's end.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        control: &Path,
        req: &SshRequest,
        p: &mut Progress,
        on_chunk: &mut Option<ChunkCallback>,
        cap: u64,
        deadline: Instant,
        give_up: Instant,
    ) -> Attempt {
        let op = if p.started { Op::Attach } else { Op::Run };
        let script: &[u8] = match op {
            Op::Run => req.command.as_bytes(),
            Op::Attach => b"",
        };
        let stdin = match op {
            Op::Run => p.stdin.clone(),
            Op::Attach => Arc::from(Vec::new()),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let header = Header {
            op,
            id: p.id,
            stdout_offset: p.sink.len(StreamKind::Stdout) as u64,
            stderr_offset: p.sink.len(StreamKind::Stderr) as u64,
            timeout_ms: (remaining.as_millis() as u64).max(1),
            cap,
            script_len: script.len() as u32,
            stdin_len: stdin.len() as u64,
        };
        match self.route(control, give_up).await {
            Route::Done(attempt) => return attempt,
            Route::Served(server) => {
                return served(&server, &header, script, stdin, p, on_chunk, give_up).await
            }
            Route::Session => {}
        }
        let command = self.agent.run_command();
        let open = ssh_mux::open(control, &command, StdinEnd::Pipe, None);
        let session = match tokio::time::timeout_at(give_up, open).await {
            Err(_) => return Attempt::OutOfTime,
            Ok(Err(MuxUnavailable::NotStarted(why) | MuxUnavailable::Ambiguous(why))) => {
                // Either way nothing is lost: a run that may have started is found by attach.
                return Attempt::Broken(why);
            }
            Ok(Ok(s)) => s,
        };
        let (session, stdin_pipe, stdout, stderr) = session.into_parts();
        let (Some(mut stdin_pipe), Some(mut stdout)) = (stdin_pipe, stdout) else {
            return Attempt::Broken("the session has no pipes".into());
        };
        let mut request = header.encode().to_vec();
        request.extend_from_slice(script);
        let writer = tokio::spawn(async move {
            stdin_pipe.write_all(&request).await?;
            stdin_pipe.write_all(&stdin).await?;
            Ok::<_, std::io::Error>(stdin_pipe)
        });
        let agent_stderr = super::ssh_serve::keep_stderr(stderr, AGENT_STDERR_CAP);

        let mut frames = FrameReader::default();
        let mut hello = false;
        // What came before the agent's hello frame: a login shell's noise, or its answer when
        // the agent could not start.
        let mut before_hello = Vec::new();
        let hello_frame = agent::hello_frame();
        let mut buf = vec![0u8; 64 * 1024];
        let outcome = 'read: loop {
            let n = match tokio::time::timeout_at(give_up, stdout.read(&mut buf)).await {
                Err(_) => break 'read Some(Attempt::OutOfTime),
                Ok(Ok(0)) | Ok(Err(_)) => break 'read None,
                Ok(Ok(n)) => n,
            };
            if hello {
                frames.push(&buf[..n]);
            } else {
                before_hello.extend_from_slice(&buf[..n]);
                let found = before_hello
                    .windows(hello_frame.len())
                    .position(|w| w == hello_frame.as_slice());
                match found {
                    Some(at) => {
                        hello = true;
                        frames.push(&before_hello[at + hello_frame.len()..]);
                        before_hello.truncate(at);
                    }
                    None if before_hello.len() > AGENT_STDERR_CAP * 16 => {
                        break 'read Some(Attempt::AgentMissing(format!(
                            "the session printed {} bytes and no agent answered",
                            before_hello.len()
                        )));
                    }
                    None => continue,
                }
            }
            loop {
                let (k, payload) = match frames.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(agent::BadFrame(why)) => {
                        break 'read Some(Attempt::Failed(format!(
                            "the VM agent's stream is corrupt: {why}"
                        )))
                    }
                };
                if let Some(end) = on_frame(p, on_chunk, k, &payload) {
                    break 'read Some(end);
                }
            }
        };
        match outcome {
            Some(Attempt::Exited(exit)) => {
                // The spool may go: acknowledge, and let the session end on its own (its exit
                // message would cost another round trip the result does not need).
                tokio::spawn(async move {
                    if let Ok(Ok(mut pipe)) = writer.await {
                        let _ = pipe.write_all(&[agent::ACK]).await;
                        drop(pipe);
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(30), session.wait()).await;
                    agent_stderr.abort();
                });
                Attempt::Exited(exit)
            }
            Some(other) => {
                writer.abort();
                agent_stderr.abort();
                other
            }
            None => {
                writer.abort();
                if hello {
                    agent_stderr.abort();
                    return Attempt::Broken("the connection to the VM closed mid-stream".into());
                }
                // No agent answered. An exit status means the shell ran and could not start it;
                // none means the connection died first.
                match super::ssh_serve::no_agent_status(session, agent_stderr, &before_hello).await
                {
                    Some(what) => Attempt::AgentMissing(what),
                    None => {
                        Attempt::Broken("the connection closed before the VM agent answered".into())
                    }
                }
            }
        }
    }

    /// True when the connection at `control` has a serving agent that is up (and no attempt
    /// is starting one right now).
    fn serving_up(&self, control: &Path) -> bool {
        let Some(slot) = self.servers.lock().unwrap().get(control).cloned() else {
            return false;
        };
        let up = matches!(slot.try_lock().as_deref(), Ok(Serving::Up(s)) if !s.is_dead());
        up
    }

    /// How this attempt reaches the agent: the connection's serving agent (started now if
    /// there is none), or a session of its own where none can be kept.
    async fn route(&self, control: &Path, give_up: Instant) -> Route {
        let slot = self
            .servers
            .lock()
            .unwrap()
            .entry(control.to_path_buf())
            .or_default()
            .clone();
        let mut serving = slot.lock().await;
        match &*serving {
            Serving::Up(server) if !server.is_dead() => return Route::Served(server.clone()),
            Serving::Failed(at) if at.elapsed() < RETRY_SERVE => return Route::Session,
            _ => {}
        }
        match Server::start(control, &self.agent.serve_command(), give_up).await {
            Ok(server) => {
                *serving = Serving::Up(server.clone());
                Route::Served(server)
            }
            Err(StartError::AgentMissing(said)) => {
                *serving = Serving::None;
                Route::Done(Attempt::AgentMissing(said))
            }
            Err(StartError::Broken(why)) if ssh_mux::alive(control).await => {
                // The connection is up and still no serving agent: runs take sessions of their
                // own (the single-run agent) for a while.
                tracing::info!(%why, "no serving VM agent on this connection; one session per execute");
                *serving = Serving::Failed(Instant::now());
                Route::Session
            }
            Err(StartError::Broken(why)) => {
                *serving = Serving::None;
                Route::Done(Attempt::Broken(why))
            }
        }
    }

    /// Upload the agent to the VM behind `control`.
    async fn install(&self, control: &Path, give_up: Instant) -> Result<(), String> {
        let session = ssh_mux::open(control, &self.agent.install_command(), StdinEnd::Pipe, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut sink = OutputSink::new(AGENT_STDERR_CAP);
        let ended = ssh_mux::run(
            session,
            Some(self.agent.bytes.to_vec()),
            &mut sink,
            &mut None,
            give_up,
        )
        .await;
        let out = sink.finish(ended.exit_code, None, ended.timed_out);
        match (ended.exit_code, ended.from_remote) {
            (Some(0), true) => Ok(()),
            _ if ended.timed_out => Err("uploading the VM agent timed out".into()),
            (code, _) => Err(format!(
                "uploading the VM agent failed (exit status {}): {}",
                code.map_or("none".into(), |c| c.to_string()),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// Reconnect after a lost connection, with backoff, until `give_up`.
    async fn reconnect(
        &self,
        req: &SshRequest,
        started_at: Instant,
        lost_after: Duration,
        why: &str,
        give_up: Instant,
    ) -> Result<PathBuf, SshError> {
        let trying_since = Instant::now();
        let mut pause = BACKOFF_START;
        let mut attempts = 0u32;
        let mut last_error = why.to_string();
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SshError::Lost(format!(
                    "the connection to {} was lost {:.1} s after the command started ({why}); \
                     reconnecting was tried for {:.1} s ({attempts} attempts) until the deadline; \
                     last SSH error: {}. The command may still be running on the VM (the VM ends \
                     it at its deadline).",
                    req.target.host,
                    lost_after.as_secs_f64(),
                    trying_since.elapsed().as_secs_f64(),
                    last_error.trim(),
                )));
            }
            attempts += 1;
            let timeout = left.min(CONNECT_TIMEOUT);
            match self
                .ssh
                .connect(&req.target, (timeout.as_millis() as u32).max(1))
                .await?
            {
                Connected::Ready => {
                    if let Some(control) = self.ssh.live_master(&req.target) {
                        tracing::info!(
                            host = %req.target.host,
                            attempts,
                            after_ms = started_at.elapsed().as_millis() as u64,
                            "reconnected"
                        );
                        return Ok(control);
                    }
                    last_error = "the new connection is not shared".into();
                }
                Connected::Unpooled => last_error = "connections are not pooled".into(),
                Connected::Failed(out) => {
                    let text = String::from_utf8_lossy(&out.stderr).into_owned();
                    last_error = if out.timed_out {
                        "no answer in time".into()
                    } else if text.trim().is_empty() {
                        format!("ssh exited with {:?}", out.exit_code)
                    } else {
                        text
                    };
                }
            }
            let left = give_up.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }

    fn agent_state(&self, control: &Path) -> Option<AgentState> {
        self.agents.lock().unwrap().get(control).cloned()
    }

    fn set_agent_state(&self, control: &Path, state: AgentState) {
        self.agents
            .lock()
            .unwrap()
            .insert(control.to_path_buf(), state);
    }
}

/// Take one frame of the agent's into `p`; the attempt's end when it is a final frame.
fn on_frame(
    p: &mut Progress,
    on_chunk: &mut Option<ChunkCallback>,
    k: u8,
    payload: &[u8],
) -> Option<Attempt> {
    match k {
        kind::STARTED => p.started = true,
        kind::STDOUT => p.sink.keep(StreamKind::Stdout, payload, on_chunk),
        kind::STDERR => p.sink.keep(StreamKind::Stderr, payload, on_chunk),
        kind::EXIT => {
            return Some(match Exit::decode(payload) {
                Some(exit) => Attempt::Exited(exit),
                None => Attempt::Failed("the VM agent sent a malformed exit frame".into()),
            })
        }
        kind::NOT_STARTED => return Some(Attempt::NotStarted),
        kind::FAILED => {
            return Some(Attempt::Failed(
                String::from_utf8_lossy(payload).into_owned(),
            ))
        }
        other => {
            return Some(Attempt::Failed(format!(
                "the VM agent sent an unknown frame kind {other:#04x}"
            )))
        }
    }
    None
}

/// One attempt over the connection's serving agent: the request out, frames back until the
/// run's end. The exit frame is acknowledged at once (the spool may go), with no wait.
async fn served(
    server: &Arc<Server>,
    header: &Header,
    script: &[u8],
    stdin: Arc<[u8]>,
    p: &mut Progress,
    on_chunk: &mut Option<ChunkCallback>,
    give_up: Instant,
) -> Attempt {
    let mut stream = match server.run(header, script, stdin) {
        Ok(s) => s,
        Err(why) => return Attempt::Broken(why),
    };
    loop {
        match tokio::time::timeout_at(give_up, stream.next()).await {
            Err(_) => return Attempt::OutOfTime,
            Ok(None) => {
                return Attempt::Broken("the connection to the VM closed mid-stream".into())
            }
            Ok(Some((k, payload))) => {
                if let Some(end) = on_frame(p, on_chunk, k, &payload) {
                    if matches!(end, Attempt::Exited(_)) {
                        stream.acknowledge();
                    }
                    return end;
                }
            }
        }
    }
}

/// The result of a run, from what the sink collected and the agent's exit frame.
fn output(mut sink: OutputSink, exit: Exit) -> SshOutput {
    // The script's login shell exec's the command, so the process the agent waited for is
    // the command itself: a death by signal `n` is reported as the shell reports it, and
    // as the direct path's guard shell does, `128 + n` (SIGTERM: 143).
    let code = exit.code.or(exit.signal.map(|n| 128 + n));
    let mut out = sink.finish(code, None, exit.timed_out);
    out.exit_code_from_remote = code.is_some();
    out.stdout_truncated |= exit.stdout_truncated;
    out.stderr_truncated |= exit.stderr_truncated;
    if exit.timed_out {
        out.exit_code = None;
        out.signal = None;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &str) -> SshRequest {
        SshRequest {
            target: super::super::ssh::SshTarget {
                host: "vm.exe.xyz".into(),
                port: 22,
                user: None,
                identity: super::super::ssh::Identity::Agent,
                host_key_policy: super::super::ssh::HostKeyPolicy::AcceptNew,
            },
            command: command.into(),
            stdin: None,
            timeout_ms: 1,
            max_output_bytes: 1,
            stream_output: false,
            durable: false,
        }
    }

    #[test]
    fn the_direct_path_runs_the_script_with_sh() {
        let req = request("echo 'it'\"s\"; exit 3");
        assert_eq!(
            direct(req).command,
            "sh -c '{ exec 3>&2 2>/dev/null; (eval \"$1\" 2>&3 3>&-); }; exit $?' sh \
             'echo '\\''it'\\''\"s\"; exit 3'"
        );
    }

    #[test]
    fn commands_name_the_digest() {
        static BYTES: &[u8] = b"not really an agent";
        let a = VmAgent::new(BYTES);
        assert_eq!(a.digest().len(), 64);
        assert_eq!(
            a.run_command(),
            format!(
                "exec \"$HOME/.cache/paperclip-exe-dev/agent-{}\"",
                &a.digest()[..16]
            )
        );
        let install = a.install_command();
        assert!(install.contains(a.digest()), "{install}");
        assert!(install.contains("mv -f"), "{install}");
        assert!(!install.contains('\n'));
    }

    #[test]
    fn a_death_by_signal_is_reported_as_the_shell_would_report_it() {
        let exit = |code, signal, timed_out| Exit {
            code,
            signal,
            timed_out,
            stdout_truncated: false,
            stderr_truncated: false,
        };
        for (code, signal, want) in [
            (Some(0), None, Some(0)),
            (Some(255), None, Some(255)),
            (None, Some(libc::SIGTERM), Some(143)),
            (None, Some(libc::SIGKILL), Some(137)),
            (None, Some(libc::SIGINT), Some(130)),
        ] {
            let out = output(OutputSink::new(16), exit(code, signal, false));
            assert_eq!(out.exit_code, want, "{code:?} {signal:?}");
            assert_eq!(out.signal, None);
            assert!(out.exit_code_from_remote);
        }
        // A command the deadline ended has no exit status of its own.
        let out = output(OutputSink::new(16), exit(None, Some(libc::SIGKILL), true));
        assert!(out.timed_out && out.exit_code.is_none() && out.signal.is_none());
    }

    /// The direct path's guard under every login shell the SSH server may run it with: a
    /// script that exec's its command reports a death by signal as `128 + n` and a command's own
    /// `exit 255` as 255, with the command's bytes exact and no job report in its stderr.
    #[test]
    fn the_direct_guard_reports_signals_as_128_plus_n_under_every_login_shell() {
        use std::os::unix::process::ExitStatusExt;
        for login_shell in ["/bin/sh", "/bin/bash", "/bin/dash"] {
            if !std::path::Path::new(login_shell).exists() {
                continue;
            }
            for (command, code, stdout, stderr) in [
                ("kill -TERM $$", 143, "", ""),
                ("kill -KILL $$", 137, "", ""),
                ("kill -INT $$", 130, "", ""),
                ("exit 255", 255, "", ""),
                ("cat; echo err >&2; exit 3", 3, "in", "err\n"),
            ] {
                let req = request(&format!("export X=1 && exec sh -c '{command}'"));
                let run = std::process::Command::new(login_shell)
                    .arg("-c")
                    .arg(direct(req).command)
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write as _;
                run.stdin.as_ref().unwrap().write_all(b"in").unwrap();
                let out = run.wait_with_output().unwrap();
                assert_eq!(out.status.signal(), None, "{login_shell}: {command}");
                assert_eq!(out.status.code(), Some(code), "{login_shell}: {command}");
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    stdout,
                    "{login_shell}: {command}"
                );
                assert_eq!(
                    String::from_utf8_lossy(&out.stderr),
                    stderr,
                    "{login_shell}: {command}"
                );
            }
        }
    }
}
