//! Acquire and resume: create (or adopt) the run's VM, then make it ready with one SSH round
//! trip that inspects it and creates the workspace, retried with backoff while the VM boots.

use super::{
    decode, orphans::create_outcome_unknown, vm_is_gone, Lease, LeaseMetadata, PrepareFailure,
    PrepareOk, Provider, SCRIPT_OUTPUT_CAP,
};
use crate::api;
use crate::error::ProviderError;
use crate::host::{LogLevel, SshRequest, SshTarget};
use crate::remote::{self, SshFailure};
use crate::time::{backoff_ms, Deadline};
use crate::vm::{self, VmRecord};
use serde_json::{Map, Value};

/// Longest single readiness attempt.
pub const READY_ATTEMPT_MAX_MS: u64 = 30_000;
/// First readiness backoff.
pub const READY_BACKOFF_BASE_MS: u64 = 1_000;
/// Largest readiness backoff.
pub const READY_BACKOFF_MAX_MS: u64 = 5_000;

impl Provider<'_> {
    /// `ls --json '<name>'` and pick the matching VM.
    pub fn lookup_vm(
        &self,
        name: &str,
        deadline: Deadline,
    ) -> Result<Option<VmRecord>, ProviderError> {
        let api = self.api()?;
        let body = match api.run(&api::ls_command(name), deadline) {
            Ok(body) => body,
            // `ls <name>` may answer "not found" for an exact name instead of an empty list.
            Err(ProviderError::Api(e)) if vm_is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(VmRecord::list_from_value(&body)
            .into_iter()
            .find(|vm| vm.matches(name)))
    }

    /// Create `name` with `new` (or `cp`). Never retried blindly: after any failure or timeout
    /// the name is looked up and an existing VM is adopted; after a failure that leaves the
    /// outcome unknown, the name is watched for the cleanup budget (see `orphans`).
    ///
    /// The name is in the host's VM ledger from before the request until the caller settles it
    /// (the VM is owned by a lease or deleted): a VM whose create this call lost track of is
    /// never left without a record.
    pub fn create_vm(&self, name: &str, deadline: Deadline) -> Result<VmRecord, ProviderError> {
        let api = self.api()?;
        let cmd = api::create_command(&self.config, name);
        let ledger = self.ledger();
        if let Some(l) = &ledger {
            l.put(
                name,
                crate::host::LedgerReason::UncertainCreate,
                self.create_hold_ms(deadline),
            );
        }
        match api.run_once(&cmd, deadline) {
            Ok(body) => {
                if let Some(vm) = VmRecord::from_value(&body) {
                    return Ok(vm);
                }
                let err = match self.lookup_vm(name, deadline) {
                    Ok(Some(vm)) => return Ok(vm),
                    Ok(None) => ProviderError::Api(crate::error::ApiError {
                        status: 200,
                        command: cmd.redacted.clone(),
                        message: format!("exe.dev did not return VM metadata for {name}."),
                        hint: None,
                        retry_after_ms: None,
                    }),
                    Err(e) => e,
                };
                // The create succeeded, so a VM may exist that nobody will own: remove it.
                let deleted = self.delete_vm(name, None, self.cleanup_deadline());
                if let Err(rm_err) = &deleted {
                    self.log(
                        LogLevel::Error,
                        "could not delete a VM whose create returned no metadata",
                        &[("vmName", name.to_string()), ("error", rm_err.to_string())],
                    );
                }
                self.settle_delete(name, &deleted, false);
                Err(err)
            }
            Err(err) if create_outcome_unknown(&err) => {
                self.log(
                    LogLevel::Warn,
                    "exe.dev create outcome unknown; watching for the VM",
                    &[("vmName", name.to_string()), ("error", err.to_string())],
                );
                self.watch_uncertain_create(name, err)
            }
            Err(err) => {
                self.log(
                    LogLevel::Warn,
                    "exe.dev create failed; looking the VM up before giving up",
                    &[("vmName", name.to_string()), ("error", err.to_string())],
                );
                // exe.dev answered: the create did not happen, unless the name already existed.
                if let Some(l) = &ledger {
                    l.remove(name);
                }
                // The lookup gets its own short deadline: the create may have used it all.
                let lookup_deadline = if deadline.remaining(self.host) < 5_000 {
                    self.cleanup_deadline()
                } else {
                    deadline
                };
                match self.lookup_vm(name, lookup_deadline) {
                    Ok(Some(vm)) => {
                        self.log(
                            LogLevel::Warn,
                            "adopted exe.dev VM after an uncertain create",
                            &[("vmName", name.to_string())],
                        );
                        Ok(vm)
                    }
                    Ok(None) => Err(err),
                    Err(lookup_err) => {
                        self.log(
                            LogLevel::Error,
                            "exe.dev VM lookup after a failed create also failed; the VM may exist",
                            &[
                                ("vmName", name.to_string()),
                                ("error", lookup_err.to_string()),
                            ],
                        );
                        Err(err)
                    }
                }
            }
        }
    }

    /// The one SSH round trip of a lease, retried with backoff while the VM is not reachable
    /// yet.
    pub fn prepare(
        &self,
        vm_name: &str,
        target: &SshTarget,
        requested_cwd: Option<&str>,
        deadline: Deadline,
    ) -> Result<PrepareOk, PrepareFailure> {
        let fail = |error, connected, attempts| PrepareFailure {
            error,
            connected,
            attempts,
        };
        let command = remote::prepare_command(requested_cwd);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = deadline.remaining(self.host);
            if remaining == 0 {
                return Err(fail(
                    ProviderError::Timeout(format!(
                        "exe.dev VM {vm_name} was not reachable over SSH within {} ms",
                        self.config.timeout_ms
                    )),
                    false,
                    attempt - 1,
                ));
            }
            let request = SshRequest {
                target: target.clone(),
                command: command.clone(),
                stdin: None,
                timeout_ms: remaining.min(READY_ATTEMPT_MAX_MS) as u32,
                max_output_bytes: SCRIPT_OUTPUT_CAP,
                stream_output: false,
                durable: false,
            };
            self.log(
                LogLevel::Info,
                "preparing exe.dev VM over SSH",
                &[
                    ("vmName", vm_name.to_string()),
                    ("sshDest", target.destination()),
                    ("attempt", attempt.to_string()),
                ],
            );
            let started = self.host.now_ms();
            let out = self
                .ssh(&request, &format!("prepare exe.dev VM {vm_name}"))
                .map_err(|e| fail(e, false, attempt))?;
            let took = self.host.now_ms().saturating_sub(started);
            if out.exit_code == Some(0) && !out.timed_out {
                let stdout = decode(out.stdout);
                return match remote::parse_prepared(&stdout) {
                    Some(prepared) => Ok(PrepareOk {
                        prepared,
                        attempts: attempt,
                        last_attempt_ms: took,
                    }),
                    None => Err(fail(
                        ProviderError::Ssh(format!(
                            "Failed to inspect exe.dev VM {vm_name}: unexpected output from the inspect script"
                        )),
                        true,
                        attempt,
                    )),
                };
            }
            match remote::classify_failure("inspect", vm_name, &out) {
                Some(SshFailure::Fatal(m)) => {
                    return Err(fail(ProviderError::Ssh(m), false, attempt))
                }
                Some(SshFailure::NotReady(m)) => {
                    let backoff = backoff_ms(READY_BACKOFF_BASE_MS, READY_BACKOFF_MAX_MS, attempt);
                    if deadline.remaining(self.host) <= backoff {
                        return Err(fail(
                            ProviderError::Timeout(format!(
                                "exe.dev VM {vm_name} was not reachable over SSH within {} ms: {m}",
                                self.config.timeout_ms
                            )),
                            false,
                            attempt,
                        ));
                    }
                    self.log(
                        LogLevel::Info,
                        "exe.dev VM not reachable over SSH yet; retrying",
                        &[
                            ("vmName", vm_name.to_string()),
                            ("backoffMs", backoff.to_string()),
                        ],
                    );
                    self.host.sleep_ms(backoff);
                }
                None => {
                    let stderr = decode(out.stderr);
                    let detail = stderr.trim();
                    let error = if out.exit_code == Some(remote::PREPARE_MKDIR_FAILED) {
                        ProviderError::InvalidRequest(format!(
                            "Failed to create workspace for exe.dev VM {vm_name}: {detail}"
                        ))
                    } else {
                        ProviderError::Ssh(format!(
                            "Failed to inspect exe.dev VM {vm_name}: {}",
                            if detail.is_empty() {
                                "unknown error"
                            } else {
                                detail
                            }
                        ))
                    };
                    return Err(fail(error, true, attempt));
                }
            }
        }
    }

    /// Acquire without an expiry (see [`Self::acquire_until`]).
    pub fn acquire(
        &self,
        run_id: &str,
        requested_cwd: Option<&str>,
    ) -> Result<Lease, ProviderError> {
        self.acquire_until(run_id, requested_cwd, None)
    }

    /// Acquire: create (or adopt) the run's VM, then one SSH round trip. The VM is deleted if
    /// anything after the create fails. With `requested_expires_at` the lease expires then: the
    /// deadline is recorded in the host's ledger before the lease is returned (or the acquire
    /// fails and the VM is deleted), and the lease carries it as `expiresAt`.
    pub fn acquire_until(
        &self,
        run_id: &str,
        requested_cwd: Option<&str>,
        requested_expires_at: Option<&str>,
    ) -> Result<Lease, ProviderError> {
        let expiry = requested_expires_at
            .map(|t| self.requested_expiry(t))
            .transpose()?;
        let name = vm::lease_vm_name(
            &self.config.name_prefix,
            &self.environment_id,
            run_id,
            self.host.random_u64(),
        );
        let deadline = self.deadline();
        self.sweep_orphans(Some(&name));
        self.log(
            LogLevel::Info,
            "acquiring exe.dev lease",
            &[("vmName", name.clone())],
        );
        let vm = self.create_vm(&name, deadline)?;
        let target = self.target_for_vm(&vm);
        let prepared = self
            .prepare(&vm.name, &target, requested_cwd, deadline)
            .map_err(|f| f.error)
            .and_then(|ok| match &expiry {
                // Paperclip owns the VM from here, until its expiry: the ledger now holds that.
                Some(x) => self.record_expiry(&name, x).map(|()| ok),
                // Paperclip owns the VM from here: it is no orphan.
                None => {
                    if let Some(l) = self.ledger() {
                        l.remove(&name);
                    }
                    Ok(ok)
                }
            });
        match prepared {
            Ok(ok) => {
                let mut metadata = self.lease_metadata(&vm, &target, &ok.prepared, false);
                metadata.expires_at = expiry.as_ref().map(|x| x.text.clone());
                Ok(Lease {
                    provider_lease_id: Some(vm.name.clone()),
                    metadata: metadata.into_map(),
                    expires_at: expiry.map(|x| x.text),
                })
            }
            Err(e) => {
                self.log(
                    LogLevel::Warn,
                    "acquire failed after the VM was created; deleting it",
                    &[("vmName", vm.name.clone()), ("error", e.to_string())],
                );
                let deleted = self.delete_vm(&vm.name, Some(&target), self.cleanup_deadline());
                if let Err(rm_err) = &deleted {
                    self.log(
                        LogLevel::Error,
                        "could not delete the VM of a failed acquire",
                        &[("vmName", vm.name.clone()), ("error", rm_err.to_string())],
                    );
                }
                self.settle_delete(&name, &deleted, false);
                Err(e)
            }
        }
    }

    /// Resume: a VM that is gone, or a lease whose expiry has passed (its VM is deleted now),
    /// gives `{providerLeaseId: null, metadata: {expired: true}}`; a lookup error is an error.
    pub fn resume(
        &self,
        lease_id: &str,
        meta: &Map<String, Value>,
    ) -> Result<Lease, ProviderError> {
        let deadline = self.deadline();
        self.sweep_orphans(Some(lease_id));
        let expiry = self.lease_expiry(lease_id, meta);
        let expired = expiry
            .as_ref()
            .is_some_and(|x| self.expired_on_resume(lease_id, x));
        let found = if expired {
            None
        } else {
            self.lookup_vm(lease_id, deadline)?
        };
        match found {
            None => {
                let gone = LeaseMetadata {
                    expired: Some(true),
                    ..LeaseMetadata::default()
                };
                Ok(Lease {
                    provider_lease_id: None,
                    metadata: gone.into_map(),
                    expires_at: None,
                })
            }
            Some(vm) => {
                let target = self.target_for_vm(&vm);
                let recorded = LeaseMetadata::from_map(meta);
                let ok = self
                    .prepare(&vm.name, &target, recorded.remote_cwd.as_deref(), deadline)
                    .map_err(|f| f.error)?;
                let mut metadata = self.lease_metadata(&vm, &target, &ok.prepared, true);
                metadata.expires_at = expiry.as_ref().map(|x| x.text.clone());
                Ok(Lease {
                    provider_lease_id: Some(vm.name.clone()),
                    metadata: metadata.into_map(),
                    expires_at: expiry.map(|x| x.text),
                })
            }
        }
    }
}
