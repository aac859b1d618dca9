//! Paperclip's duplex channels and login PTYs: the routes the worker holds between calls.
//!
//! An open asks the component what runs (`plan-session`, with the context remembered for the
//! lease, [`crate::leases`]), the runtime opens it on the VM's pooled connection, and from then
//! on the worker carries its bytes: writes (inputs) go to the command's stdin in the order they
//! arrived, stdout goes out as `duplexChannel.data` (base64) or `loginPty.output` (text), stderr
//! goes to the worker's log, and the end as `duplexChannel.exit` / `loginPty.exit`.
//!
//! Paperclip kills the worker for a data or exit frame that names a pair it does not know, and
//! for a close it does not see acknowledged within 10 s. So nothing is sent before the open's
//! answer is queued (the pump waits for the go the protocol loop gives after queueing it),
//! nothing after the route is closed (every notification is sent under the route's gate, which
//! a close shuts before it answers), and a close answers within [`CLOSE_BUDGET`] whatever the
//! SSH side does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use paperclip_provider_types::{LoginCli, LoginRequest, Method, Purpose};
use paperclip_wasm_runtime::caps::log::{CallSink, Utf8Chunker};
use paperclip_wasm_runtime::caps::session::{Kill, OpenSession, SessionEnd};
use paperclip_wasm_runtime::engine::ProviderHost;
use paperclip_wasm_runtime::invoke::plan_session;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::leases::LeaseMemory;
use crate::notify::Outbox;
use crate::rpc::{codes, RpcError};

/// Largest decoded chunk of one `duplexChannel.data` (Paperclip ends a route past it).
pub const MAX_DUPLEX_CHUNK: usize = 262_144;
/// Largest `loginPty.output` chunk Paperclip accepts, in characters.
pub const MAX_LOGIN_CHUNK_CHARS: usize = 1_000_000;
/// What Paperclip accepts of one login session's output in all, in characters.
pub const MAX_LOGIN_OUTPUT_CHARS: usize = 8 << 20;
/// Notifications of one route queued for stdout and not yet written, at most: the pump waits
/// for the oldest before it reads more, so a slow reader of the worker's stdout slows the
/// command (through the SSH window) instead of growing memory.
const MAX_UNWRITTEN: usize = 4;
/// What is kept of a channel's stderr for the log.
const STDERR_LOG_CAP: usize = 64 * 1024;
/// The open must be answered well within Paperclip's 30 s, or it would bind nothing and the
/// session would run for no one.
const OPEN_BUDGET: Duration = Duration::from_secs(25);
/// A close answers within this, whatever the SSH side does (Paperclip allows 10 s).
const CLOSE_BUDGET: Duration = Duration::from_secs(6);
/// How long a stopped command may take to end once its stdin closed, before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Closed routes remembered (to acknowledge a repeated close, and never to reuse a pair).
const MAX_CLOSED: usize = 4096;

/// The two kinds of route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `duplexChannel*`.
    Duplex,
    /// `loginPty*`.
    Login,
}

impl Flavor {
    /// The kind of route a channel or PTY method is about.
    pub fn of(method: Method) -> Flavor {
        if method.name().starts_with("duplex") {
            Flavor::Duplex
        } else {
            Flavor::Login
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Flavor::Duplex => "duplexChannel",
            Flavor::Login => "loginPty",
        }
    }
}

