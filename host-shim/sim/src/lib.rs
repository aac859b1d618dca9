//! An embedded exe.dev simulator: the `/exec` HTTP API on loopback and SSH-reachable VMs, so the
//! provider can be exercised end to end (real HTTP client, real OpenSSH client) with no account
//! and no network. Behaviour follows exe.dev's API and SSH facts as the team's notes record them
//! (`shared/reference/exe-dev.md` §1–§2, beside this repository).
//!
//! * **API**: a hyper server on `127.0.0.1:<ephemeral>`; see [`Simulator::api_url`].
//! * **VMs**: each VM has its own directory `<state>/vms/<name>/` with `home/` (the session cwd
//!   and `$HOME`), `tmp/` (`$TMPDIR`) and, while it runs, `setup`; its own ed25519 host key; and
//!   its own SSH server (russh) on `127.0.0.1:<ephemeral>`.
//! * **Routing**: no `/etc/hosts` changes; clients pass the generated OpenSSH config
//!   ([`Simulator::ssh_config_path`]) with `ssh -F`. It is rewritten atomically (temp file +
//!   rename) on every change. See [`Routing`]: by default `Host *.exe.xyz` jumps (`ProxyJump`)
//!   through the simulator's SSH gateway, which forwards to the VM named by the destination host,
//!   so it works even when the client passes `-p 22` explicitly; [`Routing::DirectPorts`]
//!   instead writes a `Host <vm>.exe.xyz` block per VM (`HostName 127.0.0.1`, `Port`,
//!   `HostKeyAlias`). Either way an unknown or deleted VM fails locally (gateway: "stdio
//!   forwarding failed"; direct ports: "Connection refused") and never reaches real DNS.
//! * **Sessions with a pty request** get no pty (stdout and stderr stay separate), but losing the
//!   client sends SIGHUP to the command's process group, as closing a real pty would.
//! * **Keys**: one ed25519 client key is generated at start ([`Simulator::client_key_path`],
//!   mode 0600, in the 0700 state dir); every VM accepts exactly that key.
//! * **Home template**: with [`SimOptions::home_template`] every VM that `new` creates starts
//!   with a copy of that directory as its home (what an image would ship, e.g. fake CLIs in
//!   `.local/bin` for the real-server smoke scripts).
//! * **Setup script**: like exe.dev, `--setup-script` runs asynchronously at "boot": it is written
//!   to `<state>/vms/<name>/setup` and run with `sh` in the VM's home while the VM already accepts
//!   SSH; its output goes to `<state>/vms/<name>/setup.log` and the file is removed afterwards.
//! * **Sessions** behave like sshd without a pty: when the client goes away the command's pipes
//!   are closed but the process is not killed. `rm` kills every process group of the VM.

mod api;
pub mod cli;
pub mod cpu;
mod faults;
mod flags;
mod gateway;
mod link;
mod names;
mod pty;
mod ssh;
mod tap;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use tokio::task::JoinHandle;

pub use cpu::CpuTime;
pub use faults::{Faults, ANY, ONBOARDING_MARKER};
pub use link::{sleep_until_precisely, LinkModel};

/// How `<vm>.exe.xyz` reaches a VM's loopback SSH server through the generated ssh config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Routing {
    /// `Host *.exe.xyz` → `ProxyJump` through the simulator's SSH gateway (authenticated with
    /// the simulator's client key, configured in the file), which picks the VM by host name,
    /// like exe.dev's proxy. Robust to an explicit `-p 22` on the command line. Costs one extra
    /// `ssh -W` process and handshake per connection.
    #[default]
    Gateway,
    /// One `Host <vm>.exe.xyz` block per live VM with `HostName 127.0.0.1`, `Port <vm port>` and
    /// `HostKeyAlias`. Simplest, but an explicit `-p` on the ssh command line overrides `Port`.
    DirectPorts,
}

