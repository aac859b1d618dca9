//! The lease lifecycle: the [`Provider`] bound to one call, the plain Rust mirrors of the WIT
//! records it takes and returns, and the SSH target of a VM or a lease. One module per job:
//!
//! - `create`: acquire and resume (create or adopt the VM, then wait until it is ready);
//! - `execute`, `realize` (realize-workspace), `probe`;
//! - `release`: release and destroy, and the VM delete every cleanup shares;
//! - `sync`: environmentSyncIn / environmentSyncOut;
//! - `metadata`: the lease metadata handed to Paperclip and read back from it;
//! - `orphans`: the host's VM ledger, so that no VM is left without an owner;
//! - `expiry`: leases acquired with `requestedExpiresAt`, enforced through that ledger;
//! - `reconcile`: the worker's background work through the ledger, with no Paperclip call.
//!
//! Everything here runs against [`Host`], so it is unit-tested natively with a fake host.

use crate::api::Api;
use crate::config::Config;
use crate::error::ProviderError;
use crate::host::{Host, Identity, LogLevel, SshError, SshOutput, SshRequest, SshTarget};
use crate::remote;
use crate::time::Deadline;
use crate::vm::{self, VmRecord};
use serde_json::{Map, Value};

mod create;
mod execute;
mod expiry;
mod metadata;
mod orphans;
mod probe;
mod realize;
mod reconcile;
mod release;
mod session;
mod sync;

pub use metadata::{parse_metadata, LeaseMetadata};
pub use orphans::VmListing;
pub use probe::run_probe;
pub use reconcile::ReconcileReport;
pub use session::{check_session_home, LOGIN_HOME_ROOT, LOGIN_TERMINAL};
pub use sync::{Direction, PostUploadCommand, SyncMapping, SyncOperation, SyncResult};

/// The provider name in metadata.
pub const PROVIDER: &str = "exe-dev";
/// Timeout of the kill script after an execute timed out.
pub const KILL_TIMEOUT_MS: u32 = 10_000;
/// Deadline for cleanup (`rm` after a failed acquire/probe). Paperclip (and the host) give a
/// call `timeoutMs + 30 s`, so cleanup after a step that used the whole deadline must fit in
/// what is left.
pub const CLEANUP_TIMEOUT_MS: u64 = 20_000;
/// Output cap for the provider's own scripts (prepare, mkdir, kill, sync commit and discard).
const SCRIPT_OUTPUT_CAP: u64 = 1024 * 1024;

/// What every runtime call carries (the WIT `call-context`, as the logic reads it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallContext {
    /// Driver config JSON text.
    pub config: String,
    /// Paperclip environment id.
    pub environment_id: String,
    /// Paperclip company id.
    pub company_id: Option<String>,
    /// How long the caller waits for the answer, in ms from the call's start (Paperclip's
    /// timer for the method, applied by the host); 0 when none was given (native tests).
    pub deadline_ms: u64,
}

/// Kept back from the caller's deadline to answer in: the reply still has to reach Paperclip.
const ANSWER_MARGIN_MS: u64 = 2_000;

/// The budget a call works to: the config's `timeoutMs`, but never past the caller's deadline
/// (less the time to answer), so a call Paperclip stops waiting for has already answered with
/// a timeout error, and not left a VM behind that nobody owns.
fn call_budget_ms(config_timeout_ms: u64, deadline_ms: u64) -> u64 {
    if deadline_ms == 0 {
        return config_timeout_ms;
    }
    let margin = ANSWER_MARGIN_MS.min(deadline_ms / 2);
    config_timeout_ms.min(deadline_ms - margin).max(1)
}

#[cfg(test)]
#[test]
fn call_budget_keeps_the_margin_and_never_reaches_zero() {
    assert_eq!(call_budget_ms(300_000, 0), 300_000);
    assert_eq!(call_budget_ms(300_000, 30_000), 28_000);
    assert_eq!(call_budget_ms(300_000, 330_000), 300_000);
    assert_eq!(call_budget_ms(300_000, 3_000), 1_500);
    assert_eq!(call_budget_ms(300_000, 1), 1);
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

/// The provider bound to one call: host, parsed config and ids.
pub struct Provider<'h> {
    host: &'h dyn Host,
    /// The parsed config, its `timeout_ms` bounded by the caller's deadline: the budget this
    /// call works to.
    config: Config,
    /// The config's own `timeoutMs` (normalised), as lease and probe metadata record it.
    configured_timeout_ms: u64,
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
        SshError::Lost(m) => ProviderError::Ssh(format!("Failed to {what}: {m}")),
    }
}

impl<'h> Provider<'h> {
    /// Parse the context's config.
    pub fn new(host: &'h dyn Host, ctx: &CallContext) -> Result<Provider<'h>, ProviderError> {
        let mut config = Config::from_json(&ctx.config)?;
        let configured_timeout_ms = config.timeout_ms;
        // Every budget below derives from `config.timeout_ms`; metadata records what the
        // operator configured.
        config.timeout_ms = call_budget_ms(config.timeout_ms, ctx.deadline_ms);
        Ok(Provider {
            host,
            config,
            configured_timeout_ms,
            environment_id: ctx.environment_id.clone(),
        })
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

    /// The SSH target of a lease, from its metadata object (see [`Self::target_for_metadata`]).
    pub fn target_for_lease(&self, lease_id: &str, meta: &Map<String, Value>) -> SshTarget {
        self.target_for_metadata(lease_id, &LeaseMetadata::from_map(meta))
    }

    /// The SSH target of a lease: `sshHost`/`sshUser`/`sshPort` from its metadata, else
    /// `sshDest` (split at `@`), else `<leaseId>.exe.xyz`; user falls back to `sshUser` config.
    pub fn target_for_metadata(&self, lease_id: &str, meta: &LeaseMetadata) -> SshTarget {
        let dest = meta.ssh_dest.as_deref();
        let (dest_user, dest_host) = match dest.and_then(vm::dest_user_host) {
            Some((u, h)) => (Some(u), Some(h)),
            None => (None, dest),
        };
        let host = meta
            .ssh_host
            .as_deref()
            .or(dest_host)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{lease_id}.exe.xyz"));
        let user = meta
            .ssh_user
            .as_deref()
            .or(dest_user)
            .map(str::to_string)
            .or_else(|| self.config.ssh_user.clone());
        let port = meta.ssh_port.unwrap_or(self.config.ssh_port);
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

    fn ssh(&self, request: &SshRequest, what: &str) -> Result<SshOutput, ProviderError> {
        self.host.ssh_exec(request).map_err(|e| ssh_error(e, what))
    }
}

#[cfg(test)]
mod tests;