/// What the writer task of a route does next, in arrival order.
enum StdinOp {
    Write(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Stop(oneshot::Sender<Result<(), String>>),
}

/// A route's gate: notifications pass only while it is open.
#[derive(Default)]
struct Gate(Mutex<bool>);

impl Gate {
    /// Queue `line` unless the gate is shut; the receiver fires once it is written.
    fn send(&self, outbox: &Outbox, line: String) -> Option<oneshot::Receiver<()>> {
        let open = self.0.lock().unwrap();
        open.then(|| outbox.send_line_tracked(line))
    }
    fn open(&self) {
        *self.0.lock().unwrap() = true;
    }
    fn shut(&self) {
        *self.0.lock().unwrap() = false;
    }
}

/// One bound route.
struct Live {
    flavor: Flavor,
    host_route_id: String,
    session_id: String,
    gate: Arc<Gate>,
    stdin: mpsc::UnboundedSender<StdinOp>,
    kill: Arc<Mutex<Option<Kill>>>,
    exited: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum Route {
    /// The open is still being planned or opened; a close meanwhile cancels it.
    Opening { cancelled: bool },
    /// Bound.
    Live(Live),
}

#[derive(Default)]
struct Registry {
    routes: HashMap<String, Route>,
    /// workerSessionId → hostRouteId.
    by_session: HashMap<String, String>,
    /// hostRouteId → workerSessionId of closed routes, oldest first.
    closed: VecDeque<(String, String)>,
}

/// Every route of the worker.
pub struct Sessions {
    host: Arc<ProviderHost>,
    leases: Arc<LeaseMemory>,
    outbox: Outbox,
    registry: Mutex<Registry>,
    counter: AtomicU64,
}

/// The go an open's pump waits for: given once the open's answer is queued.
pub type Go = oneshot::Sender<()>;

fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RpcError::invalid_params(format!("{name} must be a non-empty string")))
}

fn session_error(message: impl Into<String>) -> RpcError {
    RpcError {
        code: codes::WORKER_ERROR,
        message: message.into(),
        data: Some(json!({ "kind": "session" })),
    }
}

impl Sessions {
    /// A registry writing its notifications to `outbox`.
    pub fn new(host: Arc<ProviderHost>, leases: Arc<LeaseMemory>, outbox: Outbox) -> Arc<Self> {
        Arc::new(Self {
            host,
            leases,
            outbox,
            registry: Mutex::new(Registry::default()),
            counter: AtomicU64::new(0),
        })
    }

    /// Answer `duplexChannelOpen` / `loginPtyOpen`. On success, the [`Go`] must be given once
    /// the answer is queued.
    pub async fn open(
        self: &Arc<Self>,
        flavor: Flavor,
        params: &Value,
        sink: CallSink,
    ) -> (Result<Value, RpcError>, Option<Go>) {
        let route_id = match str_param(params, "hostRouteId") {
            Ok(r) => r.to_string(),
            Err(e) => return (Err(e), None),
        };
        let purpose = match purpose(flavor, params) {
            Ok(p) => p,
            Err(e) => return (Err(e), None),
        };
        let lease_id = match str_param(params, "providerLeaseId") {
            Ok(l) => l.to_string(),
            Err(e) => return (Err(e), None),
        };
        {
            let mut reg = self.registry.lock().unwrap();
            if reg.routes.contains_key(&route_id) || reg.closed.iter().any(|(r, _)| *r == route_id)
            {
                return (
                    Err(RpcError::invalid_params(format!(
                        "hostRouteId {route_id} is already in use"
                    ))),
                    None,
                );
            }
            reg.routes
                .insert(route_id.clone(), Route::Opening { cancelled: false });
        }
        let opened = tokio::time::timeout(
            OPEN_BUDGET,
            self.open_session(flavor, &lease_id, &purpose, sink),
        )
        .await
        .unwrap_or_else(|_| {
            Err(session_error(format!(
                "the session on lease {lease_id} did not open within {} s",
                OPEN_BUDGET.as_secs()
            )))
        });
        let session = match opened {
            Ok(s) => s,
            Err(e) => {
                self.registry.lock().unwrap().routes.remove(&route_id);
                return (Err(e), None);
            }
        };
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let session_id = format!(
            "exe-dev-{}-{n}-{:08x}",
            match flavor {
                Flavor::Duplex => "duplex",
                Flavor::Login => "login",
            },
            rand::random::<u32>()
        );
        let (live, go) = self.start(flavor, &route_id, &session_id, session);
        let mut reg = self.registry.lock().unwrap();
        if matches!(
            reg.routes.get(&route_id),
            Some(Route::Opening { cancelled: true })
        ) {
            reg.routes.remove(&route_id);
            drop(reg);
            tokio::spawn(teardown(live));
            return (
                Err(session_error(format!(
                    "route {route_id} was closed while its session was opening"
                ))),
                None,
            );
        }
        reg.by_session.insert(session_id.clone(), route_id.clone());
        reg.routes.insert(route_id.clone(), Route::Live(live));
        let answer = match flavor {
            Flavor::Duplex => json!({ "hostRouteId": route_id, "workerSessionId": session_id }),
            Flavor::Login => json!({ "workerSessionId": session_id }),
        };
        (Ok(answer), Some(go))
    }

