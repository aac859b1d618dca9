//! The host boundary: the ONLY module that calls WIT imports.
//!
//! Everything else in the crate talks to the outside world through the [`Host`] trait with plain
//! Rust types, so the whole lifecycle is unit-tested natively with a scripted fake host. The real
//! implementation, [`WasiHost`], exists only on `wasm32` and is built from `wasi:http`,
//! `wasi:clocks/monotonic-clock`, `wasi:random`, this package's `ssh` and `log` imports and the
//! `paperclip:vm-ledger` import.

use std::fmt;

/// Log severity (mirror of the WIT `log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Developer detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// A failure.
    Error,
}

/// An HTTP response from the `/exec` API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
    /// The `Retry-After` header in milliseconds, when it held a number of seconds (429, 503).
    pub retry_after_ms: Option<u64>,
}

/// The longest `Retry-After` honoured: a longer one is read as this, so a broken header cannot
/// park the work for days.
pub const MAX_RETRY_AFTER_MS: u64 = 10 * 60 * 1000;

/// A `Retry-After` value in milliseconds: delay-seconds only (an HTTP date is not honoured and
/// reads as absent, so the caller's own backoff applies), capped at [`MAX_RETRY_AFTER_MS`].
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(secs.saturating_mul(1000).min(MAX_RETRY_AFTER_MS))
}

/// Why an HTTP call produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the authority (not allow-listed).
    Denied(String),
    /// The deadline passed before the response was complete.
    Timeout,
    /// The connection could not be made (DNS, refused, TLS, …).
    Connect(String),
    /// Anything else (protocol errors, malformed request).
    Other(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(a) => write!(f, "the host does not allow HTTP requests to {a}"),
            HttpError::Timeout => write!(f, "the request timed out"),
            HttpError::Connect(m) => write!(f, "connection failed: {m}"),
            HttpError::Other(m) => write!(f, "{m}"),
        }
    }
}

/// Which private key authenticates an SSH connection.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// The host's agent and default keys.
    Agent,
    /// A key file on the host, by absolute path.
    KeyFile(String),
    /// Pasted key material (a secret: never printed).
    KeyMaterial(String),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent => write!(f, "Agent"),
            Identity::KeyFile(p) => write!(f, "KeyFile({p:?})"),
            Identity::KeyMaterial(_) => write!(f, "KeyMaterial([REDACTED])"),
        }
    }
}

/// OpenSSH `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Only known host keys.
    Yes,
    /// Unknown hosts are added; changed keys refused (the default).
    #[default]
    AcceptNew,
    /// Any key.
    No,
}

impl HostKeyPolicy {
    /// The OpenSSH spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyPolicy::Yes => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::No => "no",
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name to dial.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user; none lets the client choose.
    pub user: Option<String>,
    /// The key to authenticate with.
    pub identity: Identity,
    /// Host-key policy.
    pub host_key_policy: HostKeyPolicy,
}

impl SshTarget {
    /// `user@host` (or `host`), for messages and metadata.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// One remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRequest {
    /// Where to run it.
    pub target: SshTarget,
    /// The remote command line.
    pub command: String,
    /// Bytes for stdin; none closes stdin at once.
    pub stdin: Option<Vec<u8>>,
    /// Deadline for the whole call.
    pub timeout_ms: u32,
    /// Cap per output stream.
    pub max_output_bytes: u64,
    /// Forward output live to Paperclip.
    pub stream_output: bool,
    /// Run it detached on the VM so it outlives its connection (WIT `exec-request.durable`).
    pub durable: bool,
}

/// What the remote command produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SshOutput {
    /// Exit status of the ssh client (255: SSH itself failed); none on signal/timeout.
    pub exit_code: Option<i32>,
    /// `exit_code` is what the SSH server reported for the command: even 255 is its own.
    pub exit_code_from_remote: bool,
    /// Signal name, if the client died from one.
    pub signal: Option<String>,
    /// The deadline passed and the host killed the client.
    pub timed_out: bool,
    /// Raw stdout (up to the cap).
    pub stdout: Vec<u8>,
    /// Raw stderr (up to the cap).
    pub stderr: Vec<u8>,
    /// stdout exceeded the cap.
    pub stdout_truncated: bool,
    /// stderr exceeded the cap.
    pub stderr_truncated: bool,
}

