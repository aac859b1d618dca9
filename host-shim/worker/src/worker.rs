//! The Paperclip plugin-worker protocol: newline-delimited JSON-RPC 2.0 on stdin/stdout.
//!
//! Requests are handled concurrently (one task each); every line written to stdout goes through
//! one writer task. `shutdown` is answered, flushed, and ends the loop; so does stdin EOF. The
//! VM reconciler ([`crate::reconciler`]) runs beside the requests for as long as the loop does,
//! and `health` reports it degraded when it keeps failing.
//!
//! No input line stops the worker: bytes that are not UTF-8 or not JSON get `-32700` (id null),
//! a message of the wrong shape gets `-32600` (with its id when it has a usable one), and a line
//! longer than [`MAX_LINE_BYTES`] is discarded as it streams in and answered with `-32600`
//! under the id found at its start, so memory stays bounded whatever arrives.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use paperclip_provider_types::Method;
use paperclip_wasm_runtime::engine::ProviderHost;

use crate::dispatch::dispatch;
use crate::notify::{Outbox, Outgoing};
use crate::rpc::{codes, RpcError};

use crate::leases::LeaseMemory;
use crate::reconciler::Reconciler;
use crate::sessions::{Flavor, Sessions};

/// The methods on channels and PTYs: the worker's sessions answer them.
fn session_method(m: Method) -> bool {
    m.is_session_stream() || matches!(m, Method::DuplexChannelOpen | Method::LoginPtyOpen)
}

/// How long `shutdown` waits for in-flight calls before answering (Paperclip allows 10 s).
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(8);

/// The longest request line accepted, in bytes: Paperclip's own frame limit (128 Mi characters,
/// `MAX_WORKER_MESSAGE_CHARS`). Longer lines are never held in memory whole.
pub const MAX_LINE_BYTES: usize = 128 << 20;

/// How much of an over-long line is kept to look for its `id`.
const ID_PREFIX_BYTES: usize = 64 << 10;

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The host sent `shutdown`.
    Shutdown,
    /// stdin closed.
    Eof,
}

/// Serve the protocol until `shutdown` or EOF. All stdout lines are flushed before returning.
pub async fn serve(
    host: Arc<ProviderHost>,
    input: impl AsyncRead + Unpin,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> anyhow::Result<Exit> {
    let (outbox, rx) = Outbox::new();
    let writer = tokio::spawn(write_lines(rx, output));
    let reconciler = Reconciler::new(host.clone(), outbox.clone());
    let background = tokio::spawn(reconciler.clone().run());
    let leases = Arc::new(LeaseMemory::default());
    let sessions = Sessions::new(host.clone(), leases.clone(), outbox.clone());
    let mut in_flight = JoinSet::new();
    let mut lines = LineReader::new(BufReader::with_capacity(64 << 10, input), MAX_LINE_BYTES);
    let exit = loop {
        // Reap finished calls as we go so the set only holds what is running.
        while in_flight.try_join_next().is_some() {}
        let incoming = match lines.next_frame().await {
            Ok(None) => break Ok(Exit::Eof),
            // A broken stdin (not bad content): stop reading, but answer what is running.
            Err(e) => break Err(e),
            Ok(Some(Frame::Line(line))) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(Frame::Line(line))) => classify(&line),
            Ok(Some(Frame::TooLong { len, prefix })) => too_long(len, &prefix),
        };
        match incoming {
            Incoming::Request { id, method, .. } if method == Method::Shutdown.name() => {
                // Answer what is already running first, within Paperclip's shutdown budget
                // (10 s before it escalates to signals); longer calls are abandoned.
                let drain = async { while in_flight.join_next().await.is_some() {} };
                if tokio::time::timeout(SHUTDOWN_DRAIN, drain).await.is_err() {
                    tracing::warn!("shutdown: abandoning calls still running");
                }
                outbox.send_line(response(&id, Ok(Value::Null)));
                break Ok(Exit::Shutdown);
            }
            Incoming::Request { id, method, params }
                if Method::from_name(&method).is_some_and(session_method) =>
            {
                let m = Method::from_name(&method).expect("checked");
                let sessions = sessions.clone();
                let outbox = outbox.clone();
                // Writes and stops are queued on their route here, in input order; the rest
                // runs in its own task.
                let queued = matches!(
                    m,
                    Method::DuplexChannelWrite
                        | Method::DuplexChannelStop
                        | Method::LoginPtyInput
                        | Method::LoginPtyStop
                )
                .then(|| sessions.enqueue(m, &params));
                in_flight.spawn(async move {
                    let flavor = Flavor::of(m);
                    let sink = outbox.sink(invocation_id(&params));
                    let (result, go) = match (m, queued) {
                        (_, Some(Err(e))) => (Err(e), None),
                        (_, Some(Ok(done))) => (
                            match done.await {
                                Ok(Ok(())) => Ok(Value::Null),
                                Ok(Err(e)) => Err(RpcError::new(codes::WORKER_ERROR, e)),
                                Err(_) => Err(RpcError::new(
                                    codes::WORKER_ERROR,
                                    format!("{}: the session closed first", m.name()),
                                )),
                            },
                            None,
                        ),
                        (Method::DuplexChannelOpen | Method::LoginPtyOpen, None) => {
                            sessions.open(flavor, &params, sink).await
                        }
                        (_, None) => (sessions.close(flavor, &params).await, None),
                    };
                    outbox.send_line(response(&id, result));
                    if let Some(go) = go {
                        let _ = go.send(());
                    }
                });
            }
            Incoming::Request { id, method, params } => {
                let host = host.clone();
                let leases = leases.clone();
                let outbox = outbox.clone();
                let reconciler = reconciler.clone();
                in_flight.spawn(async move {
                    let sink = outbox.sink(invocation_id(&params));
                    let mut result = dispatch(&host, &method, params.clone(), sink).await;
                    if let Some(m) = Method::from_name(&method) {
                        leases.learn(m, &params, result.as_ref().ok());
                    }
                    if method == Method::Health.name() {
                        if let (Ok(report), Some(problem)) =
                            (&mut result, reconciler.health_problem())
                        {
                            degrade(report, problem);
                        }
                    }
                    outbox.send_line(response(&id, result));
                });
            }
            Incoming::Ignored => {}
            Incoming::Invalid { id, error } => {
                tracing::warn!("answering an unusable input line: {}", error.message);
                outbox.send_line(response(&id, Err(error)))
            }
        }
    };
    if let Err(e) = &exit {
        tracing::error!("reading stdin failed: {e}; finishing the calls already accepted");
    }
    // On EOF, calls already accepted still get their answers (each is bounded by its deadline).
    while in_flight.join_next().await.is_some() {}
    // No channel or PTY outlives the worker.
    sessions.close_all().await;
    // Whatever the reconciler was doing stays in the ledger for the next worker.
    background.abort();
    let _ = background.await;
    outbox.flush().await;
    drop(outbox);
    drop(writer);
    Ok(exit?)
}

