//! The lifecycle: probe, acquire, resume, release, destroy, realize-workspace, execute.
//!
//! Everything here runs against [`Host`], so it is unit-tested natively with a fake host.

use crate::api::{self, Api};
use crate::config::Config;
use crate::error::ProviderError;
use crate::host::{
    Connected, Host, Identity, LogLevel, SshError, SshOutput, SshRequest, SshTarget,
};
use crate::remote::{self, SshFailure};
use crate::time::{backoff_ms, Deadline};
use crate::vm::{self, VmRecord};
use serde_json::{json, Map, Value};

mod orphans;
mod sync;

pub use orphans::{create_outcome_unknown, VmListing};
pub use sync::{Direction, PostUploadCommand, SyncMapping, SyncOperation, SyncResult};

/// The provider name in metadata.
pub const PROVIDER: &str = "exe-dev";
/// Fallback workspace when neither lease nor workspace names one.
pub const DEFAULT_REALIZE_CWD: &str = "/tmp/paperclip-workspace";
/// Timeout of the kill script after an execute timed out.
pub const KILL_TIMEOUT_MS: u32 = 10_000;
/// Longest single readiness attempt.
pub const READY_ATTEMPT_MAX_MS: u64 = 30_000;
/// First readiness backoff.
pub const READY_BACKOFF_BASE_MS: u64 = 1_000;
/// Largest readiness backoff.
pub const READY_BACKOFF_MAX_MS: u64 = 5_000;
/// Deadline for cleanup (`rm` after a failed acquire/probe). Paperclip (and the host) give a
/// call `timeoutMs + 30 s`, so cleanup after a step that used the whole deadline must fit in
/// what is left.
pub const CLEANUP_TIMEOUT_MS: u64 = 20_000;
/// Output cap for provider-run scripts (prepare, mkdir, kill).
const SCRIPT_OUTPUT_CAP: u64 = 1024 * 1024;

/// What every runtime call carries (plain mirror of the WIT `call-context`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallContext {
    /// Driver config JSON text.
    pub config: String,
    /// Paperclip environment id.
    pub environment_id: String,
    /// Paperclip company id.
    pub company_id: Option<String>,
}

/// A lease (plain mirror of the WIT `lease`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lease {
    /// The VM name; none when gone.
    pub provider_lease_id: Option<String>,
    /// Metadata object.
    pub metadata: Map<String, Value>,
    /// Expiry.
    pub expires_at: Option<String>,
}

/// Workspace description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workspace {
    /// Host path.
    pub local_path: Option<String>,
    /// Desired sandbox path.
    pub remote_path: Option<String>,
    /// Mode.
    pub mode: Option<String>,
}

/// Realized workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Realized {
    /// Remote cwd.
    pub cwd: String,
    /// Metadata object.
    pub metadata: Map<String, Value>,
}

/// Lease state in a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Work stopped, VM kept.
    Stopped,
    /// VM deleted (or already gone).
    Destroyed,
}

/// Termination receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The lease.
    pub provider_lease_id: String,
    /// What happened.
    pub state: LeaseState,
}

/// Execute parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecuteRequest {
    /// The lease.
    pub lease: Lease,
    /// Program.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Env pairs in order.
    pub env: Vec<(String, String)>,
    /// Stdin bytes.
    pub stdin: Option<Vec<u8>>,
    /// Deadline.
    pub timeout_ms: Option<u64>,
}

/// Execute result.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteResult {
    /// Exit code; none on timeout/signal.
    pub exit_code: Option<i32>,
    /// Signal.
    pub signal: Option<String>,
    /// Timed out.
    pub timed_out: bool,
    /// Decoded stdout.
    pub stdout: String,
    /// Decoded stderr.
    pub stderr: String,
    /// Metadata object.
    pub metadata: Map<String, Value>,
}

/// Probe diagnostic severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Fine.
    Info,
    /// Caveat.
    Warning,
    /// Failed.
    Error,
}

/// One probe step.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Severity.
    pub severity: Severity,
    /// Text.
    pub message: String,
    /// Step name.
    pub code: Option<String>,
    /// Details object.
    pub details: Option<Value>,
}