/// What [`Host::ssh_connect`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// A pooled connection is up: exit statuses will come from the SSH server.
    Ready,
    /// The host does not pool connections; commands run as always.
    Unpooled,
    /// Opening the connection failed; what the SSH client reported.
    Failed(SshOutput),
}

/// Why the host could not run an SSH command at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshError {
    /// Destination not allow-listed.
    Denied(String),
    /// Malformed request.
    InvalidRequest(String),
    /// The SSH client could not be started.
    Spawn(String),
    /// A durable command's outcome is unknown (what is known, for the operator).
    Lost(String),
}

impl fmt::Display for SshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshError::Denied(m) => write!(f, "the host does not allow SSH to {m}"),
            SshError::InvalidRequest(m) => write!(f, "invalid SSH request: {m}"),
            SshError::Spawn(m) => write!(f, "the SSH client failed: {m}"),
            SshError::Lost(m) => f.write_str(m),
        }
    }
}

/// What a transfer moves (mirror of the WIT `transfer.entry-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// One regular file: the stream is its bytes.
    File,
    /// A directory: the stream is a tar archive of its contents.
    Directory,
}

/// Host → VM: stream a host path into `remote_command` (mirror of WIT `upload-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The VM.
    pub target: SshTarget,
    /// Absolute host path to read.
    pub local_path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// `tar --exclude` patterns (directories).
    pub exclude: Vec<String>,
    /// Archive what links point to.
    pub follow_symlinks: bool,
    /// Reads the gzip stream on stdin; replaces the target only when all of it arrived.
    pub remote_command: String,
    /// Deadline for the whole transfer.
    pub timeout_ms: u32,
}

/// VM → host: stream `remote_command`'s stdout into a host path (mirror of WIT
/// `download-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// The VM.
    pub target: SshTarget,
    /// Writes the stream on stdout (gzip when its first stdin line is `gzip`).
    pub remote_command: String,
    /// Absolute host path to replace.
    pub local_path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Permission bits for the target.
    pub mode: Option<u32>,
    /// Deadline for the whole transfer.
    pub timeout_ms: u32,
}

/// What a completed transfer moved (mirror of WIT `transfer-report`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// Files and links moved.
    pub files: u64,
    /// Their content bytes.
    pub bytes: u64,
    /// Bytes on the SSH channel.
    pub wire_bytes: u64,
    /// The stream was compressed.
    pub compressed: bool,
}

/// Why a transfer failed (mirror of WIT `transfer-error`); the old target is whole after any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// A host path outside the allowed roots, or an SSH target the host refuses.
    Denied(String),
    /// The source does not exist or is not the kind asked for.
    NotFound(String),
    /// Malformed request.
    InvalidRequest(String),
    /// Reading or writing on the host failed.
    LocalIo(String),
    /// The remote command failed or the connection ended first.
    Remote(SshOutput),
    /// The deadline passed.
    Timeout(String),
    /// The SSH client could not be started.
    Spawn(String),
}

/// The exe.dev account a ledger entry belongs to (mirror of the WIT `ledger.account`).
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The `/exec` API URL.
    pub api_url: String,
    /// The API token (a secret: never printed; the host keeps only a fingerprint).
    pub token: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Account({:?}, [REDACTED])", self.api_url)
    }
}

/// Why a VM is in the host's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerReason {
    /// A create whose outcome is unknown: the VM may appear later.
    UncertainCreate,
    /// A release or destroy that could not delete the VM.
    FailedDelete,
    /// A lease with an expiry: its VM is deleted once the entry is due.
    LeaseExpiry,
}