/// One input line, or what is left of one that was too long to keep.
#[derive(Debug, PartialEq)]
enum Frame {
    /// A whole line without its `\n`.
    Line(Vec<u8>),
    /// A line of `len` bytes (over the limit); only its first bytes were kept.
    TooLong { len: usize, prefix: Vec<u8> },
}

/// Splits input into lines of bytes (no UTF-8 requirement) holding at most `max` bytes of any
/// one line in memory.
struct LineReader<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        Self { inner, max }
    }

    /// The next line; `None` at EOF. A last line without `\n` still counts.
    async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        let mut line = Vec::new();
        let mut len = 0usize;
        let mut seen_any = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if !seen_any {
                    return Ok(None);
                }
                break;
            }
            seen_any = true;
            let (chunk, ends_line) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            let taken = chunk.len();
            len = len.saturating_add(taken);
            if len <= self.max {
                line.extend_from_slice(chunk);
            } else {
                // Over the limit: keep only a prefix (for the id) and discard the rest as it
                // streams by.
                line.truncate(ID_PREFIX_BYTES);
                let room = ID_PREFIX_BYTES.saturating_sub(line.len()).min(taken);
                line.extend_from_slice(&chunk[..room]);
            }
            self.inner.consume(taken + usize::from(ends_line));
            if ends_line {
                break;
            }
        }
        Ok(Some(if len <= self.max {
            Frame::Line(line)
        } else {
            Frame::TooLong { len, prefix: line }
        }))
    }
}

async fn write_lines(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut output: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Line(line) => write_line(&mut output, line, rx.is_empty()).await?,
            Outgoing::Tracked(line, written) => {
                write_line(&mut output, line, rx.is_empty()).await?;
                let _ = written.send(());
            }
            Outgoing::Flush(ack) => {
                output.flush().await?;
                let _ = ack.send(());
            }
        }
    }
    output.flush().await
}

/// One protocol line. Flushed unless more is queued (`last`): Paperclip reads line by line and
/// a response must not sit in a buffer.
async fn write_line(
    output: &mut (impl AsyncWrite + Unpin),
    mut line: String,
    last: bool,
) -> std::io::Result<()> {
    line.push('\n');
    output.write_all(line.as_bytes()).await?;
    if last {
        output.flush().await?;
    }
    Ok(())
}

enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Ignored,
    Invalid {
        id: Value,
        error: RpcError,
    },
}

/// A JSON-RPC id: a string or a number (null is not an id of a request).
fn usable_id(id: Option<&Value>) -> Option<Value> {
    id.filter(|v| v.is_string() || v.is_number()).cloned()
}

