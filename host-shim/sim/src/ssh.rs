//! One VM's SSH server (russh 0.65): public-key auth with the simulator's client key, `exec`
//! (and `shell`) sessions that run `sh -c <command>` in the VM's home directory, multiplexed
//! channels, and byte-exact streaming with SSH flow control in both directions. A session that
//! sends `pty-req` gets a real pseudo-terminal, as under sshd ([`super::pty`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use russh::keys::PublicKey;
use russh::server::{Auth, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelWriteHalf, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use super::faults::{Faults, ONBOARDING_MARKER};
use super::pty::{Master, Pty, WinSize};
use super::tap::Taps;

/// Login user of exe.dev's default image.
pub(crate) const VM_USER: &str = "exedev";

/// What every connection to one VM shares.
pub(crate) struct VmRuntime {
    pub(crate) name: String,
    pub(crate) home: PathBuf,
    pub(crate) tmp: PathBuf,
    /// `--env` values given to `new`, present in every session.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) client_key: PublicKey,
    pub(crate) faults: Arc<Faults>,
    pub(crate) path_env: String,
    /// The simulator-wide session log.
    pub(crate) log: Arc<Mutex<Vec<super::SshCall>>>,
    /// Process groups started in this VM (sessions and the setup script); killed on `rm`.
    pub(crate) pgids: Mutex<HashSet<i32>>,
    /// Live SSH sessions by connection number, so `rm` can disconnect them.
    pub(crate) sessions: Mutex<HashMap<u64, russh::server::Handle>>,
    /// The simulator's connection faults, when clients connect to this VM directly
    /// ([`super::Routing::DirectPorts`]); `None` behind the gateway, which has its own.
    pub(crate) taps: Option<Arc<Taps>>,
}

impl VmRuntime {
    /// The environment of a process in this VM: cleared, like a fresh login, except for the
    /// variables sshd/login would set, the VM's `--env`, and (last) the client's `env` requests.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = self.login_command(program);
        // Own process group, like sshd's setsid(), so `rm` can kill the whole tree.
        cmd.process_group(0);
        cmd
    }

    /// [`Self::command`] without the process group, for a pty session whose child calls
    /// setsid() itself (which fails in a process that already leads a group).
    fn login_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("USER", VM_USER)
            .env("LOGNAME", VM_USER)
            .env("PATH", &self.path_env)
            .env("SHELL", "/bin/sh")
            .env("LANG", "C.UTF-8")
            // VMs share the host's /tmp; a per-VM TMPDIR keeps well-behaved tools isolated and
            // keeps VM litter out of the host's TMPDIR.
            .env("TMPDIR", &self.tmp)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home)
            .kill_on_drop(false);
        cmd
    }

    fn lock_pgids(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.pgids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, russh::server::Handle>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, command: &Option<Vec<u8>>, exit_code: Option<u32>) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(super::SshCall {
                vm: self.name.clone(),
                command: command
                    .as_deref()
                    .map(|c| String::from_utf8_lossy(c).into_owned()),
                exit_code,
            });
    }

    pub(crate) fn track(&self, pgid: i32) {
        self.lock_pgids().insert(pgid);
    }

    /// Process groups that still have a member (zombies included until reaped).
    pub(crate) fn live_groups(&self) -> usize {
        self.live_group_ids().len()
    }

    /// The ids of those groups (each the pid of the session command that leads it).
    pub(crate) fn live_group_ids(&self) -> Vec<i32> {
        let mut set = self.lock_pgids();
        // SAFETY: kill with signal 0 only checks for existence; no memory is involved.
        set.retain(|&pg| unsafe { libc::kill(-pg, 0) } == 0);
        set.iter().copied().collect()
    }

    /// SIGKILLs every process group this VM started.
    pub(crate) fn kill_all(&self) {
        for pg in self.lock_pgids().drain() {
            // SAFETY: plain syscall; a stale pgid just fails with ESRCH.
            unsafe {
                libc::kill(-pg, libc::SIGKILL);
            }
        }
    }

    /// Disconnects every live SSH session.
    pub(crate) fn disconnect_all(&self) {
        let sessions = std::mem::take(&mut *self.lock_sessions());
        // May run from a Drop outside the runtime; then the sessions die with the runtime.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (_, h) in sessions {
            rt.spawn(async move {
                let _ = h
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "vm deleted".into(),
                        String::new(),
                    )
                    .await;
            });
        }
    }
}