/// Probe result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// All steps passed.
    pub ok: bool,
    /// Summary line.
    pub summary: String,
    /// Steps.
    pub diagnostics: Vec<Diagnostic>,
    /// Metadata object.
    pub metadata: Map<String, Value>,
}

/// A successful lease preparation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOk {
    /// What the script reported.
    pub prepared: remote::Prepared,
    /// SSH attempts it took.
    pub attempts: u32,
    /// Duration of the successful attempt.
    pub last_attempt_ms: u64,
}

/// A failed lease preparation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareFailure {
    /// The error.
    pub error: ProviderError,
    /// True when SSH worked and the script itself failed (an inspect failure, not readiness).
    pub connected: bool,
    /// SSH attempts made.
    pub attempts: u32,
}

/// Parse lease metadata JSON text; blank gives an empty object.
pub fn parse_metadata(text: Option<&str>) -> Result<Map<String, Value>, ProviderError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        _ => Err(ProviderError::InvalidRequest(
            "lease metadata must be a JSON object".to_string(),
        )),
    }
}

fn meta_str<'m>(m: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    m.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The provider bound to one call: host, parsed config and ids.
pub struct Provider<'h> {
    host: &'h dyn Host,
    config: Config,
    environment_id: String,
}

/// Whether a failed `rm` (or `ls <name>`) means the VM does not exist: 404 (except exe.dev's "unknown
/// command"), or a 422 whose error text says "not found".
fn vm_is_gone(e: &crate::error::ApiError) -> bool {
    let msg = e.message.to_ascii_lowercase();
    (e.status == 404 && !msg.contains("unknown command"))
        || (e.status == 422 && msg.contains("not found"))
}

