//! The `/exec` HTTP API (the team's notes: `shared/reference/exe-dev.md` §1, beside this
//! repository): request checks in exe.dev's order (method, auth, body), the command line split
//! shell-style, token permissions, fault injection, the 30-second execution limit, and the
//! commands `new`, `cp`, `ls`, `rm`, `whoami`, `help`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::faults::{default_error_text, ApiFault};
use super::flags::{self, Kind};
use super::{names, vm_json, ApiCall, Inner, VmSpec};

/// exe.dev reads at most 64KB+1 bytes of body; reaching that size is a 413.
const BODY_LIMIT: usize = 64 * 1024;

/// Commands the simulator knows, for `help` and the 404 check.
const COMMANDS: &[&str] = &["new", "cp", "ls", "rm", "whoami", "help"];

/// Returned by the service to make hyper drop the connection without a response.
#[derive(Debug)]
struct LostResponse;

impl std::fmt::Display for LostResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response deliberately lost (fault injection)")
    }
}

impl std::error::Error for LostResponse {}

/// A response before it becomes an HTTP message.
struct Reply {
    status: u16,
    body: String,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn ok(v: &Value) -> Reply {
        Reply {
            status: 200,
            body: v.to_string(),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, msg: &str) -> Reply {
        Reply {
            status,
            body: json!({ "error": msg }).to_string(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut b = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Content-Type-Options", "nosniff");
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        // exe.dev trims the output and adds one newline.
        let body = format!("{}\n", self.body.trim());
        b.body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

/// Accepts API connections until aborted; aborting also ends every open connection.
pub(super) async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let inner = inner.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(inner.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, LostResponse> {
    let mut call = ApiCall::default();
    let outcome = process(&inner, req, &mut call).await;
    match outcome {
        Ok(reply) => {
            call.status = reply.status;
            inner.record(call);
            Ok(reply.into_response())
        }
        Err(lost) => {
            inner.record(call);
            Err(lost)
        }
    }
}

async fn process(
    inner: &Arc<Inner>,
    req: Request<Incoming>,
    call: &mut ApiCall,
) -> Result<Reply, LostResponse> {
    if req.uri().path() != "/exec" {
        return Ok(Reply::error(404, "not found"));
    }
    if req.method() != hyper::Method::POST {
        return Ok(Reply::error(405, "method not allowed").header("Allow", "POST"));
    }
    if let Err(reply) = check_auth(inner, &req) {
        return Ok(reply);
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(reply) => return Ok(reply),
    };
    call.body = String::from_utf8_lossy(&body).into_owned();
    if body.contains(&0) {
        return Ok(Reply::error(
            400,
            "request body must not contain null bytes",
        ));
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return Ok(Reply::error(400, "invalid command syntax"));
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(Reply::error(400, "missing command in request body"));
    }
    let Some(args) = shlex::split(text) else {
        return Ok(Reply::error(400, "invalid command syntax"));
    };
    let Some(cmd) = args.first().cloned() else {
        return Ok(Reply::error(400, "missing command in request body"));
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Ok(Reply::error(404, "unknown command"));
    }
    call.command = cmd.clone();
    if let Some(allowed) = &inner.opts.allowed_cmds {
        if !allowed.contains(&cmd) {
            return Ok(Reply::error(
                403,
                "command not allowed by token permissions",
            ));
        }
    }
    match inner.faults.take_api_failure(&cmd) {
        Some(ApiFault::Fail { status, body }) => {
            return Ok(Reply {
                status,
                body,
                headers: Vec::new(),
            })
        }
        Some(ApiFault::RateLimited { retry_after_secs }) => {
            return Ok(Reply::error(429, default_error_text(429))
                .header("Retry-After", retry_after_secs.to_string()))
        }
        None => {}
    }

    if let Some(after) = inner.faults.take_abandoned(&cmd) {
        // Never answered: the command runs `after` the client has dropped the request.
        let _run = RunWhenAbandoned {
            inner: inner.clone(),
            call: std::mem::take(call),
            args,
            after,
        };
        return std::future::pending().await;
    }

    // Run detached: the command's effect completes even if the client gives up or the
    // response is held back, as a server-side command would.
    let delay = inner.faults.api_delay(&cmd);
    let task = {
        let inner = inner.clone();
        tokio::spawn(async move { run_command(&inner, &args).await })
    };
    let limit = inner.opts.exec_timeout;
    let timed = tokio::time::timeout(limit, async move {
        let reply = task
            .await
            .unwrap_or_else(|_| Reply::error(500, "internal error"));
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        reply
    })
    .await;
    let reply = match timed {
        Ok(r) => r,
        Err(_) => Reply::error(504, "command timed out"),
    };
    match inner.faults.take_lost_response(&cmd) {
        None => Ok(reply),
        Some(None) => Err(LostResponse),
        Some(Some(status)) => Ok(Reply::error(status, default_error_text(status))),
    }
}

/// Held by a request that is never answered; when the client gives up (the connection closes
/// and hyper drops the request), the command runs `after` later and the call is logged with
/// status 0 (no response).
struct RunWhenAbandoned {
    inner: Arc<Inner>,
    call: ApiCall,
    args: Vec<String>,
    after: std::time::Duration,
}

impl Drop for RunWhenAbandoned {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        inner.record(std::mem::take(&mut self.call));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let args = std::mem::take(&mut self.args);
        let after = self.after;
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            let _ = run_command(&inner, &args).await;
        });
    }
}

fn check_auth(inner: &Inner, req: &Request<Incoming>) -> Result<(), Reply> {
    let missing = || {
        Reply::error(401, "missing or invalid Authorization header")
            .header("WWW-Authenticate", "Bearer")
    };
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = header.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    if token != inner.opts.token {
        return Err(Reply::error(401, "invalid token").header("WWW-Authenticate", "Bearer"));
    }
    Ok(())
}

/// Reads at most `BODY_LIMIT + 1` bytes; reaching that is a 413 without reading the rest.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, Reply> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Reply::error(400, "failed to read request body"))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > BODY_LIMIT {
                return Err(Reply::error(413, "request body exceeds 64KB limit"));
            }
        }
    }
    Ok(buf)
}