/// How the simulator is configured.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The one bearer token the API accepts.
    pub token: String,
    /// The token's allowed commands (exe.dev's `cmds`); `None` allows every command.
    pub allowed_cmds: Option<Vec<String>>,
    /// Where keys, the ssh config and VM directories live; `None` uses a fresh temp dir that
    /// [`Simulator::shutdown`] removes.
    pub state_dir: Option<PathBuf>,
    /// Server-side execution limit of one API command (exe.dev: 30 s); past it the API answers
    /// 504 `{"error":"command timed out"}`.
    pub exec_timeout: Duration,
    /// Reported by `whoami`.
    pub email: String,
    /// How the generated ssh config routes `<vm>.exe.xyz`.
    pub routing: Routing,
    /// A link model (added round trip, bandwidth cap) on the SSH path; needs
    /// [`Routing::Gateway`], whose one entry point it sits in front of.
    pub link: Option<LinkModel>,
    /// A directory every VM made by `new` starts with as its home (copied: files, directories,
    /// symlinks, modes), as the files an image ships: fixtures such as fake CLIs in
    /// `.local/bin`. `cp` copies its source VM's home instead.
    pub home_template: Option<PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            token: format!("exe1.sim{}", random_alnum(24)),
            allowed_cmds: None,
            state_dir: None,
            exec_timeout: Duration::from_secs(30),
            email: "sim@example.com".to_owned(),
            routing: Routing::default(),
            link: None,
            home_template: None,
        }
    }
}

impl SimOptions {
    /// Options with the given token and defaults for everything else.
    pub fn with_token(token: impl Into<String>) -> Self {
        SimOptions {
            token: token.into(),
            ..SimOptions::default()
        }
    }
}

/// One `/exec` request as the simulator saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiCall {
    /// The resolved command name (`new`, `ls`, …), empty when the request never got that far.
    pub command: String,
    /// The raw request body (lossily decoded).
    pub body: String,
    /// The HTTP status sent; 0 when the response was deliberately lost.
    pub status: u16,
    /// When the simulator answered it (or gave up on it): the tests measure the spacing of
    /// requests with it.
    pub at: Option<std::time::Instant>,
}

/// One SSH session command as a VM ran it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshCall {
    /// The VM's name.
    pub vm: String,
    /// The exec request's command (lossily decoded); `None` for a shell session.
    pub command: Option<String>,
    /// The exit status sent; `None` when killed by a signal or the client went away first.
    pub exit_code: Option<u32>,
}

/// A running simulator. Dropping it kills VM processes and removes a temp state dir, but
/// [`Simulator::shutdown`] is the orderly way.
pub struct Simulator {
    inner: Arc<Inner>,
    api_port: u16,
    api_task: JoinHandle<()>,
    gateway_task: Option<JoinHandle<()>>,
    link_task: Option<JoinHandle<()>>,
}

/// Shared state behind the API server and the VMs.
struct Inner {
    opts: SimOptions,
    state_dir: PathBuf,
    /// Keeps a temp state dir alive; `None` when the caller chose the directory.
    temp: Mutex<Option<tempfile::TempDir>>,
    client_key: PrivateKey,
    client_pub: PublicKey,
    faults: Arc<Faults>,
    vms: Mutex<VmTable>,
    log: Mutex<Vec<ApiCall>>,
    ssh_log: Arc<Mutex<Vec<SshCall>>>,
    /// A bound, never-listening socket: its port is the catch-all route (connection refused).
    dead_port: u16,
    _dead_socket: tokio::net::TcpSocket,
    /// The port the ssh config sends `*.exe.xyz` to with [`Routing::Gateway`]: the gateway's
    /// own, or the link model's relay in front of it.
    gateway_port: Option<u16>,
    path_env: String,
    /// The live connections of the SSH entry point (the gateway, or the VMs with direct
    /// ports), for [`Simulator::reset_ssh_connections`] and its siblings.
    taps: Arc<tap::Taps>,
}

#[derive(Default)]
struct VmTable {
    live: BTreeMap<String, Vm>,
    /// Names of deleted VMs: exe.dev keeps them reserved.
    retired: BTreeSet<String>,
    /// Every VM ever created, with when it appeared and when it was deleted.
    history: Vec<VmLifetime>,
}

/// When a VM existed: tests measure how long an unowned VM lived from these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmLifetime {
    /// The VM name.
    pub name: String,
    /// When `new`/`cp` made it appear (listed by `ls`).
    pub created: std::time::Instant,
    /// When `rm` deleted it; none while it lives.
    pub deleted: Option<std::time::Instant>,
}

