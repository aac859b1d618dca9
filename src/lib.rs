//! exe.dev sandbox provider for Paperclip, as a WebAssembly component.
//!
//! `lib.rs` is export glue only: the generated bindings stay private, WIT records are converted
//! to plain Rust domain types in one module (`convert`, on `wasm32` only), and the logic in the
//! other modules runs against the [`host::Host`] trait so it is unit-tested natively.

pub mod api;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod host;
pub mod lease;
pub mod pem;
pub mod remote;
pub mod shell;
pub mod sync_script;
pub mod time;
pub mod timestamp;
pub mod validate;
pub mod vm;

#[cfg(test)]
mod testing;

#[cfg(target_arch = "wasm32")]
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "exe-dev-provider",
        with: {
            "wasi:http/outgoing-handler@0.2.12": wasi::http::outgoing_handler,
            "wasi:http/types@0.2.12": wasi::http::types,
            "wasi:io/streams@0.2.12": wasi::io::streams,
            "wasi:io/error@0.2.12": wasi::io::error,
            "wasi:io/poll@0.2.12": wasi::io::poll,
            "wasi:clocks/monotonic-clock@0.2.12": wasi::clocks::monotonic_clock,
            "wasi:clocks/wall-clock@0.2.12": wasi::clocks::wall_clock,
            "wasi:random/random@0.2.12": wasi::random::random,
            "paperclip:vm-ledger/ledger@0.2.0": generate,
        },
    });
}

#[cfg(target_arch = "wasm32")]
mod convert;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::bindings::exports::paperclip::sandbox_provider::provider as wit;
    use crate::bindings::paperclip::sandbox_provider::types as wit_types;
    use crate::convert::{context, execute_request, lease_from_wit, sync_operations};
    use crate::error::ProviderError;
    use crate::host::WasiHost;
    use crate::lease::{self, Provider};

    struct Component;

    type WitResult<T> = Result<T, wit_types::ProviderError>;

    /// Run `f` with the WIT error conversion every fallible export shares.
    fn fallible<T>(f: impl FnOnce() -> Result<T, ProviderError>) -> WitResult<T> {
        f().map_err(Into::into)
    }

    fn release_like(
        request: wit::ReleaseRequest,
        destroy: bool,
    ) -> WitResult<Option<wit::TerminationReceipt>> {
        fallible(|| {
            let host = WasiHost;
            let provider = Provider::new(&host, &context(request.context))?;
            let meta = lease::parse_metadata(request.lease_metadata.as_deref())?;
            let id = request.provider_lease_id.as_deref();
            let receipt = if destroy {
                provider.destroy(id, &meta)?
            } else {
                provider.release(id, &meta, request.cancel_active_work)?
            };
            Ok(receipt.map(Into::into))
        })
    }

    fn sync(
        direction: lease::Direction,
        request: wit::SyncRequest,
    ) -> WitResult<Vec<wit::SyncResult>> {
        fallible(|| {
            let host = WasiHost;
            let provider = Provider::new(&host, &context(request.context))?;
            let l = lease_from_wit(request.lease)?;
            let operations = sync_operations(request.operations);
            Ok(provider
                .sync(direction, &l, &operations)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    impl wit::Guest for Component {
        fn validate_config(config: String) -> wit::Validation {
            crate::validate::validate(&config, &WasiHost).into()
        }

        fn probe(context: wit::CallContext) -> WitResult<wit::ProbeResult> {
            Ok(lease::run_probe(&WasiHost, &crate::convert::context(context)).into())
        }

        fn acquire_lease(request: wit::AcquireRequest) -> WitResult<wit::Lease> {
            fallible(|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context))?;
                let cwd = request
                    .requested_cwd
                    .as_deref()
                    .filter(|s| !s.trim().is_empty());
                let expires = request
                    .requested_expires_at
                    .as_deref()
                    .filter(|s| !s.trim().is_empty());
                provider
                    .acquire_until(&request.run_id, cwd, expires)
                    .map(Into::into)
            })
        }

        fn resume_lease(request: wit::ResumeRequest) -> WitResult<wit::Lease> {
            fallible(|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context))?;
                let meta = lease::parse_metadata(request.lease_metadata.as_deref())?;
                provider
                    .resume(&request.provider_lease_id, &meta)
                    .map(Into::into)
            })
        }

        fn release_lease(
            request: wit::ReleaseRequest,
        ) -> WitResult<Option<wit::TerminationReceipt>> {
            release_like(request, false)
        }

        fn destroy_lease(
            request: wit::ReleaseRequest,
        ) -> WitResult<Option<wit::TerminationReceipt>> {
            release_like(request, true)
        }

        fn realize_workspace(request: wit::RealizeRequest) -> WitResult<wit::RealizedWorkspace> {
            fallible(|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context))?;
                let l = lease_from_wit(request.lease)?;
                let w = lease::Workspace {
                    local_path: request.workspace.local_path,
                    remote_path: request.workspace.remote_path,
                    mode: request.workspace.mode,
                };
                provider.realize(&l, &w).map(Into::into)
            })
        }

        fn execute(request: wit::ExecuteRequest) -> WitResult<wit::ExecuteResult> {
            fallible(|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context.clone()))?;
                provider.execute(execute_request(request)?).map(Into::into)
            })
        }

        fn plan_session(
            request: wit::SessionRequest,
        ) -> WitResult<crate::bindings::paperclip::sandbox_provider::session::Plan> {
            fallible(|| {
                let host = WasiHost;
                let (ctx, l, purpose) = crate::convert::session_request(request)?;
                let provider = Provider::new(&host, &ctx)?;
                provider.plan_session(&l, &purpose).map(Into::into)
            })
        }

        fn sync_in(request: wit::SyncRequest) -> WitResult<Vec<wit::SyncResult>> {
            sync(lease::Direction::In, request)
        }

        fn sync_out(request: wit::SyncRequest) -> WitResult<Vec<wit::SyncResult>> {
            sync(lease::Direction::Out, request)
        }

        fn list_vms(context: wit::CallContext) -> WitResult<Vec<wit::VmListing>> {
            fallible(|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &crate::convert::context(context))?;
                Ok(provider.list_vms()?.into_iter().map(Into::into).collect())
            })
        }

        fn reconcile(request: wit::ReconcileRequest) -> WitResult<wit::ReconcileReport> {
            fallible(|| {
                let host = WasiHost;
                let account: crate::host::Account = request.account.into();
                let r = Provider::for_account(&host, &account, request.budget_ms)?.reconcile()?;
                Ok(r.into())
            })
        }

        fn health() -> wit::HealthReport {
            wit::HealthReport {
                status: wit::HealthStatus::Ok,
                message: Some("exe.dev sandbox provider plugin healthy".to_string()),
            }
        }
    }

    crate::bindings::export!(Component with_types_in crate::bindings);
}