/// A command failure (exe.dev: the command exited non-zero) is a 422 with `{"error":…}`.
fn fail(msg: impl AsRef<str>) -> Reply {
    Reply::error(422, msg.as_ref())
}

async fn run_command(inner: &Arc<Inner>, args: &[String]) -> Reply {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => return Reply::error(400, "missing command in request body"),
    };
    let result = match cmd {
        "new" => cmd_new(inner, rest).await,
        "cp" => cmd_cp(inner, rest).await,
        "ls" => cmd_ls(inner, rest),
        "rm" => cmd_rm(inner, rest),
        "whoami" => cmd_whoami(inner, rest),
        "help" => Ok(json!({ "commands": COMMANDS })),
        _ => return Reply::error(404, "unknown command"),
    };
    match result {
        Ok(v) => Reply::ok(&v),
        Err(r) => r,
    }
}

const NEW_FLAGS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("image", Kind::Str),
    ("command", Kind::Str),
    ("cpu", Kind::Str),
    ("memory", Kind::Str),
    ("disk", Kind::Str),
    ("comment", Kind::Str),
    ("env", Kind::Multi),
    ("integration", Kind::Multi),
    ("tag", Kind::Multi),
    ("setup-script", Kind::Str),
    ("prompt", Kind::Str),
    ("registry-auth", Kind::Str),
    ("json", Kind::Bool),
    ("no-email", Kind::Bool),
];

const CP_FLAGS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("cpu", Kind::Str),
    ("memory", Kind::Str),
    ("disk", Kind::Str),
    ("copy-tags", Kind::Bool),
    ("json", Kind::Bool),
];

const LS_FLAGS: &[(&str, Kind)] = &[("json", Kind::Bool), ("l", Kind::Bool)];
const RM_FLAGS: &[(&str, Kind)] = &[("json", Kind::Bool)];
const WHOAMI_FLAGS: &[(&str, Kind)] = &[("json", Kind::Bool)];

