//! Assembles what the component is granted from the operator's flags and the manifest.

use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, WasiHttpHooks};

use crate::access::HttpAccess;
use crate::bindings::{ssh, transfer};
use crate::caps::log::CallSink;
use crate::engine::Grants;
use crate::state::{BoxFuture, SshBackend};

/// HTTP hooks that refuse every request: for components granted no HTTP at all.
pub struct NoHttp;

impl WasiHttpHooks for NoHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

/// An SSH capability that refuses every request.
pub struct NoSsh;

impl SshBackend for NoSsh {
    fn exec(
        &self,
        request: ssh::ExecRequest,
        _sink: CallSink,
    ) -> BoxFuture<Result<ssh::ExecOutput, ssh::SshError>> {
        let host = request.target.host;
        Box::pin(async move {
            Err(ssh::SshError::Denied(format!(
                "SSH to {host} is not granted to this component"
            )))
        })
    }

    fn disconnect(&self, _target: ssh::Target) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Grants nothing but the `EXE_API_KEY` environment variable.
pub fn nothing(exe_api_key: Option<String>) -> Grants {
    Grants {
        http_hooks: Arc::new(|_| Box::new(NoHttp)),
        ssh: Arc::new(NoSsh),
        exe_api_key,
        ledger: None,
        http_access: Some(Arc::new(HttpAccess::new(Arc::default(), None))),
    }
}

/// Operator settings that shape the production grants.
#[derive(Clone, Debug)]
pub struct GrantOptions {
    /// The plugin manifest (its `x-wasm-host` key declares the grants).
    pub manifest: serde_json::Value,
    /// `--allow-http` flags.
    pub allow_http: Vec<String>,
    /// `--allow-ssh` flags.
    pub allow_ssh: Vec<String>,
    /// `--ssh-config`, passed to ssh as `-F`.
    pub ssh_config: Option<std::path::PathBuf>,
    /// `--ssh-binary`.
    pub ssh_binary: std::path::PathBuf,
    /// The host's private state directory.
    pub state_dir: std::path::PathBuf,
    /// `EXE_API_KEY` from the host's environment.
    pub exe_api_key: Option<String>,
    /// Share one SSH master connection per VM (off with `--no-ssh-connection-reuse`).
    pub reuse_ssh_connections: bool,
    /// `--allow-path` flags: host directories file transfers may read and write, besides the
    /// defaults (the temp dir and the Paperclip home).
    pub allow_paths: Vec<std::path::PathBuf>,
    /// The package's `worker-args.json`, named in the remedy for a refused HTTP authority
    /// (`None`: not running from an installed package; the remedy names it generically).
    pub worker_args: Option<std::path::PathBuf>,
    /// The VM agent uploaded to VMs for durable executions (`None`: every command takes the
    /// direct path).
    pub vm_agent: Option<&'static [u8]>,
}

/// The real grants: HTTP through the policy hooks, SSH through the OpenSSH runner.
pub fn production(opts: GrantOptions) -> anyhow::Result<Grants> {
    use crate::caps::http::{HttpLimits, PolicyHttpHooks};
    use crate::caps::ssh::{SshRunner, SshSettings};
    use crate::policy::Policy;

    let policy = Arc::new(Policy::from_manifest(
        &opts.manifest,
        &opts.allow_http,
        &opts.allow_ssh,
    )?);
    let hooks_policy = policy.clone();
    let ledger = crate::caps::ledger::VmLedger::new(opts.state_dir.join("vm-ledger"));
    let http_access = Arc::new(HttpAccess::new(policy.clone(), opts.worker_args));
    let mut settings = SshSettings::new(opts.state_dir);
    settings.ssh_binary = opts.ssh_binary;
    settings.ssh_config = opts.ssh_config;
    settings.reuse_connections = opts.reuse_ssh_connections;
    let runner = Arc::new(SshRunner::new(settings, policy)?);
    let roots = crate::transfer_roots::TransferRoots::with_defaults(&opts.allow_paths);
    let transfers = Arc::new(crate::caps::transfer::Transfers::new(runner.clone(), roots));
    let durable = opts.vm_agent.map(|bytes| {
        use crate::caps::ssh_durable::{DurableExecs, VmAgent};
        Arc::new(DurableExecs::new(runner.clone(), VmAgent::new(bytes)))
    });
    Ok(Grants {
        http_hooks: Arc::new(move |sink| {
            Box::new(
                PolicyHttpHooks::new(hooks_policy.clone(), HttpLimits::default())
                    .noting_denials_in(sink.clone()),
            )
        }),
        ssh: Arc::new(OpenSsh(runner, transfers, durable)),
        exe_api_key: opts.exe_api_key,
        ledger: Some(Arc::new(ledger)),
        http_access: Some(http_access),
    })
}

/// The OpenSSH runner behind the WIT `ssh` interface, and the transfers that ride on it.
struct OpenSsh(
    Arc<crate::caps::ssh::SshRunner>,
    Arc<crate::caps::transfer::Transfers>,
    Option<Arc<crate::caps::ssh_durable::DurableExecs>>,
);

impl SshBackend for OpenSsh {
    fn exec(
        &self,
        request: ssh::ExecRequest,
        sink: CallSink,
    ) -> BoxFuture<Result<ssh::ExecOutput, ssh::SshError>> {
        let runner = self.0.clone();
        let durable = self.2.clone().filter(|_| request.durable);
        Box::pin(async move {
            let stream = request.stream_output;
            let exec = crate::caps::ssh::SshExec {
                target: target_from_wit(request.target),
                command: request.command,
                stdin: request.stdin,
                timeout_ms: request.timeout_ms,
                max_output_bytes: request.max_output_bytes,
            };
            let live = stream.then(|| LiveOutput::new(sink));
            let on_chunk = live.as_ref().map(LiveOutput::callback);
            let result = match durable {
                Some(durable) => durable.exec(exec, on_chunk).await,
                None if request.durable => {
                    let direct = crate::caps::ssh_durable::direct(exec);
                    runner.exec(direct, on_chunk).await
                }
                None => runner.exec(exec, on_chunk).await,
            };
            if let Some(live) = live {
                live.finish();
            }
            result.map(output_to_wit).map_err(error_to_wit)
        })
    }

