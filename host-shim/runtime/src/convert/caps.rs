//! The capabilities' WIT records to and from the boundary types of `paperclip-provider-types`
//! that the capability modules speak (the guest keeps the mirror image of this in its own
//! `src/convert.rs`). Shape only.

use paperclip_provider_types as t;

use crate::bindings::{ledger, log, session, ssh, transfer};

impl From<ssh::Target> for t::SshTarget {
    fn from(w: ssh::Target) -> Self {
        t::SshTarget {
            host: w.host,
            port: w.port,
            user: w.user,
            identity: match w.identity {
                ssh::Identity::Agent => t::Identity::Agent,
                ssh::Identity::KeyFile(p) => t::Identity::KeyFile(p),
                ssh::Identity::KeyMaterial(k) => t::Identity::KeyMaterial(k),
            },
            host_key_policy: match w.host_key_policy {
                ssh::HostKeyPolicy::Yes => t::HostKeyPolicy::Yes,
                ssh::HostKeyPolicy::AcceptNew => t::HostKeyPolicy::AcceptNew,
                ssh::HostKeyPolicy::No => t::HostKeyPolicy::No,
            },
        }
    }
}

impl From<ssh::ExecRequest> for t::SshRequest {
    fn from(w: ssh::ExecRequest) -> Self {
        t::SshRequest {
            target: w.target.into(),
            command: w.command,
            stdin: w.stdin,
            timeout_ms: w.timeout_ms,
            max_output_bytes: w.max_output_bytes,
            stream_output: w.stream_output,
            durable: w.durable,
        }
    }
}

