//! The guest's one module of WIT conversions: the generated bindings' records to and from the
//! plain types the logic speaks (`paperclip-provider-types` for what crosses to the host,
//! `crate::lease` for Paperclip's environment records). Shape only: no decisions are made here.
//!
//! Only on `wasm32`, where the bindings exist; native tests never need it.

use serde_json::{Map, Value};

use crate::bindings::exports::paperclip::sandbox_provider::provider as wit;
use crate::bindings::paperclip::sandbox_provider::{
    log as wit_log, session as wit_session, ssh as wit_ssh, transfer as wit_transfer,
    types as wit_types,
};
// Two versions of the ledger package are in `wit/deps` (0.1.0 is released and kept), so the
// bindings name the module with its version.
use crate::bindings::paperclip::vm_ledger0_2_0::ledger as wit_ledger;
use crate::lease;
use paperclip_provider_types as t;

// ---- imports: the host's capabilities -------------------------------------------------------

impl From<&t::SshTarget> for wit_ssh::Target {
    fn from(t: &t::SshTarget) -> Self {
        wit_ssh::Target {
            host: t.host.clone(),
            port: t.port,
            user: t.user.clone(),
            identity: match &t.identity {
                t::Identity::Agent => wit_ssh::Identity::Agent,
                t::Identity::KeyFile(p) => wit_ssh::Identity::KeyFile(p.clone()),
                t::Identity::KeyMaterial(k) => wit_ssh::Identity::KeyMaterial(k.clone()),
            },
            host_key_policy: match t.host_key_policy {
                t::HostKeyPolicy::Yes => wit_ssh::HostKeyPolicy::Yes,
                t::HostKeyPolicy::AcceptNew => wit_ssh::HostKeyPolicy::AcceptNew,
                t::HostKeyPolicy::No => wit_ssh::HostKeyPolicy::No,
            },
        }
    }
}

impl From<&t::SshRequest> for wit_ssh::ExecRequest {
    fn from(r: &t::SshRequest) -> Self {
        wit_ssh::ExecRequest {
            target: (&r.target).into(),
            command: r.command.clone(),
            stdin: r.stdin.clone(),
            timeout_ms: r.timeout_ms,
            max_output_bytes: r.max_output_bytes,
            stream_output: r.stream_output,
            durable: r.durable,
        }
    }
}