    async fn open_session(
        &self,
        flavor: Flavor,
        lease_id: &str,
        purpose: &Purpose,
        sink: CallSink,
    ) -> Result<OpenSession, RpcError> {
        let method = match flavor {
            Flavor::Duplex => Method::DuplexChannelOpen,
            Flavor::Login => Method::LoginPtyOpen,
        };
        let context = self.leases.recall(lease_id).ok_or_else(|| {
            session_error(format!(
                "lease {lease_id} is not known to this worker: it learns a lease's VM and SSH \
                 identity when it acquires, resumes or uses the lease, and keeps them in memory \
                 only (a restarted worker knows none until the lease is used again)"
            ))
        })?;
        let plan = plan_session(&self.host, method, &context, purpose, sink)
            .await
            .map_err(|e| RpcError::from_method(method, e))?;
        self.host
            .open_session(plan, OPEN_BUDGET)
            .await
            .map_err(|e| session_error(format!("{} on lease {lease_id}: {e}", method.name())))
    }

    /// Bind the session's tasks; they wait for the returned go before sending anything.
    fn start(
        &self,
        flavor: Flavor,
        route_id: &str,
        session_id: &str,
        s: OpenSession,
    ) -> (Live, Go) {
        let OpenSession {
            stdin,
            stdout,
            stderr,
            ended,
            kill,
        } = s;
        let gate = Arc::new(Gate::default());
        let kill = Arc::new(Mutex::new(Some(kill)));
        let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let (tx, mut rx) = mpsc::unbounded_channel::<StdinOp>();

        let writer_kill = kill.clone();
        let writer_exited = exited.clone();
        let writer = tokio::spawn(async move {
            // `None` once a stop closed it. The loop goes on answering: Paperclip may stop a
            // session more than once (a Claude session is stopped even after it exited).
            let mut stdin = Some(stdin);
            while let Some(op) = rx.recv().await {
                match (op, stdin.as_mut()) {
                    (StdinOp::Write(bytes, ack), Some(pipe)) => {
                        let r = pipe.write_all(&bytes).await.and(pipe.flush().await);
                        let _ = ack.send(r.map_err(|e| {
                            format!("the session's command no longer reads its stdin: {e}")
                        }));
                    }
                    (StdinOp::Write(_, ack), None) => {
                        let _ = ack.send(Err("the session's stdin was closed by a stop".into()));
                    }
                    (StdinOp::Stop(ack), Some(pipe)) => {
                        // Only closing our end sends EOF (a pipe's `shutdown` does not).
                        let _ = pipe.flush().await;
                        stdin = None;
                        let _ = ack.send(Ok(()));
                        // Stdin is closed: the command ends by itself or is ended (a task of
                        // its own, which a teardown does not cancel: it finds the kill taken).
                        let (kill, exited) = (writer_kill.clone(), writer_exited.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(STOP_GRACE).await;
                            if !exited.load(Ordering::SeqCst) {
                                let k = kill.lock().unwrap().take();
                                if let Some(k) = k {
                                    let _ = tokio::time::timeout(CLOSE_BUDGET, k()).await;
                                }
                            }
                        });
                    }
                    (StdinOp::Stop(ack), None) => {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
        });

        let outbox = self.outbox.clone();
        let (route, session) = (route_id.to_string(), session_id.to_string());
        let pump_gate = gate.clone();
        let pump_exited = exited.clone();
        let pump = tokio::spawn(async move {
            if go_rx.await.is_err() {
                return;
            }
            pump_gate.open();
            let pair = Pair {
                flavor,
                route,
                session,
                outbox,
                gate: pump_gate,
            };
            let err_log = tokio::spawn(log_stderr(stderr, pair.session.clone()));
            pair.pump_stdout(stdout).await;
            let _ = err_log.await;
            let end = ended.await;
            pump_exited.store(true, Ordering::SeqCst);
            pair.exit(end).await;
        });

        (
            Live {
                flavor,
                host_route_id: route_id.to_string(),
                session_id: session_id.to_string(),
                gate,
                stdin: tx,
                kill,
                exited,
                tasks: vec![pump, writer],
            },
            go_tx,
        )
    }

    /// Queue a write (`duplexChannelWrite`, `loginPtyInput`) or a stop on its route, in the
    /// order the requests arrived; the receiver gives the answer. Called from the protocol
    /// loop before the request's task is spawned, so order is the order of the input lines.
    pub fn enqueue(
        &self,
        method: Method,
        params: &Value,
    ) -> Result<oneshot::Receiver<Result<(), String>>, RpcError> {
        let flavor = Flavor::of(method);
        let session_id = str_param(params, "workerSessionId")?;
        let reg = self.registry.lock().unwrap();
        let route = match flavor {
            Flavor::Duplex => str_param(params, "hostRouteId")?.to_string(),
            Flavor::Login => reg.by_session.get(session_id).cloned().unwrap_or_default(),
        };
        let live = match reg.routes.get(&route) {
            Some(Route::Live(l)) if l.session_id == session_id && l.flavor == flavor => l,
            _ => {
                return Err(session_error(format!(
                    "{}: no open session {session_id}{}",
                    method.name(),
                    if flavor == Flavor::Duplex {
                        format!(" on route {route}")
                    } else {
                        String::new()
                    }
                )))
            }
        };
        let (tx, rx) = oneshot::channel();
        let op = match method {
            Method::DuplexChannelWrite | Method::LoginPtyInput => {
                StdinOp::Write(write_bytes(flavor, params)?, tx)
            }
            _ => StdinOp::Stop(tx),
        };
        if live.stdin.send(op).is_err() {
            return Err(session_error(format!(
                "{}: the session {session_id} no longer takes input",
                method.name()
            )));
        }
        Ok(rx)
    }

    /// Answer `duplexChannelClose` / `loginPtyClose`: kill what still runs, and acknowledge.
    pub async fn close(&self, flavor: Flavor, params: &Value) -> Result<Value, RpcError> {
        let route_id = str_param(params, "hostRouteId")?.to_string();
        let taken = {
            let mut reg = self.registry.lock().unwrap();
            match reg.routes.get_mut(&route_id) {
                Some(Route::Opening { cancelled }) => {
                    *cancelled = true;
                    None
                }
                Some(Route::Live(_)) => match reg.routes.remove(&route_id) {
                    Some(Route::Live(l)) => {
                        l.gate.shut();
                        reg.by_session.remove(&l.session_id);
                        reg.closed
                            .push_back((route_id.clone(), l.session_id.clone()));
                        while reg.closed.len() > MAX_CLOSED {
                            reg.closed.pop_front();
                        }
                        Some(l)
                    }
                    _ => None,
                },
                None => {
                    // Closed before, or never bound: acknowledge what is known.
                    let known = reg
                        .closed
                        .iter()
                        .find(|(r, _)| *r == route_id)
                        .map(|(_, s)| s.clone());
                    return Ok(ack(flavor, &route_id, known.as_deref()));
                }
            }
        };
        match taken {
            None => Ok(ack(flavor, &route_id, None)),
            Some(live) => {
                let session_id = live.session_id.clone();
                let _ = tokio::time::timeout(CLOSE_BUDGET, teardown(live)).await;
                Ok(ack(flavor, &route_id, Some(&session_id)))
            }
        }
    }

    /// Close every route (the worker is exiting).
    pub async fn close_all(&self) {
        let lives: Vec<Live> = {
            let mut reg = self.registry.lock().unwrap();
            reg.by_session.clear();
            reg.routes
                .drain()
                .filter_map(|(_, r)| match r {
                    Route::Live(l) => {
                        l.gate.shut();
                        Some(l)
                    }
                    Route::Opening { .. } => None,
                })
                .collect()
        };
        let all: tokio::task::JoinSet<()> = lives.into_iter().map(teardown).collect();
        let _ = tokio::time::timeout(CLOSE_BUDGET, all.join_all()).await;
    }
}

/// The close's answer: once bound, a duplex close echoes both ids; a login close, the route.
fn ack(flavor: Flavor, route: &str, session: Option<&str>) -> Value {
    match (flavor, session) {
        (Flavor::Duplex, Some(s)) => json!({ "hostRouteId": route, "workerSessionId": s }),
        _ => json!({ "hostRouteId": route }),
    }
}

/// End a route: its command is killed unless it ended, then its tasks (and with them the SSH
/// channel) go.
async fn teardown(live: Live) {
    if !live.exited.load(Ordering::SeqCst) {
        let k = live.kill.lock().unwrap().take();
        if let Some(k) = k {
            k().await;
        }
    }
    for t in &live.tasks {
        t.abort();
    }
    tracing::debug!(
        route = %live.host_route_id,
        session = %live.session_id,
        "session closed"
    );
}

fn purpose(flavor: Flavor, params: &Value) -> Result<Purpose, RpcError> {
    match flavor {
        Flavor::Duplex => {
            let argv: Vec<String> = params
                .get("command")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| RpcError::invalid_params("command must be an array of strings"))?;
            Ok(Purpose::Duplex(argv))
        }
        Flavor::Login => {
            let key = str_param(params, "loginCommandKey")?;
            let cli = LoginCli::from_key(key).ok_or_else(|| {
                RpcError::invalid_params(format!(
                    "loginCommandKey {key:?} is not one of claude, codex, grok"
                ))
            })?;
            Ok(Purpose::Login(LoginRequest {
                cli,
                session_home: str_param(params, "sessionHome")?.to_string(),
            }))
        }
    }
}

/// The bytes of a write: standard padded base64 for a channel (it must round-trip exactly),
/// raw text for a PTY.
fn write_bytes(flavor: Flavor, params: &Value) -> Result<Vec<u8>, RpcError> {
    let data = params
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("data must be a string"))?;
    match flavor {
        Flavor::Login => Ok(data.as_bytes().to_vec()),
        Flavor::Duplex => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| RpcError::invalid_params(format!("data is not base64: {e}")))?;
            if bytes.is_empty() {
                return Err(RpcError::invalid_params("data is empty"));
            }
            if bytes.len() > MAX_DUPLEX_CHUNK {
                return Err(RpcError::invalid_params(format!(
                    "data decodes to {} bytes; at most {MAX_DUPLEX_CHUNK} per write",
                    bytes.len()
                )));
            }
            Ok(bytes)
        }
    }
}