/// Builds the russh server configuration for one VM's host key.
pub(crate) fn server_config(host_key: russh::keys::PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        // OpenSSH first tries "none"; don't make every connection pay a rejection delay.
        auth_rejection_time: std::time::Duration::from_millis(20),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        keys: vec![host_key],
        // ControlMaster connections may idle for long; sshd has no idle timeout by default.
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    })
}

/// Accepts connections until the task is aborted (VM deleted), honouring the drop fault.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    vm: Arc<VmRuntime>,
    config: Arc<russh::server::Config>,
) {
    let mut next_conn: u64 = 0;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Transient accept errors (EMFILE…) must not end the VM; back off briefly.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if vm.faults.take_ssh_drop(&vm.name) {
            drop(stream);
            continue;
        }
        // `Config::nodelay` only applies to russh's own accept loop, not to `run_stream`.
        // Without it, Nagle holds the second of two small packets (exit-status, then
        // EOF/close) until the peer's delayed ACK: ~40 ms added to every command.
        let _ = stream.set_nodelay(true);
        let handler = SessionHandler {
            vm: vm.clone(),
            channels: HashMap::new(),
        };
        let config = config.clone();
        let vm = vm.clone();
        next_conn += 1;
        let conn = next_conn;
        tokio::spawn(async move {
            let session = match &vm.taps {
                Some(taps) => serve_session(config, taps.tap(stream), handler).await,
                None => serve_session(config, stream, handler).await,
            };
            if let Some(running) = session {
                vm.lock_sessions().insert(conn, running.handle());
                if let Err(e) = running.await {
                    tracing::debug!(vm = %vm.name, "ssh session ended: {e}");
                }
                vm.lock_sessions().remove(&conn);
            }
        });
    }
}

/// The handshake of one VM connection; `None` (logged) when it failed.
async fn serve_session<S>(
    config: Arc<russh::server::Config>,
    stream: S,
    handler: SessionHandler,
) -> Option<russh::server::RunningSession<SessionHandler>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let name = handler.vm.name.clone();
    match russh::server::run_stream(config, stream, handler).await {
        Ok(running) => Some(running),
        Err(e) => {
            tracing::debug!(vm = %name, "ssh handshake failed: {e}");
            None
        }
    }
}

/// Stdin of a session before and after its command starts.
enum Stdin {
    /// Data or EOF that arrived before the exec request.
    Pending(Vec<Bytes>, bool),
    /// Feeding the running child.
    Live(mpsc::UnboundedSender<Bytes>),
    Closed,
}

/// The pseudo-terminal of a session that sent `pty-req`.
enum PtySlot {
    None,
    /// Allocated at pty-req, like sshd does (so a failure fails that request); the command
    /// has not started.
    Ready(Box<PtyReq>),
    /// The running command's job owns the master (dropping it hangs the session up); this
    /// only reaches it for window-change, and never keeps it open.
    Running(Weak<Master>),
}

struct PtyReq {
    pty: Pty,
    /// pty-req's terminal type, the session's `TERM`.
    term: String,
}

struct ChanState {
    write: Option<ChannelWriteHalf<Msg>>,
    env: Vec<(String, String)>,
    stdin: Stdin,
    pty: PtySlot,
    /// Process group of the running command (0 before it starts), for `signal` requests.
    pgid: Arc<AtomicI32>,
    /// Dropped when the client closes the channel or the connection ends: the exec task then
    /// stops forwarding output and closes the child's pipes (or its pty's master, which hangs
    /// the session up), as sshd does.
    _cancel: Option<oneshot::Sender<()>>,
}

struct SessionHandler {
    vm: Arc<VmRuntime>,
    channels: HashMap<ChannelId, ChanState>,
}

