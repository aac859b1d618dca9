//! The outbound HTTP capability: a [`WasiHttpHooks`] whose `send_request` is the single policy
//! point for every `wasi:http/outgoing-handler` request the component makes.
//!
//! - A request whose `scheme://host:port` the [`Policy`] does not grant fails with
//!   `ErrorCode::HttpRequestDenied` **before** any DNS lookup or connection; the denied
//!   authority is logged at `warn` (the guest knows which authority it asked for and names it in
//!   its own typed `denied` error).
//! - Allowed requests go through `wasmtime_wasi_http::default_send_request` (rustls with the
//!   webpki roots for `https`, plain TCP for loopback `http`) with connect, first-byte and
//!   between-bytes timeouts, an overall deadline covering the whole exchange including the
//!   response body, and a response body size cap.
//! - Each request is logged once (tracing, to stderr) with method, authority, path and status —
//!   never headers, query strings or bodies, which carry the API token and commands.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::caps::log::CallSink;
use crate::policy::{HttpScheme, Policy};

/// Limits applied to every outbound request. The guest may ask for shorter timeouts through
/// `request-options`, never for longer ones.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// TCP connect + TLS handshake.
    pub connect_timeout: Duration,
    /// From sending the request to the response head.
    pub first_byte_timeout: Duration,
    /// Silence allowed between two frames of the response body.
    pub between_bytes_timeout: Duration,
    /// The whole exchange, response body included.
    pub total_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
}

impl Default for HttpLimits {
    /// exe.dev's `/exec` runs commands for at most 30 s and answers with small JSON documents,
    /// so 60 s overall and 8 MiB are generous without letting a bad upstream pin the worker.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(45),
            between_bytes_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(60),
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why the policy refused a request. Each prints the `scheme://authority` that was asked for
/// (what the log line and the operator's remedy name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpDenial {
    /// The URI has no authority at all.
    #[error("{scheme}://(no authority)")]
    NoAuthority {
        /// The URI's scheme, empty when it has none.
        scheme: String,
    },
    /// The authority carries userinfo (`user@host`), which has no business in an API request
    /// and would confuse the authority check.
    #[error("{shown}")]
    Userinfo {
        /// `scheme://authority` as requested.
        shown: String,
    },
    /// The scheme is neither `http` nor `https`.
    #[error("{shown}")]
    Scheme {
        /// `scheme://authority` as requested.
        shown: String,
    },
    /// The policy grants no such scheme, host and port.
    #[error("{shown}")]
    NotGranted {
        /// `scheme://authority` as requested.
        shown: String,
    },
}

/// The host's `wasi:http` hooks: policy check, limits and request logging.
///
/// One instance per `Store` (the trait takes `&mut self`); construction is cheap.
#[derive(Debug, Clone)]
pub struct PolicyHttpHooks {
    policy: Arc<Policy>,
    limits: HttpLimits,
    sink: Option<CallSink>,
}

impl PolicyHttpHooks {
    /// Hooks enforcing `policy` with `limits`.
    pub fn new(policy: Arc<Policy>, limits: HttpLimits) -> Self {
        Self {
            policy,
            limits,
            sink: None,
        }
    }