/// The bound pair a pump sends for.
struct Pair {
    flavor: Flavor,
    route: String,
    session: String,
    outbox: Outbox,
    gate: Arc<Gate>,
}

impl Pair {
    fn line(&self, kind: &str, mut params: Value) -> String {
        params["hostRouteId"] = json!(self.route);
        params["workerSessionId"] = json!(self.session);
        json!({
            "jsonrpc": "2.0",
            "method": format!("{}.{kind}", self.flavor.prefix()),
            "params": params,
        })
        .to_string()
    }

    async fn pump_stdout(&self, mut stdout: Box<dyn AsyncRead + Send + Unpin>) {
        let mut unwritten: VecDeque<oneshot::Receiver<()>> = VecDeque::new();
        let mut buf = vec![0u8; MAX_DUPLEX_CHUNK];
        let mut text = Utf8Chunker::default();
        let mut sent_chars = 0usize;
        loop {
            let n = match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let lines: Vec<String> = match self.flavor {
                Flavor::Duplex => {
                    let chunk = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                    vec![self.line("data", json!({ "chunk": chunk }))]
                }
                Flavor::Login => text
                    .push(&buf[..n])
                    .into_iter()
                    .filter_map(|t| self.login_chunk(t, &mut sent_chars))
                    .collect(),
            };
            for line in lines {
                match self.gate.send(&self.outbox, line) {
                    Some(written) => unwritten.push_back(written),
                    None => return,
                }
                while unwritten.len() > MAX_UNWRITTEN {
                    if let Some(oldest) = unwritten.pop_front() {
                        let _ = oldest.await;
                    }
                }
            }
        }
        if self.flavor == Flavor::Login {
            for t in text.finish() {
                if let Some(line) = self.login_chunk(t, &mut sent_chars) {
                    let _ = self.gate.send(&self.outbox, line);
                }
            }
        }
    }