impl LedgerReason {
    /// A stable spelling for logs and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerReason::UncertainCreate => "uncertain-create",
            LedgerReason::FailedDelete => "failed-delete",
            LedgerReason::LeaseExpiry => "lease-expiry",
        }
    }
}

/// One ledger entry as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The VM name.
    pub name: String,
    /// Why it is recorded.
    pub reason: LedgerReason,
    /// How long after the write a live call still owns the VM (0: nobody).
    pub hold_ms: u64,
    /// Wall-clock ms (Unix epoch) before which nobody acts on it: the next try, or a lease's
    /// expiry (0: at once).
    pub due_at_ms: u64,
    /// Tries made so far.
    pub attempts: u32,
    /// Why the last try failed (safe to show).
    pub last_error: Option<String>,
}

impl LedgerEntry {
    /// A fresh entry: due at once, never tried.
    pub fn new(name: &str, reason: LedgerReason, hold_ms: u64) -> LedgerEntry {
        LedgerEntry {
            name: name.to_string(),
            reason,
            hold_ms,
            due_at_ms: 0,
            attempts: 0,
            last_error: None,
        }
    }
}

/// One ledger entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The entry as last written.
    pub entry: LedgerEntry,
    /// Wall-clock milliseconds since it was written.
    pub age_ms: u64,
    /// Wall-clock ms (Unix epoch) when the VM was first recorded.
    pub since_ms: u64,
}

impl Recorded {
    /// A live call still owns the VM.
    pub fn held(&self) -> bool {
        self.age_ms < self.entry.hold_ms
    }

    /// Milliseconds until the entry may be acted on, given the wall clock `now_wall_ms` (0: due).
    pub fn due_in_ms(&self, now_wall_ms: u64) -> u64 {
        let hold = self.entry.hold_ms.saturating_sub(self.age_ms);
        hold.max(self.entry.due_at_ms.saturating_sub(now_wall_ms))
    }
}

/// Why the host could not use its ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// The host keeps no ledger.
    Unavailable(String),
    /// Malformed request.
    InvalidRequest(String),
    /// Reading or writing the host's state failed.
    Io(String),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Unavailable(m) => write!(f, "the host keeps no VM ledger: {m}"),
            LedgerError::InvalidRequest(m) => write!(f, "invalid VM ledger request: {m}"),
            LedgerError::Io(m) => write!(f, "VM ledger I/O failed: {m}"),
        }
    }
}

/// Everything the provider needs from the outside world.
pub trait Host {
    /// POST `body` to `url` with `headers`; the whole call must finish within `timeout_ms`.
    fn http_post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<HttpResponse, HttpError>;
    /// Make sure a pooled SSH connection to `target` is up (opening one if needed) within
    /// `timeout_ms`; runs none of the caller's commands.
    fn ssh_connect(&self, target: &SshTarget, timeout_ms: u32) -> Result<Connected, SshError>;
    /// Run one remote command over SSH.
    fn ssh_exec(&self, request: &SshRequest) -> Result<SshOutput, SshError>;
    /// Stream a host file or directory into the VM (see [`UploadRequest`]).
    fn transfer_upload(&self, request: &UploadRequest) -> Result<TransferReport, TransferError>;
    /// Stream a VM file or directory to the host (see [`DownloadRequest`]).
    fn transfer_download(&self, request: &DownloadRequest)
        -> Result<TransferReport, TransferError>;
    /// Drop any pooled connection to `target`.
    fn ssh_disconnect(&self, target: &SshTarget);
    /// Emit a log line (never with secrets).
    fn log(&self, level: LogLevel, message: &str, fields: &[(&str, String)]);
    /// Monotonic milliseconds (arbitrary origin).
    fn now_ms(&self) -> u64;
    /// Wall-clock milliseconds since the Unix epoch (lease expiry only; deadlines use
    /// [`Host::now_ms`]).
    fn wall_ms(&self) -> u64;
    /// Sleep for `ms` milliseconds.
    fn sleep_ms(&self, ms: u64);
    /// A random 64-bit number.
    fn random_u64(&self) -> u64;
    /// A process environment variable (the host exposes only `EXE_API_KEY`).
    fn env_var(&self, name: &str) -> Option<String>;
    /// Record `entry` in the host's durable VM ledger under `account` (replacing its namesake).
    fn ledger_put(&self, account: &Account, entry: &LedgerEntry) -> Result<(), LedgerError>;
    /// Every ledger entry under `account`, oldest first.
    fn ledger_list(&self, account: &Account) -> Result<Vec<Recorded>, LedgerError>;
    /// Remove the ledger entry `name` under `account` (absent is fine).
    fn ledger_remove(&self, account: &Account, name: &str) -> Result<(), LedgerError>;
}

