//! The component's own imports (`ssh`, `transfer`, `log`, `vm-ledger`), implemented on the store
//! data. Each is a thin forward to its capability, through the WIT conversions in
//! `crate::convert`; policy lives in the capabilities, not here.

use crate::bindings::{ledger, log, ssh, transfer, types};
use crate::state::HostState;

impl types::Host for HostState {}

impl ssh::Host for HostState {
    async fn exec(&mut self, request: ssh::ExecRequest) -> Result<ssh::ExecOutput, ssh::SshError> {
        let out = self.ssh.exec(request.into(), self.sink.clone()).await;
        out.map(Into::into).map_err(Into::into)
    }

    async fn connect(
        &mut self,
        target: ssh::Target,
        timeout_ms: u32,
    ) -> Result<ssh::ConnectOutcome, ssh::SshError> {
        let outcome = self.ssh.connect(target.into(), timeout_ms).await;
        outcome.map(Into::into).map_err(Into::into)
    }

    async fn disconnect(&mut self, target: ssh::Target) {
        self.ssh.disconnect(target.into()).await
    }
}

impl transfer::Host for HostState {
    async fn upload(
        &mut self,
        request: transfer::UploadRequest,
    ) -> Result<transfer::TransferReport, transfer::TransferError> {
        let report = self.transfer.upload(request.into()).await;
        report.map(Into::into).map_err(Into::into)
    }

    async fn download(
        &mut self,
        request: transfer::DownloadRequest,
    ) -> Result<transfer::TransferReport, transfer::TransferError> {
        let report = self.transfer.download(request.into()).await;
        report.map(Into::into).map_err(Into::into)
    }
}

impl log::Host for HostState {
    async fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        self.sink.log(level.into(), &message, &fields);
    }
}

impl ledger::Host for HostState {
    async fn put(
        &mut self,
        account: ledger::Account,
        entry: ledger::Entry,
    ) -> Result<(), ledger::LedgerError> {
        let l = self.ledger.as_ref().ok_or_else(no_ledger)?;
        l.put(&account.into(), &entry.into()).map_err(Into::into)
    }

    async fn entries(
        &mut self,
        account: ledger::Account,
    ) -> Result<Vec<ledger::Recorded>, ledger::LedgerError> {
        let l = self.ledger.as_ref().ok_or_else(no_ledger)?;
        let list = l.list(&account.into()).map_err(ledger::LedgerError::from)?;
        Ok(list.into_iter().map(Into::into).collect())
    }

    async fn remove(
        &mut self,
        account: ledger::Account,
        name: String,
    ) -> Result<(), ledger::LedgerError> {
        let l = self.ledger.as_ref().ok_or_else(no_ledger)?;
        l.remove(&account.into(), &name).map_err(Into::into)
    }
}

fn no_ledger() -> ledger::LedgerError {
    ledger::LedgerError::Unavailable("this host was given no state directory".into())
}
