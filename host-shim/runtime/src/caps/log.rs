//! The `log` capability and live output: guest log lines and `execute` output chunks become
//! Paperclip notifications tagged with the invocation id of the call they belong to, and
//! tracing lines on stderr. stdout is reserved for protocol lines, so nothing here prints.

use std::sync::{Arc, Mutex};

use paperclip_provider_types::LogLevel;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

/// An item for the worker's single stdout writer.
#[derive(Debug)]
pub enum Outgoing {
    /// One serialized JSON object, written as one line.
    Line(String),
    /// Flush everything queued before this item, then acknowledge.
    Flush(oneshot::Sender<()>),
}

/// The handle every part of the worker uses to write protocol lines; all lines go through
/// one writer task so they never interleave.
#[derive(Clone, Debug)]
pub struct Outbox(mpsc::UnboundedSender<Outgoing>);

impl Outbox {
    /// A new outbox and the receiving end its writer task drains.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Queue one line. A closed outbox means the worker is exiting; the line has nowhere to go.
    pub fn send_line(&self, line: String) {
        let _ = self.0.send(Outgoing::Line(line));
    }

    /// Wait until every line queued so far has been written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Outgoing::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Paperclip drops `execute.log` chunks above 1e6 characters; stay well under it.
const MAX_LIVE_CHUNK_BYTES: usize = 256 * 1024;

/// Where one call's log lines and live output go.
#[derive(Clone, Default)]
pub struct CallSink {
    invocation_id: Option<String>,
    outbox: Option<Outbox>,
    /// `scheme://authority` of each HTTP request the host's policy refused during the call.
    denied_http: Arc<Mutex<Vec<String>>>,
}

/// Paperclip's `log` notification levels (it has no `trace`).
fn paperclip_level(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace | LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

impl std::fmt::Debug for CallSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSink")
            .field("invocation_id", &self.invocation_id)
            .field("to_worker", &self.outbox.is_some())
            .finish_non_exhaustive()
    }
}

impl CallSink {
    /// A sink that forwards to the worker's outbox, tagged with `invocation_id` when known.
    pub fn new(invocation_id: Option<String>, outbox: Option<Outbox>) -> Self {
        Self {
            invocation_id,
            outbox,
            denied_http: Arc::default(),
        }
    }

    /// A sink that only traces to stderr (operator CLI commands, tests).
    pub fn stderr_only() -> Self {
        Self::default()
    }

    /// The Paperclip invocation id this sink tags lines with.
    pub fn invocation_id(&self) -> Option<&str> {
        self.invocation_id.as_deref()
    }

    /// Emit one guest log line: a Paperclip `log` notification when the sink has an outbox (the
    /// worker), else a tracing event on stderr (operator commands). Never both: Paperclip logs a
    /// worker's stderr at WARN, so a copy there would turn every info line into a warning.
    pub fn log(&self, level: LogLevel, message: &str, fields: &[(String, String)]) {
        if self.outbox.is_none() {
            trace_guest_line(level, message, fields);
            return;
        }
        let mut params = json!({ "level": paperclip_level(level), "message": message });
        if !fields.is_empty() {
            let meta: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            params["meta"] = Value::Object(meta);
        }
        self.notify("log", params);
    }

    /// Record that the host's policy refused an HTTP request to `url` (`scheme://authority`)
    /// during this call, so the worker can name the remedy in what the call returns.
    pub fn note_denied_http(&self, url: &str) {
        let mut denied = self.denied_http.lock().unwrap_or_else(|e| e.into_inner());
        if !denied.iter().any(|d| d == url) {
            denied.push(url.to_string());
        }
    }