/// A live VM.
struct Vm {
    runtime: Arc<ssh::VmRuntime>,
    dir: PathBuf,
    port: u16,
    image: String,
    tags: Vec<String>,
    comment: String,
    cpus: u64,
    memory: u64,
    disk: u64,
    created_at: String,
    ready: Arc<std::sync::atomic::AtomicBool>,
    server: JoinHandle<()>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Closing the listener makes the VM unreachable at once; killing its process groups and
        // sessions leaves nothing behind.
        self.server.abort();
        self.runtime.disconnect_all();
        self.runtime.kill_all();
    }
}

/// Everything `new`/`cp` need to create a VM.
struct VmSpec {
    name: String,
    image: String,
    tags: Vec<String>,
    comment: String,
    env: Vec<(String, String)>,
    cpus: u64,
    memory: u64,
    disk: u64,
    setup_script: Option<String>,
    /// `cp`: the home directory to copy.
    copy_from: Option<PathBuf>,
}

impl Simulator {
    /// Generates the client key, binds the API on loopback and starts serving.
    pub async fn start(opts: SimOptions) -> anyhow::Result<Simulator> {
        let (state_dir, temp) = match &opts.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("creating state dir {}", d.display()))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("exe-dev-sim-")
                    .tempdir()
                    .context("creating the simulator state dir")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        if let Some(t) = &opts.home_template {
            anyhow::ensure!(
                t.is_dir(),
                "the home template {} is not a directory",
                t.display()
            );
        }
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))?;
        // VMs never outlive a simulator; a caller-chosen dir may hold a crashed run's leftovers.
        let _ = std::fs::remove_dir_all(state_dir.join("vms"));
        std::fs::create_dir_all(state_dir.join("vms"))?;

        let client_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .context("generating the client key")?;
        let client_pub = client_key.public_key().clone();
        let pem = client_key
            .to_openssh(LineEnding::LF)
            .context("encoding the client key")?;
        write_private(&state_dir.join("id_ed25519"), pem.as_bytes())?;
        let pub_line = client_pub.to_openssh().context("encoding the public key")?;
        std::fs::write(state_dir.join("id_ed25519.pub"), format!("{pub_line}\n"))?;

        let dead_socket = tokio::net::TcpSocket::new_v4()?;
        dead_socket.bind(([127, 0, 0, 1], 0).into())?;
        let dead_port = dead_socket.local_addr()?.port();

        let path_env = std::env::var("PATH")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });

        let gateway_listener = match opts.routing {
            Routing::Gateway => Some(
                tokio::net::TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .context("binding the SSH gateway")?,
            ),
            Routing::DirectPorts => None,
        };
        let (gateway_port, link_task) = match (&gateway_listener, opts.link) {
            (Some(l), None) => (Some(l.local_addr()?.port()), None),
            (Some(l), Some(model)) => {
                let (port, task) = link::spawn_relay(l.local_addr()?.port(), model)
                    .await
                    .context("binding the link model's relay")?;
                (Some(port), Some(task))
            }
            (None, None) => (None, None),
            (None, Some(_)) => {
                anyhow::bail!("the link model needs gateway routing (its one SSH entry point)")
            }
        };

        let inner = Arc::new(Inner {
            opts,
            state_dir,
            temp: Mutex::new(temp),
            client_key,
            client_pub,
            faults: Arc::new(Faults::default()),
            vms: Mutex::new(VmTable::default()),
            log: Mutex::new(Vec::new()),
            ssh_log: Arc::default(),
            dead_port,
            _dead_socket: dead_socket,
            gateway_port,
            path_env,
            taps: Arc::default(),
        });
        inner.write_ssh_config(&inner.lock_vms())?;
        {
            // Weak: the hook lives inside `inner` (in its Faults) and must not keep it alive.
            let weak = Arc::downgrade(&inner);
            inner.faults.set_disconnect_hook(Box::new(move |vm: &str| {
                let Some(inner) = weak.upgrade() else { return };
                let runtimes: Vec<_> = inner
                    .lock_vms()
                    .live
                    .iter()
                    .filter(|(name, _)| vm == ANY || name.as_str() == vm)
                    .map(|(_, v)| v.runtime.clone())
                    .collect();
                for rt in runtimes {
                    rt.disconnect_all();
                }
            }));
        }

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the API listener")?;
        let api_port = listener.local_addr()?.port();
        let api_task = tokio::spawn(api::serve(listener, inner.clone()));
        let gateway_task = match gateway_listener {
            Some(l) => {
                // Weak: the gateway must not keep the VM table alive after the simulator.
                let weak = Arc::downgrade(&inner);
                let resolve: gateway::Resolver = Arc::new(move |host: &str| {
                    let inner = weak.upgrade()?;
                    let name = host.strip_suffix(".exe.xyz")?;
                    let port = inner.lock_vms().live.get(name).map(|vm| vm.port);
                    port
                });
                let host_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
                Some(tokio::spawn(gateway::accept_loop(
                    l,
                    ssh::server_config(host_key),
                    inner.client_pub.clone(),
                    resolve,
                    inner.taps.clone(),
                )))
            }
            None => None,
        };
        Ok(Simulator {
            inner,
            api_port,
            api_task,
            gateway_task,
            link_task,
        })
    }

    /// The `/exec` endpoint, e.g. `http://127.0.0.1:40123/exec`.
    pub fn api_url(&self) -> String {
        format!("http://{}/exec", self.api_authority())
    }

    /// `127.0.0.1:<port>` of the API (for HTTP allow-lists).
    pub fn api_authority(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// The bearer token the API accepts.
    pub fn token(&self) -> &str {
        &self.inner.opts.token
    }

    /// The OpenSSH client config that routes `<vm>.exe.xyz` to the VMs (`ssh -F <path>`).
    pub fn ssh_config_path(&self) -> PathBuf {
        self.inner.state_dir.join("ssh_config")
    }

    /// The private key every VM accepts (OpenSSH format, mode 0600).
    pub fn client_key_path(&self) -> PathBuf {
        self.inner.state_dir.join("id_ed25519")
    }

    /// The private key material of [`Simulator::client_key_path`].
    pub fn client_key_pem(&self) -> String {
        self.inner
            .client_key
            .to_openssh(LineEnding::LF)
            .map(|z| z.to_string())
            .unwrap_or_default()
    }

    /// The public half of the client key, as an `authorized_keys` line.
    pub fn client_public_key(&self) -> String {
        self.inner.client_pub.to_openssh().unwrap_or_default()
    }

    /// The simulator's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// Names of the live VMs, sorted. Tests assert `is_empty()` to prove nothing leaked.
    pub fn vm_names(&self) -> Vec<String> {
        self.inner.lock_vms().live.keys().cloned().collect()
    }

    /// Every VM created so far, in order, with when it appeared and was deleted.
    pub fn vm_lifetimes(&self) -> Vec<VmLifetime> {
        self.inner.lock_vms().history.clone()
    }

    /// The home directory of a live VM.
    pub fn vm_home(&self, name: &str) -> Option<PathBuf> {
        self.inner
            .lock_vms()
            .live
            .get(name)
            .map(|vm| vm.runtime.home.clone())
    }

    /// The loopback SSH port of a live VM.
    pub fn vm_ssh_port(&self, name: &str) -> Option<u16> {
        self.inner.lock_vms().live.get(name).map(|vm| vm.port)
    }

    /// How many process groups started in a live VM (sessions, setup script) still exist;
    /// `None` for an unknown VM. Tests use it to prove a timed-out command left nothing behind.
    pub fn vm_process_count(&self, name: &str) -> Option<usize> {
        let rt = self.inner.lock_vms().live.get(name)?.runtime.clone();
        Some(rt.live_groups())
    }

    /// The process groups counted by [`Simulator::vm_process_count`], by id (the pid of each
    /// session command that leads one); `None` for an unknown VM.
    pub fn vm_process_groups(&self, name: &str) -> Option<Vec<i32>> {
        let rt = self.inner.lock_vms().live.get(name)?.runtime.clone();
        Some(rt.live_group_ids())
    }

    /// Run `command` in a live VM exactly as its SSH server would (`/bin/sh -c`, the VM's
    /// environment and home), but without SSH, and wait for it: the bench's measure of the
    /// remote work alone. Returns the exit code.
    pub async fn run_in_vm(&self, name: &str, command: &str) -> anyhow::Result<Option<i32>> {
        let rt = self.live_runtime(name)?;
        let status = rt
            .command("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        Ok(status.code())
    }

    /// The runtime of a live VM.
    fn live_runtime(&self, name: &str) -> anyhow::Result<Arc<ssh::VmRuntime>> {
        self.inner
            .lock_vms()
            .live
            .get(name)
            .map(|vm| vm.runtime.clone())
            .ok_or_else(|| anyhow::anyhow!("no VM named {name}"))
    }

    /// [`Simulator::run_in_vm`] with `stdin` fed to the command and its output kept, and the
    /// CPU time (user + system) the command and everything it waited for spent: the bench's
    /// model of an execute that costs nothing but its remote work, and of what that work costs
    /// the VM.
    pub async fn run_in_vm_measured(
        &self,
        name: &str,
        command: &str,
        stdin: &[u8],
    ) -> anyhow::Result<(std::process::Output, Duration)> {
        use std::io::{Read as _, Write as _};
        let rt = self.live_runtime(name)?;
        let mut cmd = rt.command("/bin/sh").into_std();
        cmd.arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let data = stdin.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn()?;
            let (mut inp, mut out, mut err) = (
                child.stdin.take().expect("stdin is piped"),
                child.stdout.take().expect("stdout is piped"),
                child.stderr.take().expect("stderr is piped"),
            );
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            std::thread::scope(|s| {
                // A command that does not read its stdin closes the pipe: not an error here.
                s.spawn(move || {
                    let _ = inp.write_all(&data);
                });
                s.spawn(|| out.read_to_end(&mut stdout));
                err.read_to_end(&mut stderr)
            })?;
            let pid = i32::try_from(child.id())?;
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // wait4 (not Child::wait) is the one call that reaps the child and returns its
            // accounting together; the std Child is not used after it.
            // SAFETY: `pid` is our own unreaped child; both pointers are to live locals.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            if r != pid {
                return Err(std::io::Error::last_os_error().into());
            }
            use std::os::unix::process::ExitStatusExt as _;
            let output = std::process::Output {
                status: std::process::ExitStatus::from_raw(status),
                stdout,
                stderr,
            };
            Ok((output, cpu::of_rusage(&usage)))
        })
        .await?
    }

    /// The CPU time spent so far in a live VM's session process groups, counted over the
    /// processes alive now (see [`CpuTime`]); `None` for an unknown VM.
    pub fn vm_cpu(&self, name: &str) -> Option<CpuTime> {
        let rt = self.inner.lock_vms().live.get(name)?.runtime.clone();
        Some(cpu::of_groups(&rt.live_group_ids()))
    }

    /// Fault: resets every client SSH connection open at this moment, through the gateway to
    /// every VM (with [`Routing::DirectPorts`]: every connection to a VM's own server), on
    /// loopback and behind the link model alike. The server side of each connection fails its
    /// pending read and write, ends the SSH session and closes the socket with `SO_LINGER` 0,
    /// so the client's TCP connection gets an RST at once (behind the link model the relay
    /// passes the reset on at once too, dropping what it still held). Each session then ends
    /// as when a client goes away: its command's pipes close, the command is not killed
    /// (unless a pty was requested: SIGHUP). Connections opened afterwards work normally.
    /// Returns how many connections it reset (already reset ones are not counted); safe to
    /// call repeatedly and concurrently; spawns nothing.
    pub fn reset_ssh_connections(&self) -> usize {
        self.inner.taps.reset_all()
    }

    /// Fault: silences every client SSH connection open at this moment (same connections as
    /// [`Simulator::reset_ssh_connections`]): from now on the server side discards every
    /// byte it reads and sends none (writes are reported done), and closes nothing, like a
    /// link that drops every packet. The sessions stay open, their commands keep running
    /// (until they block on a full pipe), and the clients see nothing until a keepalive
    /// gives up. Bytes already in the kernel's socket buffers (and the link model's queue)
    /// still arrive, as packets already on the wire would. Only the client's own close (FIN or
    /// RST) gets through: its session then ends like any whose client went away, so a silenced
    /// connection lives exactly as long as its client holds it. There is no undo; a reset ends
    /// a silenced connection at once. Connections opened afterwards work normally. Returns how
    /// many connections it silenced (already silenced or reset ones are not counted); safe to
    /// call repeatedly and concurrently; spawns nothing.
    pub fn silence_ssh_connections(&self) -> usize {
        self.inner.taps.silence_all()
    }

    /// Client SSH connections the entry point holds now (silenced ones included): the ones
    /// the two faults above would act on. Tests use it to prove a faulted connection ended.
    pub fn ssh_connection_count(&self) -> usize {
        self.inner.taps.count()
    }

    /// Fault injection switches, usable while the simulator runs.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Every `/exec` request so far, in arrival order.
    pub fn api_log(&self) -> Vec<ApiCall> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every finished SSH session command so far (all VMs), in completion order.
    pub fn ssh_log(&self) -> Vec<SshCall> {
        self.inner
            .ssh_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the API, deletes every VM (killing its processes) and removes the state.
    pub async fn shutdown(self) {
        // Drop does the work; this async form lets callers await a clean point and gives the
        // runtime a moment to deliver SSH disconnects.
        drop(self);
        tokio::task::yield_now().await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.api_task.abort();
        for task in [&self.gateway_task, &self.link_task].into_iter().flatten() {
            task.abort();
        }
        let vms = std::mem::take(&mut self.inner.lock_vms().live);
        drop(vms);
        if let Some(t) = self
            .inner
            .temp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = t.close();
        } else {
            // A caller-chosen dir: remove only what the simulator created in it.
            let d = &self.inner.state_dir;
            let _ = std::fs::remove_dir_all(d.join("vms"));
            for f in ["id_ed25519", "id_ed25519.pub", "ssh_config"] {
                let _ = std::fs::remove_file(d.join(f));
            }
        }
    }
}

