//! Assembles what the component is granted from the operator's flags and the manifest.

use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, WasiHttpHooks};

use crate::access::HttpAccess;
use crate::caps::log::CallSink;
use crate::engine::Grants;
use crate::state::{BoxFuture, SshBackend, TransferBackend};
use paperclip_provider_types::{
    Connected, DownloadRequest, SessionPlan, SshError, SshOutput, SshRequest, SshTarget,
    TransferError, TransferReport, UploadRequest,
};

use crate::caps::session::OpenSession;

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
    fn exec(&self, request: SshRequest, _sink: CallSink) -> BoxFuture<Result<SshOutput, SshError>> {
        let host = request.target.host;
        Box::pin(async move {
            Err(SshError::Denied(format!(
                "SSH to {host} is not granted to this component"
            )))
        })
    }

    fn disconnect(&self, _target: SshTarget) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// A transfer capability that refuses every request.
pub struct NoTransfer;

impl NoTransfer {
    fn refuse() -> TransferError {
        TransferError::Denied("file transfers are not granted to this component".into())
    }
}

impl TransferBackend for NoTransfer {
    fn upload(&self, _: UploadRequest) -> BoxFuture<Result<TransferReport, TransferError>> {
        Box::pin(async { Err(NoTransfer::refuse()) })
    }

    fn download(&self, _: DownloadRequest) -> BoxFuture<Result<TransferReport, TransferError>> {
        Box::pin(async { Err(NoTransfer::refuse()) })
    }
}

/// Grants nothing but the `EXE_API_KEY` environment variable.
pub fn nothing(exe_api_key: Option<String>) -> Grants {
    Grants {
        http_hooks: Arc::new(|_| Box::new(NoHttp)),
        ssh: Arc::new(NoSsh),
        transfer: Arc::new(NoTransfer),
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
        ssh: Arc::new(OpenSsh(runner, durable)),
        transfer: Arc::new(OpenSshTransfers(transfers)),
        exe_api_key: opts.exe_api_key,
        ledger: Some(Arc::new(ledger)),
        http_access: Some(http_access),
    })
}

/// The OpenSSH runner behind the `ssh` capability, with the VM agent's durable executions
/// when the host has the agent.
struct OpenSsh(
    Arc<crate::caps::ssh::SshRunner>,
    Option<Arc<crate::caps::ssh_durable::DurableExecs>>,
);

impl SshBackend for OpenSsh {
    fn exec(&self, request: SshRequest, sink: CallSink) -> BoxFuture<Result<SshOutput, SshError>> {
        let runner = self.0.clone();
        let durable = self.1.clone().filter(|_| request.durable);
        Box::pin(async move {
            let live = request.stream_output.then(|| LiveOutput::new(sink));
            let on_chunk = live.as_ref().map(LiveOutput::callback);
            let result = match durable {
                Some(durable) => durable.exec(request, on_chunk).await,
                None if request.durable => {
                    let direct = crate::caps::ssh_durable::direct(request);
                    runner.exec(direct, on_chunk).await
                }
                None => runner.exec(request, on_chunk).await,
            };
            if let Some(live) = live {
                live.finish();
            }
            result
        })
    }

    fn connect(
        &self,
        target: SshTarget,
        timeout_ms: u32,
    ) -> BoxFuture<Result<Connected, SshError>> {
        let runner = self.0.clone();
        let durable = self.1.clone();
        Box::pin(async move {
            match durable {
                Some(durable) => durable.connect(&target, timeout_ms).await,
                None => runner.connect(&target, timeout_ms).await,
            }
        })
    }

    fn disconnect(&self, target: SshTarget) -> BoxFuture<()> {
        let runner = self.0.clone();
        Box::pin(async move { runner.disconnect(&target).await })
    }

    fn open_session(
        &self,
        plan: SessionPlan,
        timeout: std::time::Duration,
    ) -> BoxFuture<Result<OpenSession, SshError>> {
        let runner = self.0.clone();
        Box::pin(crate::caps::session::open(runner, plan, timeout))
    }

    fn close_all(&self) -> BoxFuture<()> {
        let runner = self.0.clone();
        Box::pin(async move { runner.close_all().await })
    }
}

/// Transfers over the OpenSSH runner's connections, within the allowed host roots.
struct OpenSshTransfers(Arc<crate::caps::transfer::Transfers>);

impl TransferBackend for OpenSshTransfers {
    fn upload(&self, request: UploadRequest) -> BoxFuture<Result<TransferReport, TransferError>> {
        let transfers = self.0.clone();
        Box::pin(async move { transfers.upload(request).await })
    }

    fn download(
        &self,
        request: DownloadRequest,
    ) -> BoxFuture<Result<TransferReport, TransferError>> {
        let transfers = self.0.clone();
        Box::pin(async move { transfers.download(request).await })
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
                this.sink.output_text(name, &piece);
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
                self.sink.output_text(name, &piece);
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
