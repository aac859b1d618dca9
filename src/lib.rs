//! exe.dev sandbox provider for Paperclip, as a WebAssembly component.
//!
//! `lib.rs` is export glue only: the generated bindings stay private, WIT records are converted
//! to plain Rust domain types (see `convert`), and the logic in the other modules runs against
//! the [`host::Host`] trait so it is unit-tested natively.

pub mod api;
pub mod config;
pub mod error;
pub mod host;
pub mod pem;
pub mod vm;

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
            "wasi:random/random@0.2.12": wasi::random::random,
        },
    });
}

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::bindings::exports::paperclip::sandbox_provider::provider::{
        AcquireRequest, CallContext, ExecuteRequest, ExecuteResult, Guest, HealthReport,
        HealthStatus, Lease, ProbeResult, RealizeRequest, RealizedWorkspace, ReleaseRequest,
        ResumeRequest, TerminationReceipt, Validation,
    };
    use crate::bindings::paperclip::sandbox_provider::types::ProviderError;
    use crate::host::WasiHost;

    struct Component;

    fn not_implemented(what: &str) -> ProviderError {
        ProviderError::NotImplemented(format!("{what} is not implemented yet"))
    }

    impl Guest for Component {
        fn validate_config(config: String) -> Validation {
            let v = crate::config::validate(&config, &WasiHost);
            Validation {
                ok: v.ok,
                warnings: v.warnings,
                errors: v.errors,
                normalized_config: v.normalized_config,
            }
        }

        fn probe(_context: CallContext) -> Result<ProbeResult, ProviderError> {
            Err(not_implemented("probe"))
        }

        fn acquire_lease(_request: AcquireRequest) -> Result<Lease, ProviderError> {
            Err(not_implemented("acquire-lease"))
        }

        fn resume_lease(_request: ResumeRequest) -> Result<Lease, ProviderError> {
            Err(not_implemented("resume-lease"))
        }

        fn release_lease(
            _request: ReleaseRequest,
        ) -> Result<Option<TerminationReceipt>, ProviderError> {
            Err(not_implemented("release-lease"))
        }

        fn destroy_lease(
            _request: ReleaseRequest,
        ) -> Result<Option<TerminationReceipt>, ProviderError> {
            Err(not_implemented("destroy-lease"))
        }

        fn realize_workspace(_request: RealizeRequest) -> Result<RealizedWorkspace, ProviderError> {
            Err(not_implemented("realize-workspace"))
        }

        fn execute(_request: ExecuteRequest) -> Result<ExecuteResult, ProviderError> {
            Err(not_implemented("execute"))
        }

        fn health() -> HealthReport {
            HealthReport {
                status: HealthStatus::Ok,
                message: Some("exe.dev sandbox provider plugin healthy".to_string()),
            }
        }
    }

    crate::bindings::export!(Component with_types_in crate::bindings);
}
