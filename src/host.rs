//! The host boundary: the ONLY module that calls WIT imports.
//!
//! Everything else in the crate talks to the outside world through the [`Host`] trait with plain
//! Rust types, so the whole lifecycle is unit-tested natively with a scripted fake host. The real
//! implementation, [`WasiHost`], exists only on `wasm32` and is built from `wasi:http`,
//! `wasi:clocks` (monotonic and wall), `wasi:random`, this package's `ssh`, `transfer` and `log`
//! imports and the `paperclip:vm-ledger` import; its records are converted in `crate::convert`.

use std::fmt;

// The boundary types have one home, shared with the host; the logic names them through here.
pub use paperclip_provider_types::{
    Account, Connected, DownloadRequest, EntryKind, HostKeyPolicy, Identity, LedgerEntry,
    LedgerError, LedgerReason, LogLevel, LoginCli, LoginRequest, Purpose, Recorded, SessionPlan,
    SshError, SshOutput, SshRequest, SshTarget, TerminalSize, TransferError, TransferReport,
    UploadRequest,
};

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
            wit_ssh::connect(&target.into(), timeout_ms)
                .map(Into::into)
                .map_err(Into::into)
        }

        fn ssh_exec(&self, request: &SshRequest) -> Result<SshOutput, SshError> {
            wit_ssh::exec(&request.into())
                .map(Into::into)
                .map_err(Into::into)
        }

        fn transfer_upload(
            &self,
            request: &UploadRequest,
        ) -> Result<TransferReport, TransferError> {
            wit_transfer::upload(&request.into())
                .map(Into::into)
                .map_err(Into::into)
        }

        fn transfer_download(
            &self,
            request: &DownloadRequest,
        ) -> Result<TransferReport, TransferError> {
            wit_transfer::download(&request.into())
                .map(Into::into)
                .map_err(Into::into)
        }

        fn ssh_disconnect(&self, target: &SshTarget) {
            wit_ssh::disconnect(&target.into());
        }

        fn log(&self, level: LogLevel, message: &str, fields: &[(&str, String)]) {
            let fields: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect();
            wit_log::emit(level.into(), message, &fields);
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
            wit_ledger::put(&account.into(), &entry.into()).map_err(Into::into)
        }

        fn ledger_list(&self, account: &Account) -> Result<Vec<Recorded>, LedgerError> {
            let list = wit_ledger::entries(&account.into()).map_err(LedgerError::from)?;
            Ok(list.into_iter().map(Into::into).collect())
        }

        fn ledger_remove(&self, account: &Account, name: &str) -> Result<(), LedgerError> {
            wit_ledger::remove(&account.into(), name).map_err(Into::into)
        }
    }
}