    /// A login output line for `t`, unless the session's output allowance is spent.
    fn login_chunk(&self, t: String, sent: &mut usize) -> Option<String> {
        let chars = t.chars().count();
        if t.is_empty() || *sent + chars > MAX_LOGIN_OUTPUT_CHARS {
            return None;
        }
        debug_assert!(chars <= MAX_LOGIN_CHUNK_CHARS);
        *sent += chars;
        Some(self.line("output", json!({ "chunk": t })))
    }

    async fn exit(&self, end: SessionEnd) {
        let params = match (self.flavor, end) {
            (_, SessionEnd::Exited(code)) => json!({ "exitCode": code }),
            (Flavor::Duplex, SessionEnd::TransportClosed) => {
                json!({ "exitCode": null, "transportClosed": true })
            }
            (Flavor::Login, SessionEnd::TransportClosed) => json!({ "exitCode": null }),
        };
        if let Some(written) = self.gate.send(&self.outbox, self.line("exit", params)) {
            let _ = written.await;
        }
    }
}

/// Drain a session's stderr into the worker's log at debug level, keeping at most
/// [`STDERR_LOG_CAP`] bytes of it.
async fn log_stderr(mut stderr: Box<dyn AsyncRead + Send + Unpin>, session: String) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut logged = 0usize;
    let mut dropped = 0usize;
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let keep = n.min(STDERR_LOG_CAP - logged);
        if keep > 0 {
            tracing::debug!(
                session = %session,
                "session stderr: {}",
                String::from_utf8_lossy(&buf[..keep]).trim_end()
            );
            logged += keep;
        }
        dropped += n - keep;
    }
    if dropped > 0 {
        tracing::debug!(session = %session, dropped, "session stderr past the log cap dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_checked_base64_for_channels_and_raw_text_for_ptys() {
        let w = |f, d: Value| write_bytes(f, &json!({ "data": d }));
        assert_eq!(
            w(Flavor::Duplex, json!("AAEC/w==")).unwrap(),
            [0, 1, 2, 255]
        );
        assert!(w(Flavor::Duplex, json!("AAEC/w")).is_err());
        assert!(w(Flavor::Duplex, json!("not base64!")).is_err());
        assert!(w(Flavor::Duplex, json!("")).is_err());
        assert!(w(Flavor::Duplex, json!(5)).is_err());
        assert_eq!(w(Flavor::Login, json!("\r")).unwrap(), b"\r");
    }

    #[test]
    fn closes_echo_what_paperclip_checks() {
        assert_eq!(
            ack(Flavor::Duplex, "duplex-route-1", Some("s")),
            json!({"hostRouteId": "duplex-route-1", "workerSessionId": "s"})
        );
        assert_eq!(
            ack(Flavor::Duplex, "duplex-route-1", None),
            json!({"hostRouteId": "duplex-route-1"})
        );
        assert_eq!(
            ack(Flavor::Login, "r", Some("s")),
            json!({"hostRouteId": "r"})
        );
    }

    #[test]
    fn purposes_are_checked() {
        assert!(purpose(Flavor::Duplex, &json!({"command": ["sh", 1]})).is_err());
        assert_eq!(
            purpose(Flavor::Duplex, &json!({"command": ["sh", "-c", "x"]})).unwrap(),
            Purpose::Duplex(vec!["sh".into(), "-c".into(), "x".into()])
        );
        assert!(purpose(
            Flavor::Login,
            &json!({"loginCommandKey": "gemini", "sessionHome": "/tmp/x"})
        )
        .is_err());
    }
}
