//! The `ssh` capability: run one remote command through the system OpenSSH client.
//!
//! Plain-Rust API, independent of the generated bindings: it speaks the boundary types of
//! `paperclip-provider-types` ([`SshRequest`], [`SshTarget`], [`SshOutput`], [`SshError`]),
//! which the runtime's one conversion module (`crate::convert`) maps to and from WIT. A request's
//! `stream_output` is honoured by whoever passes the `on_chunk` callback, and `durable` by the
//! grants, which route it to the VM agent (`ssh_durable`).
//!
//! Security properties (each one is tested in `tests/caps.rs`):
//! - the destination host is checked against the [`Policy`] and syntax-validated before anything
//!   is spawned, and `--` separates the destination from the remote command, because OpenSSH
//!   resumes option parsing after the destination (`ssh host -oProxyCommand=…` would otherwise
//!   run a local command);
//! - `ssh` is executed directly (never through a shell) with a from-scratch environment;
//! - `-F /dev/null` unless the operator passed `--ssh-config FILE`, so neither `~/.ssh/config`
//!   nor `/etc/ssh/ssh_config` applies; our `-o` options come first on the command line and
//!   therefore win over anything in an operator config file (OpenSSH keeps the first value);
//! - pasted key material lives in a fresh `0700` temp dir as a `0600` file that is removed when
//!   the call ends, whichever way it ends (RAII: success, error, timeout, panic, cancellation);
//!   it never appears in argv, logs or errors;
//! - on timeout (or if the caller drops the future) the ssh client's whole process group is
//!   SIGKILLed, so a `ProxyCommand` or any other helper dies with it;
//! - commands sent straight to a live master (`ssh_mux`) pass the same checks first, only reach
//!   masters this runner started (sockets in its private directory), and never touch a key.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub use super::process_group::signal_name;
use super::process_group::{split_status, GroupKill};
use super::ssh_mux::{self, MuxUnavailable, StdinEnd};
use super::ssh_output::OutputSink;
pub use super::ssh_output::{ChunkCallback, StreamKind};
// The boundary types have one home, shared with the guest.
use crate::policy::{normalize_hostname, Policy};
pub use paperclip_provider_types::{
    Connected, HostKeyPolicy, Identity, SshError, SshOutput, SshRequest, SshTarget,
};

/// Hard ceiling for each of stdout and stderr, whatever the guest asks for: the host holds both
/// in memory and Paperclip's own frame limit is 128 Mi characters.
pub const DEFAULT_MAX_OUTPUT_CEILING: u64 = 64 * 1024 * 1024;

/// Largest pasted private key accepted (the manifest limits the field to 8192 characters).
const MAX_KEY_MATERIAL: usize = 64 * 1024;

/// Descriptors of the caller's to connect a command to, instead of `SshRequest::stdin` and the
/// captured stdout (see [`SshRunner::exec_io`]).
#[derive(Debug, Default)]
pub struct ExecIo {
    /// The command reads this (the read end of the caller's pipe).
    pub stdin: Option<OwnedFd>,
    /// The command writes its stdout here (the write end of the caller's pipe).
    pub stdout: Option<OwnedFd>,
}

/// Output kept from a connection attempt (its `true` prints nothing; errors are short).
const CONNECT_OUTPUT_CAP: u64 = 64 * 1024;

/// Settings of an [`SshRunner`], from the CLI.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The OpenSSH client to run (`--ssh-binary`; default `ssh`, looked up on `PATH`).
    pub ssh_binary: PathBuf,
    /// The host's state directory; `known_hosts` lives at `<state_dir>/known_hosts`. Created
    /// `0700` if missing.
    pub state_dir: PathBuf,
    /// `--ssh-config FILE`, passed as `-F FILE`; `None` passes `-F /dev/null`.
    pub ssh_config: Option<PathBuf>,
    /// Where private temp dirs for pasted keys are created; `None` uses `$TMPDIR` (or `/tmp`).
    pub temp_root: Option<PathBuf>,
    /// Ceiling for `max_output_bytes` (per stream).
    pub max_output_ceiling: u64,
    /// Share one master connection per target (`ControlMaster`); on by default.
    pub reuse_connections: bool,
}

