//! The `log` capability and live output: guest log lines and a command's live output go to
//! the call's observer ([`CallEvents`], which the embedder supplies: the Paperclip worker turns
//! them into notifications), or to tracing on stderr when the call has none. Nothing here
//! prints to stdout.

use std::sync::{Arc, Mutex};

use paperclip_provider_types::LogLevel;

/// Live output text goes out in pieces of at most this many bytes (Paperclip drops
/// `execute.log` chunks above 1e6 characters; stay well under it).
const MAX_LIVE_CHUNK_BYTES: usize = 256 * 1024;

/// Who hears about a call while it runs.
pub trait CallEvents: Send + Sync {
    /// One guest log line (never with secrets: the guest scrubs its fields).
    fn log(&self, level: LogLevel, message: &str, fields: &[(String, String)]);
    /// A piece of a command's live output on `stream` (`stdout` or `stderr`): whole UTF-8
    /// characters, at most 256 KiB.
    fn output(&self, stream: &str, chunk: &str);
}

/// Where one call's log lines and live output go, and what the host's policy refused during it.
#[derive(Clone, Default)]
pub struct CallSink {
    events: Option<Arc<dyn CallEvents>>,
    /// `scheme://authority` of each HTTP request the host's policy refused during the call.
    denied_http: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for CallSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSink")
            .field("observed", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

impl CallSink {
    /// A sink that tells `events`.
    pub fn new(events: Arc<dyn CallEvents>) -> Self {
        Self {
            events: Some(events),
            denied_http: Arc::default(),
        }
    }

    /// A sink that only traces to stderr (operator CLI commands, tests).
    pub fn stderr_only() -> Self {
        Self::default()
    }

    /// Emit one guest log line: to the observer when the call has one (the worker), else as a
    /// tracing event on stderr (operator commands). Never both: Paperclip logs a worker's stderr
    /// at WARN, so a copy there would turn every info line into a warning.
    pub fn log(&self, level: LogLevel, message: &str, fields: &[(String, String)]) {
        match &self.events {
            Some(events) => events.log(level, message, fields),
            None => trace_guest_line(level, message, fields),
        }
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

    /// Hand one piece of live output text for `stream` (`stdout` or `stderr`) to the observer;
    /// without one it goes nowhere (the final result carries the output).
    pub fn output_text(&self, stream: &str, chunk: &str) {
        if let (Some(events), false) = (&self.events, chunk.is_empty()) {
            events.output(stream, chunk);
        }
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

    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl CallEvents for Heard {
        fn log(&self, level: LogLevel, message: &str, _: &[(String, String)]) {
            self.0.lock().unwrap().push(format!("{level:?} {message}"));
        }
        fn output(&self, stream: &str, chunk: &str) {
            self.0.lock().unwrap().push(format!("{stream} {chunk}"));
        }
    }

    #[test]
    fn the_observer_hears_log_lines_and_output_but_not_empty_chunks() {
        let heard = Arc::new(Heard::default());
        let sink = CallSink::new(heard.clone());
        sink.log(LogLevel::Info, "hello", &[]);
        sink.output_text("stdout", "");
        sink.output_text("stderr", "err");
        assert_eq!(*heard.0.lock().unwrap(), ["Info hello", "stderr err"]);
    }
}
