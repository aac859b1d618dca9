//! A scripted fake [`Host`] for native unit tests.

use crate::host::{
    Account, Connected, DownloadRequest, Host, HttpError, HttpResponse, LedgerEntry, LedgerError,
    LogLevel, Recorded, SshError, SshOutput, SshRequest, SshTarget, TransferError, TransferReport,
    UploadRequest,
};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

/// One recorded HTTP call.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout_ms: u64,
}

/// One recorded transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    Upload(UploadRequest),
    Download(DownloadRequest),
}

/// The fake wall clock at monotonic time 0: 2026-12-01T00:00:00Z.
pub const WALL_EPOCH_MS: u64 = 1_796_083_200_000;

/// One row of the fake ledger: API URL, token, entry, fake-clock time of the write, wall-clock
/// time of the first write.
pub type LedgerRow = (String, String, LedgerEntry, u64, u64);

/// One recorded log line: level, message, fields.
pub type LogLine = (LogLevel, String, Vec<(String, String)>);

/// Scripted answers plus a record of every call. Each HTTP call advances the clock by
/// `http_cost_ms`, each SSH call by `ssh_cost_ms`; `sleep_ms` advances it exactly.
#[derive(Default)]
pub struct FakeHost {
    pub http_script: RefCell<VecDeque<Result<HttpResponse, HttpError>>>,
    /// Answers by command verb (`ls`, `rm`, …) once `http_script` is empty (a call with no
    /// answer either way panics).
    pub http_by_verb: RefCell<HashMap<String, Result<HttpResponse, HttpError>>>,
    /// The VM ledger: (API URL, token, entry, fake-clock time of the write, of the first
    /// write), oldest first.
    pub ledger: RefCell<Vec<LedgerRow>>,
    /// When set, every ledger call fails with it.
    pub ledger_error: RefCell<Option<LedgerError>>,
    pub ssh_script: RefCell<VecDeque<Result<SshOutput, SshError>>>,
    pub http_calls: RefCell<Vec<HttpCall>>,
    pub ssh_calls: RefCell<Vec<SshRequest>>,
    /// Answers to `ssh_connect`, in order; when empty, every connect answers `Ready`.
    pub connect_script: RefCell<VecDeque<Result<Connected, SshError>>>,
    /// Every `ssh_connect`: target and timeout.
    pub connects: RefCell<Vec<(SshTarget, u32)>>,
    pub disconnects: RefCell<Vec<SshTarget>>,
    pub logs: RefCell<Vec<LogLine>>,
    /// Answers to transfers (uploads and downloads alike), in order.
    pub transfer_script: RefCell<VecDeque<Result<TransferReport, TransferError>>>,
    /// Every transfer, in order.
    pub transfers: RefCell<Vec<Transfer>>,
    pub sleeps: RefCell<Vec<u64>>,
    pub env: HashMap<String, String>,
    pub now: Cell<u64>,
    pub random: Cell<u64>,
    pub http_cost_ms: u64,
    pub ssh_cost_ms: u64,
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost {
            now: Cell::new(1_000_000),
            random: Cell::new(0x0123_4567_89ab_cdef),
            http_cost_ms: 10,
            ssh_cost_ms: 20,
            ..FakeHost::default()
        }
    }

    /// Queue a response with `status` and `body`.
    pub fn http(&self, status: u16, body: &str) -> &Self {
        self.http_script.borrow_mut().push_back(Ok(HttpResponse {
            status,
            body: body.as_bytes().to_vec(),
            retry_after_ms: None,
        }));
        self
    }

    /// Queue a response with `status`, `body` and a `Retry-After` of `retry_after_ms`.
    pub fn http_retry_after(&self, status: u16, body: &str, retry_after_ms: u64) -> &Self {
        self.http_script.borrow_mut().push_back(Ok(HttpResponse {
            status,
            body: body.as_bytes().to_vec(),
            retry_after_ms: Some(retry_after_ms),
        }));
        self
    }

    /// Answer every `verb` call past the script with `status` and `body`.
    pub fn http_when(&self, verb: &str, status: u16, body: &str) -> &Self {
        self.http_by_verb.borrow_mut().insert(
            verb.to_string(),
            Ok(HttpResponse {
                status,
                body: body.as_bytes().to_vec(),
                retry_after_ms: None,
            }),
        );
        self
    }

    /// The ledger's VM names, oldest first.
    pub fn ledger_names(&self) -> Vec<String> {
        self.ledger
            .borrow()
            .iter()
            .map(|(_, _, e, _, _)| e.name.clone())
            .collect()
    }

    /// Queue a transport error.
    pub fn http_err(&self, e: HttpError) -> &Self {
        self.http_script.borrow_mut().push_back(Err(e));
        self
    }

    /// Queue an SSH result.
    pub fn ssh(&self, code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> &Self {
        self.ssh_script.borrow_mut().push_back(Ok(SshOutput {
            exit_code: code,
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            ..SshOutput::default()
        }));
        self
    }

    /// Queue a full SSH output.
    pub fn ssh_out(&self, out: SshOutput) -> &Self {
        self.ssh_script.borrow_mut().push_back(Ok(out));
        self
    }

    /// Queue an SSH host error.
    pub fn ssh_err(&self, e: SshError) -> &Self {
        self.ssh_script.borrow_mut().push_back(Err(e));
        self
    }

    /// The bodies sent, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.http_calls
            .borrow()
            .iter()
            .map(|c| c.body.clone())
            .collect()
    }

    /// The remote commands run, in order.
    pub fn commands(&self) -> Vec<String> {
        self.ssh_calls
            .borrow()
            .iter()
            .map(|c| c.command.clone())
            .collect()
    }

    /// Every log line and field, flattened (for secret checks).
    pub fn log_text(&self) -> String {
        self.logs
            .borrow()
            .iter()
            .map(|(_, m, f)| format!("{m} {f:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Scripts fully consumed.
    pub fn assert_drained(&self) {
        assert!(self.http_script.borrow().is_empty(), "unused HTTP answers");
        assert!(self.ssh_script.borrow().is_empty(), "unused SSH answers");
    }
}

impl FakeHost {
    fn next_transfer(&self) -> Result<TransferReport, TransferError> {
        self.now.set(self.now.get() + self.ssh_cost_ms);
        self.transfer_script
            .borrow_mut()
            .pop_front()
            .expect("unexpected transfer")
    }
}

impl Host for FakeHost {
    fn http_post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<HttpResponse, HttpError> {
        let body = String::from_utf8(body.to_vec()).expect("utf-8 body");
        self.http_calls.borrow_mut().push(HttpCall {
            url: url.to_string(),
            headers: headers.to_vec(),
            body: body.clone(),
            timeout_ms,
        });
        let next = self.http_script.borrow_mut().pop_front().or_else(|| {
            let verb = body.split(' ').next().unwrap_or_default();
            self.http_by_verb.borrow().get(verb).cloned()
        });
        let answer = next.unwrap_or_else(|| panic!("unexpected HTTP call: {body}"));
        let cost = if answer == Err(HttpError::Timeout) {
            timeout_ms
        } else {
            self.http_cost_ms
        };
        self.now.set(self.now.get() + cost);
        answer
    }

    fn ssh_connect(&self, target: &SshTarget, timeout_ms: u32) -> Result<Connected, SshError> {
        self.connects
            .borrow_mut()
            .push((target.clone(), timeout_ms));
        let answer = self
            .connect_script
            .borrow_mut()
            .pop_front()
            .unwrap_or(Ok(Connected::Ready));
        let cost = match &answer {
            Ok(Connected::Failed(o)) if o.timed_out => u64::from(timeout_ms),
            _ => 0,
        };
        self.now.set(self.now.get() + cost);
        answer
    }

    fn ssh_exec(&self, request: &SshRequest) -> Result<SshOutput, SshError> {
        self.ssh_calls.borrow_mut().push(request.clone());
        let next = self.ssh_script.borrow_mut().pop_front();
        let answer = next.unwrap_or_else(|| panic!("unexpected SSH call: {}", request.command));
        let cost = match &answer {
            Ok(o) if o.timed_out => u64::from(request.timeout_ms),
            _ => self.ssh_cost_ms,
        };
        self.now.set(self.now.get() + cost);
        answer
    }

    fn transfer_upload(&self, request: &UploadRequest) -> Result<TransferReport, TransferError> {
        self.transfers
            .borrow_mut()
            .push(Transfer::Upload(request.clone()));
        self.next_transfer()
    }

    fn transfer_download(
        &self,
        request: &DownloadRequest,
    ) -> Result<TransferReport, TransferError> {
        self.transfers
            .borrow_mut()
            .push(Transfer::Download(request.clone()));
        self.next_transfer()
    }

    fn ssh_disconnect(&self, target: &SshTarget) {
        self.disconnects.borrow_mut().push(target.clone());
    }

    fn log(&self, level: LogLevel, message: &str, fields: &[(&str, String)]) {
        self.logs.borrow_mut().push((
            level,
            message.to_string(),
            fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        ));
    }

    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    /// The fake wall clock runs with the monotonic one, from [`WALL_EPOCH_MS`].
    fn wall_ms(&self) -> u64 {
        WALL_EPOCH_MS + self.now.get()
    }

    fn sleep_ms(&self, ms: u64) {
        self.sleeps.borrow_mut().push(ms);
        self.now.set(self.now.get() + ms);
    }

    fn random_u64(&self) -> u64 {
        let r = self.random.get();
        self.random.set(r.wrapping_add(1));
        r
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn ledger_put(&self, account: &Account, entry: &LedgerEntry) -> Result<(), LedgerError> {
        if let Some(e) = self.ledger_error.borrow().clone() {
            return Err(e);
        }
        let mut l = self.ledger.borrow_mut();
        let same = |(u, t, e, _, _): &LedgerRow| {
            *u == account.api_url && *t == account.token && e.name == entry.name
        };
        let since = l.iter().find(|x| same(x)).map(|x| x.4);
        l.retain(|x| !same(x));
        l.push((
            account.api_url.clone(),
            account.token.clone(),
            entry.clone(),
            self.now.get(),
            since.unwrap_or_else(|| self.wall_ms()),
        ));
        Ok(())
    }

    fn ledger_list(&self, account: &Account) -> Result<Vec<Recorded>, LedgerError> {
        if let Some(e) = self.ledger_error.borrow().clone() {
            return Err(e);
        }
        Ok(self
            .ledger
            .borrow()
            .iter()
            .filter(|(u, t, _, _, _)| *u == account.api_url && *t == account.token)
            .map(|(_, _, e, at, since)| Recorded {
                entry: e.clone(),
                age_ms: self.now.get().saturating_sub(*at),
                since_ms: *since,
            })
            .collect())
    }

    fn ledger_remove(&self, account: &Account, name: &str) -> Result<(), LedgerError> {
        if let Some(e) = self.ledger_error.borrow().clone() {
            return Err(e);
        }
        self.ledger.borrow_mut().retain(|(u, t, e, _, _)| {
            !(*u == account.api_url && *t == account.token && e.name == name)
        });
        Ok(())
    }
}