impl SshSettings {
    /// Defaults: `ssh` from `PATH`, no config file, system temp dir, 64 MiB output ceiling.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            ssh_binary: PathBuf::from("ssh"),
            state_dir: state_dir.into(),
            ssh_config: None,
            temp_root: None,
            max_output_ceiling: DEFAULT_MAX_OUTPUT_CEILING,
            reuse_connections: true,
        }
    }
}

/// Runs remote commands with the system OpenSSH client under the host policy.
///
/// Cheap to share (`Arc<SshRunner>`). Connections are reused per target with OpenSSH
/// connection sharing: every call runs with `ControlMaster=auto`, so the first one to a target
/// starts a master connection (OpenSSH daemonizes it into its own session, out of reach of a
/// timed-out call's process-group kill) and later and concurrent calls open a channel on it
/// instead of a new handshake. A master that died leaves a stale socket, which OpenSSH detects,
/// unlinks and replaces on the next call. [`SshRunner::disconnect`] and
/// [`SshRunner::close_all`] end masters with `ssh -O exit`; an idle master closes by itself
/// after [`CONTROL_PERSIST`].
///
/// Once a master this runner started is listening, commands to its target skip the `ssh -S`
/// client altogether: `ssh_mux` opens the session on the control socket itself.
#[derive(Debug)]
pub struct SshRunner {
    settings: SshSettings,
    policy: Arc<Policy>,
    known_hosts: PathBuf,
    pool: Option<ConnectionPool>,
}

/// How long an idle master connection stays up. Also bounds how long masters outlive a worker
/// that was killed without a chance to close them.
pub const CONTROL_PERSIST: Duration = Duration::from_secs(120);

/// Keepalive of every connection: after this long with nothing from the server, the client
/// asks; after [`SERVER_ALIVE_COUNT_MAX`] unanswered asks it gives the connection up.
pub const SERVER_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// See [`SERVER_ALIVE_INTERVAL`].
pub const SERVER_ALIVE_COUNT_MAX: u32 = 2;

/// Longest control-socket directory: OpenSSH binds `<path>.<16 random chars>` before renaming
/// it, and a Unix socket path holds at most 107 bytes.
const MAX_CONTROL_DIR_LEN: usize = 70;

/// Where master connections' sockets live, and which ones this runner started.
#[derive(Debug)]
struct ConnectionPool {
    /// Private (0700) directory of control sockets.
    dir: PathBuf,
    /// Keys socket names: a per-process random key, so a name reveals nothing about the
    /// identity (key material) it was derived from.
    hasher: std::collections::hash_map::RandomState,
    /// Control path → the arguments `ssh -O exit` needs for it.
    masters: std::sync::Mutex<std::collections::HashMap<PathBuf, Vec<OsString>>>,
}