impl From<wit_ssh::ExecOutput> for t::SshOutput {
    fn from(o: wit_ssh::ExecOutput) -> Self {
        t::SshOutput {
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
}

impl From<wit_ssh::ConnectOutcome> for t::Connected {
    fn from(c: wit_ssh::ConnectOutcome) -> Self {
        match c {
            wit_ssh::ConnectOutcome::Ready => t::Connected::Ready,
            wit_ssh::ConnectOutcome::Unpooled => t::Connected::Unpooled,
            wit_ssh::ConnectOutcome::Failed(o) => t::Connected::Failed(o.into()),
        }
    }
}

impl From<wit_ssh::SshError> for t::SshError {
    fn from(e: wit_ssh::SshError) -> Self {
        match e {
            wit_ssh::SshError::Denied(m) => t::SshError::Denied(m),
            wit_ssh::SshError::InvalidRequest(m) => t::SshError::InvalidRequest(m),
            wit_ssh::SshError::Spawn(m) => t::SshError::Spawn(m),
            wit_ssh::SshError::Lost(m) => t::SshError::Lost(m),
        }
    }
}

fn entry_kind(kind: t::EntryKind) -> wit_transfer::EntryKind {
    match kind {
        t::EntryKind::File => wit_transfer::EntryKind::File,
        t::EntryKind::Directory => wit_transfer::EntryKind::Directory,
    }
}

impl From<&t::UploadRequest> for wit_transfer::UploadRequest {
    fn from(r: &t::UploadRequest) -> Self {
        wit_transfer::UploadRequest {
            target: (&r.target).into(),
            local_path: r.local_path.clone(),
            kind: entry_kind(r.kind),
            exclude: r.exclude.clone(),
            follow_symlinks: r.follow_symlinks,
            remote_command: r.remote_command.clone(),
            timeout_ms: r.timeout_ms,
        }
    }
}

impl From<&t::DownloadRequest> for wit_transfer::DownloadRequest {
    fn from(r: &t::DownloadRequest) -> Self {
        wit_transfer::DownloadRequest {
            target: (&r.target).into(),
            remote_command: r.remote_command.clone(),
            local_path: r.local_path.clone(),
            kind: entry_kind(r.kind),
            mode: r.mode,
            timeout_ms: r.timeout_ms,
        }
    }
}

impl From<wit_transfer::TransferReport> for t::TransferReport {
    fn from(r: wit_transfer::TransferReport) -> Self {
        t::TransferReport {
            files: r.files,
            bytes: r.bytes,
            wire_bytes: r.wire_bytes,
            compressed: r.compressed,
        }
    }
}

impl From<wit_transfer::TransferError> for t::TransferError {
    fn from(e: wit_transfer::TransferError) -> Self {
        use wit_transfer::TransferError as W;
        match e {
            W::Denied(m) => t::TransferError::Denied(m),
            W::NotFound(m) => t::TransferError::NotFound(m),
            W::InvalidRequest(m) => t::TransferError::InvalidRequest(m),
            W::LocalIo(m) => t::TransferError::LocalIo(m),
            W::Remote(o) => t::TransferError::Remote(o.into()),
            W::Timeout(m) => t::TransferError::Timeout(m),
            W::Spawn(m) => t::TransferError::Spawn(m),
        }
    }
}

impl From<t::LogLevel> for wit_log::Level {
    fn from(level: t::LogLevel) -> Self {
        match level {
            t::LogLevel::Trace => wit_log::Level::Trace,
            t::LogLevel::Debug => wit_log::Level::Debug,
            t::LogLevel::Info => wit_log::Level::Info,
            t::LogLevel::Warn => wit_log::Level::Warn,
            t::LogLevel::Error => wit_log::Level::Error,
        }
    }
}

impl From<&t::Account> for wit_ledger::Account {
    fn from(a: &t::Account) -> Self {
        wit_ledger::Account {
            api_url: a.api_url.clone(),
            token: a.token.clone(),
        }
    }
}

impl From<wit_ledger::Account> for t::Account {
    fn from(a: wit_ledger::Account) -> Self {
        t::Account {
            api_url: a.api_url,
            token: a.token,
        }
    }
}

impl From<t::LedgerReason> for wit_ledger::Reason {
    fn from(r: t::LedgerReason) -> Self {
        match r {
            t::LedgerReason::UncertainCreate => wit_ledger::Reason::UncertainCreate,
            t::LedgerReason::FailedDelete => wit_ledger::Reason::FailedDelete,
            t::LedgerReason::LeaseExpiry => wit_ledger::Reason::LeaseExpiry,
        }
    }
}

impl From<wit_ledger::Reason> for t::LedgerReason {
    fn from(r: wit_ledger::Reason) -> Self {
        match r {
            wit_ledger::Reason::UncertainCreate => t::LedgerReason::UncertainCreate,
            wit_ledger::Reason::FailedDelete => t::LedgerReason::FailedDelete,
            wit_ledger::Reason::LeaseExpiry => t::LedgerReason::LeaseExpiry,
        }
    }
}

impl From<&t::LedgerEntry> for wit_ledger::Entry {
    fn from(e: &t::LedgerEntry) -> Self {
        wit_ledger::Entry {
            name: e.name.clone(),
            reason: e.reason.into(),
            hold_ms: e.hold_ms,
            due_at_ms: e.due_at_ms,
            attempts: e.attempts,
            last_error: e.last_error.clone(),
        }
    }
}

impl From<wit_ledger::Recorded> for t::Recorded {
    fn from(r: wit_ledger::Recorded) -> Self {
        t::Recorded {
            entry: t::LedgerEntry {
                name: r.entry.name,
                reason: r.entry.reason.into(),
                hold_ms: r.entry.hold_ms,
                due_at_ms: r.entry.due_at_ms,
                attempts: r.entry.attempts,
                last_error: r.entry.last_error,
            },
            age_ms: r.age_ms,
            since_ms: r.since_ms,
        }
    }
}

impl From<wit_ledger::LedgerError> for t::LedgerError {
    fn from(e: wit_ledger::LedgerError) -> Self {
        match e {
            wit_ledger::LedgerError::Unavailable(m) => t::LedgerError::Unavailable(m),
            wit_ledger::LedgerError::InvalidRequest(m) => t::LedgerError::InvalidRequest(m),
            wit_ledger::LedgerError::Io(m) => t::LedgerError::Io(m),
        }
    }
}

// ---- exports: the provider's records ----------------------------------------------------------

impl From<t::ProviderError> for wit_types::ProviderError {
    fn from(e: t::ProviderError) -> Self {
        use t::ProviderError as E;
        use wit_types::ProviderError as W;
        match e {
            E::InvalidConfig(m) => W::InvalidConfig(m),
            E::Api(a) => W::Api(wit_types::ApiError {
                status: a.status,
                command: a.command,
                message: a.message,
                hint: a.hint,
            }),
            E::Ssh(m) => W::Ssh(m),
            E::NotFound(m) => W::NotFound(m),
            E::Denied(m) => W::Denied(m),
            E::Timeout(m) => W::Timeout(m),
            E::Transfer(m) => W::Transfer(m),
            E::InvalidRequest(m) => W::InvalidRequest(m),
            E::NotImplemented(m) => W::NotImplemented(m),
            E::Internal(m) => W::Internal(m),
        }
    }
}

/// The call context of a request.
pub fn context(c: wit::CallContext) -> lease::CallContext {
    lease::CallContext {
        config: c.config,
        environment_id: c.environment_id,
        company_id: c.company_id,
        deadline_ms: c.deadline_ms,
    }
}

/// A JSON object as the text the WIT records carry.
pub fn json_text(m: Map<String, Value>) -> String {
    Value::Object(m).to_string()
}

/// A lease Paperclip sent (its metadata parsed and checked).
pub fn lease_from_wit(l: wit::Lease) -> Result<lease::Lease, t::ProviderError> {
    Ok(lease::Lease {
        provider_lease_id: l.provider_lease_id,
        metadata: lease::parse_metadata(Some(&l.metadata))?,
        expires_at: l.expires_at,
    })
}

impl From<lease::Lease> for wit::Lease {
    fn from(l: lease::Lease) -> Self {
        wit::Lease {
            provider_lease_id: l.provider_lease_id,
            metadata: json_text(l.metadata),
            expires_at: l.expires_at,
        }
    }
}

impl From<lease::Receipt> for wit::TerminationReceipt {
    fn from(r: lease::Receipt) -> Self {
        wit::TerminationReceipt {
            provider_lease_id: r.provider_lease_id,
            state: match r.state {
                lease::LeaseState::Stopped => wit::LeaseState::Stopped,
                lease::LeaseState::Destroyed => wit::LeaseState::Destroyed,
            },
        }
    }
}

/// The operations of a sync request.
pub fn sync_operations(ops: Vec<wit::SyncOperation>) -> Vec<lease::SyncOperation> {
    ops.into_iter()
        .map(|op| lease::SyncOperation {
            operation_id: op.operation_id,
            files: op
                .files
                .into_iter()
                .map(|m| lease::SyncMapping {
                    source_path: m.source_path,
                    target_path: m.target_path,
                    kind: match m.kind {
                        wit::SyncKind::File => t::EntryKind::File,
                        wit::SyncKind::Directory => t::EntryKind::Directory,
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
        .collect()
}

impl From<lease::SyncResult> for wit::SyncResult {
    fn from(r: lease::SyncResult) -> Self {
        wit::SyncResult {
            operation_id: r.operation_id,
            files_transferred: r.files_transferred,
            bytes_transferred: r.bytes_transferred,
        }
    }
}

impl From<crate::validate::Validation> for wit::Validation {
    fn from(v: crate::validate::Validation) -> Self {
        wit::Validation {
            ok: v.ok,
            warnings: v.warnings,
            errors: v.errors,
            normalized_config: v.normalized_config,
        }
    }
}

impl From<lease::ProbeResult> for wit::ProbeResult {
    fn from(r: lease::ProbeResult) -> Self {
        wit::ProbeResult {
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
        }
    }
}

/// An execute request, with its lease parsed.
pub fn execute_request(r: wit::ExecuteRequest) -> Result<lease::ExecuteRequest, t::ProviderError> {
    Ok(lease::ExecuteRequest {
        lease: lease_from_wit(r.lease)?,
        command: r.command,
        args: r.args,
        cwd: r.cwd,
        env: r.env,
        stdin: r.stdin,
        timeout_ms: r.timeout_ms,
    })
}

impl From<lease::ExecuteResult> for wit::ExecuteResult {
    fn from(r: lease::ExecuteResult) -> Self {
        wit::ExecuteResult {
            exit_code: r.exit_code,
            signal: r.signal,
            timed_out: r.timed_out,
            stdout: r.stdout,
            stderr: r.stderr,
            metadata: json_text(r.metadata),
        }
    }
}

impl From<lease::Realized> for wit::RealizedWorkspace {
    fn from(r: lease::Realized) -> Self {
        wit::RealizedWorkspace {
            cwd: r.cwd,
            metadata: json_text(r.metadata),
        }
    }
}

impl From<lease::VmListing> for wit::VmListing {
    fn from(l: lease::VmListing) -> Self {
        wit::VmListing {
            name: l.name,
            present: l.present,
            status: l.status,
            orphan: l.orphan.map(Into::into),
        }
    }
}

impl From<lease::ReconcileReport> for wit::ReconcileReport {
    fn from(r: lease::ReconcileReport) -> Self {
        wit::ReconcileReport {
            deleted: r.deleted,
            pending: r.pending,
            next_in_ms: r.next_in_ms,
            trouble: r.trouble,
        }
    }
}

/// A `plan-session` request: its context, the lease and what the session is for.
pub fn session_request(
    r: wit::SessionRequest,
) -> Result<(lease::CallContext, lease::Lease, t::Purpose), t::ProviderError> {
    let purpose = match r.purpose {
        wit_session::Purpose::Duplex(argv) => t::Purpose::Duplex(argv),
        wit_session::Purpose::Login(l) => t::Purpose::Login(t::LoginRequest {
            cli: match l.cli {
                wit_session::LoginCli::Claude => t::LoginCli::Claude,
                wit_session::LoginCli::Codex => t::LoginCli::Codex,
                wit_session::LoginCli::Grok => t::LoginCli::Grok,
            },
            session_home: l.session_home,
        }),
    };
    Ok((context(r.context), lease_from_wit(r.lease)?, purpose))
}

impl From<t::SessionPlan> for wit_session::Plan {
    fn from(p: t::SessionPlan) -> Self {
        wit_session::Plan {
            target: (&p.target).into(),
            command: p.command,
            terminal: p.terminal.map(|t| wit_session::TerminalSize {
                columns: t.columns,
                rows: t.rows,
            }),
            kill_command: p.kill_command,
        }
    }
}