fn parse_flags(args: &[String], spec: &[(&str, Kind)]) -> Result<flags::Parsed, Reply> {
    flags::parse(args, spec).map_err(|e| fail(format!("flag parsing error: {e}")))
}

fn help(cmd: &str, spec: &[(&str, Kind)]) -> Value {
    let flags: Vec<Value> = spec
        .iter()
        .map(
            |(n, k)| json!({ "name": n, "type": if *k == Kind::Bool { "bool" } else { "string" } }),
        )
        .collect();
    json!({ "command": cmd, "flags": flags })
}

async fn cmd_new(inner: &Arc<Inner>, args: &[String]) -> Result<Value, Reply> {
    let p = parse_flags(args, NEW_FLAGS)?;
    if p.help {
        return Ok(help("new", NEW_FLAGS));
    }
    if !p.positionals.is_empty() {
        return Err(fail(
            "\"new\" command has no subcommands and does not take positional arguments",
        ));
    }
    let name = pick_name(inner, p.str("name"))?;
    let mut env = Vec::new();
    for kv in p.multi("env") {
        match kv.split_once('=') {
            Some((k, v)) if valid_env_key(k) => env.push((k.to_owned(), v.to_owned())),
            _ => {
                return Err(fail(format!(
                    "invalid --env value {kv:?}: expected KEY=VALUE"
                )));
            }
        }
    }
    let comment = p.str("comment").unwrap_or_default().to_owned();
    if comment.len() > 200 {
        return Err(fail("comment must be at most 200 bytes"));
    }
    let spec = VmSpec {
        name,
        image: p.str("image").unwrap_or("exeuntu").to_owned(),
        tags: p.multi("tag").to_vec(),
        comment,
        env,
        cpus: parse_cpu(p.str("cpu"), 2)?,
        memory: parse_size("memory", p.str("memory"), 8 << 30)?,
        disk: parse_size("disk", p.str("disk"), 20 << 30)?,
        setup_script: p.str("setup-script").map(str::to_owned),
        copy_from: None,
    };
    inner
        .create_vm(spec)
        .await
        .map_err(|(status, msg)| Reply::error(status, &msg))
}

async fn cmd_cp(inner: &Arc<Inner>, args: &[String]) -> Result<Value, Reply> {
    let p = parse_flags(args, CP_FLAGS)?;
    if p.help {
        return Ok(help("cp", CP_FLAGS));
    }
    let (src, target) = match p.positionals.as_slice() {
        [src] => (src, p.str("name")),
        [src, dst] => (src, Some(dst.as_str())),
        _ => return Err(fail("usage: cp <source-vm> [new-name]")),
    };
    let source = {
        let t = inner.lock_vms();
        t.live.get(src).map(|vm| {
            (
                vm.runtime.home.clone(),
                vm.image.clone(),
                vm.tags.clone(),
                vm.comment.clone(),
                vm.runtime.env.clone(),
                vm.cpus,
                vm.memory,
                vm.disk,
            )
        })
    };
    let Some((home, image, tags, comment, env, cpus, memory, disk)) = source else {
        return Err(fail(format!("vm {src:?} not found")));
    };
    let name = pick_name(inner, target)?;
    let spec = VmSpec {
        name,
        image,
        tags: if p.bool("copy-tags").unwrap_or(true) {
            tags
        } else {
            Vec::new()
        },
        comment,
        env,
        cpus: parse_cpu(p.str("cpu"), cpus)?,
        memory: parse_size("memory", p.str("memory"), memory)?,
        disk: parse_size("disk", p.str("disk"), disk)?,
        setup_script: None,
        copy_from: Some(home),
    };
    inner
        .create_vm(spec)
        .await
        .map_err(|(status, msg)| Reply::error(status, &msg))
}