/// Runs a simulator for the CLI: prints how to reach it, then serves until Ctrl-C. SIGUSR1
/// and SIGUSR2 fire [`Simulator::reset_ssh_connections`] and
/// [`Simulator::silence_ssh_connections`].
pub async fn serve(opts: SimOptions) -> anyhow::Result<()> {
    let sim = Simulator::start(opts).await?;
    println!("api_url={}", sim.api_url());
    println!("token={}", sim.token());
    println!("ssh_config={}", sim.ssh_config_path().display());
    println!("ssh_key={}", sim.client_key_path().display());
    println!(
        "example: ssh -F {} -i {} exedev@<vm>.exe.xyz",
        sim.ssh_config_path().display(),
        sim.client_key_path().display()
    );
    println!(
        "faults: kill -USR1 {0} resets every live SSH connection, kill -USR2 {0} silences them",
        std::process::id()
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).context("handling SIGUSR1")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("handling SIGUSR2")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => {
                r.context("waiting for Ctrl-C")?;
                break;
            }
            Some(()) = usr1.recv() => {
                let n = sim.reset_ssh_connections();
                tracing::info!("SIGUSR1: reset {n} SSH connection(s)");
            }
            Some(()) = usr2.recv() => {
                let n = sim.silence_ssh_connections();
                tracing::info!("SIGUSR2: silenced {n} SSH connection(s)");
            }
        }
    }
    sim.shutdown().await;
    Ok(())
}