    fn connect(
        &self,
        target: ssh::Target,
        timeout_ms: u32,
    ) -> BoxFuture<Result<ssh::ConnectOutcome, ssh::SshError>> {
        use crate::caps::ssh::Connected;
        let runner = self.0.clone();
        Box::pin(async move {
            let outcome = runner.connect(&target_from_wit(target), timeout_ms).await;
            outcome
                .map(|c| match c {
                    Connected::Ready => ssh::ConnectOutcome::Ready,
                    Connected::Unpooled => ssh::ConnectOutcome::Unpooled,
                    Connected::Failed(out) => ssh::ConnectOutcome::Failed(output_to_wit(out)),
                })
                .map_err(error_to_wit)
        })
    }

    fn upload(
        &self,
        r: transfer::UploadRequest,
    ) -> BoxFuture<Result<transfer::TransferReport, transfer::TransferError>> {
        use crate::caps::transfer::Upload;
        let transfers = self.1.clone();
        Box::pin(async move {
            let upload = Upload {
                target: target_from_wit(r.target),
                local_path: r.local_path,
                kind: kind_from_wit(r.kind),
                exclude: r.exclude,
                follow_symlinks: r.follow_symlinks,
                remote_command: r.remote_command,
                timeout_ms: r.timeout_ms,
            };
            transfers
                .upload(upload)
                .await
                .map(report_to_wit)
                .map_err(transfer_error_to_wit)
        })
    }

    fn download(
        &self,
        r: transfer::DownloadRequest,
    ) -> BoxFuture<Result<transfer::TransferReport, transfer::TransferError>> {
        use crate::caps::transfer::Download;
        let transfers = self.1.clone();
        Box::pin(async move {
            let download = Download {
                target: target_from_wit(r.target),
                remote_command: r.remote_command,
                local_path: r.local_path,
                kind: kind_from_wit(r.kind),
                mode: r.mode,
                timeout_ms: r.timeout_ms,
            };
            transfers
                .download(download)
                .await
                .map(report_to_wit)
                .map_err(transfer_error_to_wit)
        })
    }

    fn disconnect(&self, target: ssh::Target) -> BoxFuture<()> {
        let runner = self.0.clone();
        Box::pin(async move { runner.disconnect(&target_from_wit(target)).await })
    }