fn cmd_ls(inner: &Arc<Inner>, args: &[String]) -> Result<Value, Reply> {
    let p = parse_flags(args, LS_FLAGS)?;
    if p.help {
        return Ok(help("ls", LS_FLAGS));
    }
    let pattern = match p.positionals.as_slice() {
        [] => None,
        [one] => Some(one.as_str()),
        _ => return Err(fail("usage: ls [name|pattern]")),
    };
    let t = inner.lock_vms();
    let vms: Vec<Value> = t
        .live
        .iter()
        .filter(|(name, _)| pattern.is_none_or(|pat| glob_match(pat, name)))
        .map(|(name, vm)| vm_json(name, vm, true, inner.opts.routing))
        .collect();
    Ok(json!({ "vms": vms }))
}

fn cmd_rm(inner: &Arc<Inner>, args: &[String]) -> Result<Value, Reply> {
    let p = parse_flags(args, RM_FLAGS)?;
    if p.help {
        return Ok(help("rm", RM_FLAGS));
    }
    if p.positionals.is_empty() {
        return Err(fail("usage: rm <vmname>..."));
    }
    // All-or-nothing: a typo in one name deletes nothing.
    {
        let t = inner.lock_vms();
        if let Some(missing) = p.positionals.iter().find(|n| !t.live.contains_key(*n)) {
            return Err(fail(format!("vm {missing:?} not found")));
        }
    }
    let mut out = Vec::new();
    for name in &p.positionals {
        if inner.delete_vm(name) {
            out.push(json!({ "vm_name": name, "status": "deleted" }));
        } else if !out.iter().any(|v| v["vm_name"] == **name) {
            // Deleted concurrently between the check and here.
            return Err(fail(format!("vm {name:?} not found")));
        }
    }
    Ok(match <[Value; 1]>::try_from(out) {
        Ok([one]) => one,
        Err(many) => json!({ "vms": many }),
    })
}

fn cmd_whoami(inner: &Arc<Inner>, args: &[String]) -> Result<Value, Reply> {
    let p = parse_flags(args, WHOAMI_FLAGS)?;
    if p.help {
        return Ok(help("whoami", WHOAMI_FLAGS));
    }
    if !p.positionals.is_empty() {
        return Err(fail(
            "\"whoami\" command has no subcommands and does not take positional arguments",
        ));
    }
    let key = inner.client_pub.to_openssh().unwrap_or_default();
    Ok(json!({
        "email": inner.opts.email,
        "ssh_keys": [{ "public_key": key, "current": false }],
    }))
}

/// The requested name after validation, or a fresh generated one.
fn pick_name(inner: &Inner, requested: Option<&str>) -> Result<String, Reply> {
    if let Some(n) = requested {
        names::validate(n).map_err(fail)?;
        return Ok(n.to_owned());
    }
    let t = inner.lock_vms();
    for _ in 0..100 {
        let n = names::generate();
        if !t.live.contains_key(&n) && !t.retired.contains(&n) {
            return Ok(n);
        }
    }
    Err(Reply::error(500, "internal error"))
}

fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn parse_cpu(v: Option<&str>, default: u64) -> Result<u64, Reply> {
    match v {
        None => Ok(default),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => Err(fail(format!("invalid --cpu value {s:?}"))),
        },
    }
}

/// Sizes like `4GB`, `512MB`, `20G`, `1TiB`; binary units, as VM sizes are quoted.
fn parse_size(flag: &str, v: Option<&str>, default: u64) -> Result<u64, Reply> {
    let Some(s) = v else { return Ok(default) };
    let bad = || fail(format!("invalid --{flag} value {s:?}"));
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(bad()),
    }
}

/// `*` matches any run of characters; everything else is literal.
fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((c, rest)) => n
                .split_first()
                .is_some_and(|(d, nr)| c == d && go(rest, nr)),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("m", Some("4GB"), 0).ok(), Some(4 << 30));
        assert_eq!(parse_size("m", Some("512mb"), 0).ok(), Some(512 << 20));
        assert!(parse_size("m", Some("lots"), 0).is_err());
        assert!(parse_size("m", Some("0GB"), 0).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("paperclip-*", "paperclip-env1-run1"));
        assert!(glob_match("abc", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*-run*", "x-run1"));
    }
}