impl Inner {
    fn lock_vms(&self) -> MutexGuard<'_, VmTable> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, mut call: ApiCall) {
        call.at.get_or_insert_with(std::time::Instant::now);
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    /// Rewrites the ssh config (temp file + rename, so a concurrent `ssh` never reads half a
    /// file). Called with the VM table locked, which also serialises writers.
    fn write_ssh_config(&self, table: &VmTable) -> anyhow::Result<()> {
        let mut text =
            String::from("# Written by the exe.dev simulator: routes <vm>.exe.xyz to loopback.\n");
        match self.gateway_port {
            Some(gw) => {
                // The jump hop is the simulator's own business: its key, no prompts, no
                // known_hosts noise. The hop to the VM keeps the caller's options and key. No
                // HostName for *.exe.xyz: `-W %h:%p` must carry the VM name to the gateway.
                let key = self.state_dir.join("id_ed25519");
                text.push_str("\nHost *.exe.xyz\n  ProxyJump exe-sim-gateway\n");
                text.push_str(&format!(
                    "\nHost exe-sim-gateway\n  HostName 127.0.0.1\n  Port {gw}\n  User exedev\n  \
                     IdentityFile \"{}\"\n  IdentitiesOnly yes\n  BatchMode yes\n  \
                     StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
                    key.display()
                ));
            }
            None => {
                for (name, vm) in &table.live {
                    text.push_str(&format!(
                        "\nHost {name}.exe.xyz\n  HostName 127.0.0.1\n  Port {}\n  HostKeyAlias {name}.exe.xyz\n",
                        vm.port
                    ));
                }
                text.push_str(&format!(
                    "\n# Unknown or deleted VMs: a reserved port nobody listens on (refused).\n\
                     Host *.exe.xyz\n  HostName 127.0.0.1\n  Port {}\n",
                    self.dead_port
                ));
            }
        }
        let path = self.state_dir.join("ssh_config");
        let tmp = self.state_dir.join(".ssh_config.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Creates and starts a VM. The name must already be validated; it is checked for
    /// availability here. Errors are `(status, message)` for the API.
    async fn create_vm(&self, spec: VmSpec) -> Result<serde_json::Value, (u16, String)> {
        let name = spec.name.clone();
        let internal = |e: &dyn std::fmt::Display| {
            tracing::warn!(vm = %name, "creating vm failed: {e}");
            (500u16, "internal error".to_owned())
        };
        let dir = self.state_dir.join("vms").join(&name);
        // Reserve the name first so concurrent `new`s cannot both win it.
        {
            let mut t = self.lock_vms();
            if t.live.contains_key(&name) || t.retired.contains(&name) {
                return Err((409, format!("vm name {name:?} is not available")));
            }
            t.retired.insert(name.clone());
        }
        let result = self.build_vm(spec, &dir).await;
        let mut t = self.lock_vms();
        match result {
            Ok(vm) => {
                let json = vm_json(&name, &vm, false, self.opts.routing);
                t.live.insert(name.clone(), vm);
                t.history.push(VmLifetime {
                    name: name.clone(),
                    created: std::time::Instant::now(),
                    deleted: None,
                });
                self.write_ssh_config(&t).map_err(|e| internal(&e))?;
                Ok(json)
            }
            Err(e) => {
                t.retired.remove(&name);
                let _ = std::fs::remove_dir_all(&dir);
                Err(internal(&e))
            }
        }
    }

    async fn build_vm(&self, spec: VmSpec, dir: &Path) -> anyhow::Result<Vm> {
        let home = dir.join("home");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&tmp)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(src) = spec.copy_from.or_else(|| self.opts.home_template.clone()) {
            let home2 = home.clone();
            tokio::task::spawn_blocking(move || copy_tree(&src, &home2)).await??;
        }
        let host_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(([127, 0, 0, 1], 0).into())?;
        let port = socket.local_addr()?.port();
        let runtime = Arc::new(ssh::VmRuntime {
            name: spec.name.clone(),
            home: home.clone(),
            tmp,
            env: spec.env,
            client_key: self.client_pub.clone(),
            faults: self.faults.clone(),
            log: self.ssh_log.clone(),
            path_env: self.path_env.clone(),
            pgids: Mutex::default(),
            sessions: Mutex::default(),
            // Behind the gateway its connections are the ones clients hold; the VM's own are
            // the gateway's, not the client's.
            taps: (self.opts.routing == Routing::DirectPorts).then(|| self.taps.clone()),
        });
        let config = ssh::server_config(host_key);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delay = self.faults.ready_delay();
        let server = {
            let runtime = runtime.clone();
            let ready = ready.clone();
            if delay.is_none() {
                // Listen before `new` answers, so a client may connect right away.
                let listener = socket.listen(128)?;
                ready.store(true, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(ssh::accept_loop(listener, runtime, config))
            } else {
                tokio::spawn(async move {
                    // Bound but not listening: connections are refused until the VM "boots".
                    tokio::time::sleep(delay.unwrap_or_default()).await;
                    match socket.listen(128) {
                        Ok(listener) => {
                            ready.store(true, std::sync::atomic::Ordering::SeqCst);
                            ssh::accept_loop(listener, runtime, config).await;
                        }
                        Err(e) => tracing::warn!("vm listener failed: {e}"),
                    }
                })
            }
        };
        if let Some(script) = spec.setup_script {
            let path = dir.join("setup");
            std::fs::write(&path, script)?;
            spawn_setup(runtime.clone(), dir.to_path_buf());
        }
        Ok(Vm {
            runtime,
            dir: dir.to_path_buf(),
            port,
            image: spec.image,
            tags: spec.tags,
            comment: spec.comment,
            cpus: spec.cpus,
            memory: spec.memory,
            disk: spec.disk,
            created_at: now_rfc3339(),
            ready,
            server,
        })
    }

    /// Deletes a live VM; its name stays reserved.
    fn delete_vm(&self, name: &str) -> bool {
        let mut t = self.lock_vms();
        let Some(vm) = t.live.remove(name) else {
            return false;
        };
        let now = std::time::Instant::now();
        if let Some(l) = t.history.iter_mut().rev().find(|l| l.name == name) {
            l.deleted.get_or_insert(now);
        }
        let _ = self.write_ssh_config(&t);
        drop(t);
        let dir = vm.dir.clone();
        drop(vm);
        let _ = std::fs::remove_dir_all(dir);
        true
    }
}

/// Runs `<vmdir>/setup` with `sh` in the VM's home, as exe.dev's `exe-setup.service` does, then
/// removes it. Asynchronous: `new` returns before it finishes.
fn spawn_setup(rt: Arc<ssh::VmRuntime>, dir: PathBuf) {
    tokio::spawn(async move {
        let log = std::fs::File::create(dir.join("setup.log"));
        let mut cmd = rt.command("/bin/sh");
        cmd.arg(dir.join("setup"))
            .stdin(std::process::Stdio::null());
        if let Ok(log) = log {
            if let Ok(log2) = log.try_clone() {
                cmd.stdout(log).stderr(log2);
            }
        }
        match cmd.spawn() {
            Ok(mut child) => {
                if let Some(pid) = child.id() {
                    rt.track(pid as i32);
                }
                let _ = child.wait().await;
            }
            Err(e) => tracing::warn!(vm = %rt.name, "setup script failed to start: {e}"),
        }
        let _ = std::fs::remove_file(dir.join("setup"));
    });
}

/// The JSON exe.dev returns for a VM (`new`, `cp`), plus the `ls` extras when `long`.
fn vm_json(name: &str, vm: &Vm, long: bool, routing: Routing) -> serde_json::Value {
    let host = format!("{name}.exe.xyz");
    // With the gateway, port 22 routes like on exe.dev. With direct ports, an ssh `-p` on the
    // command line overrides the config's `Port`, so report the VM's real loopback port (a
    // client that takes `ssh_port` from the API then still connects).
    let port = match routing {
        Routing::Gateway => 22,
        Routing::DirectPorts => vm.port,
    };
    let ssh_command = match routing {
        Routing::Gateway => format!("ssh {host}"),
        Routing::DirectPorts => format!("ssh -p {port} {host}"),
    };
    let ready = vm.ready.load(std::sync::atomic::Ordering::SeqCst);
    let mut v = serde_json::json!({
        "vm_name": name,
        "ssh_dest": host,
        "ssh_host": host,
        "ssh_port": port,
        "ssh_command": ssh_command,
        "https_url": format!("https://{host}"),
        "status": if ready { "running" } else { "starting" },
        "region": "lon",
        "region_display": "London, UK",
    });
    if long {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("image".into(), vm.image.clone().into());
            obj.insert("tags".into(), vm.tags.clone().into());
            obj.insert("comment".into(), vm.comment.clone().into());
            obj.insert("allocated_cpus".into(), vm.cpus.into());
            obj.insert("memory_capacity_bytes".into(), vm.memory.into());
            obj.insert("disk_capacity_bytes".into(), vm.disk.into());
            obj.insert("proxy_share".into(), "private".into());
            obj.insert("created_at".into(), vm.created_at.clone().into());
        }
    }
    v
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// Recursive copy of a VM home for `cp` (files, directories, symlinks; modes kept).
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &to)?;
            std::fs::set_permissions(&to, entry.metadata()?.permissions())?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

fn random_alnum(n: usize) -> String {
    use rand::RngExt;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// UTC now as RFC 3339, without a date-time dependency.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
