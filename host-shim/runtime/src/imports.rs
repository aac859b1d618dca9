//! The component's own imports (`ssh`, `log`, `vm-ledger`), implemented on the store data. Each is a thin
//! forward to its capability module; policy lives there, not here.

use crate::bindings::{ledger, log, ssh, transfer, types};
use crate::caps::ledger::{Account, Entry, LedgerError, Reason};
use crate::caps::log::Level;
use crate::state::HostState;

impl types::Host for HostState {}

impl ssh::Host for HostState {
    async fn exec(&mut self, request: ssh::ExecRequest) -> Result<ssh::ExecOutput, ssh::SshError> {
        self.ssh.exec(request, self.sink.clone()).await
    }

    async fn connect(
        &mut self,
        target: ssh::Target,
        timeout_ms: u32,
    ) -> Result<ssh::ConnectOutcome, ssh::SshError> {
        self.ssh.connect(target, timeout_ms).await
    }

    async fn disconnect(&mut self, target: ssh::Target) {
        self.ssh.disconnect(target).await
    }
}

impl transfer::Host for HostState {
    async fn upload(
        &mut self,
        request: transfer::UploadRequest,
    ) -> Result<transfer::TransferReport, transfer::TransferError> {
        self.ssh.upload(request).await
    }

    async fn download(
        &mut self,
        request: transfer::DownloadRequest,
    ) -> Result<transfer::TransferReport, transfer::TransferError> {
        self.ssh.download(request).await
    }
}

impl log::Host for HostState {
    async fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        self.sink.log(level, &message, &fields);
    }
}

impl ledger::Host for HostState {
    async fn put(
        &mut self,
        account: ledger::Account,
        entry: ledger::Entry,
    ) -> Result<(), ledger::LedgerError> {
        let l = self.ledger.as_ref().ok_or_else(no_ledger)?;
        let entry = Entry {
            name: entry.name,
            reason: reason_from_wit(entry.reason),
            hold_ms: entry.hold_ms,
            due_at_ms: entry.due_at_ms,
            attempts: entry.attempts,
            last_error: entry.last_error,
        };
        l.put(&account_of(&account), &entry).map_err(error_to_wit)
    }

    async fn entries(
        &mut self,
        account: ledger::Account,
    ) -> Result<Vec<ledger::Recorded>, ledger::LedgerError> {
        let l = self.ledger.as_ref().ok_or_else(no_ledger)?;
        let list = l.list(&account_of(&account)).map_err(error_to_wit)?;
        Ok(list
            .into_iter()
            .map(|r| ledger::Recorded {
                entry: ledger::Entry {
                    name: r.entry.name,
                    reason: reason_to_wit(r.entry.reason),
                    hold_ms: r.entry.hold_ms,
                    due_at_ms: r.entry.due_at_ms,
                    attempts: r.entry.attempts,
                    last_error: r.entry.last_error,
                },
                age_ms: r.age_ms,
                since_ms: r.since_ms,
            })
            .collect())
    }

    async fn remove(
        &mut self,
        account: ledger::Account,
        name: String,
    ) -> Result<(), ledger::LedgerError> {
        let l = self.ledger.as_ref().ok_or_else(no_ledger)?;
        l.remove(&account_of(&account), &name).map_err(error_to_wit)
    }
}

fn account_of(a: &ledger::Account) -> Account<'_> {
    Account {
        api_url: &a.api_url,
        token: &a.token,
    }
}

fn no_ledger() -> ledger::LedgerError {
    ledger::LedgerError::Unavailable("this host was given no state directory".into())
}

fn reason_from_wit(r: ledger::Reason) -> Reason {
    match r {
        ledger::Reason::UncertainCreate => Reason::UncertainCreate,
        ledger::Reason::FailedDelete => Reason::FailedDelete,
        ledger::Reason::LeaseExpiry => Reason::LeaseExpiry,
    }
}

fn reason_to_wit(r: Reason) -> ledger::Reason {
    match r {
        Reason::UncertainCreate => ledger::Reason::UncertainCreate,
        Reason::FailedDelete => ledger::Reason::FailedDelete,
        Reason::LeaseExpiry => ledger::Reason::LeaseExpiry,
    }
}

fn error_to_wit(e: LedgerError) -> ledger::LedgerError {
    match e {
        LedgerError::InvalidRequest(m) => ledger::LedgerError::InvalidRequest(m),
        LedgerError::Io(m) => ledger::LedgerError::Io(m),
    }
}