fn invalid(id: Value, code: i64, message: impl Into<String>) -> Incoming {
    Incoming::Invalid {
        id,
        error: RpcError::new(code, message),
    }
}

fn classify(line: &[u8]) -> Incoming {
    // Bytes, not text: invalid UTF-8 is a parse error like any other, never an I/O failure.
    let msg: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return invalid(Value::Null, codes::PARSE_ERROR, format!("Parse error: {e}")),
    };
    let Some(obj) = msg.as_object() else {
        return invalid(
            Value::Null,
            codes::INVALID_REQUEST,
            "Invalid request: not a JSON object",
        );
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => match usable_id(Some(v)) {
            Some(id) => Some(id),
            None => {
                return invalid(
                    Value::Null,
                    codes::INVALID_REQUEST,
                    "Invalid request: id must be a string or a number",
                )
            }
        },
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(
            answer_id,
            codes::INVALID_REQUEST,
            "Invalid request: jsonrpc must be \"2.0\"",
        );
    }
    match (obj.get("method"), id) {
        // A notification (no id): nothing to answer; Paperclip's events are not needed here.
        (Some(Value::String(_)), None) => Incoming::Ignored,
        (Some(Value::String(method)), Some(id)) => match obj.get("params") {
            None | Some(Value::Null) => Incoming::Request {
                method: method.clone(),
                params: json!({}),
                id,
            },
            Some(p @ Value::Object(_)) => Incoming::Request {
                method: method.clone(),
                params: p.clone(),
                id,
            },
            Some(_) => invalid(
                id,
                codes::INVALID_PARAMS,
                "Invalid params: params must be an object",
            ),
        },
        (Some(_), _) => invalid(
            answer_id,
            codes::INVALID_REQUEST,
            "Invalid request: method must be a string",
        ),
        // A response to a worker→host request; this worker sends none, so nothing waits on it.
        (None, _) if obj.contains_key("result") || obj.contains_key("error") => Incoming::Ignored,
        (None, _) => invalid(
            answer_id,
            codes::INVALID_REQUEST,
            "Invalid request: no method",
        ),
    }
}

/// The answer to a line over [`MAX_LINE_BYTES`]: `-32600`, under the id its first bytes carry
/// (Paperclip writes `id` before `params`), so the caller fails at once instead of at its
/// timeout.
fn too_long(len: usize, prefix: &[u8]) -> Incoming {
    invalid(
        leading_id(prefix).unwrap_or(Value::Null),
        codes::INVALID_REQUEST,
        format!(
            "Invalid request: the message is {len} bytes long; this worker accepts at most \
             {MAX_LINE_BYTES} bytes per line"
        ),
    )
}

/// The top-level `id` of a (possibly truncated) JSON object, if it appears before the cut.
fn leading_id(prefix: &[u8]) -> Option<Value> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct FindId<'a>(&'a mut Option<Value>);

    impl<'de> DeserializeSeed<'de> for FindId<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for FindId<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON-RPC message")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "id" {
                    *self.0 = Some(map.next_value()?);
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut found = None;
    // The cut makes the document itself an error; only what was found before it matters.
    let _ = FindId(&mut found).deserialize(&mut serde_json::Deserializer::from_slice(prefix));
    usable_id(found.as_ref())
}

/// A `health` answer from the component, downgraded: the worker's own reconciler has trouble.
fn degrade(report: &mut Value, problem: String) {
    if report["status"] == "ok" {
        // "healthy" no longer holds: the reason replaces it.
        report["status"] = Value::String("degraded".into());
        report["message"] = Value::String(problem);
    } else {
        let own = report["message"].as_str().unwrap_or_default();
        report["message"] = Value::String(format!("{own}; {problem}"));
    }
}

fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    match result {
        Ok(v) => json!({ "jsonrpc": "2.0", "id": id, "result": v }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() }),
    }
    .to_string()
}