    /// Also note every refused request in the call's `sink` (so the worker can name the
    /// remedy in the call's result).
    pub fn noting_denials_in(mut self, sink: CallSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The policy decision for a request URI: the authority (for logs), or why it is denied.
    fn decide(&self, uri: &http::Uri) -> Result<String, HttpDenial> {
        let scheme = uri.scheme_str().unwrap_or("");
        let Some(authority) = uri.authority() else {
            return Err(HttpDenial::NoAuthority {
                scheme: scheme.to_owned(),
            });
        };
        let shown = format!("{scheme}://{}", authority.as_str());
        if authority.as_str().contains('@') {
            return Err(HttpDenial::Userinfo { shown });
        }
        let Some(parsed) = HttpScheme::parse(scheme) else {
            return Err(HttpDenial::Scheme { shown });
        };
        let port = authority.port_u16().unwrap_or(parsed.default_port());
        if self.policy.allows_http(scheme, authority.host(), port) {
            Ok(authority.as_str().to_owned())
        } else {
            Err(HttpDenial::NotGranted { shown })
        }
    }

    /// The effective options: ours, shortened by whatever the guest asked for.
    fn options(&self, guest: Option<RequestOptions>) -> RequestOptions {
        let pick =
            |ours: Duration, theirs: Option<Duration>| Some(theirs.map_or(ours, |t| t.min(ours)));
        let guest = guest.unwrap_or_default();
        RequestOptions {
            connect_timeout: pick(self.limits.connect_timeout, guest.connect_timeout),
            first_byte_timeout: pick(self.limits.first_byte_timeout, guest.first_byte_timeout),
            between_bytes_timeout: pick(
                self.limits.between_bytes_timeout,
                guest.between_bytes_timeout,
            ),
        }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for PolicyHttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        let decision = self.decide(request.uri());
        let options = self.options(options);
        let limits = self.limits;
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let sink = self.sink.clone();
        Box::new(async move {
            let authority = match decision {
                Ok(a) => a,
                Err(denied) => {
                    tracing::warn!(%method, authority = %denied, "HTTP request denied by host policy");
                    if let Some(sink) = sink {
                        sink.note_denied_http(&denied.to_string());
                    }
                    return Err(Error::HttpRequestDenied);
                }
            };
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + limits.total_timeout;
            let sent = tokio::time::timeout_at(
                deadline,
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await;
            let (response, io) = match sent {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    tracing::warn!(%method, %authority, %path, error = %e, "HTTP request failed");
                    return Err(e);
                }
                Err(_) => {
                    tracing::warn!(%method, %authority, %path, "HTTP request timed out");
                    return Err(Error::ConnectionReadTimeout);
                }
            };
            tracing::info!(
                %method,
                %authority,
                %path,
                status = response.status().as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "HTTP request"
            );
            // Refuse a declared oversized body at once instead of streaming up to the cap.
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(len) = declared.filter(|len| *len > limits.max_response_bytes) {
                tracing::warn!(%authority, %path, len, "HTTP response body over the size cap");
                return Err(Error::HttpResponseBodySize(Some(len)));
            }
            let response = response.map(|body| {
                CappedBody {
                    inner: body.boxed_unsync(),
                    seen: 0,
                    cap: limits.max_response_bytes,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as IoFuture))
        })
    }
}

/// A response body that fails once it exceeds `cap` bytes or outlives the overall deadline.
struct CappedBody {
    inner: WasiBody,
    seen: u64,
    cap: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > self.cap {
                tracing::warn!(cap = self.cap, "HTTP response body over the size cap");
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.seen)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(flags: &[&str]) -> PolicyHttpHooks {
        let m = serde_json::json!({"x-wasm-host": {"http": ["https://exe.dev:443"]}});
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let policy = Policy::from_manifest(&m, &flags, &[]).unwrap();
        PolicyHttpHooks::new(Arc::new(policy), HttpLimits::default())
    }

    #[test]
    fn decisions() {
        let h = hooks(&["127.0.0.1:8080"]);
        let ok = |u: &str| h.decide(&u.parse().unwrap()).map_err(|e| e.to_string());
        assert_eq!(ok("https://exe.dev/exec"), Ok("exe.dev".into()));
        assert_eq!(ok("https://exe.dev:443/exec"), Ok("exe.dev:443".into()));
        assert!(ok("http://exe.dev/exec").is_err());
        assert!(ok("https://user@exe.dev/exec").is_err());
        assert!(ok("https://exe.dev:8443/exec").is_err());
        assert!(ok("http://127.0.0.1:8080/exec").is_ok());
        assert!(ok("http://127.0.0.1/exec").is_err());
        assert_eq!(
            ok("https://evil.example/x"),
            Err("https://evil.example".into())
        );
    }

    #[test]
    fn denials_are_typed_and_print_the_requested_authority() {
        let h = hooks(&[]);
        let decide = |u: &str| h.decide(&u.parse().unwrap()).unwrap_err();
        let shown = |s: &str| s.to_string();
        let cases = [
            (
                decide("/exec"),
                HttpDenial::NoAuthority { scheme: shown("") },
                "://(no authority)",
            ),
            (
                decide("https://user@exe.dev/exec"),
                HttpDenial::Userinfo {
                    shown: shown("https://user@exe.dev"),
                },
                "https://user@exe.dev",
            ),
            (
                decide("ftp://exe.dev/exec"),
                HttpDenial::Scheme {
                    shown: shown("ftp://exe.dev"),
                },
                "ftp://exe.dev",
            ),
            (
                decide("https://exe.dev:8443/exec"),
                HttpDenial::NotGranted {
                    shown: shown("https://exe.dev:8443"),
                },
                "https://exe.dev:8443",
            ),
        ];
        for (denial, expected, text) in cases {
            assert_eq!(denial, expected);
            assert_eq!(denial.to_string(), text);
        }
    }

    #[test]
    fn guest_options_can_only_shorten() {
        let h = hooks(&[]);
        let o = h.options(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(3600)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(
            o.first_byte_timeout,
            Some(HttpLimits::default().first_byte_timeout)
        );
        assert_eq!(
            o.between_bytes_timeout,
            Some(HttpLimits::default().between_bytes_timeout)
        );
    }
}
