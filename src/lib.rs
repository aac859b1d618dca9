//! exe.dev sandbox provider for Paperclip, as a WebAssembly component.
//!
//! `lib.rs` is export glue only: the generated bindings stay private, WIT records are converted
//! to plain Rust domain types (see `component`), and the logic in the other modules runs against
//! the [`host::Host`] trait so it is unit-tested natively.

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
mod component {
    use crate::bindings::exports::paperclip::sandbox_provider::provider as wit;
    use crate::bindings::paperclip::sandbox_provider::types as wit_types;
    use crate::error::ProviderError;
    use crate::host::WasiHost;
    use crate::lease::{self, Provider};
    use serde_json::{Map, Value};

    struct Component;

    type WitResult<T> = Result<T, wit_types::ProviderError>;

    fn to_wit_error(e: ProviderError) -> wit_types::ProviderError {
        use wit_types::ProviderError as W;
        match e {
            ProviderError::InvalidConfig(m) => W::InvalidConfig(m),
            ProviderError::Api(a) => W::Api(wit_types::ApiError {
                status: a.status,
                command: a.command,
                message: a.message,
                hint: a.hint,
            }),
            ProviderError::Ssh(m) => W::Ssh(m),
            ProviderError::NotFound(m) => W::NotFound(m),
            ProviderError::Denied(m) => W::Denied(m),
            ProviderError::Timeout(m) => W::Timeout(m),
            ProviderError::Transfer(m) => W::Transfer(m),
            ProviderError::InvalidRequest(m) => W::InvalidRequest(m),
            ProviderError::NotImplemented(m) => W::NotImplemented(m),
            ProviderError::Internal(m) => W::Internal(m),
        }
    }

    fn context(c: wit::CallContext) -> lease::CallContext {
        lease::CallContext {
            config: c.config,
            environment_id: c.environment_id,
            company_id: c.company_id,
        }
    }

    fn json_text(m: Map<String, Value>) -> String {
        Value::Object(m).to_string()
    }

    fn from_wit_lease(l: wit::Lease) -> Result<lease::Lease, ProviderError> {
        Ok(lease::Lease {
            provider_lease_id: l.provider_lease_id,
            metadata: lease::parse_metadata(Some(&l.metadata))?,
            expires_at: l.expires_at,
        })
    }

    fn to_wit_lease(l: lease::Lease) -> wit::Lease {
        wit::Lease {
            provider_lease_id: l.provider_lease_id,
            metadata: json_text(l.metadata),
            expires_at: l.expires_at,
        }
    }

    fn to_wit_receipt(r: Option<lease::Receipt>) -> Option<wit::TerminationReceipt> {
        r.map(|r| wit::TerminationReceipt {
            provider_lease_id: r.provider_lease_id,
            state: match r.state {
                lease::LeaseState::Stopped => wit::LeaseState::Stopped,
                lease::LeaseState::Destroyed => wit::LeaseState::Destroyed,
            },
        })
    }

    fn release_like(
        request: wit::ReleaseRequest,
        destroy: bool,
    ) -> Result<Option<wit::TerminationReceipt>, ProviderError> {
        let host = WasiHost;
        let provider = Provider::new(&host, &context(request.context))?;
        let meta = lease::parse_metadata(request.lease_metadata.as_deref())?;
        let id = request.provider_lease_id.as_deref();
        let receipt = if destroy {
            provider.destroy(id, &meta)?
        } else {
            provider.release(id, &meta, request.cancel_active_work)?
        };
        Ok(to_wit_receipt(receipt))
    }

    fn from_wit_sync(
        request: wit::SyncRequest,
    ) -> Result<(lease::Lease, Vec<lease::SyncOperation>), ProviderError> {
        let l = from_wit_lease(request.lease)?;
        let operations = request
            .operations
            .into_iter()
            .map(|op| lease::SyncOperation {
                operation_id: op.operation_id,
                files: op
                    .files
                    .into_iter()
                    .map(|m| lease::SyncMapping {
                        source_path: m.source_path,
                        target_path: m.target_path,
                        kind: match m.kind {
                            wit::SyncKind::File => crate::host::EntryKind::File,
                            wit::SyncKind::Directory => crate::host::EntryKind::Directory,
                        },
                        mode: m.mode,
                        exclude: m.exclude,
                        follow_symlinks: m.follow_symlinks,
                    })
                    .collect(),
                post_upload_commands: op
                    .post_upload_commands
                    .into_iter()
                    .map(|c| lease::PostUploadCommand {
                        command: c.command,
                        cwd: c.cwd,
                        timeout_ms: c.timeout_ms,
                    })
                    .collect(),
            })
            .collect();
        Ok((l, operations))
    }

    fn sync(
        direction: lease::Direction,
        request: wit::SyncRequest,
    ) -> WitResult<Vec<wit::SyncResult>> {
        (|| {
            let host = WasiHost;
            let provider = Provider::new(&host, &context(request.context.clone()))?;
            let (l, operations) = from_wit_sync(request)?;
            Ok(provider
                .sync(direction, &l, &operations)?
                .into_iter()
                .map(|r| wit::SyncResult {
                    operation_id: r.operation_id,
                    files_transferred: r.files_transferred,
                    bytes_transferred: r.bytes_transferred,
                })
                .collect())
        })()
        .map_err(to_wit_error)
    }