fn invocation_id(params: &Value) -> Option<String> {
    params
        .pointer("/paperclipInvocation/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        // A tiny buffer, so lines span many reads.
        let mut r = LineReader::new(BufReader::with_capacity(3, input), max);
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().await.unwrap() {
            out.push(f);
        }
        out
    }

    #[tokio::test]
    async fn lines_are_bytes_and_long_ones_keep_only_a_prefix() {
        let input = b"ab\n\xff\xfe\n0123456789\nlast";
        let got = frames(input, 8).await;
        assert_eq!(
            got,
            [
                Frame::Line(b"ab".to_vec()),
                Frame::Line(b"\xff\xfe".to_vec()),
                Frame::TooLong {
                    len: 10,
                    prefix: b"0123456789".to_vec()
                },
                Frame::Line(b"last".to_vec()),
            ]
        );
        assert_eq!(frames(b"", 8).await, []);
        assert_eq!(frames(b"\n", 8).await, [Frame::Line(Vec::new())]);
    }

    #[tokio::test]
    async fn an_over_long_line_is_not_held_whole() {
        let mut input = br#"{"jsonrpc":"2.0","id":7,"params":{"x":""#.to_vec();
        input.extend(std::iter::repeat_n(b'a', ID_PREFIX_BYTES * 3));
        input.extend_from_slice(b"\"}}\nnext\n");
        let got = frames(&input, ID_PREFIX_BYTES).await;
        let Frame::TooLong { len, prefix } = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(*len, input.len() - "\nnext\n".len());
        assert_eq!(prefix.len(), ID_PREFIX_BYTES);
        assert_eq!(leading_id(prefix), Some(json!(7)));
        assert_eq!(got[1], Frame::Line(b"next".to_vec()));
    }

    fn error_of(line: &[u8]) -> (Value, i64) {
        match classify(line) {
            Incoming::Invalid { id, error } => (id, error.code),
            Incoming::Request { method, .. } => panic!("accepted as a call of {method}"),
            Incoming::Ignored => panic!("ignored"),
        }
    }

    #[test]
    fn every_bad_line_gets_the_error_it_deserves() {
        use codes::*;
        let deep = "[".repeat(10_000);
        let cases: Vec<(&[u8], Value, i64)> = vec![
            (b"\xff\xfe{}", Value::Null, PARSE_ERROR),
            (
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"h\xffi\"}",
                Value::Null,
                PARSE_ERROR,
            ),
            (b"not json", Value::Null, PARSE_ERROR),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1", Value::Null, PARSE_ERROR),
            (deep.as_bytes(), Value::Null, PARSE_ERROR),
            (b"[1,2]", Value::Null, INVALID_REQUEST),
            (b"42", Value::Null, INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"health"}"#,
                Value::Null,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":[1],"method":"health"}"#,
                Value::Null,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"1.0","id":3,"method":"health"}"#,
                json!(3),
                INVALID_REQUEST,
            ),
            (
                br#"{"id":"a","method":"health"}"#,
                json!("a"),
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":4,"method":5}"#,
                json!(4),
                INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","id":5}"#, json!(5), INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":6,"method":"health","params":[1]}"#,
                json!(6),
                INVALID_PARAMS,
            ),
            (
                br#"{"jsonrpc":"2.0","id":7,"method":"health","params":"x"}"#,
                json!(7),
                INVALID_PARAMS,
            ),
        ];
        for (line, id, code) in cases {
            let shown = String::from_utf8_lossy(line);
            assert_eq!(error_of(line), (id, code), "{shown:.80}");
        }
    }

    #[test]
    fn good_lines_are_requests_or_ignored() {
        let Incoming::Request { id, method, params } =
            classify(br#"{"jsonrpc":"2.0","id":"x","method":"health"}"#)
        else {
            panic!("not a request")
        };
        assert_eq!(
            (id, method.as_str(), params),
            (json!("x"), "health", json!({}))
        );
        for ignored in [
            &br#"{"jsonrpc":"2.0","method":"onEvent","params":{}}"#[..],
            br#"{"jsonrpc":"2.0","id":null,"method":"onEvent"}"#,
            br#"{"jsonrpc":"2.0","id":9,"result":{}}"#,
        ] {
            assert!(matches!(classify(ignored), Incoming::Ignored));
        }
    }

    #[test]
    fn a_failing_reconciler_degrades_health_with_its_reason() {
        let mut ok = json!({"status": "ok", "message": "exe.dev sandbox provider plugin healthy"});
        degrade(&mut ok, "the VM reconciler keeps failing: vm-a".into());
        assert_eq!(
            ok,
            json!({"status": "degraded", "message": "the VM reconciler keeps failing: vm-a"})
        );
        let mut bad = json!({"status": "error", "message": "broken"});
        degrade(&mut bad, "reconciler".into());
        assert_eq!(
            bad,
            json!({"status": "error", "message": "broken; reconciler"})
        );
    }

    #[test]
    fn the_id_of_a_cut_message_is_found_when_it_comes_first() {
        assert_eq!(
            leading_id(br#"{"jsonrpc":"2.0","id":12,"params":{"a":"#),
            Some(json!(12))
        );
        assert_eq!(leading_id(br#"{"id":"s-1","#), Some(json!("s-1")));
        assert_eq!(leading_id(br#"{"params":{"a":"xxxx"#), None);
        assert_eq!(leading_id(br#"{"id":{"x":1},"#), None);
        assert_eq!(leading_id(b"\xff"), None);
        assert_eq!(leading_id(b""), None);
    }
}
