//! The per-call store data: what one invocation of the component may touch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use paperclip_provider_types::{
    Connected, DownloadRequest, SessionPlan, SshError, SshOutput, SshRequest, SshTarget,
    TransferError, TransferReport, UploadRequest,
};

use crate::caps::session::OpenSession;

use crate::caps::ledger::VmLedger;
use crate::caps::log::CallSink;
use crate::limits::CallLimits;

/// A boxed future, as trait objects need.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The SSH capability as the component sees it. The production implementation runs the system
/// OpenSSH client under the host's policy; tests substitute scripted doubles.
pub trait SshBackend: Send + Sync {
    /// Run one remote command. `sink` receives live output when the request asks for it.
    fn exec(&self, request: SshRequest, sink: CallSink) -> BoxFuture<Result<SshOutput, SshError>>;

    /// Make sure a pooled connection to `target` is up. Backends that do not pool connections
    /// (and test doubles) answer `unpooled`: commands then run as they always do.
    fn connect(
        &self,
        _target: SshTarget,
        _timeout_ms: u32,
    ) -> BoxFuture<Result<Connected, SshError>> {
        Box::pin(async { Ok(Connected::Unpooled) })
    }

    /// Drop any pooled connection to `target`.
    fn disconnect(&self, target: SshTarget) -> BoxFuture<()>;

    /// Open a long-lived session (a duplex channel, a login PTY) as `plan` says, within
    /// `timeout`. Backends without pooled connections cannot hold one.
    fn open_session(
        &self,
        _plan: SessionPlan,
        _timeout: std::time::Duration,
    ) -> BoxFuture<Result<OpenSession, SshError>> {
        Box::pin(async {
            Err(SshError::Spawn(
                "this host does not hold sessions (duplex channels, login PTYs)".into(),
            ))
        })
    }

    /// Drop every pooled connection (the worker is exiting).
    fn close_all(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// The transfer capability: host files and directories streamed to and from a VM. A grant of
/// its own, so a host can give SSH without transfers (or fake either alone); the production
/// implementation rides on the SSH runner's connections.
pub trait TransferBackend: Send + Sync {
    /// Stream a host file or directory to the VM.
    fn upload(&self, request: UploadRequest) -> BoxFuture<Result<TransferReport, TransferError>>;

    /// Stream a VM file or directory to the host.
    fn download(
        &self,
        request: DownloadRequest,
    ) -> BoxFuture<Result<TransferReport, TransferError>>;
}

/// Builds the HTTP hooks (the HTTP policy point) for each new store, given the call's sink
/// (where the hooks note refused requests).
pub type HooksFactory = Arc<dyn Fn(&CallSink) -> Box<dyn WasiHttpHooks> + Send + Sync>;

/// Store data for one call.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: Box<dyn WasiHttpHooks>,
    pub(crate) ssh: Arc<dyn SshBackend>,
    pub(crate) transfer: Arc<dyn TransferBackend>,
    pub(crate) sink: CallSink,
    /// The VM ledger; none when the host keeps none (no state directory).
    pub(crate) ledger: Option<Arc<VmLedger>>,
    pub(crate) limits: CallLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut *self.hooks,
        }
    }
}
