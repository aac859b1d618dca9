//! Assembles what the component is granted from the operator's flags and the manifest.

use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, WasiHttpHooks};

use crate::bindings::ssh;
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
        http_hooks: Arc::new(|| Box::new(NoHttp)),
        ssh: Arc::new(NoSsh),
        exe_api_key,
    }
}