impl SshRunner {
    /// Create a runner, creating the state directory (mode `0700`) when it does not exist.
    pub fn new(settings: SshSettings, policy: Arc<Policy>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.state_dir)
            .with_context(|| {
                format!(
                    "creating the state directory {}",
                    settings.state_dir.display()
                )
            })?;
        let known_hosts = settings.state_dir.join("known_hosts");
        let pool = if settings.reuse_connections {
            control_dir(&settings.state_dir).map(|dir| ConnectionPool {
                dir,
                hasher: Default::default(),
                masters: Default::default(),
            })
        } else {
            None
        };
        Ok(Self {
            settings,
            policy,
            known_hosts,
            pool,
        })
    }

    /// The output cap a request gets: what it asks for, within the runner's ceiling.
    pub(crate) fn output_cap(&self, requested: u64) -> u64 {
        requested.min(self.settings.max_output_ceiling)
    }

    /// The `known_hosts` file host keys are recorded in and checked against.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// Run one remote command and wait for it (or for its deadline).
    ///
    /// `on_chunk` receives every stdout/stderr chunk as it arrives (only the part within the
    /// cap, so streamed output never exceeds the returned output).
    pub async fn exec(
        &self,
        req: SshRequest,
        on_chunk: Option<ChunkCallback>,
    ) -> Result<SshOutput, SshError> {
        self.exec_io(req, ExecIo::default(), on_chunk).await
    }

    /// [`SshRunner::exec`] with the command's stdin and/or stdout connected to descriptors of
    /// the caller's (a transfer's pipes) instead of `req.stdin` and the captured output, so a
    /// stream of any size passes without being held. The returned stdout is then empty.
    pub async fn exec_io(
        &self,
        req: SshRequest,
        io: ExecIo,
        mut on_chunk: Option<ChunkCallback>,
    ) -> Result<SshOutput, SshError> {
        let target = &req.target;
        let destination = self.check_target(target)?;
        if req.command.trim().is_empty() {
            // An empty command would make ssh start an interactive login shell.
            return Err(SshError::InvalidRequest(
                "the remote command is empty".into(),
            ));
        }
        if req.command.contains('\0') {
            return Err(SshError::InvalidRequest(
                "the remote command contains a NUL byte".into(),
            ));
        }
        if req.timeout_ms == 0 {
            return Err(SshError::InvalidRequest("timeout-ms must be > 0".into()));
        }
        let cap = usize::try_from(self.output_cap(req.max_output_bytes)).unwrap_or(usize::MAX);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms.into());

        let ExecIo {
            stdin: stdin_fd,
            stdout: stdout_fd,
        } = io;
        if let Some(control) = self.live_master(target) {
            let stdin = match (&stdin_fd, &req.stdin) {
                (Some(fd), _) => fd
                    .try_clone()
                    .map(StdinEnd::Fd)
                    .map_err(|e| SshError::Spawn(format!("duplicating stdin: {e}")))?,
                (None, Some(_)) => StdinEnd::Pipe,
                (None, None) => StdinEnd::Null,
            };
            let stdout = stdout_fd
                .as_ref()
                .map(OwnedFd::try_clone)
                .transpose()
                .map_err(|e| SshError::Spawn(format!("duplicating stdout: {e}")))?;
            let open = ssh_mux::open(&control, &req.command, stdin, stdout);
            let mut sink = OutputSink::new(cap);
            match tokio::time::timeout_at(deadline, open).await {
                Ok(Ok(session)) => {
                    // The master holds its duplicates; ours must go, or the caller's reader of
                    // stdout would wait for an EOF that only our copy withholds.
                    drop((stdin_fd, stdout_fd));
                    let ended =
                        ssh_mux::run(session, req.stdin, &mut sink, &mut on_chunk, deadline).await;
                    let mut result = sink.finish(ended.exit_code, None, ended.timed_out);
                    result.exit_code_from_remote = ended.from_remote;
                    log_finished(target, &result, started, "shared");
                    return Ok(result);
                }
                Ok(Err(MuxUnavailable::NotStarted(why))) => {
                    tracing::debug!(host = %target.host, %why, "starting an ssh client instead");
                }
                Ok(Err(e @ MuxUnavailable::Ambiguous(_))) => {
                    return Err(SshError::Spawn(e.to_string()));
                }
                Err(_elapsed) => {
                    let result = sink.finish(None, None, true);
                    log_finished(target, &result, started, "shared");
                    return Ok(result);
                }
            }
        }

        // Held until the end of this function: dropping it removes the key file and its dir.
        let key_dir = match &target.identity {
            Identity::KeyMaterial(material) => Some(self.write_key(material)?),
            _ => None,
        };
        let key_path = key_dir.as_ref().map(|d| d.path().join("id"));

        let args = self.build_args(&req, &destination, key_path.as_deref());
        let mut cmd = Command::new(&self.settings.ssh_binary);
        cmd.args(&args)
            .env_clear()
            .envs(self.child_env(&target.identity))
            .stdin(match (stdin_fd, &req.stdin) {
                (Some(fd), _) => Stdio::from(fd),
                (None, Some(_)) => Stdio::piped(),
                (None, None) => Stdio::null(),
            })
            .stdout(match stdout_fd {
                Some(fd) => Stdio::from(fd),
                None => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            // Own process group, so a timeout can kill ssh and everything it started.
            .process_group(0)
            .kill_on_drop(true);

        tracing::info!(
            host = %target.host,
            port = target.port,
            user = target.user.as_deref().unwrap_or(""),
            command_bytes = req.command.len(),
            stdin_bytes = req.stdin.as_ref().map_or(0, Vec::len),
            timeout_ms = req.timeout_ms,
            "ssh exec"
        );
        let mut child = cmd.spawn().map_err(|e| {
            SshError::Spawn(format!(
                "cannot start {}: {e}",
                self.settings.ssh_binary.display()
            ))
        })?;
        // The command keeps the caller's descriptors in the child only (see above).
        drop(cmd);
        let mut group = GroupKill::new(child.id());

        // stdin is fed by its own task so that a large upload and large output can never
        // deadlock each other on full pipe buffers.
        let stdin_task = match (child.stdin.take(), req.stdin) {
            (Some(mut pipe), Some(data)) => Some(tokio::spawn(async move {
                // EPIPE just means the remote side stopped reading; that is its business.
                let _ = pipe.write_all(&data).await;
                let _ = pipe.shutdown().await;
            })),
            _ => None,
        };

        // None when stdout went to the caller's descriptor: then there is nothing to collect.
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let mut sink = OutputSink::new(cap);

        // Until ssh exits, read as the output comes. Once it has exited, everything it will
        // ever write is already in the pipes (an ssh client, plain or sharing a master, exits
        // only after its channel has delivered all output), so the rest is read without
        // waiting; a pipe still open after that is held by a leftover helper (e.g. a
        // `ProxyCommand` child), which is then killed. No timer decides what is kept.
        let outcome = {
            let drain = async {
                match stdout.as_mut() {
                    Some(out) => sink.drain(out, &mut stderr, &mut on_chunk).await,
                    None => {
                        let mut nothing = tokio::io::empty();
                        sink.drain(&mut nothing, &mut stderr, &mut on_chunk).await
                    }
                }
            };
            tokio::pin!(drain);
            let wait = child.wait();
            tokio::pin!(wait);
            tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    status = &mut wait => (status, false),
                    () = &mut drain => (wait.await, true),
                }
            })
            .await
        };

        let result = match outcome {
            Ok((status, drained)) => {
                let status =
                    status.map_err(|e| SshError::Spawn(format!("waiting for ssh: {e}")))?;
                if !drained {
                    let out_done = stdout.as_ref().is_none_or(|out| {
                        sink.read_buffered(StreamKind::Stdout, out, &mut on_chunk)
                    });
                    let err_done = sink.read_buffered(StreamKind::Stderr, &stderr, &mut on_chunk);
                    if !(out_done && err_done) {
                        // The group outlives ssh only through a helper holding the pipes.
                        group.kill();
                    }
                }
                group.disarm();
                let (exit_code, signal) = split_status(status);
                sink.finish(exit_code, signal, false)
            }
            Err(_elapsed) => {
                // The child has not been reaped, so its pid (= the group id) cannot have been
                // reused: killing the group here hits exactly ssh and its helpers.
                group.kill();
                let status = child.wait().await.ok();
                group.disarm();
                let signal = status.and_then(|s| s.signal()).map(signal_name);
                sink.finish(None, signal, true)
            }
        };
        if let Some(task) = stdin_task {
            task.abort();
        }
        drop(key_dir);

        log_finished(target, &result, started, "client");
        Ok(result)
    }

    /// The round trip to `target` over its live master connection: how long the master takes
    /// to open a channel (a session for `exit 0`, dropped at once). `None` when there is no
    /// master to ask (connections not pooled, or none up) or it did not answer within
    /// `timeout`.
    pub async fn link_round_trip(&self, target: &SshTarget, timeout: Duration) -> Option<Duration> {
        self.check_target(target).ok()?;
        let control = self.live_master(target)?;
        let open = ssh_mux::open(&control, "exit 0", StdinEnd::Null, None);
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(session)) => Some(session.opened_in),
            _ => None,
        }
    }

    /// Make sure a master connection to `target` is up, starting one if there is none: a
    /// spawned `ssh` runs `true` with `ControlMaster=auto` and stays behind as the master. After
    /// [`Connected::Ready`], commands to the target take the shared path and their exit status
    /// is known to be the remote command's. Since no caller command runs here, a failure is the
    /// connection's own (its output says why).
    pub async fn connect(
        &self,
        target: &SshTarget,
        timeout_ms: u32,
    ) -> Result<Connected, SshError> {
        self.check_target(target)?;
        if self.pool.is_none() {
            return Ok(Connected::Unpooled);
        }
        if let Some(control) = self.live_master(target) {
            if ssh_mux::alive(&control).await {
                return Ok(Connected::Ready);
            }
        }
        let probe = SshRequest {
            target: target.clone(),
            command: "true".into(),
            stdin: None,
            timeout_ms,
            max_output_bytes: CONNECT_OUTPUT_CAP,
            stream_output: false,
            durable: false,
        };
        let out = self.exec(probe, None).await?;
        if out.timed_out || out.exit_code != Some(0) {
            return Ok(Connected::Failed(out));
        }
        Ok(match self.live_master(target) {
            Some(_) => Connected::Ready,
            // Connected, but no master stayed (e.g. an operator config that disables it).
            None => Connected::Unpooled,
        })
    }

    /// Close the pooled master connection to `target`, if there is one (on release/destroy:
    /// the VM is going away, and a later VM of the same name must get a fresh connection).
    pub async fn disconnect(&self, target: &SshTarget) {
        let Some(path) = self.control_path(target) else {
            return;
        };
        let args = self
            .pool
            .as_ref()
            .and_then(|p| p.masters.lock().unwrap().remove(&path));
        if let Some(args) = args {
            self.exit_master(&path, &args).await;
        }
    }

    /// Close every master connection this runner started (when the worker exits).
    pub async fn close_all(&self) {
        let Some(pool) = &self.pool else { return };
        let masters: Vec<_> = pool.masters.lock().unwrap().drain().collect();
        for (path, args) in masters {
            self.exit_master(&path, &args).await;
        }
    }

    /// `ssh -O exit` for one control socket; a master that is already gone is fine.
    async fn exit_master(&self, path: &Path, args: &[OsString]) {
        if !path.exists() {
            return;
        }
        let status = Command::new(&self.settings.ssh_binary)
            .args(args)
            .env_clear()
            .envs(self.child_env(&Identity::Agent))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        let closed = tokio::time::timeout(Duration::from_secs(5), status).await;
        tracing::debug!(path = %path.display(), ok = matches!(closed, Ok(Ok(s)) if s.success()), "closed ssh master connection");
    }

    /// The control socket of a master this runner started for `target`, if it is listening
    /// (a socket file that is still there may belong to a master that died; connecting tells).
    pub(crate) fn live_master(&self, target: &SshTarget) -> Option<PathBuf> {
        let path = self.control_path(target)?;
        let started = self
            .pool
            .as_ref()?
            .masters
            .lock()
            .unwrap()
            .contains_key(&path);
        (started && path.exists()).then_some(path)
    }

    /// The control socket for `target`: one per (host, port, user, identity, host-key policy,
    /// config), so a connection authenticated with one key is never reused for another.
    fn control_path(&self, target: &SshTarget) -> Option<PathBuf> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let pool = self.pool.as_ref()?;
        let mut h = pool.hasher.build_hasher();
        target.host.hash(&mut h);
        target.port.hash(&mut h);
        target.user.hash(&mut h);
        match &target.identity {
            Identity::Agent => 0u8.hash(&mut h),
            Identity::KeyFile(p) => (1u8, p).hash(&mut h),
            Identity::KeyMaterial(k) => (2u8, k).hash(&mut h),
        }
        target.host_key_policy.as_str().hash(&mut h);
        self.settings.ssh_config.hash(&mut h);
        Some(pool.dir.join(format!("{:016x}", h.finish())))
    }

    /// Check the target against the policy and syntax rules; returns the `[user@]host`
    /// destination argument.
    /// The policy and syntax checks every command passes before it reaches a connection.
    pub(crate) fn check(&self, target: &SshTarget) -> Result<(), SshError> {
        self.check_target(target).map(drop)
    }

    fn check_target(&self, target: &SshTarget) -> Result<String, SshError> {
        let host = normalize_hostname(&target.host).ok_or_else(|| {
            SshError::InvalidRequest(format!(
                "host {:?} is not a valid host name (letters, digits, `-` and `.`)",
                target.host
            ))
        })?;
        if !self.policy.allows_ssh(&host) {
            tracing::warn!(host = %host, "ssh destination denied by policy");
            return Err(SshError::Denied(host));
        }
        if target.port == 0 {
            return Err(SshError::InvalidRequest(
                "port 0 is not a valid SSH port".into(),
            ));
        }
        match &target.identity {
            Identity::KeyFile(path) => {
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(SshError::InvalidRequest(
                        "the SSH identity file must be an absolute path".into(),
                    ));
                }
                if path.as_os_str().as_encoded_bytes().contains(&0) {
                    return Err(SshError::InvalidRequest(
                        "the SSH identity file path contains a NUL byte".into(),
                    ));
                }
            }
            Identity::KeyMaterial(material) => {
                if material.trim().is_empty() {
                    return Err(SshError::InvalidRequest(
                        "the pasted SSH private key is empty".into(),
                    ));
                }
                if material.len() > MAX_KEY_MATERIAL || material.contains('\0') {
                    return Err(SshError::InvalidRequest(
                        "the pasted SSH private key is not a plausible OpenSSH key".into(),
                    ));
                }
            }
            Identity::Agent => {}
        }
        match &target.user {
            None => Ok(host),
            Some(user) if valid_user(user) => Ok(format!("{user}@{host}")),
            Some(user) => Err(SshError::InvalidRequest(format!(
                "user {user:?} is not a valid login name (letters, digits, `.`, `_`, `+`, `-`; \
                 not starting with `-`)"
            ))),
        }
    }

    /// Write pasted key material into a fresh private temp dir. OpenSSH refuses keys without a
    /// trailing newline and (on some versions) with CRLF line ends, so both are normalised.
    fn write_key(&self, material: &str) -> Result<tempfile::TempDir, SshError> {
        use std::os::unix::fs::PermissionsExt;
        let root = self
            .settings
            .temp_root
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("paperclip-ssh-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&root)
            .map_err(|e| {
                SshError::Spawn(format!(
                    "cannot create a private temp dir in {}: {e}",
                    root.display()
                ))
            })?;
        let mut body = material.replace("\r\n", "\n");
        let trimmed_len = body.trim_end().len();
        body.truncate(trimmed_len);
        body.push('\n');
        let path = dir.path().join("id");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(body.as_bytes()).map(|()| f))
            .map_err(|e| SshError::Spawn(format!("cannot write the SSH key file: {e}")))?;
        file.flush()
            .map_err(|e| SshError::Spawn(format!("cannot write the SSH key file: {e}")))?;
        Ok(dir)
    }

    /// Options that shape the connection itself (connection sharing is added by `build_args`).
    fn connection_options(&self, target: &SshTarget) -> Vec<OsString> {
        // `no` must not record unverified keys in the file `yes`/`accept-new` trust.
        let known_hosts: &Path = match target.host_key_policy {
            HostKeyPolicy::No => Path::new("/dev/null"),
            _ => &self.known_hosts,
        };
        let mut opts: Vec<OsString> = Vec::new();
        let mut o = |kv: String| {
            opts.push("-o".into());
            opts.push(kv.into());
        };
        o("BatchMode=yes".into());
        o(format!(
            "StrictHostKeyChecking={}",
            target.host_key_policy.as_str()
        ));
        o(format!("UserKnownHostsFile={}", known_hosts.display()));
        o("ConnectTimeout=15".into());
        // A silent connection (a NAT entry expired, a network went away) is noticed within
        // about 6 s: the master then exits, and durable executions reconnect and resume.
        o(format!(
            "ServerAliveInterval={}",
            SERVER_ALIVE_INTERVAL.as_secs()
        ));
        o(format!("ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}"));
        o("ForwardAgent=no".into());
        o("ClearAllForwardings=yes".into());
        // Keeps "Permanently added … to the list of known hosts" out of the command's stderr,
        // which is returned to Paperclip byte for byte. Real errors are still printed.
        o("LogLevel=ERROR".into());
        opts
    }

    /// Note the arguments `ssh -O exit` will need for the master at `path`.
    fn remember_master(
        &self,
        path: &Path,
        args_so_far: &[OsString],
        target: &SshTarget,
        destination: &str,
    ) {
        let Some(pool) = &self.pool else { return };
        let mut masters = pool.masters.lock().unwrap();
        if masters.contains_key(path) {
            return;
        }
        let mut exit_args = args_so_far.to_vec();
        exit_args.extend([
            OsString::from("-p"),
            target.port.to_string().into(),
            "-O".into(),
            "exit".into(),
            destination.into(),
        ]);
        masters.insert(path.to_path_buf(), exit_args);
    }

    /// The full argv after the program name.
    fn build_args(&self, req: &SshRequest, destination: &str, key: Option<&Path>) -> Vec<OsString> {
        let target = &req.target;
        let mut args: Vec<OsString> = vec!["-F".into()];
        args.push(match &self.settings.ssh_config {
            Some(cfg) => cfg.clone().into(),
            None => "/dev/null".into(),
        });
        args.push("-T".into());
        args.extend(self.connection_options(target));
        if let Some(path) = self.control_path(target) {
            for kv in [
                "ControlMaster=auto".to_string(),
                format!("ControlPath={}", path.display()),
                format!("ControlPersist={}", CONTROL_PERSIST.as_secs()),
            ] {
                args.push("-o".into());
                args.push(kv.into());
            }
            self.remember_master(&path, &args, target, destination);
        }
        args.push("-p".into());
        args.push(target.port.to_string().into());
        let key_file = match &target.identity {
            Identity::KeyFile(path) => Some(Path::new(path.as_str())),
            Identity::KeyMaterial(_) => key,
            Identity::Agent => None,
        };
        if let Some(path) = key_file {
            args.push("-i".into());
            args.push(path.into());
            args.push("-o".into());
            args.push("IdentitiesOnly=yes".into());
        }
        args.push(destination.into());
        // OpenSSH parses options again after the destination; `--` ends that, so the command
        // can never be read as an option (e.g. `-oProxyCommand=…`).
        args.push("--".into());
        args.push(req.command.clone().into());
        args
    }

    /// The child's whole environment, built from scratch: no secret of the host leaks to ssh
    /// (or to a `ProxyCommand` from an operator config).
    fn child_env(&self, identity: &Identity) -> Vec<(OsString, OsString)> {
        let mut env = vec![
            (
                "PATH".into(),
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            // Paperclip runs workers without HOME; point it at the state dir so nothing falls
            // back to a missing or foreign home.
            ("HOME".into(), self.settings.state_dir.clone().into()),
        ];
        // The agent is only offered when it is the identity (or may hold the key file's
        // passphrase-protected key); a pasted key must be what authenticates.
        if matches!(identity, Identity::Agent | Identity::KeyFile(_)) {
            if let Some(sock) = std::env::var_os("SSH_AUTH_SOCK") {
                env.push(("SSH_AUTH_SOCK".into(), sock));
            }
        }
        env
    }
}