    /// The refused HTTP requests noted so far (each `scheme://authority` once).
    pub fn denied_http(&self) -> Vec<String> {
        self.denied_http
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Send one `execute.log` chunk of text for `stream` (`stdout` or `stderr`).
    pub fn execute_chunk(&self, stream: &str, chunk: &str) {
        if chunk.is_empty() || self.invocation_id.is_none() {
            // Paperclip drops execute.log without an invocation id; don't spend the bytes.
            return;
        }
        self.notify("execute.log", json!({ "stream": stream, "chunk": chunk }));
    }

    fn notify(&self, method: &str, params: Value) {
        let Some(outbox) = &self.outbox else { return };
        let mut envelope = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        if let Some(id) = &self.invocation_id {
            envelope["paperclipInvocationId"] = Value::String(id.clone());
        }
        outbox.send_line(envelope.to_string());
    }
}

/// One guest log line as a tracing event, on one line: field values (a setup script, say) may
/// hold newlines, which are escaped so every stderr line is a whole event.
fn trace_guest_line(level: LogLevel, message: &str, fields: &[(String, String)]) {
    let rendered: String = fields
        .iter()
        .map(|(k, v)| format!(" {k}={}", v.replace('\r', "\\r").replace('\n', "\\n")))
        .collect();
    match level {
        LogLevel::Trace => tracing::trace!(target: "guest", "{message}{rendered}"),
        LogLevel::Debug => tracing::debug!(target: "guest", "{message}{rendered}"),
        LogLevel::Info => tracing::info!(target: "guest", "{message}{rendered}"),
        LogLevel::Warn => tracing::warn!(target: "guest", "{message}{rendered}"),
        LogLevel::Error => tracing::error!(target: "guest", "{message}{rendered}"),
    }
}

/// Turns a byte stream into text chunks without splitting a multi-byte UTF-8 character:
/// incomplete trailing bytes are held back until the next chunk completes them.
#[derive(Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    /// Feed bytes; returns the text that is complete so far, in pieces of bounded size.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // `error_len() == None` means the input ends mid-character: keep that tail.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid bytes in the middle: emit everything (lossily) rather than stall.
            Err(_) => self.pending.len(),
        };
        let ready: Vec<u8> = self.pending.drain(..complete).collect();
        split_text(&String::from_utf8_lossy(&ready))
    }

    /// Flush whatever is left at the end of the stream.
    pub fn finish(&mut self) -> Vec<String> {
        let rest = std::mem::take(&mut self.pending);
        split_text(&String::from_utf8_lossy(&rest))
    }
}

fn split_text(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_LIVE_CHUNK_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunker_holds_back_split_multibyte_characters() {
        let text = "héllo wörld €";
        let bytes = text.as_bytes();
        let mut chunker = Utf8Chunker::default();
        let mut out = String::new();
        for b in bytes {
            for piece in chunker.push(std::slice::from_ref(b)) {
                out.push_str(&piece);
            }
        }
        for piece in chunker.finish() {
            out.push_str(&piece);
        }
        assert_eq!(out, text);
    }

    #[test]
    fn log_notifications_carry_the_invocation_id() {
        let (tx, mut rx) = Outbox::new();
        let sink = CallSink::new(Some("inv-1".into()), Some(tx));
        sink.log(LogLevel::Info, "hello", &[("vm".into(), "a".into())]);
        sink.execute_chunk("stdout", "out");
        let next = |rx: &mut mpsc::UnboundedReceiver<Outgoing>| match rx.try_recv().unwrap() {
            Outgoing::Line(l) => l,
            other => panic!("unexpected {other:?}"),
        };
        let line: Value = serde_json::from_str(&next(&mut rx)).unwrap();
        assert_eq!(line["method"], "log");
        assert_eq!(line["paperclipInvocationId"], "inv-1");
        assert_eq!(line["params"]["meta"]["vm"], "a");
        let line: Value = serde_json::from_str(&next(&mut rx)).unwrap();
        assert_eq!(line["method"], "execute.log");
        assert_eq!(line["params"], json!({"stream": "stdout", "chunk": "out"}));
    }

    #[test]
    fn execute_chunks_without_invocation_id_are_not_sent() {
        let (tx, mut rx) = Outbox::new();
        CallSink::new(None, Some(tx)).execute_chunk("stdout", "x");
        assert!(rx.try_recv().is_err());
    }
}