impl Handler for SessionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_auth(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_auth(key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Incoming data reaches us through the handler callbacks; the read half is dropped so
        // russh's session loop never blocks on a full per-channel queue.
        let (_read, write) = channel.split();
        self.channels.insert(
            write.id(),
            ChanState {
                write: Some(write),
                env: Vec::new(),
                stdin: Stdin::Pending(Vec::new(), false),
                pty: PtySlot::None,
                pgid: Arc::new(AtomicI32::new(0)),
                _cancel: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(st) => {
                st.env.push((name.to_owned(), value.to_owned()));
                session.channel_success(channel)
            }
            None => session.channel_failure(channel),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(st) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        // One pty per session, requested before the command starts (sshd refuses a second).
        if !matches!(st.pty, PtySlot::None) || st.write.is_none() {
            return session.channel_failure(channel);
        }
        let size = WinSize {
            cols: col_width,
            rows: row_height,
            pix_width,
            pix_height,
        };
        // The encoded modes are not applied (kernel defaults instead; see `Pty::open`).
        tracing::debug!(vm = %self.vm.name, ?channel, term, ?size, ?modes, "pty-req");
        match Pty::open(size) {
            Ok(pty) => {
                st.pty = PtySlot::Ready(Box::new(PtyReq {
                    pty,
                    term: term.to_owned(),
                }));
                session.channel_success(channel)
            }
            Err(e) => {
                tracing::warn!(vm = %self.vm.name, "cannot allocate a pty: {e}");
                session.channel_failure(channel)
            }
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let size = WinSize {
            cols: col_width,
            rows: row_height,
            pix_width,
            pix_height,
        };
        let done = match self.channels.get(&channel).map(|st| &st.pty) {
            Some(PtySlot::Ready(req)) => req.pty.master.set_winsize(size).is_ok(),
            Some(PtySlot::Running(master)) => master
                .upgrade()
                .is_some_and(|m| m.set_winsize(size).is_ok()),
            _ => false,
        };
        // window-change never asks for a reply (RFC 4254 6.7); these only answer one if
        // a client did.
        if done {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Some(data.to_vec()), session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(st) = self.channels.get_mut(&channel) {
            match &mut st.stdin {
                Stdin::Pending(buf, false) => buf.push(Bytes::copy_from_slice(data)),
                Stdin::Live(tx) => {
                    // Unbounded on purpose: the session loop must keep reading (window
                    // adjusts for our output arrive on the same connection), so stdin is
                    // queued here and written to the child by its own task.
                    let _ = tx.send(Bytes::copy_from_slice(data));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(st) = self.channels.get_mut(&channel) {
            st.stdin = match std::mem::replace(&mut st.stdin, Stdin::Closed) {
                Stdin::Pending(buf, _) => Stdin::Pending(buf, true),
                // Dropping the sender lets the writer task close the child's stdin.
                _ => Stdin::Closed,
            };
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let pg = self
            .channels
            .get(&channel)
            .map_or(0, |st| st.pgid.load(Ordering::SeqCst));
        if let (true, Some(signo)) = (pg > 0, signal_number(&signal)) {
            // SAFETY: plain syscall on a process group this session started.
            unsafe {
                libc::kill(-pg, signo);
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

impl SessionHandler {
    fn key_auth(&self, key: &PublicKey) -> Auth {
        if key.key_data() == self.vm.client_key.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }

    /// Starts the session's command (`None`: a shell reading commands from stdin).
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<Vec<u8>>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(st) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        let Some(write) = st.write.take() else {
            // A second exec on the same channel is a protocol error; refuse it.
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Stdin::Pending(buf, eof) = std::mem::replace(&mut st.stdin, Stdin::Closed) {
            for b in buf {
                let _ = tx.send(b);
            }
            if !eof {
                st.stdin = Stdin::Live(tx);
            }
        }
        let (cancel_tx, cancel_rx) = oneshot::channel();
        st._cancel = Some(cancel_tx);
        let pty = match std::mem::replace(&mut st.pty, PtySlot::None) {
            PtySlot::Ready(req) => {
                let PtyReq { pty, term } = *req;
                let master = Arc::new(pty.master);
                st.pty = PtySlot::Running(Arc::downgrade(&master));
                Some(JobPty {
                    master,
                    slave: pty.slave,
                    name: pty.name,
                    term,
                })
            }
            _ => None,
        };
        let job = Job {
            pty,
            pgid: st.pgid.clone(),
            vm: self.vm.clone(),
            handle: session.handle(),
            write,
            env: std::mem::take(&mut st.env),
            command,
            stdin: rx,
            cancel: cancel_rx,
        };
        tokio::spawn(job.run());
        Ok(())
    }
}

/// The pty a session command runs on.
struct JobPty {
    /// The only strong reference: dropping it closes the master.
    master: Arc<Master>,
    slave: std::os::fd::OwnedFd,
    name: String,
    term: String,
}

/// One running session command.
struct Job {
    pty: Option<JobPty>,
    pgid: Arc<AtomicI32>,
    vm: Arc<VmRuntime>,
    handle: russh::server::Handle,
    write: ChannelWriteHalf<Msg>,
    env: Vec<(String, String)>,
    command: Option<Vec<u8>>,
    stdin: mpsc::UnboundedReceiver<Bytes>,
    cancel: oneshot::Receiver<()>,
}

/// How a session command ended.
enum Exit {
    Code(u32),
    Signal(i32),
}

impl Job {
    async fn run(self) {
        let Job {
            pty,
            pgid,
            vm,
            handle,
            write,
            env,
            command,
            stdin,
            mut cancel,
        } = self;
        let id = write.id();
        if vm.faults.onboarding(&vm.name) {
            let _ = write
                .data_bytes(Bytes::from_static(ONBOARDING_MARKER.as_bytes()))
                .await;
            finish(&handle, &write, Exit::Code(1)).await;
            vm.record(&command, Some(1));
            return;
        }
        let (mut cmd, master) = match pty {
            None => {
                let mut cmd = vm.command("/bin/sh");
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                (cmd, None)
            }
            Some(p) => match pty_command(&vm, p) {
                Ok((cmd, master)) => (cmd, Some(master)),
                Err(e) => {
                    let msg = format!("sh: cannot set up the terminal: {e}\r\n");
                    let _ = write.data_bytes(Bytes::from(msg)).await;
                    finish(&handle, &write, Exit::Code(127)).await;
                    vm.record(&command, Some(127));
                    return;
                }
            },
        };
        match &command {
            Some(c) => {
                cmd.arg("-c").arg(OsStr::from_bytes(c));
            }
            // No command: a shell reading its script from stdin (interactive on a pty, as
            // sh decides by itself when stdin is a terminal).
            None => {
                cmd.arg("-s");
            }
        }
        cmd.envs(env);
        let spawned = cmd.spawn();
        // The command holds the parent's copies of a pty slave: they must be closed now, or
        // reading the master would never end in EIO.
        drop(cmd);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("sh: cannot start: {e}\n");
                let _ = match master {
                    // A pty has no separate stderr.
                    Some(_) => write.data_bytes(Bytes::from(msg)).await,
                    None => write.extended_data_bytes(1, Bytes::from(msg)).await,
                };
                finish(&handle, &write, Exit::Code(127)).await;
                vm.record(&command, Some(127));
                return;
            }
        };
        if let Some(pid) = child.id() {
            // A pty session's child is a session leader (setsid), so its pid is its group too.
            vm.track(pid as i32);
            pgid.store(pid as i32, Ordering::SeqCst);
        }
        let finished = match master {
            None => {
                if let Some(child_stdin) = child.stdin.take() {
                    tokio::spawn(feed_stdin(child_stdin, stdin));
                }
                let stdout = child.stdout.take();
                let stderr = child.stderr.take();
                let forward = async {
                    tokio::join!(pump(stdout, &write, None), pump(stderr, &write, Some(1)));
                };
                // Like sshd (`session_exit_message`), the exit status goes out as soon as the
                // command is reaped, while output it left in its pipes may still be on its
                // way: clients must read until EOF, not until the exit status.
                let reaped = async {
                    let exit = exit_of(child.wait().await);
                    send_exit(&handle, &write, &exit).await;
                    exit
                };
                tokio::select! {
                    (_, exit) = async { tokio::join!(forward, reaped) } => Some(exit),
                    _ = &mut cancel => None,
                }
            }
            Some(master) => {
                // As with pipes, the exit status goes out when the command is reaped, and
                // the channel ends once the master reads EIO: every process holding the
                // terminal has closed it and everything written to it has been relayed
                // (sshd waits for the same EOF).
                let reaped = async {
                    let exit = exit_of(child.wait().await);
                    send_exit(&handle, &write, &exit).await;
                    exit
                };
                // Input never ends the session: after the client's EOF the terminal simply
                // gets no more (sshd neither closes the master nor sends VEOF for it).
                let input = async {
                    feed_master(&master, stdin).await;
                    std::future::pending::<()>().await
                };
                let finished = tokio::select! {
                    (_, exit) = async { tokio::join!(pump_master(&master, &write), reaped) } => {
                        Some(exit)
                    }
                    _ = input => None,
                    _ = &mut cancel => None,
                };
                // The client is gone (or the session is over): closing the master hangs the
                // terminal up, so the kernel sends SIGHUP to the session's controlling
                // process and foreground group, as when sshd closes it.
                drop(master);
                finished
            }
        };
        let Some(exit) = finished else {
            // After a cancel the child's pipes are closed, so it sees SIGPIPE or EOF like under
            // sshd, and keeps running otherwise (tests can see it with
            // `Simulator::vm_process_count`); on a pty it was hung up. Reap it either way.
            let _ = child.wait().await;
            vm.record(&command, None);
            return;
        };
        vm.record(
            &command,
            match exit {
                Exit::Code(c) => Some(c),
                Exit::Signal(_) => None,
            },
        );
        let _ = write.eof().await;
        let _ = write.close().await;
        tracing::trace!(vm = %vm.name, channel = ?id, "session command finished");
    }
}

/// The command of a pty session: the slave as stdin, stdout, stderr and (setsid, then
/// TIOCSCTTY) controlling terminal, with `TERM` and `SSH_TTY` set as sshd sets them.
fn pty_command(vm: &VmRuntime, p: JobPty) -> std::io::Result<(Command, Arc<Master>)> {
    let JobPty {
        master,
        slave,
        name,
        term,
    } = p;
    let mut cmd = vm.login_command("/bin/sh");
    cmd.env("SSH_TTY", &name);
    if !term.is_empty() {
        cmd.env("TERM", &term);
    }
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe, and the closure allocates nothing.
    // stdin is already the slave when pre_exec closures run (std dup2s stdio first).
    unsafe {
        cmd.pre_exec(|| {
            // A new session (and process group, which `rm` and `signal` kill by), with no
            // controlling terminal yet; then the slave becomes it, and its foreground group
            // this one, so a hang-up reaches the command.
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok((cmd, master))
}

/// Writes the client's data to the pty master as terminal input until the client's EOF.
async fn feed_master(master: &Master, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(chunk) = rx.recv().await {
        if master.write_all(&chunk).await.is_err() {
            // The terminal is gone (hung up); drop the rest like a broken pipe would.
            return;
        }
    }
}

/// Copies what the session writes to its terminal to the channel (as data: a pty has no
/// separate stderr), until the master reads EIO. Waits for the client's window like [`pump`].
async fn pump_master(master: &Master, write: &ChannelWriteHalf<Msg>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match master.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if write
            .data_bytes(Bytes::copy_from_slice(&buf[..n]))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// What a reaped command's status tells the client.
fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c as u32),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(255),
        },
        Err(_) => Exit::Code(255),
    }
}

/// exit-status or exit-signal.
async fn send_exit(handle: &russh::server::Handle, write: &ChannelWriteHalf<Msg>, exit: &Exit) {
    match *exit {
        Exit::Code(c) => {
            let _ = write.exit_status(c).await;
        }
        Exit::Signal(sig) => {
            let _ = handle
                .exit_signal_request(
                    write.id(),
                    signal_name(sig),
                    false,
                    String::new(),
                    String::new(),
                )
                .await;
        }
    }
}

/// exit-status (or exit-signal), then EOF and close, in order on the session's queue.
async fn finish(handle: &russh::server::Handle, write: &ChannelWriteHalf<Msg>, exit: Exit) {
    send_exit(handle, write, &exit).await;
    let _ = write.eof().await;
    let _ = write.close().await;
}

fn signal_name(sig: i32) -> Sig {
    match sig {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        other => Sig::Custom(format!("SIG{other}")),
    }
}

fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => libc::SIGUSR2,
            _ => return None,
        },
    })
}

/// Writes queued stdin to the child; closes its stdin when the client sends EOF.
async fn feed_stdin(
    mut child_stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    while let Some(chunk) = rx.recv().await {
        if child_stdin.write_all(&chunk).await.is_err() {
            // The child stopped reading; drop the rest like a broken pipe would.
            return;
        }
    }
    let _ = child_stdin.shutdown().await;
}

/// Copies one child pipe to the channel. `send_bytes` waits for the client's window, so a
/// 20 MiB output never piles up in memory and the child is paused by its pipe instead.
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    write: &ChannelWriteHalf<Msg>,
    ext: Option<u32>,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        let sent = match ext {
            None => write.data_bytes(chunk).await,
            Some(code) => write.extended_data_bytes(code, chunk).await,
        };
        if sent.is_err() {
            return;
        }
    }
}