/// Decode bytes once, on the whole buffer.
pub fn decode(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn ssh_error(e: SshError, what: &str) -> ProviderError {
    match e {
        SshError::Denied(m) => ProviderError::Denied(format!(
            "SSH to {m} is not allowed by the host ({what}); grant that host to the plugin"
        )),
        SshError::InvalidRequest(m) => ProviderError::InvalidRequest(format!("{what}: {m}")),
        SshError::Spawn(m) => {
            ProviderError::Ssh(format!("Failed to {what}: the SSH client failed: {m}"))
        }
    }
}

impl<'h> Provider<'h> {
    /// Parse the context's config.
    pub fn new(host: &'h dyn Host, ctx: &CallContext) -> Result<Provider<'h>, ProviderError> {
        Ok(Provider {
            host,
            config: Config::from_json(&ctx.config)?,
            environment_id: ctx.environment_id.clone(),
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn api(&self) -> Result<Api<'h>, ProviderError> {
        Api::new(self.host, &self.config)
    }

    fn log(&self, level: LogLevel, msg: &str, fields: &[(&str, String)]) {
        self.host.log(level, msg, fields);
    }

    fn identity(&self) -> Identity {
        if let Some(k) = &self.config.ssh_private_key {
            Identity::KeyMaterial(k.clone())
        } else if let Some(f) = &self.config.ssh_identity_file {
            Identity::KeyFile(f.clone())
        } else {
            Identity::Agent
        }
    }

    /// The SSH target for a VM record just returned by the API.
    pub fn target_for_vm(&self, vm: &VmRecord) -> SshTarget {
        let (host, user) = vm.ssh_endpoint(self.config.ssh_user.as_deref());
        SshTarget {
            host,
            port: vm.ssh_port.unwrap_or(self.config.ssh_port),
            user,
            identity: self.identity(),
            host_key_policy: self.config.strict_host_key_checking,
        }
    }

    /// The SSH target of a lease: `sshHost`/`sshUser`/`sshPort` from its metadata, else
    /// `sshDest` (split at `@`), else `<leaseId>.exe.xyz`; user falls back to `sshUser` config.
    pub fn target_for_lease(&self, lease_id: &str, meta: &Map<String, Value>) -> SshTarget {
        let dest = meta_str(meta, "sshDest");
        let (dest_user, dest_host) = match dest.and_then(vm::dest_user_host) {
            Some((u, h)) => (Some(u), Some(h)),
            None => (None, dest),
        };
        let host = meta_str(meta, "sshHost")
            .or(dest_host)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{lease_id}.exe.xyz"));
        let user = meta_str(meta, "sshUser")
            .or(dest_user)
            .map(str::to_string)
            .or_else(|| self.config.ssh_user.clone());
        let port = meta
            .get("sshPort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or(self.config.ssh_port);
        SshTarget {
            host,
            port,
            user,
            identity: self.identity(),
            host_key_policy: self.config.strict_host_key_checking,
        }
    }

    fn deadline(&self) -> Deadline {
        Deadline::after(self.host, self.config.timeout_ms)
    }

    fn cleanup_deadline(&self) -> Deadline {
        Deadline::after(self.host, self.config.timeout_ms.min(CLEANUP_TIMEOUT_MS))
    }

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

    /// `rm --json '<name>'`; a VM that is already gone counts as deleted. Returns whether it
    /// was still there. Disconnects pooled SSH connections to `target` afterwards.
    pub fn delete_vm(
        &self,
        name: &str,
        target: Option<&SshTarget>,
        deadline: Deadline,
    ) -> Result<bool, ProviderError> {
        let api = self.api()?;
        let result = match api.run(&api::rm_command(name), deadline) {
            Ok(_) => Ok(true),
            Err(ProviderError::Api(e)) if vm_is_gone(&e) => {
                self.log(
                    LogLevel::Info,
                    "exe.dev VM was already gone",
                    &[("vmName", name.to_string())],
                );
                Ok(false)
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            if let Some(t) = target {
                self.host.ssh_disconnect(t);
            }
        }
        result
    }

    fn ssh(&self, request: &SshRequest, what: &str) -> Result<SshOutput, ProviderError> {
        self.host.ssh_exec(request).map_err(|e| ssh_error(e, what))
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

    /// The seed's lease metadata plus the non-secret SSH coordinates.
    pub fn lease_metadata(
        &self,
        vm: &VmRecord,
        target: &SshTarget,
        prepared: &remote::Prepared,
        resumed: bool,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("provider".into(), json!(PROVIDER));
        m.insert("vmName".into(), json!(vm.name));
        m.insert("sshDest".into(), json!(vm.dest()));
        // Absent values are left out, not `null` (as the seed's `undefined` fields were).
        let mut opt = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        };
        opt("httpsUrl", &vm.https_url);
        opt("region", &vm.region);
        opt("regionDisplay", &vm.region_display);
        opt("sshUser", &target.user);
        m.insert("shellCommand".into(), json!(prepared.shell));
        m.insert("remoteCwd".into(), json!(prepared.cwd));
        m.insert("timeoutMs".into(), json!(self.config.timeout_ms));
        m.insert("reuseLease".into(), json!(self.config.reuse_lease));
        m.insert("resumedLease".into(), json!(resumed));
        m.insert("sshHost".into(), json!(target.host));
        m.insert("sshPort".into(), json!(target.port));
        m
    }

    /// Acquire: create (or adopt) the run's VM, then one SSH round trip. The VM is deleted if
    /// anything after the create fails.
    pub fn acquire(
        &self,
        run_id: &str,
        requested_cwd: Option<&str>,
    ) -> Result<Lease, ProviderError> {
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
        match self.prepare(&vm.name, &target, requested_cwd, deadline) {
            Ok(ok) => {
                // Paperclip owns the VM from here: it is no orphan.
                if let Some(l) = self.ledger() {
                    l.remove(&name);
                }
                Ok(Lease {
                    provider_lease_id: Some(vm.name.clone()),
                    metadata: self.lease_metadata(&vm, &target, &ok.prepared, false),
                    expires_at: None,
                })
            }
            Err(PrepareFailure { error: e, .. }) => {
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

    /// Resume: a VM that is gone gives `{providerLeaseId: null, metadata: {expired: true}}`; a
    /// lookup error is an error.
    pub fn resume(
        &self,
        lease_id: &str,
        meta: &Map<String, Value>,
    ) -> Result<Lease, ProviderError> {
        let deadline = self.deadline();
        self.sweep_orphans(Some(lease_id));
        match self.lookup_vm(lease_id, deadline)? {
            None => {
                let mut m = Map::new();
                m.insert("expired".into(), Value::Bool(true));
                Ok(Lease {
                    provider_lease_id: None,
                    metadata: m,
                    expires_at: None,
                })
            }
            Some(vm) => {
                let target = self.target_for_vm(&vm);
                let ok = self
                    .prepare(&vm.name, &target, meta_str(meta, "remoteCwd"), deadline)
                    .map_err(|f| f.error)?;
                Ok(Lease {
                    provider_lease_id: Some(vm.name.clone()),
                    metadata: self.lease_metadata(&vm, &target, &ok.prepared, true),
                    expires_at: None,
                })
            }
        }
    }

    /// Stop every marked execution on a retained VM (release with `cancelActiveWork`).
    fn stop_active_work(
        &self,
        lease_id: &str,
        meta: &Map<String, Value>,
    ) -> Result<(), ProviderError> {
        let target = self.target_for_lease(lease_id, meta);
        let out = self.ssh(
            &SshRequest {
                target,
                command: remote::sh_c(&remote::kill_script(None)),
                stdin: None,
                timeout_ms: KILL_TIMEOUT_MS,
                max_output_bytes: SCRIPT_OUTPUT_CAP,
                stream_output: false,
            },
            &format!("stop work on exe.dev VM {lease_id}"),
        )?;
        if out.exit_code == Some(0) {
            Ok(())
        } else {
            let text = decode(out.stderr);
            Err(ProviderError::Ssh(format!(
                "Failed to stop work on exe.dev VM {lease_id}: {}",
                if out.timed_out {
                    "timed out"
                } else {
                    text.trim()
                }
            )))
        }
    }

    /// Release: `reuseLease` keeps the VM (stopping marked work when `cancel_active_work`);
    /// otherwise `rm`.
    pub fn release(
        &self,
        lease_id: Option<&str>,
        meta: &Map<String, Value>,
        cancel_active_work: bool,
    ) -> Result<Option<Receipt>, ProviderError> {
        let Some(id) = lease_id.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        self.sweep_orphans(Some(id));
        if self.config.reuse_lease {
            if cancel_active_work {
                self.stop_active_work(id, meta)?;
                return Ok(Some(Receipt {
                    provider_lease_id: id.to_string(),
                    state: LeaseState::Stopped,
                }));
            }
            return Ok(None);
        }
        self.destroy(Some(id), meta)
    }

    /// Destroy: always `rm` (already gone is fine). Deletes exactly that VM: no sweep of the
    /// ledger, so the operator's `orphans --delete` deletes only what it names.
    pub fn destroy(
        &self,
        lease_id: Option<&str>,
        meta: &Map<String, Value>,
    ) -> Result<Option<Receipt>, ProviderError> {
        let Some(id) = lease_id.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let target = self.target_for_lease(id, meta);
        let deleted = self.delete_vm(id, Some(&target), self.deadline());
        // A delete that failed is recorded, so a later call retries it.
        self.settle_delete(id, &deleted, false);
        deleted?;
        Ok(Some(Receipt {
            provider_lease_id: id.to_string(),
            state: LeaseState::Destroyed,
        }))
    }

    /// Realize: cwd = lease `remoteCwd` ?? `remotePath` ?? `localPath` ??
    /// `/tmp/paperclip-workspace`. SSH `mkdir -p` only when the lease did not create it already.
    pub fn realize(&self, lease: &Lease, workspace: &Workspace) -> Result<Realized, ProviderError> {
        let lease_cwd = meta_str(&lease.metadata, "remoteCwd");
        let nonblank = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let cwd = lease_cwd
            .map(str::to_string)
            .or_else(|| nonblank(&workspace.remote_path))
            .or_else(|| nonblank(&workspace.local_path))
            .unwrap_or_else(|| DEFAULT_REALIZE_CWD.to_string());
        let id = lease.provider_lease_id.as_deref().filter(|s| !s.is_empty());
        // When the lease names the cwd, acquire/resume created it in their SSH round trip.
        if let (Some(id), None) = (id, lease_cwd) {
            let target = self.target_for_lease(id, &lease.metadata);
            let out = self.ssh(
                &SshRequest {
                    target,
                    command: remote::mkdir_command(&cwd),
                    stdin: None,
                    timeout_ms: self.config.timeout_ms.min(u32::MAX as u64) as u32,
                    max_output_bytes: SCRIPT_OUTPUT_CAP,
                    stream_output: false,
                },
                &format!("create workspace for exe.dev VM {id}"),
            )?;
            if out.exit_code != Some(0) || out.timed_out {
                let msg = match remote::classify_failure("create workspace for", id, &out) {
                    Some(SshFailure::Fatal(m)) | Some(SshFailure::NotReady(m)) => m,
                    None => format!(
                        "Failed to create workspace for exe.dev VM {id}: {}",
                        decode(out.stderr).trim()
                    ),
                };
                return Err(ProviderError::Ssh(msg));
            }
        }
        let mut metadata = Map::new();
        metadata.insert("provider".into(), json!(PROVIDER));
        metadata.insert("remoteCwd".into(), json!(cwd));
        Ok(Realized { cwd, metadata })
    }

    /// Execute one command in the lease's VM.
    pub fn execute(&self, req: ExecuteRequest) -> Result<ExecuteResult, ProviderError> {
        self.run_command(req, true)
    }

    /// An execute; `stream_output` forwards output live (Paperclip's `execute.log`), which only
    /// `environmentExecute` itself asks for.
    fn run_command(
        &self,
        req: ExecuteRequest,
        stream_output: bool,
    ) -> Result<ExecuteResult, ProviderError> {
        let Some(id) = req
            .lease
            .provider_lease_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
        else {
            let mut metadata = Map::new();
            metadata.insert("provider".into(), json!(PROVIDER));
            return Ok(ExecuteResult {
                exit_code: Some(1),
                signal: None,
                timed_out: false,
                stdout: String::new(),
                stderr: "No provider lease ID available for execution.".to_string(),
                metadata,
            });
        };
        for (k, _) in &req.env {
            if !crate::config::is_valid_env_key(k) {
                return Err(ProviderError::InvalidRequest(format!(
                    "Invalid exe.dev environment variable key: {k}"
                )));
            }
        }
        let meta = &req.lease.metadata;
        let target = self.target_for_lease(&id, meta);
        let ssh_dest = meta_str(meta, "sshDest")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{id}.exe.xyz"));
        let cwd = req
            .cwd
            .as_deref()
            .filter(|s| !s.is_empty())
            .or_else(|| meta_str(meta, "remoteCwd"));
        let exec_id = format!("{:016x}", self.host.random_u64());
        let script = remote::exec_script(&exec_id, cwd, &req.env, &req.command, &req.args);
        let timeout_ms = crate::config::execute_timeout_ms(req.timeout_ms, self.config.timeout_ms);
        self.log(
            LogLevel::Info,
            "executing on exe.dev VM",
            &[
                ("vmName", id.clone()),
                ("command", req.command.clone()),
                ("execId", exec_id.clone()),
                ("timeoutMs", timeout_ms.to_string()),
                (
                    "stdinBytes",
                    req.stdin.as_ref().map_or(0, Vec::len).to_string(),
                ),
            ],
        );
        let what = format!("execute commands on exe.dev VM {id}");
        // The connection first, with none of the caller's commands: a failure here is SSH's own,
        // and once the pooled connection is up, the command's exit status (even 255) is known
        // to be the command's.
        let deadline = Deadline::after(self.host, u64::from(timeout_ms));
        let out = match self
            .host
            .ssh_connect(&target, timeout_ms)
            .map_err(|e| ssh_error(e, &what))?
        {
            // Nothing ran; a connection that timed out is reported like a timed-out command.
            Connected::Failed(out) if out.timed_out => out,
            Connected::Failed(out) => {
                return Err(ProviderError::Ssh(remote::connect_failure(&id, &out)));
            }
            Connected::Ready | Connected::Unpooled => {
                let remaining = deadline.remaining(self.host).clamp(1, u64::from(u32::MAX));
                let out = self.ssh(
                    &SshRequest {
                        target: target.clone(),
                        command: remote::sh_c(&script),
                        stdin: req.stdin,
                        timeout_ms: remaining as u32,
                        max_output_bytes: remote::MAX_OUTPUT_BYTES,
                        stream_output,
                    },
                    &what,
                )?;
                if let Some(message) = remote::execute_never_ran(&id, &out) {
                    return Err(ProviderError::Ssh(message));
                }
                if out.timed_out {
                    self.kill_remote(&id, &target, &exec_id);
                }
                out
            }
        };
        let mut metadata = Map::new();
        metadata.insert("provider".into(), json!(PROVIDER));
        metadata.insert("vmName".into(), json!(id));
        metadata.insert("sshDest".into(), json!(ssh_dest));
        metadata.insert("stdoutTruncated".into(), json!(out.stdout_truncated));
        metadata.insert("stderrTruncated".into(), json!(out.stderr_truncated));
        Ok(ExecuteResult {
            exit_code: if out.timed_out { None } else { out.exit_code },
            // A timed-out command is ended by its marker (TERM, then KILL); which of the two
            // ended it is not observed, and a local client's death signal would say nothing.
            signal: if out.timed_out { None } else { out.signal },
            timed_out: out.timed_out,
            stdout: decode(out.stdout),
            stderr: decode(out.stderr),
            metadata,
        })
    }

    /// After a timed-out execute: terminate the remote process tree by its marker.
    fn kill_remote(&self, vm_name: &str, target: &SshTarget, exec_id: &str) {
        self.log(
            LogLevel::Warn,
            "execute timed out; terminating the remote processes",
            &[
                ("vmName", vm_name.to_string()),
                ("execId", exec_id.to_string()),
            ],
        );
        let result = self.host.ssh_exec(&SshRequest {
            target: target.clone(),
            command: remote::sh_c(&remote::kill_script(Some(exec_id))),
            stdin: None,
            timeout_ms: KILL_TIMEOUT_MS,
            max_output_bytes: SCRIPT_OUTPUT_CAP,
            stream_output: false,
        });
        match result {
            Ok(o) if o.exit_code == Some(0) => {}
            Ok(o) => self.log(
                LogLevel::Warn,
                "could not confirm that the timed-out remote command was terminated",
                &[
                    ("vmName", vm_name.to_string()),
                    ("exitCode", format!("{:?}", o.exit_code)),
                    ("timedOut", o.timed_out.to_string()),
                ],
            ),
            Err(e) => self.log(
                LogLevel::Warn,
                "could not run the kill script for the timed-out command",
                &[("vmName", vm_name.to_string()), ("error", e.to_string())],
            ),
        }
    }

    /// Probe: create a throwaway VM, one SSH round trip, always delete it.
    pub fn probe(&self) -> ProbeResult {
        let name = vm::probe_vm_name(&self.config.name_prefix, self.host.random_u64());
        let deadline = self.deadline();
        let mut diagnostics = Vec::new();
        let step = |severity, code: &str, message: String, details: Value| Diagnostic {
            severity,
            message,
            code: Some(code.to_string()),
            details: Some(details),
        };

        self.sweep_orphans(None);
        let started = self.host.now_ms();
        let mut probe_target: Option<SshTarget> = None;
        let mut no_api = false;
        let created = self.create_vm(&name, deadline);
        let create_uncertain = matches!(&created, Err(e) if create_outcome_unknown(e));
        let create_ms = self.host.now_ms().saturating_sub(started);
        let outcome: Result<(VmRecord, SshTarget, remote::Prepared), ProviderError> = match created
        {
            Err(e) => {
                no_api = matches!(
                    e,
                    ProviderError::InvalidConfig(_) | ProviderError::Denied(_)
                );
                diagnostics.push(step(
                    Severity::Error,
                    "create-vm",
                    format!("Could not create exe.dev VM {name}: {e}"),
                    json!({"durationMs": create_ms}),
                ));
                Err(e)
            }
            Ok(vm) => {
                diagnostics.push(step(
                    Severity::Info,
                    "create-vm",
                    format!("Created exe.dev VM {}.", vm.name),
                    json!({"durationMs": create_ms}),
                ));
                let target = self.target_for_vm(&vm);
                let started = self.host.now_ms();
                match self.prepare(&vm.name, &target, None, deadline) {
                    Ok(ok) => {
                        let total = self.host.now_ms().saturating_sub(started);
                        diagnostics.push(step(
                            Severity::Info,
                            "ssh-ready",
                            format!("SSH to {} is ready.", target.destination()),
                            json!({"durationMs": total, "attempts": ok.attempts}),
                        ));
                        let p = &ok.prepared;
                        diagnostics.push(step(
                            Severity::Info,
                            "inspect",
                            format!("Home {}, shell {}, workspace {}.", p.home, p.shell, p.cwd),
                            json!({"durationMs": ok.last_attempt_ms}),
                        ));
                        Ok((vm, target, ok.prepared))
                    }
                    Err(f) => {
                        let total = self.host.now_ms().saturating_sub(started);
                        if f.connected {
                            diagnostics.push(step(
                                Severity::Info,
                                "ssh-ready",
                                format!("SSH to {} is ready.", target.destination()),
                                json!({"durationMs": total, "attempts": f.attempts}),
                            ));
                            diagnostics.push(step(
                                Severity::Error,
                                "inspect",
                                f.error.to_string(),
                                json!({"durationMs": total}),
                            ));
                        } else {
                            diagnostics.push(step(
                                Severity::Error,
                                "ssh-ready",
                                f.error.to_string(),
                                json!({"durationMs": total, "attempts": f.attempts}),
                            ));
                        }
                        probe_target = Some(target);
                        Err(f.error)
                    }
                }
            }
        };

        // Always delete, whatever happened (the create may have half-succeeded), unless there
        // is no way to call the API at all.
        let started = self.host.now_ms();
        if let Ok((_, t, _)) = &outcome {
            probe_target = Some(t.clone());
        }
        let deleted = (!no_api)
            .then(|| self.delete_vm(&name, probe_target.as_ref(), self.cleanup_deadline()));
        if let Some(d) = &deleted {
            // After an uncertain create the VM may still appear: its ledger entry stays.
            self.settle_delete(&name, d, create_uncertain);
        }
        let delete_ms = self.host.now_ms().saturating_sub(started);
        diagnostics.extend(deleted.map(|deleted| match &deleted {
            Ok(true) => step(
                Severity::Info,
                "delete-vm",
                format!("Deleted exe.dev VM {name}."),
                json!({"durationMs": delete_ms}),
            ),
            Ok(false) => step(
                Severity::Info,
                "delete-vm",
                format!("exe.dev VM {name} was already gone."),
                json!({"durationMs": delete_ms}),
            ),
            Err(e) => step(
                Severity::Warning,
                "delete-vm",
                format!("Could not delete exe.dev VM {name}: {e}"),
                json!({"durationMs": delete_ms}),
            ),
        }));

        let mut metadata = Map::new();
        metadata.insert("provider".into(), json!(PROVIDER));
        match outcome {
            Ok((vm, _, prepared)) => {
                metadata.insert("vmName".into(), json!(vm.name));
                metadata.insert("sshDest".into(), json!(vm.dest()));
                metadata.insert("timeoutMs".into(), json!(self.config.timeout_ms));
                metadata.insert("reuseLease".into(), json!(self.config.reuse_lease));
                metadata.insert("remoteCwd".into(), json!(prepared.cwd));
                metadata.insert("shellCommand".into(), json!(prepared.shell));
                ProbeResult {
                    ok: true,
                    summary: format!("Connected to exe.dev VM {}.", vm.name),
                    diagnostics,
                    metadata,
                }
            }
            Err(e) => {
                metadata.insert("timeoutMs".into(), json!(self.config.timeout_ms));
                metadata.insert("reuseLease".into(), json!(self.config.reuse_lease));
                metadata.insert("error".into(), json!(e.to_string()));
                ProbeResult {
                    ok: false,
                    summary: "exe.dev environment probe failed.".to_string(),
                    diagnostics,
                    metadata,
                }
            }
        }
    }
}

/// `probe` for a call context: a config error is a failed probe, not an error.
pub fn run_probe(host: &dyn Host, ctx: &CallContext) -> ProbeResult {
    match Provider::new(host, ctx) {
        Ok(p) => p.probe(),
        Err(e) => {
            let mut metadata = Map::new();
            metadata.insert("provider".into(), json!(PROVIDER));
            metadata.insert("error".into(), json!(e.to_string()));
            ProbeResult {
                ok: false,
                summary: "exe.dev environment probe failed.".to_string(),
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    message: e.to_string(),
                    code: Some("config".to_string()),
                    details: None,
                }],
                metadata,
            }
        }
    }
}

#[cfg(test)]
mod tests;