    fn close_all(&self) -> BoxFuture<()> {
        let runner = self.0.clone();
        Box::pin(async move { runner.close_all().await })
    }
}

/// Forwards output chunks as `execute.log` text without splitting UTF-8 characters.
#[derive(Clone)]
struct LiveOutput {
    sink: CallSink,
    chunkers: Arc<std::sync::Mutex<[crate::caps::log::Utf8Chunker; 2]>>,
}

impl LiveOutput {
    fn new(sink: CallSink) -> Self {
        Self {
            sink,
            chunkers: Arc::default(),
        }
    }

    fn callback(&self) -> crate::caps::ssh::ChunkCallback {
        let this = self.clone();
        Box::new(move |kind, bytes| {
            let (i, name) = stream_index(kind);
            let pieces = this.chunkers.lock().unwrap()[i].push(bytes);
            for piece in pieces {
                this.sink.execute_chunk(name, &piece);
            }
        })
    }

    fn finish(&self) {
        for kind in [
            crate::caps::ssh::StreamKind::Stdout,
            crate::caps::ssh::StreamKind::Stderr,
        ] {
            let (i, name) = stream_index(kind);
            let pieces = self.chunkers.lock().unwrap()[i].finish();
            for piece in pieces {
                self.sink.execute_chunk(name, &piece);
            }
        }
    }
}

fn stream_index(kind: crate::caps::ssh::StreamKind) -> (usize, &'static str) {
    match kind {
        crate::caps::ssh::StreamKind::Stdout => (0, "stdout"),
        crate::caps::ssh::StreamKind::Stderr => (1, "stderr"),
    }
}

fn target_from_wit(t: ssh::Target) -> crate::caps::ssh::SshTarget {
    use crate::caps::ssh::{HostKeyPolicy, Identity};
    crate::caps::ssh::SshTarget {
        host: t.host,
        port: t.port,
        user: t.user,
        identity: match t.identity {
            ssh::Identity::Agent => Identity::Agent,
            ssh::Identity::KeyFile(p) => Identity::KeyFile(p.into()),
            ssh::Identity::KeyMaterial(k) => Identity::KeyMaterial(k),
        },
        host_key_policy: match t.host_key_policy {
            ssh::HostKeyPolicy::Yes => HostKeyPolicy::Yes,
            ssh::HostKeyPolicy::AcceptNew => HostKeyPolicy::AcceptNew,
            ssh::HostKeyPolicy::No => HostKeyPolicy::No,
        },
    }
}

fn output_to_wit(o: crate::caps::ssh::SshOutput) -> ssh::ExecOutput {
    ssh::ExecOutput {
        exit_code: o.exit_code,
        exit_code_from_remote: o.exit_code_from_remote,
        signal: o.signal,
        timed_out: o.timed_out,
        stdout: o.stdout,
        stderr: o.stderr,
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
    }
}

fn error_to_wit(e: crate::caps::ssh::SshError) -> ssh::SshError {
    use crate::caps::ssh::SshError as E;
    match e {
        E::Denied(m) => ssh::SshError::Denied(m),
        E::InvalidRequest(m) => ssh::SshError::InvalidRequest(m),
        E::Spawn(m) => ssh::SshError::Spawn(m),
        E::Lost(m) => ssh::SshError::Lost(m),
    }
}

fn kind_from_wit(k: transfer::EntryKind) -> crate::caps::transfer::Kind {
    match k {
        transfer::EntryKind::File => crate::caps::transfer::Kind::File,
        transfer::EntryKind::Directory => crate::caps::transfer::Kind::Directory,
    }
}

fn report_to_wit(r: crate::caps::transfer::Report) -> transfer::TransferReport {
    transfer::TransferReport {
        files: r.files,
        bytes: r.bytes,
        wire_bytes: r.wire_bytes,
        compressed: r.compressed,
    }
}

fn transfer_error_to_wit(e: crate::caps::transfer::TransferError) -> transfer::TransferError {
    use crate::caps::transfer::TransferError as E;
    match e {
        E::Denied(m) => transfer::TransferError::Denied(m),
        E::NotFound(m) => transfer::TransferError::NotFound(m),
        E::InvalidRequest(m) => transfer::TransferError::InvalidRequest(m),
        E::LocalIo(m) => transfer::TransferError::LocalIo(m),
        E::Remote(o) => transfer::TransferError::Remote(output_to_wit(o)),
        E::Timeout(m) => transfer::TransferError::Timeout(m),
        E::Spawn(m) => transfer::TransferError::Spawn(m),
    }
}