#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::to_wit_reason;
#[cfg(target_arch = "wasm32")]
pub use wasm::WasiHost;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::*;
    use crate::bindings::paperclip::sandbox_provider::{
        log as wit_log, ssh as wit_ssh, transfer as wit_transfer,
    };
    // Two versions of the package are in `wit/deps` (0.1.0 is released and kept), so the
    // bindings name the module with its version.
    use crate::bindings::paperclip::vm_ledger0_2_0::ledger as wit_ledger;
    use wasi::clocks::{monotonic_clock, wall_clock};
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasi::io::streams::StreamError;

    /// The real host: WIT imports.
    pub struct WasiHost;

    const NS_PER_MS: u64 = 1_000_000;

    fn map_error_code(code: &ErrorCode, authority: &str) -> HttpError {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied(authority.to_string()),
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout
            | ErrorCode::DnsTimeout => HttpError::Timeout,
            ErrorCode::DnsError(p) => HttpError::Connect(format!(
                "DNS error for {authority}: {}",
                p.rcode.clone().unwrap_or_default()
            )),
            ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpProhibited
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::TlsProtocolError
            | ErrorCode::TlsCertificateError
            | ErrorCode::TlsAlertReceived(_) => {
                HttpError::Connect(format!("{authority}: {code:?}"))
            }
            other => HttpError::Other(format!("{authority}: {other:?}")),
        }
    }

    /// Wait for `pollable` until `deadline_ns` (monotonic). Returns false on timeout.
    fn wait_until(pollable: &wasi::io::poll::Pollable, deadline_ns: u64) -> bool {
        if pollable.ready() {
            return true;
        }
        let now = monotonic_clock::now();
        if now >= deadline_ns {
            return false;
        }
        let timer = monotonic_clock::subscribe_instant(deadline_ns);
        let ready = wasi::io::poll::poll(&[pollable, &timer]);
        ready.contains(&0) || pollable.ready()
    }

    impl Host for WasiHost {
        fn http_post(
            &self,
            url: &str,
            headers: &[(String, String)],
            body: &[u8],
            timeout_ms: u64,
        ) -> Result<HttpResponse, HttpError> {
            let parsed = crate::endpoint::Endpoint::parse(url)
                .ok_or_else(|| HttpError::Other("the API URL is not a valid http(s) URL".into()))?;
            let scheme = if parsed.https() {
                Scheme::Https
            } else {
                Scheme::Http
            };
            let authority = parsed.authority();
            let path = parsed.path_with_query();
            let deadline = monotonic_clock::now() + timeout_ms.saturating_mul(NS_PER_MS);

            let mut list: Vec<(String, Vec<u8>)> = headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect();
            list.push((
                "content-length".to_string(),
                body.len().to_string().into_bytes(),
            ));
            let fields = Fields::from_list(&list)
                .map_err(|e| HttpError::Other(format!("invalid header: {e:?}")))?;
            let request = OutgoingRequest::new(fields);
            let bad = |what: &str| HttpError::Other(format!("invalid request {what}"));
            request
                .set_method(&Method::Post)
                .map_err(|_| bad("method"))?;
            request
                .set_scheme(Some(&scheme))
                .map_err(|_| bad("scheme"))?;
            request
                .set_authority(Some(&authority))
                .map_err(|_| bad("authority"))?;
            request
                .set_path_with_query(Some(&path))
                .map_err(|_| bad("path"))?;
            let options = RequestOptions::new();
            let t = timeout_ms.saturating_mul(NS_PER_MS);
            let _ = options.set_connect_timeout(Some(t));
            let _ = options.set_first_byte_timeout(Some(t));
            let _ = options.set_between_bytes_timeout(Some(t));

            let outgoing_body = request.body().map_err(|_| bad("body"))?;
            let future = outgoing_handler::handle(request, Some(options))
                .map_err(|e| map_error_code(&e, &authority))?;
            // A request refused or failed early closes the body stream; the real reason is
            // then in the response future, so a write failure only ends the writing.
            let mut write_error = None;
            {
                let stream = outgoing_body.write().map_err(|_| bad("body stream"))?;
                for chunk in body.chunks(4096) {
                    if let Err(e) = stream.blocking_write_and_flush(chunk) {
                        write_error = Some(format!("writing request body: {e:?}"));
                        break;
                    }
                }
            }
            let finish = OutgoingBody::finish(outgoing_body, None);

            let pollable = future.subscribe();
            if !wait_until(&pollable, deadline) {
                return Err(HttpError::Timeout);
            }
            drop(pollable);
            let response = match future.get() {
                Some(Ok(Ok(r))) => r,
                Some(Ok(Err(e))) => return Err(map_error_code(&e, &authority)),
                Some(Err(())) => return Err(HttpError::Other("response already taken".into())),
                None => return Err(HttpError::Timeout),
            };
            if let Some(e) = write_error {
                return Err(HttpError::Other(e));
            }
            if let Err(e) = finish {
                return Err(map_error_code(&e, &authority));
            }
            let status = response.status();
            let retry_after_ms = response
                .headers()
                .get("retry-after")
                .first()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(parse_retry_after);
            let incoming = response
                .consume()
                .map_err(|_| HttpError::Other("response body unavailable".into()))?;
            let mut out = Vec::new();
            {
                let stream = incoming
                    .stream()
                    .map_err(|_| HttpError::Other("response body stream unavailable".into()))?;
                loop {
                    let p = stream.subscribe();
                    if !wait_until(&p, deadline) {
                        return Err(HttpError::Timeout);
                    }
                    drop(p);
                    match stream.read(64 * 1024) {
                        Ok(bytes) => out.extend_from_slice(&bytes),
                        Err(StreamError::Closed) => break,
                        Err(StreamError::LastOperationFailed(e)) => {
                            return Err(HttpError::Other(format!(
                                "reading response body: {}",
                                e.to_debug_string()
                            )))
                        }
                    }
                }
            }
            drop(incoming);
            Ok(HttpResponse {
                status,
                body: out,
                retry_after_ms,
            })
        }

        fn ssh_connect(&self, target: &SshTarget, timeout_ms: u32) -> Result<Connected, SshError> {
            match wit_ssh::connect(&to_wit_target(target), timeout_ms) {
                Ok(wit_ssh::ConnectOutcome::Ready) => Ok(Connected::Ready),
                Ok(wit_ssh::ConnectOutcome::Unpooled) => Ok(Connected::Unpooled),
                Ok(wit_ssh::ConnectOutcome::Failed(o)) => Ok(Connected::Failed(from_wit_output(o))),
                Err(e) => Err(from_wit_error(e)),
            }
        }

        fn ssh_exec(&self, request: &SshRequest) -> Result<SshOutput, SshError> {
            let req = wit_ssh::ExecRequest {
                target: to_wit_target(&request.target),
                command: request.command.clone(),
                stdin: request.stdin.clone(),
                timeout_ms: request.timeout_ms,
                max_output_bytes: request.max_output_bytes,
                stream_output: request.stream_output,
                durable: request.durable,
            };
            wit_ssh::exec(&req)
                .map(from_wit_output)
                .map_err(from_wit_error)
        }

        fn transfer_upload(
            &self,
            request: &UploadRequest,
        ) -> Result<TransferReport, TransferError> {
            let req = wit_transfer::UploadRequest {
                target: to_wit_target(&request.target),
                local_path: request.local_path.clone(),
                kind: to_wit_kind(request.kind),
                exclude: request.exclude.clone(),
                follow_symlinks: request.follow_symlinks,
                remote_command: request.remote_command.clone(),
                timeout_ms: request.timeout_ms,
            };
            wit_transfer::upload(&req)
                .map(from_wit_report)
                .map_err(from_wit_transfer_error)
        }

        fn transfer_download(
            &self,
            request: &DownloadRequest,
        ) -> Result<TransferReport, TransferError> {
            let req = wit_transfer::DownloadRequest {
                target: to_wit_target(&request.target),
                remote_command: request.remote_command.clone(),
                local_path: request.local_path.clone(),
                kind: to_wit_kind(request.kind),
                mode: request.mode,
                timeout_ms: request.timeout_ms,
            };
            wit_transfer::download(&req)
                .map(from_wit_report)
                .map_err(from_wit_transfer_error)
        }

        fn ssh_disconnect(&self, target: &SshTarget) {
            wit_ssh::disconnect(&to_wit_target(target));
        }

        fn log(&self, level: LogLevel, message: &str, fields: &[(&str, String)]) {
            let level = match level {
                LogLevel::Trace => wit_log::Level::Trace,
                LogLevel::Debug => wit_log::Level::Debug,
                LogLevel::Info => wit_log::Level::Info,
                LogLevel::Warn => wit_log::Level::Warn,
                LogLevel::Error => wit_log::Level::Error,
            };
            let fields: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect();
            wit_log::emit(level, message, &fields);
        }

        fn now_ms(&self) -> u64 {
            monotonic_clock::now() / NS_PER_MS
        }

        fn wall_ms(&self) -> u64 {
            let t = wall_clock::now();
            t.seconds
                .saturating_mul(1000)
                .saturating_add(u64::from(t.nanoseconds / 1_000_000))
        }

        fn sleep_ms(&self, ms: u64) {
            if ms == 0 {
                return;
            }
            monotonic_clock::subscribe_duration(ms.saturating_mul(NS_PER_MS)).block();
        }

        fn random_u64(&self) -> u64 {
            wasi::random::random::get_random_u64()
        }

        fn env_var(&self, name: &str) -> Option<String> {
            std::env::var(name).ok()
        }

        fn ledger_put(&self, account: &Account, entry: &LedgerEntry) -> Result<(), LedgerError> {
            wit_ledger::put(&to_wit_account(account), &to_wit_entry(entry))
                .map_err(from_wit_ledger_error)
        }

        fn ledger_list(&self, account: &Account) -> Result<Vec<Recorded>, LedgerError> {
            let list =
                wit_ledger::entries(&to_wit_account(account)).map_err(from_wit_ledger_error)?;
            Ok(list
                .into_iter()
                .map(|r| Recorded {
                    entry: LedgerEntry {
                        name: r.entry.name,
                        reason: from_wit_reason(r.entry.reason),
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

        fn ledger_remove(&self, account: &Account, name: &str) -> Result<(), LedgerError> {
            wit_ledger::remove(&to_wit_account(account), name).map_err(from_wit_ledger_error)
        }
    }

    fn to_wit_account(a: &Account) -> wit_ledger::Account {
        wit_ledger::Account {
            api_url: a.api_url.clone(),
            token: a.token.clone(),
        }
    }

    fn to_wit_entry(e: &LedgerEntry) -> wit_ledger::Entry {
        wit_ledger::Entry {
            name: e.name.clone(),
            reason: to_wit_reason(e.reason),
            hold_ms: e.hold_ms,
            due_at_ms: e.due_at_ms,
            attempts: e.attempts,
            last_error: e.last_error.clone(),
        }
    }

    /// The WIT reason of a ledger reason (also used by the `list-vms` export).
    pub(crate) fn to_wit_reason(r: LedgerReason) -> wit_ledger::Reason {
        match r {
            LedgerReason::UncertainCreate => wit_ledger::Reason::UncertainCreate,
            LedgerReason::FailedDelete => wit_ledger::Reason::FailedDelete,
            LedgerReason::LeaseExpiry => wit_ledger::Reason::LeaseExpiry,
        }
    }

    fn from_wit_reason(r: wit_ledger::Reason) -> LedgerReason {
        match r {
            wit_ledger::Reason::UncertainCreate => LedgerReason::UncertainCreate,
            wit_ledger::Reason::FailedDelete => LedgerReason::FailedDelete,
            wit_ledger::Reason::LeaseExpiry => LedgerReason::LeaseExpiry,
        }
    }

    fn from_wit_ledger_error(e: wit_ledger::LedgerError) -> LedgerError {
        match e {
            wit_ledger::LedgerError::Unavailable(m) => LedgerError::Unavailable(m),
            wit_ledger::LedgerError::InvalidRequest(m) => LedgerError::InvalidRequest(m),
            wit_ledger::LedgerError::Io(m) => LedgerError::Io(m),
        }
    }

    fn from_wit_output(o: wit_ssh::ExecOutput) -> SshOutput {
        SshOutput {
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

    fn from_wit_error(e: wit_ssh::SshError) -> SshError {
        match e {
            wit_ssh::SshError::Denied(m) => SshError::Denied(m),
            wit_ssh::SshError::InvalidRequest(m) => SshError::InvalidRequest(m),
            wit_ssh::SshError::Spawn(m) => SshError::Spawn(m),
            wit_ssh::SshError::Lost(m) => SshError::Lost(m),
        }
    }

    fn to_wit_target(t: &SshTarget) -> wit_ssh::Target {
        wit_ssh::Target {
            host: t.host.clone(),
            port: t.port,
            user: t.user.clone(),
            identity: match &t.identity {
                Identity::Agent => wit_ssh::Identity::Agent,
                Identity::KeyFile(p) => wit_ssh::Identity::KeyFile(p.clone()),
                Identity::KeyMaterial(k) => wit_ssh::Identity::KeyMaterial(k.clone()),
            },
            host_key_policy: match t.host_key_policy {
                HostKeyPolicy::Yes => wit_ssh::HostKeyPolicy::Yes,
                HostKeyPolicy::AcceptNew => wit_ssh::HostKeyPolicy::AcceptNew,
                HostKeyPolicy::No => wit_ssh::HostKeyPolicy::No,
            },
        }
    }

    fn to_wit_kind(kind: EntryKind) -> wit_transfer::EntryKind {
        match kind {
            EntryKind::File => wit_transfer::EntryKind::File,
            EntryKind::Directory => wit_transfer::EntryKind::Directory,
        }
    }

    fn from_wit_report(r: wit_transfer::TransferReport) -> TransferReport {
        TransferReport {
            files: r.files,
            bytes: r.bytes,
            wire_bytes: r.wire_bytes,
            compressed: r.compressed,
        }
    }

    fn from_wit_transfer_error(e: wit_transfer::TransferError) -> TransferError {
        use wit_transfer::TransferError as W;
        match e {
            W::Denied(m) => TransferError::Denied(m),
            W::NotFound(m) => TransferError::NotFound(m),
            W::InvalidRequest(m) => TransferError::InvalidRequest(m),
            W::LocalIo(m) => TransferError::LocalIo(m),
            W::Remote(o) => TransferError::Remote(from_wit_output(o)),
            W::Timeout(m) => TransferError::Timeout(m),
            W::Spawn(m) => TransferError::Spawn(m),
        }
    }
}