/// The one log line per finished command (sizes and status only: output may hold secrets).
pub(super) fn log_finished(target: &SshTarget, result: &SshOutput, started: Instant, via: &str) {
    tracing::info!(
        host = %target.host,
        via,
        exit_code = result.exit_code,
        signal = result.signal.as_deref().unwrap_or(""),
        timed_out = result.timed_out,
        stdout_bytes = result.stdout.len(),
        stderr_bytes = result.stderr.len(),
        stdout_truncated = result.stdout_truncated,
        stderr_truncated = result.stderr_truncated,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ssh exec finished"
    );
}

/// Login names: 1 to 64 of `[A-Za-z0-9._+-]`, not starting with `-` (exe.dev routing users look
/// like `vm+name`).
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// The private directory for control sockets: `<state>/cm`, or a per-user directory under the
/// temp dir when the state dir's path is too long for a Unix socket. `None` disables reuse.
fn control_dir(state_dir: &Path) -> Option<PathBuf> {
    let preferred = state_dir.join("cm");
    let dir = if preferred.as_os_str().len() <= MAX_CONTROL_DIR_LEN {
        preferred
    } else {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        std::env::temp_dir().join(format!("paperclip-ssh-cm-{uid}"))
    };
    match crate::statedir::ensure_private_dir(&dir) {
        Ok(()) if dir.as_os_str().len() <= MAX_CONTROL_DIR_LEN => Some(dir),
        Ok(()) => {
            tracing::warn!(
                "no short private directory for ssh control sockets; connections are not reused"
            );
            None
        }
        Err(e) => {
            tracing::warn!("ssh connection reuse disabled: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for ok in ["root", "exedev", "vm+bloggy", "a.b_c-d"] {
            assert!(valid_user(ok), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "a b",
            "a@b",
            "a\nb",
            "a;b",
            &"x".repeat(65),
        ] {
            assert!(!valid_user(bad), "{bad:?}");
        }
    }

    #[test]
    fn identity_debug_redacts_key() {
        let id = Identity::KeyMaterial("-----BEGIN OPENSSH PRIVATE KEY-----secret".into());
        assert_eq!(format!("{id:?}"), "KeyMaterial([REDACTED])");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(77), "SIG77");
    }
}
