//! The worker's single stdout writer, and the notifications a call sends through it: guest log
//! lines as Paperclip `log` notifications and live command output as `execute.log`, each tagged
//! with the invocation id of the call it belongs to. stdout is reserved for protocol lines.

use std::sync::Arc;

use paperclip_provider_types::LogLevel;
use paperclip_wasm_runtime::caps::log::{CallEvents, CallSink};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

/// An item for the worker's single stdout writer.
#[derive(Debug)]
pub enum Outgoing {
    /// One serialized JSON object, written as one line.
    Line(String),
    /// One line, acknowledged once written (a channel's pump waits on it, which bounds what
    /// it queues).
    Tracked(String, oneshot::Sender<()>),
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

    /// Queue one line; the receiver fires once it is written (or the worker is exiting).
    pub fn send_line_tracked(&self, line: String) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.0.send(Outgoing::Tracked(line, tx));
        rx
    }

    /// Wait until every line queued so far has been written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Outgoing::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The sink of one call: its events become notifications tagged with `invocation_id`.
    pub fn sink(&self, invocation_id: Option<String>) -> CallSink {
        CallSink::new(Arc::new(Notifier {
            invocation_id,
            outbox: self.clone(),
        }))
    }
}

/// One call's notifications.
struct Notifier {
    invocation_id: Option<String>,
    outbox: Outbox,
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

impl Notifier {
    fn notify(&self, method: &str, params: Value) {
        let mut envelope = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        if let Some(id) = &self.invocation_id {
            envelope["paperclipInvocationId"] = Value::String(id.clone());
        }
        self.outbox.send_line(envelope.to_string());
    }
}

impl CallEvents for Notifier {
    fn log(&self, level: LogLevel, message: &str, fields: &[(String, String)]) {
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

    fn output(&self, stream: &str, chunk: &str) {
        if chunk.is_empty() || self.invocation_id.is_none() {
            // Paperclip drops execute.log without an invocation id; don't spend the bytes.
            return;
        }
        self.notify("execute.log", json!({ "stream": stream, "chunk": chunk }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_line(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Value {
        match rx.try_recv().expect("a line") {
            Outgoing::Line(l) => serde_json::from_str(&l).unwrap(),
            Outgoing::Flush(_) | Outgoing::Tracked(..) => panic!("not a plain line"),
        }
    }

    #[test]
    fn log_lines_and_output_are_tagged_notifications() {
        let (outbox, mut rx) = Outbox::new();
        let sink = outbox.sink(Some("inv-1".into()));
        sink.log(LogLevel::Trace, "hello", &[("vm".into(), "a".into())]);
        let v = next_line(&mut rx);
        assert_eq!(v["method"], "log");
        assert_eq!(v["paperclipInvocationId"], "inv-1");
        assert_eq!(v["params"]["level"], "debug");
        assert_eq!(v["params"]["meta"]["vm"], "a");
        sink.output_text("stdout", "x");
        let v = next_line(&mut rx);
        assert_eq!(v["method"], "execute.log");
        assert_eq!(v["params"], json!({"stream": "stdout", "chunk": "x"}));
    }

    #[test]
    fn output_without_an_invocation_id_is_not_sent() {
        let (outbox, mut rx) = Outbox::new();
        outbox.sink(None).output_text("stdout", "x");
        assert!(rx.try_recv().is_err());
    }
}