impl From<t::SshOutput> for ssh::ExecOutput {
    fn from(o: t::SshOutput) -> Self {
        ssh::ExecOutput {
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

impl From<t::Connected> for ssh::ConnectOutcome {
    fn from(c: t::Connected) -> Self {
        match c {
            t::Connected::Ready => ssh::ConnectOutcome::Ready,
            t::Connected::Unpooled => ssh::ConnectOutcome::Unpooled,
            t::Connected::Failed(o) => ssh::ConnectOutcome::Failed(o.into()),
        }
    }
}

impl From<t::SshError> for ssh::SshError {
    fn from(e: t::SshError) -> Self {
        match e {
            t::SshError::Denied(m) => ssh::SshError::Denied(m),
            t::SshError::InvalidRequest(m) => ssh::SshError::InvalidRequest(m),
            t::SshError::Spawn(m) => ssh::SshError::Spawn(m),
            t::SshError::Lost(m) => ssh::SshError::Lost(m),
        }
    }
}

fn entry_kind(k: transfer::EntryKind) -> t::EntryKind {
    match k {
        transfer::EntryKind::File => t::EntryKind::File,
        transfer::EntryKind::Directory => t::EntryKind::Directory,
    }
}

impl From<transfer::UploadRequest> for t::UploadRequest {
    fn from(w: transfer::UploadRequest) -> Self {
        t::UploadRequest {
            target: w.target.into(),
            local_path: w.local_path,
            kind: entry_kind(w.kind),
            exclude: w.exclude,
            follow_symlinks: w.follow_symlinks,
            remote_command: w.remote_command,
            timeout_ms: w.timeout_ms,
        }
    }
}

impl From<transfer::DownloadRequest> for t::DownloadRequest {
    fn from(w: transfer::DownloadRequest) -> Self {
        t::DownloadRequest {
            target: w.target.into(),
            remote_command: w.remote_command,
            local_path: w.local_path,
            kind: entry_kind(w.kind),
            mode: w.mode,
            timeout_ms: w.timeout_ms,
        }
    }
}

impl From<t::TransferReport> for transfer::TransferReport {
    fn from(r: t::TransferReport) -> Self {
        transfer::TransferReport {
            files: r.files,
            bytes: r.bytes,
            wire_bytes: r.wire_bytes,
            compressed: r.compressed,
        }
    }
}

impl From<t::TransferError> for transfer::TransferError {
    fn from(e: t::TransferError) -> Self {
        use t::TransferError as E;
        match e {
            E::Denied(m) => transfer::TransferError::Denied(m),
            E::NotFound(m) => transfer::TransferError::NotFound(m),
            E::InvalidRequest(m) => transfer::TransferError::InvalidRequest(m),
            E::LocalIo(m) => transfer::TransferError::LocalIo(m),
            E::Remote(o) => transfer::TransferError::Remote(o.into()),
            E::Timeout(m) => transfer::TransferError::Timeout(m),
            E::Spawn(m) => transfer::TransferError::Spawn(m),
        }
    }
}

impl From<log::Level> for t::LogLevel {
    fn from(l: log::Level) -> Self {
        match l {
            log::Level::Trace => t::LogLevel::Trace,
            log::Level::Debug => t::LogLevel::Debug,
            log::Level::Info => t::LogLevel::Info,
            log::Level::Warn => t::LogLevel::Warn,
            log::Level::Error => t::LogLevel::Error,
        }
    }
}

impl From<ledger::Account> for t::Account {
    fn from(a: ledger::Account) -> Self {
        t::Account {
            api_url: a.api_url,
            token: a.token,
        }
    }
}

impl From<t::Account> for ledger::Account {
    fn from(a: t::Account) -> Self {
        ledger::Account {
            api_url: a.api_url,
            token: a.token,
        }
    }
}

impl From<ledger::Reason> for t::LedgerReason {
    fn from(r: ledger::Reason) -> Self {
        match r {
            ledger::Reason::UncertainCreate => t::LedgerReason::UncertainCreate,
            ledger::Reason::FailedDelete => t::LedgerReason::FailedDelete,
            ledger::Reason::LeaseExpiry => t::LedgerReason::LeaseExpiry,
        }
    }
}

impl From<t::LedgerReason> for ledger::Reason {
    fn from(r: t::LedgerReason) -> Self {
        match r {
            t::LedgerReason::UncertainCreate => ledger::Reason::UncertainCreate,
            t::LedgerReason::FailedDelete => ledger::Reason::FailedDelete,
            t::LedgerReason::LeaseExpiry => ledger::Reason::LeaseExpiry,
        }
    }
}

impl From<ledger::Entry> for t::LedgerEntry {
    fn from(e: ledger::Entry) -> Self {
        t::LedgerEntry {
            name: e.name,
            reason: e.reason.into(),
            hold_ms: e.hold_ms,
            due_at_ms: e.due_at_ms,
            attempts: e.attempts,
            last_error: e.last_error,
        }
    }
}

impl From<t::Recorded> for ledger::Recorded {
    fn from(r: t::Recorded) -> Self {
        ledger::Recorded {
            entry: ledger::Entry {
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

impl From<t::LedgerError> for ledger::LedgerError {
    fn from(e: t::LedgerError) -> Self {
        match e {
            t::LedgerError::Unavailable(m) => ledger::LedgerError::Unavailable(m),
            t::LedgerError::InvalidRequest(m) => ledger::LedgerError::InvalidRequest(m),
            t::LedgerError::Io(m) => ledger::LedgerError::Io(m),
        }
    }
}

impl From<&t::Purpose> for session::Purpose {
    fn from(p: &t::Purpose) -> Self {
        match p {
            t::Purpose::Duplex(argv) => session::Purpose::Duplex(argv.clone()),
            t::Purpose::Login(l) => session::Purpose::Login(session::LoginRequest {
                cli: match l.cli {
                    t::LoginCli::Claude => session::LoginCli::Claude,
                    t::LoginCli::Codex => session::LoginCli::Codex,
                    t::LoginCli::Grok => session::LoginCli::Grok,
                },
                session_home: l.session_home.clone(),
            }),
        }
    }
}

impl From<session::Plan> for t::SessionPlan {
    fn from(p: session::Plan) -> Self {
        t::SessionPlan {
            target: p.target.into(),
            command: p.command,
            terminal: p.terminal.map(|s| t::TerminalSize {
                columns: s.columns,
                rows: s.rows,
            }),
            kill_command: p.kill_command,
        }
    }
}