    impl wit::Guest for Component {
        fn validate_config(config: String) -> wit::Validation {
            let v = crate::validate::validate(&config, &WasiHost);
            wit::Validation {
                ok: v.ok,
                warnings: v.warnings,
                errors: v.errors,
                normalized_config: v.normalized_config,
            }
        }

        fn probe(context: wit::CallContext) -> WitResult<wit::ProbeResult> {
            let r = lease::run_probe(&WasiHost, &self::context(context));
            Ok(wit::ProbeResult {
                ok: r.ok,
                summary: r.summary,
                diagnostics: r
                    .diagnostics
                    .into_iter()
                    .map(|d| wit::Diagnostic {
                        severity: match d.severity {
                            lease::Severity::Info => wit::Severity::Info,
                            lease::Severity::Warning => wit::Severity::Warning,
                            lease::Severity::Error => wit::Severity::Error,
                        },
                        message: d.message,
                        code: d.code,
                        details: d.details.map(|v| v.to_string()),
                    })
                    .collect(),
                metadata: json_text(r.metadata),
            })
        }

        fn acquire_lease(request: wit::AcquireRequest) -> WitResult<wit::Lease> {
            (|| {
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
                    .map(to_wit_lease)
            })()
            .map_err(to_wit_error)
        }

        fn resume_lease(request: wit::ResumeRequest) -> WitResult<wit::Lease> {
            (|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context))?;
                let meta = lease::parse_metadata(request.lease_metadata.as_deref())?;
                provider
                    .resume(&request.provider_lease_id, &meta)
                    .map(to_wit_lease)
            })()
            .map_err(to_wit_error)
        }

        fn release_lease(
            request: wit::ReleaseRequest,
        ) -> WitResult<Option<wit::TerminationReceipt>> {
            release_like(request, false).map_err(to_wit_error)
        }

        fn destroy_lease(
            request: wit::ReleaseRequest,
        ) -> WitResult<Option<wit::TerminationReceipt>> {
            release_like(request, true).map_err(to_wit_error)
        }

        fn realize_workspace(request: wit::RealizeRequest) -> WitResult<wit::RealizedWorkspace> {
            (|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context))?;
                let l = from_wit_lease(request.lease)?;
                let w = lease::Workspace {
                    local_path: request.workspace.local_path,
                    remote_path: request.workspace.remote_path,
                    mode: request.workspace.mode,
                };
                let r = provider.realize(&l, &w)?;
                Ok(wit::RealizedWorkspace {
                    cwd: r.cwd,
                    metadata: json_text(r.metadata),
                })
            })()
            .map_err(to_wit_error)
        }

        fn execute(request: wit::ExecuteRequest) -> WitResult<wit::ExecuteResult> {
            (|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &context(request.context))?;
                let r = provider.execute(lease::ExecuteRequest {
                    lease: from_wit_lease(request.lease)?,
                    command: request.command,
                    args: request.args,
                    cwd: request.cwd,
                    env: request.env,
                    stdin: request.stdin,
                    timeout_ms: request.timeout_ms,
                })?;
                Ok(wit::ExecuteResult {
                    exit_code: r.exit_code,
                    signal: r.signal,
                    timed_out: r.timed_out,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    metadata: json_text(r.metadata),
                })
            })()
            .map_err(to_wit_error)
        }

        fn sync_in(request: wit::SyncRequest) -> WitResult<Vec<wit::SyncResult>> {
            sync(lease::Direction::In, request)
        }

        fn sync_out(request: wit::SyncRequest) -> WitResult<Vec<wit::SyncResult>> {
            sync(lease::Direction::Out, request)
        }

        fn list_vms(context: wit::CallContext) -> WitResult<Vec<wit::VmListing>> {
            (|| {
                let host = WasiHost;
                let provider = Provider::new(&host, &self::context(context))?;
                Ok(provider
                    .list_vms()?
                    .into_iter()
                    .map(|l| wit::VmListing {
                        name: l.name,
                        present: l.present,
                        status: l.status,
                        orphan: l.orphan.map(crate::host::to_wit_reason),
                    })
                    .collect())
            })()
            .map_err(to_wit_error)
        }

        fn reconcile(request: wit::ReconcileRequest) -> WitResult<wit::ReconcileReport> {
            (|| {
                let host = WasiHost;
                let account = crate::host::Account {
                    api_url: request.account.api_url,
                    token: request.account.token,
                };
                let r = Provider::for_account(&host, &account, request.budget_ms)?.reconcile()?;
                Ok(wit::ReconcileReport {
                    deleted: r.deleted,
                    pending: r.pending,
                    next_in_ms: r.next_in_ms,
                    trouble: r.trouble,
                })
            })()
            .map_err(to_wit_error)
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
