//! Component-level tests: every provider function is called through the real `.wasm` under
//! wasmtime (via the worker's `dispatch`, as the protocol loop does), with scripted HTTP and SSH doubles in
//! place of exe.dev. The exact `/exec` bodies, headers and remote commands are asserted.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use paperclip_provider_types::{
    HostKeyPolicy, Identity, SshError, SshOutput, SshRequest, SshTarget,
};
use paperclip_wasm_host::dispatch::dispatch;
use paperclip_wasm_host::rpc::RpcError;
use paperclip_wasm_runtime::caps::log::CallSink;
use paperclip_wasm_runtime::engine::{Grants, Limits, ProviderHost};
use paperclip_wasm_runtime::state::{BoxFuture, SshBackend};
use serde_json::{json, Value};
use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpHooks};

// ---------------------------------------------------------------------------------------------
// Doubles

/// One request the component sent.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    uri: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

type DynAnswer = Box<dyn Fn(&str) -> (u16, String) + Send>;

/// How the HTTP double answers one request.
enum HttpAnswer {
    /// A fixed status and body.
    Reply(u16, String),
    /// Computed from the request body (for names the component picks at random).
    Dyn(DynAnswer),
    /// Refuse, as a host policy would.
    Deny,
}

#[derive(Default)]
struct HttpScript {
    answers: VecDeque<HttpAnswer>,
    recorded: Vec<Recorded>,
    /// Requests that found the queue empty (answered 599).
    unexpected: usize,
}

struct ScriptedHttp(Arc<Mutex<HttpScript>>);

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for ScriptedHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        let script = self.0.clone();
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let mut rec = Recorded {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                authorization: header("authorization"),
                content_type: header("content-type"),
                body: String::new(),
            };
            let answer = script.lock().unwrap().answers.pop_front();
            if matches!(answer, Some(HttpAnswer::Deny)) {
                script.lock().unwrap().recorded.push(rec);
                return Err(HttpError::HttpRequestDenied);
            }
            let bytes = body.collect().await?.to_bytes();
            rec.body = String::from_utf8(bytes.to_vec()).expect("request body is UTF-8");
            let (status, text) = match answer {
                Some(HttpAnswer::Reply(s, b)) => (s, b),
                Some(HttpAnswer::Dyn(f)) => f(&rec.body),
                Some(HttpAnswer::Deny) => unreachable!(),
                None => {
                    script.lock().unwrap().unexpected += 1;
                    (599, r#"{"error":"no scripted answer"}"#.to_string())
                }
            };
            script.lock().unwrap().recorded.push(rec);
            let response = http::Response::builder()
                .status(status)
                .body(body_of(text))
                .unwrap();
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

fn body_of(text: String) -> WasiBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// One SSH call the component made, flattened for comparison.
#[derive(Debug, Clone, PartialEq)]
struct SshCall {
    host: String,
    port: u16,
    user: Option<String>,
    /// `agent`, `key-file:<path>` or `key-material:<text>`.
    identity: String,
    /// `yes`, `accept-new` or `no`.
    host_key_policy: &'static str,
    command: String,
    stdin: Option<Vec<u8>>,
    timeout_ms: u32,
    max_output_bytes: u64,
    stream_output: bool,
    durable: bool,
}

fn identity_text(i: &Identity) -> String {
    match i {
        Identity::Agent => "agent".to_string(),
        Identity::KeyFile(p) => format!("key-file:{p}"),
        Identity::KeyMaterial(k) => format!("key-material:{k}"),
    }
}

fn policy_text(p: HostKeyPolicy) -> &'static str {
    match p {
        HostKeyPolicy::Yes => "yes",
        HostKeyPolicy::AcceptNew => "accept-new",
        HostKeyPolicy::No => "no",
    }
}

#[derive(Default)]
struct SshScript {
    answers: VecDeque<Result<SshOutput, SshError>>,
    calls: Vec<SshCall>,
    /// Hosts passed to `disconnect`, in order.
    disconnects: Vec<String>,
    unexpected: usize,
}

struct ScriptedSsh(Arc<Mutex<SshScript>>);

impl SshBackend for ScriptedSsh {
    fn exec(&self, request: SshRequest, _sink: CallSink) -> BoxFuture<Result<SshOutput, SshError>> {
        let mut script = self.0.lock().unwrap();
        script.calls.push(SshCall {
            host: request.target.host.clone(),
            port: request.target.port,
            user: request.target.user.clone(),
            identity: identity_text(&request.target.identity),
            host_key_policy: policy_text(request.target.host_key_policy),
            command: request.command.clone(),
            stdin: request.stdin.clone(),
            timeout_ms: request.timeout_ms,
            max_output_bytes: request.max_output_bytes,
            stream_output: request.stream_output,
            durable: request.durable,
        });
        let answer = match script.answers.pop_front() {
            Some(a) => a,
            None => {
                script.unexpected += 1;
                Err(SshError::Spawn("no scripted SSH answer".to_string()))
            }
        };
        Box::pin(async move { answer })
    }

    fn disconnect(&self, target: SshTarget) -> BoxFuture<()> {
        self.0.lock().unwrap().disconnects.push(target.host);
        Box::pin(async {})
    }
}

fn out(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> SshOutput {
    SshOutput {
        exit_code: code,
        exit_code_from_remote: false,
        signal: None,
        timed_out: false,
        stdout: stdout.to_vec(),
        stderr: stderr.to_vec(),
        stdout_truncated: false,
        stderr_truncated: false,
    }
}

/// The real component with doubles for everything it can reach.
struct Harness {
    host: ProviderHost,
    http: Arc<Mutex<HttpScript>>,
    ssh: Arc<Mutex<SshScript>>,
}

impl Harness {
    fn new() -> Self {
        Self::with_env_key(None)
    }

    fn with_env_key(exe_api_key: Option<&str>) -> Self {
        let http = Arc::new(Mutex::new(HttpScript::default()));
        let ssh = Arc::new(Mutex::new(SshScript::default()));
        let hooks = http.clone();
        let grants = Grants {
            http_hooks: Arc::new(move |_| Box::new(ScriptedHttp(hooks.clone()))),
            ssh: Arc::new(ScriptedSsh(ssh.clone())),
            transfer: Arc::new(paperclip_wasm_runtime::grants::NoTransfer),
            exe_api_key: exe_api_key.map(str::to_string),
            ledger: None,
            http_access: None,
        };
        let wasm = std::fs::read(paperclip_test_support::components::product_wasm())
            .expect("the built component");
        let host = ProviderHost::load(&wasm, None, grants, Limits::default())
            .expect("the component loads");
        Harness { host, http, ssh }
    }

    fn reply(&self, status: u16, body: &str) -> &Self {
        self.http
            .lock()
            .unwrap()
            .answers
            .push_back(HttpAnswer::Reply(status, body.to_string()));
        self
    }

    fn reply_with(&self, f: impl Fn(&str) -> (u16, String) + Send + 'static) -> &Self {
        self.http
            .lock()
            .unwrap()
            .answers
            .push_back(HttpAnswer::Dyn(Box::new(f)));
        self
    }

    fn deny(&self) -> &Self {
        self.http
            .lock()
            .unwrap()
            .answers
            .push_back(HttpAnswer::Deny);
        self
    }

    fn ssh(&self, answer: Result<SshOutput, SshError>) -> &Self {
        self.ssh.lock().unwrap().answers.push_back(answer);
        self
    }

    fn ssh_out(&self, code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> &Self {
        self.ssh(Ok(out(code, stdout, stderr)))
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        dispatch(&self.host, method, params, CallSink::stderr_only()).await
    }

    fn requests(&self) -> Vec<Recorded> {
        self.http.lock().unwrap().recorded.clone()
    }

    fn bodies(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.body).collect()
    }

    fn ssh_calls(&self) -> Vec<SshCall> {
        self.ssh.lock().unwrap().calls.clone()
    }

    fn commands(&self) -> Vec<String> {
        self.ssh_calls().into_iter().map(|c| c.command).collect()
    }

    fn disconnects(&self) -> Vec<String> {
        self.ssh.lock().unwrap().disconnects.clone()
    }

    /// Every scripted answer was used and nothing unscripted happened.
    fn assert_script_consumed(&self) {
        let http = self.http.lock().unwrap();
        assert_eq!(http.unexpected, 0, "unscripted HTTP requests");
        assert_eq!(http.answers.len(), 0, "unused HTTP answers");
        let ssh = self.ssh.lock().unwrap();
        assert_eq!(ssh.unexpected, 0, "unscripted SSH calls");
        assert_eq!(ssh.answers.len(), 0, "unused SSH answers");
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

const TOKEN: &str = "tok-SECRET-7f3a9c";
const API_URL: &str = "https://exe.example/exec";
/// Pasted key material (not validated at runtime; SSH is the judge).
const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUKEYSECRETBODY42\n-----END OPENSSH PRIVATE KEY-----\n";
const VM: &str = "paperclip-env1-run1";
const HOST: &str = "paperclip-env1-run1.exe.xyz";
const NEW_OK: &str = r#"{"vm_name":"paperclip-env1-run1","ssh_dest":"paperclip-env1-run1.exe.xyz","https_url":"https://paperclip-env1-run1.exe.xyz","status":"running","region":"fra","region_display":"Frankfurt"}"#;
const PREPARED: &[u8] =
    b"Welcome!\r\n__PAPERCLIP_LEASE__\n/home/exedev\nbash\n/home/exedev/paperclip-workspace\n";
const CWD: &str = "/home/exedev/paperclip-workspace";
const ONE_MIB: u64 = 1024 * 1024;

/// The seed's `shellQuote`, to build expected command lines.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// The default setup script (Node >= 24.11 from nodesource), verbatim.
const DEFAULT_SETUP: &str = "#!/bin/sh\n# Paperclip's sandbox callback bridge is a Node program: node >= 24.11 must be on PATH.\nif command -v node >/dev/null 2>&1 && node -e 'const v=process.versions.node.split(\".\").map(Number);process.exit(v[0]>24||(v[0]===24&&v[1]>=11)?0:1)' >/dev/null 2>&1; then\n  exit 0\nfi\ncurl -fsSL https://deb.nodesource.com/setup_24.x | sudo -E bash - && sudo apt-get install -y nodejs\n";

/// `sh -lc '<prepare script>'` for the default workspace, verbatim.
const PREPARE_DEFAULT: &str = "sh -lc 'home=\"${HOME:-}\"; [ -n \"$home\" ] || home=\"$(pwd)\"; [ -n \"$home\" ] || home=/tmp; if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi; cwd=\"$home/paperclip-workspace\"; mkdir -p \"$cwd\" || exit 3; printf '\"'\"'%s\\n%s\\n%s\\n%s\\n'\"'\"' '\"'\"'__PAPERCLIP_LEASE__'\"'\"' \"$home\" \"$shell\" \"$cwd\"'";

/// The prepare command for a requested workspace.
fn prepare_for(cwd: &str) -> String {
    let script = format!(
        "home=\"${{HOME:-}}\"; [ -n \"$home\" ] || home=\"$(pwd)\"; [ -n \"$home\" ] || home=/tmp; \
         if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi; \
         cwd={}; mkdir -p \"$cwd\" || exit 3; \
         printf '%s\\n%s\\n%s\\n%s\\n' '__PAPERCLIP_LEASE__' \"$home\" \"$shell\" \"$cwd\"",
        q(cwd)
    );
    format!("sh -lc {}", q(&script))
}

/// The execute wrapper's profile sourcing, verbatim.
const PROFILE: &str = "if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.profile\" ]; then . \"$HOME/.profile\" >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.zprofile\" ]; then . \"$HOME/.zprofile\" >/dev/null 2>&1 || true; fi";

/// The kill script for one execution id, verbatim.
fn kill_script(id: &str) -> String {
    format!(
        "scan() {{ pids=''; for f in $(grep -lF 'PAPERCLIP_EXEC_ID={id}' /proc/[0-9]*/environ 2>/dev/null); do p=\"${{f#/proc/}}\"; p=\"${{p%/environ}}\"; [ \"$p\" = \"$$\" ] && continue; if tr '\\0' '\\n' < \"$f\" 2>/dev/null | grep -qx 'PAPERCLIP_EXEC_ID={id}'; then pids=\"$pids $p\"; fi; done; }}; scan; [ -n \"$pids\" ] || exit 0; kill -s TERM $pids 2>/dev/null; i=0; while [ $i -lt 10 ]; do sleep 0.1 2>/dev/null || {{ sleep 1; i=9; }}; scan; [ -n \"$pids\" ] || exit 0; i=$((i+1)); done; kill -s KILL $pids 2>/dev/null; exit 0"
    )
}

fn config() -> Value {
    json!({
        "apiKey": TOKEN,
        "apiUrl": API_URL,
        "sshPrivateKey": KEY,
        "timeoutMs": 60000
    })
}

fn params(config: Value, extra: Value) -> Value {
    let mut p = json!({
        "driverKey": "exe-dev",
        "companyId": "company-1",
        "environmentId": "env-1",
        "config": config,
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// Lease metadata as acquire returns it (and Paperclip hands back).
fn lease_meta() -> Value {
    json!({
        "provider": "exe-dev",
        "vmName": VM,
        "sshDest": HOST,
        "httpsUrl": format!("https://{HOST}"),
        "region": "fra",
        "regionDisplay": "Frankfurt",
        "shellCommand": "bash",
        "remoteCwd": CWD,
        "timeoutMs": 60000,
        "reuseLease": false,
        "resumedLease": false,
        "sshHost": HOST,
        "sshPort": 22
    })
}

fn ssh_call(command: &str, timeout_ms: u32, max: u64, stream: bool) -> SshCall {
    SshCall {
        host: HOST.to_string(),
        port: 22,
        user: None,
        identity: format!("key-material:{KEY}"),
        host_key_policy: "accept-new",
        command: command.to_string(),
        stdin: None,
        timeout_ms,
        max_output_bytes: max,
        stream_output: stream,
        durable: false,
    }
}

/// An execute's call: its script, to run durably (the host adds `sh -c` on the direct path).
fn durable_call(script: &str, timeout_ms: u32, max: u64, stream: bool) -> SshCall {
    SshCall {
        durable: true,
        ..ssh_call(script, timeout_ms, max, stream)
    }
}

fn api_request(body: &str) -> Recorded {
    Recorded {
        method: "POST".to_string(),
        uri: API_URL.to_string(),
        authorization: Some(format!("Bearer {TOKEN}")),
        content_type: Some("text/plain; charset=utf-8".to_string()),
        body: body.to_string(),
    }
}

fn default_new_body(vm: &str) -> String {
    format!(
        "new --json --no-email --name={} --setup-script={}",
        q(vm),
        q(DEFAULT_SETUP)
    )
}

fn assert_no_secret(v: &Value) {
    let text = v.to_string();
    assert!(!text.contains(TOKEN), "token leaked: {text}");
    assert!(!text.contains("KEYSECRETBODY42"), "key leaked: {text}");
    assert!(!text.contains("BEGIN OPENSSH"), "key leaked: {text}");
}

/// The ssh call's prepare timeout is min(remaining deadline, 30 s): take it from the call.
fn with_timeout(mut expected: SshCall, actual: &SshCall) -> SshCall {
    assert!(
        actual.timeout_ms > 0 && actual.timeout_ms <= 30_000,
        "{}",
        actual.timeout_ms
    );
    expected.timeout_ms = actual.timeout_ms;
    expected
}

// ---------------------------------------------------------------------------------------------
// validate-config and health

#[tokio::test(flavor = "multi_thread")]
async fn validate_config_normalizes_a_good_config() {
    let h = Harness::new();
    let v = h
        .call(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": {
                "apiKey": TOKEN,
                "apiUrl": "https://exe.example/api/",
                "namePrefix": "My Team!!",
                "tags": "a, b",
                "sshPrivateKey": "0a1b2c3d-0000-4000-8000-123456789abc",
                "custom": 1
            }}),
        )
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({
            "ok": true,
            "warnings": ["The Paperclip host must have SSH access to the created exe.dev VM, and its SSH key must be registered with exe.dev. The API token only covers provisioning."],
            "errors": [],
            "normalizedConfig": {
                "apiKey": TOKEN,
                "apiUrl": "https://exe.example/api/exec",
                "namePrefix": "my-team",
                "tags": ["a", "b"],
                "timeoutMs": 300000,
                "reuseLease": false,
                "sshPrivateKey": "0a1b2c3d-0000-4000-8000-123456789abc",
                "sshPort": 22,
                "strictHostKeyChecking": "accept-new",
                "custom": 1
            }
        })
    );
    assert!(h.requests().is_empty());
    assert!(h.ssh_calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_config_reports_the_seed_errors() {
    let h = Harness::new();
    let cases = [
        (
            json!({"apiKey": "t", "timeoutMs": 0}),
            "timeoutMs must be between 1 and 86400000.",
        ),
        (
            json!({"apiKey": "t", "apiUrl": "not a url"}),
            "apiUrl must be a valid URL.",
        ),
        (
            json!({"apiKey": "t", "cpu": 0}),
            "cpu must be greater than 0 when provided.",
        ),
        (
            json!({"apiKey": "t", "sshPort": 70000}),
            "sshPort must be between 1 and 65535.",
        ),
        (
            json!({"apiKey": "t", "env": {"1BAD": "x"}}),
            "env contains an invalid key: 1BAD",
        ),
        (
            json!({"apiKey": "t", "strictHostKeyChecking": "maybe"}),
            "strictHostKeyChecking must be one of yes, accept-new or no.",
        ),
        (
            json!({}),
            "exe.dev environments require an API key in config or EXE_API_KEY.",
        ),
        (
            json!({"apiKey": "t", "sshPrivateKey": "ssh-ed25519 AAAAC3Nza me@host"}),
            "sshPrivateKey contains a public key; paste the private key (the file without .pub) instead.",
        ),
    ];
    for (config, error) in cases {
        let v = h
            .call(
                "environmentValidateConfig",
                json!({"driverKey": "exe-dev", "config": config}),
            )
            .await
            .unwrap();
        assert_eq!(v["ok"], json!(false), "{config}");
        assert_eq!(v["errors"], json!([error]), "{config}");
        assert_eq!(v.get("normalizedConfig"), None, "{config}");
    }
    assert!(h.requests().is_empty());
    assert!(h.ssh_calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_config_never_traps_on_non_objects() {
    let h = Harness::new();
    for config in [json!(42), json!("x"), json!([1]), json!(null), json!(true)] {
        let v = h
            .call(
                "environmentValidateConfig",
                json!({"driverKey": "exe-dev", "config": config}),
            )
            .await
            .unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "warnings": [], "errors": ["config must be a JSON object."]}),
            "{config}"
        );
    }
    // No config at all.
    let v = h
        .call("environmentValidateConfig", json!({"driverKey": "exe-dev"}))
        .await
        .unwrap();
    assert_eq!(v["errors"], json!(["config must be a JSON object."]));
    assert!(h.requests().is_empty());
    assert!(h.ssh_calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_config_survives_pathological_json() {
    let h = Harness::new();
    // 1000 levels of nesting: past serde_json's recursion limit inside the guest.
    let mut deep = json!(1);
    for _ in 0..1000 {
        deep = json!([deep]);
    }
    let v = h
        .call(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": {"apiKey": "t", "custom": deep}}),
        )
        .await
        .unwrap();
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["errors"], json!(["config must be a JSON object."]));
    // A create command over the API's 64 KB body limit.
    let v = h
        .call(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": {"apiKey": "t", "comment": "c".repeat(1 << 20)}}),
        )
        .await
        .unwrap();
    assert_eq!(v["ok"], json!(false));
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    let e = errors[0].as_str().unwrap();
    assert!(
        e.starts_with("The exe.dev create command would be 10") && e.ends_with(" bytes, over the /exec API's 64 KB limit (65536 bytes); shorten setupScript, prompt, comment or env."),
        "{e}"
    );
    assert!(h.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_config_accepts_the_granted_exe_api_key() {
    let h = Harness::with_env_key(Some("env-token"));
    let v = h
        .call(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": {}}),
        )
        .await
        .unwrap();
    assert_eq!(v["ok"], json!(true), "{v}");
    // The environment's token is not copied into the stored config.
    assert_eq!(v["normalizedConfig"].get("apiKey"), None);
    assert!(!v.to_string().contains("env-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_ok() {
    let h = Harness::new();
    let v = h.call("health", json!({})).await.unwrap();
    assert_eq!(
        v,
        json!({"status": "ok", "message": "exe.dev sandbox provider plugin healthy"})
    );
    assert!(h.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// acquire

#[tokio::test(flavor = "multi_thread")]
async fn acquire_creates_the_vm_and_prepares_it_in_one_ssh_call() {
    let h = Harness::new();
    h.reply(200, NEW_OK).ssh_out(Some(0), PREPARED, b"");
    let lease = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap();
    assert_eq!(h.requests(), vec![api_request(&default_new_body(VM))]);
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0],
        with_timeout(ssh_call(PREPARE_DEFAULT, 0, ONE_MIB, false), &calls[0])
    );
    assert_eq!(
        lease,
        json!({"providerLeaseId": VM, "metadata": lease_meta(), "expiresAt": null})
    );
    assert_no_secret(&lease);
    assert!(h.disconnects().is_empty());
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_sends_every_create_flag_quoted() {
    let h = Harness::new();
    h.reply(200, NEW_OK).ssh_out(
        Some(0),
        b"__PAPERCLIP_LEASE__\n/root\nsh\n/work/it's here\n",
        b"",
    );
    let cfg = json!({
        "apiKey": TOKEN,
        "apiUrl": "https://exe.example",
        "image": "ubuntu:24.04",
        "command": "auto",
        "cpu": 4,
        "memory": "8GB",
        "disk": "40GB",
        "comment": "it's a test",
        "env": {"A_TOKEN": "s3cr3t value", "B": "$(x)"},
        "integrations": "github, slack",
        "tags": ["t1", "t2"],
        "setupScript": "#!/bin/sh\necho 'hi'\n",
        "prompt": "do `things`",
        "sshUser": "exedev",
        "sshIdentityFile": "/keys/id_ed25519",
        "sshPort": 2222,
        "strictHostKeyChecking": "yes",
        "timeoutMs": 60000
    });
    let lease = h
        .call(
            "environmentAcquireLease",
            params(
                cfg,
                json!({"runId": "run-1", "requestedCwd": "/work/it's here"}),
            ),
        )
        .await
        .unwrap();
    let expected_body = "new --json --no-email --name='paperclip-env1-run1' --image='ubuntu:24.04' --command='auto' --cpu='4' --memory='8GB' --disk='40GB' --comment='it'\"'\"'s a test' --env='A_TOKEN=s3cr3t value' --env='B=$(x)' --integration='github' --integration='slack' --tag='t1' --tag='t2' --setup-script='#!/bin/sh\necho '\"'\"'hi'\"'\"'' --prompt='do `things`'";
    // String settings are trimmed as the seed trims them (the script's final newline too).
    assert_eq!(h.requests(), vec![api_request(expected_body)]);
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 1);
    let expected = SshCall {
        host: HOST.to_string(),
        port: 2222,
        user: Some("exedev".to_string()),
        identity: "key-file:/keys/id_ed25519".to_string(),
        host_key_policy: "yes",
        command: prepare_for("/work/it's here"),
        stdin: None,
        timeout_ms: 0,
        max_output_bytes: ONE_MIB,
        stream_output: false,
        durable: false,
    };
    assert_eq!(calls[0], with_timeout(expected, &calls[0]));
    assert_eq!(lease["metadata"]["remoteCwd"], json!("/work/it's here"));
    assert_eq!(lease["metadata"]["shellCommand"], json!("sh"));
    assert_eq!(lease["metadata"]["sshUser"], json!("exedev"));
    assert_eq!(lease["metadata"]["sshPort"], json!(2222));
    let text = lease.to_string();
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(!text.contains("things"), "{text}");
    assert_no_secret(&lease);
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_copies_the_source_vm_with_cp() {
    let h = Harness::new();
    h.reply(200, NEW_OK).ssh_out(Some(0), PREPARED, b"");
    let mut cfg = config();
    cfg["sourceVm"] = json!("golden");
    cfg["cpu"] = json!(4);
    cfg["memory"] = json!("8GB");
    cfg["disk"] = json!("40GB");
    cfg["image"] = json!("ignored:latest");
    cfg["tags"] = json!("ignored");
    let lease = h
        .call(
            "environmentAcquireLease",
            params(cfg, json!({"runId": "run-1"})),
        )
        .await
        .unwrap();
    assert_eq!(
        h.requests(),
        vec![api_request(
            "cp 'golden' 'paperclip-env1-run1' --json --cpu='4' --memory='8GB' --disk='40GB'"
        )]
    );
    assert_eq!(h.commands(), vec![PREPARE_DEFAULT.to_string()]);
    assert_eq!(lease["providerLeaseId"], json!(VM));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_reports_a_redacted_command_and_scrubbed_error() {
    let h = Harness::new();
    h.reply(
        422,
        r#"{"error":"bad env value s3cr3t value for token tok-SECRET-7f3a9c"}"#,
    )
    .reply(200, r#"{"vms":[]}"#);
    let mut cfg = config();
    cfg["env"] = json!({"A_TOKEN": "s3cr3t value"});
    cfg["setupScript"] = json!("echo private-setup");
    cfg["prompt"] = json!("private prompt");
    let err = h
        .call(
            "environmentAcquireLease",
            params(cfg, json!({"runId": "run-1"})),
        )
        .await
        .unwrap_err();
    let redacted = "new --json --no-email --name='paperclip-env1-run1' --env='A_TOKEN=[REDACTED]' --setup-script='[REDACTED]' --prompt='[REDACTED]'";
    assert_eq!(
        err.message,
        format!("exe.dev API command failed (422) for: {redacted}: bad env value [REDACTED] for token [REDACTED] (the `new` command itself failed on exe.dev; its own error is shown)")
    );
    assert_eq!(
        err.data,
        Some(json!({"kind": "api", "status": 422, "command": redacted}))
    );
    // The wire body itself carries the real values.
    assert_eq!(
        h.bodies(),
        vec![
            "new --json --no-email --name='paperclip-env1-run1' --env='A_TOKEN=s3cr3t value' --setup-script='echo private-setup' --prompt='private prompt'".to_string(),
            "ls --json 'paperclip-env1-run1'".to_string(),
        ]
    );
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_honours_ssh_host_user_and_port_from_the_api() {
    let h = Harness::new();
    h.reply(
        200,
        r#"{"vm":{"vm_name":"paperclip-env1-run1","ssh_dest":"exedev@paperclip-env1-run1.exe.xyz","ssh_host":"gw.exe.xyz","ssh_port":2022}}"#,
    )
    .ssh_out(Some(0), PREPARED, b"");
    let lease = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap();
    let calls = h.ssh_calls();
    assert_eq!(
        (
            calls[0].host.as_str(),
            calls[0].port,
            calls[0].user.as_deref()
        ),
        ("gw.exe.xyz", 2022, Some("exedev"))
    );
    assert_eq!(
        lease["metadata"]["sshDest"],
        json!("exedev@paperclip-env1-run1.exe.xyz")
    );
    assert_eq!(lease["metadata"]["sshHost"], json!("gw.exe.xyz"));
    assert_eq!(lease["metadata"]["sshUser"], json!("exedev"));
    assert_eq!(lease["metadata"]["sshPort"], json!(2022));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_adopts_the_vm_after_a_failed_create() {
    let h = Harness::new();
    h.reply(500, r#"{"error":"internal error"}"#)
        .reply(200, &format!(r#"{{"vms":[{NEW_OK}]}}"#))
        .ssh_out(Some(0), PREPARED, b"");
    let lease = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap();
    assert_eq!(
        h.requests(),
        vec![
            api_request(&default_new_body(VM)),
            api_request("ls --json 'paperclip-env1-run1'"),
        ]
    );
    assert_eq!(h.commands(), vec![PREPARE_DEFAULT.to_string()]);
    assert_eq!(
        lease,
        json!({"providerLeaseId": VM, "metadata": lease_meta(), "expiresAt": null})
    );
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_fails_when_create_fails_and_the_vm_does_not_exist() {
    let h = Harness::new();
    h.reply(422, r#"{"error":"image not found"}"#)
        .reply(200, r#"{"vms":[]}"#);
    let err = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        h.bodies(),
        vec![
            default_new_body(VM),
            "ls --json 'paperclip-env1-run1'".to_string()
        ]
    );
    assert_eq!(err.code, -32002);
    let redacted_new = format!(
        "new --json --no-email --name='paperclip-env1-run1' --setup-script={}",
        q(DEFAULT_SETUP)
    );
    assert_eq!(
        err.message,
        format!("exe.dev API command failed (422) for: {redacted_new}: image not found (the `new` command itself failed on exe.dev; its own error is shown)")
    );
    assert_eq!(
        err.data,
        Some(json!({"kind": "api", "status": 422, "command": redacted_new}))
    );
    assert!(h.ssh_calls().is_empty());
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_deletes_a_vm_created_without_metadata() {
    let h = Harness::new();
    h.reply(200, "created")
        .reply(200, r#"{"vms":[]}"#)
        .reply(200, "");
    let err = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        h.bodies(),
        vec![
            default_new_body(VM),
            "ls --json 'paperclip-env1-run1'".to_string(),
            "rm --json 'paperclip-env1-run1'".to_string(),
        ]
    );
    assert!(
        err.message
            .ends_with(": exe.dev did not return VM metadata for paperclip-env1-run1."),
        "{}",
        err.message
    );
    assert_eq!(err.data.as_ref().unwrap()["status"], json!(200));
    assert!(h.ssh_calls().is_empty());
    h.assert_script_consumed();
}

async fn acquire_with_fatal_prepare(
    code: i32,
    stdout: &[u8],
    stderr: &[u8],
) -> (Harness, RpcError) {
    let h = Harness::new();
    h.reply(200, NEW_OK)
        .ssh_out(Some(code), stdout, stderr)
        .reply(200, "");
    let err = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap_err();
    (h, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_deletes_the_vm_when_ssh_onboarding_is_missing() {
    let (h, err) = acquire_with_fatal_prepare(
        1,
        b"Please complete registration by running: ssh exe.dev\r\n",
        b"",
    )
    .await;
    assert_eq!(
        h.requests(),
        vec![
            api_request(&default_new_body(VM)),
            api_request("rm --json 'paperclip-env1-run1'"),
        ]
    );
    assert_eq!(h.commands(), vec![PREPARE_DEFAULT.to_string()]);
    assert_eq!(err.code, -32002);
    assert_eq!(
        err.message,
        "Failed to inspect exe.dev VM paperclip-env1-run1: the Paperclip host SSH key is not registered with exe.dev. Complete exe.dev's one-time SSH onboarding on this host by running `ssh exe.dev` and following the email verification prompt, then retry."
    );
    assert_eq!(err.data, Some(json!({"kind": "ssh"})));
    assert_eq!(h.disconnects(), vec![HOST.to_string()]);
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_deletes_the_vm_when_ssh_auth_is_denied() {
    let (h, err) = acquire_with_fatal_prepare(
        255,
        b"",
        b"exedev@paperclip-env1-run1.exe.xyz: Permission denied (publickey).\r\n",
    )
    .await;
    assert_eq!(
        h.bodies(),
        vec![
            default_new_body(VM),
            "rm --json 'paperclip-env1-run1'".to_string()
        ]
    );
    // Fatal at once: exactly one SSH attempt.
    assert_eq!(h.commands(), vec![PREPARE_DEFAULT.to_string()]);
    assert_eq!(
        err.message,
        "Failed to inspect exe.dev VM paperclip-env1-run1: exedev@paperclip-env1-run1.exe.xyz: Permission denied (publickey)."
    );
    assert_eq!(err.data, Some(json!({"kind": "ssh"})));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_retries_ssh_while_the_vm_boots() {
    let h = Harness::new();
    h.reply(200, NEW_OK)
        .ssh_out(
            Some(255),
            b"",
            b"ssh: connect to host paperclip-env1-run1.exe.xyz port 22: Connection refused\r\n",
        )
        .ssh_out(Some(0), PREPARED, b"");
    let lease = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap();
    assert_eq!(
        h.commands(),
        vec![PREPARE_DEFAULT.to_string(), PREPARE_DEFAULT.to_string()]
    );
    assert_eq!(h.bodies(), vec![default_new_body(VM)]);
    assert_eq!(lease["providerLeaseId"], json!(VM));
    h.assert_script_consumed();
}

// ---------------------------------------------------------------------------------------------
// resume / release / destroy

#[tokio::test(flavor = "multi_thread")]
async fn resume_reattaches_to_a_present_vm() {
    let h = Harness::new();
    h.reply(200, &format!(r#"{{"vms":[{NEW_OK}]}}"#))
        .ssh_out(Some(0), PREPARED, b"");
    let lease = h
        .call(
            "environmentResumeLease",
            params(
                config(),
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        h.requests(),
        vec![api_request("ls --json 'paperclip-env1-run1'")]
    );
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0],
        with_timeout(ssh_call(&prepare_for(CWD), 0, ONE_MIB, false), &calls[0])
    );
    let mut meta = lease_meta();
    meta["resumedLease"] = json!(true);
    assert_eq!(
        lease,
        json!({"providerLeaseId": VM, "metadata": meta, "expiresAt": null})
    );
    assert_no_secret(&lease);
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_of_a_gone_vm_is_expired() {
    for answer in [
        (200, r#"{"vms":[]}"#),
        (404, r#"{"error":"vm not found"}"#),
        (422, r#"{"error":"vm \"paperclip-env1-run1\" not found"}"#),
    ] {
        let h = Harness::new();
        h.reply(answer.0, answer.1);
        let lease = h
            .call(
                "environmentResumeLease",
                params(
                    config(),
                    json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            lease,
            json!({"providerLeaseId": null, "metadata": {"expired": true}, "expiresAt": null}),
            "{answer:?}"
        );
        assert_eq!(h.bodies(), vec!["ls --json 'paperclip-env1-run1'"]);
        assert!(h.ssh_calls().is_empty());
        h.assert_script_consumed();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_the_api_unavailable_is_an_error_not_expired() {
    let h = Harness::new();
    // ls is idempotent and retried on 503: with a 2.4 s deadline the backoff (500 ms + jitter,
    // then 1 s + jitter, each needing 1 s to spare) allows exactly one retry.
    h.reply(503, r#"{"error":"service unavailable"}"#)
        .reply(503, r#"{"error":"service unavailable"}"#);
    let mut cfg = config();
    cfg["timeoutMs"] = json!(2400);
    let err = h
        .call(
            "environmentResumeLease",
            params(
                cfg,
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        h.bodies(),
        vec![
            "ls --json 'paperclip-env1-run1'",
            "ls --json 'paperclip-env1-run1'"
        ]
    );
    assert_eq!(err.code, -32002);
    assert_eq!(
        err.message,
        "exe.dev API command failed (503) for: ls --json 'paperclip-env1-run1': service unavailable (exe.dev had a server-side problem; retry later)"
    );
    assert_eq!(
        err.data,
        Some(json!({"kind": "api", "status": 503, "command": "ls --json 'paperclip-env1-run1'"}))
    );
    assert!(h.ssh_calls().is_empty());
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn release_with_reuse_lease_keeps_the_vm() {
    let h = Harness::new();
    let mut cfg = config();
    cfg["reuseLease"] = json!(true);
    let r = h
        .call(
            "environmentReleaseLease",
            params(
                cfg,
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r, Value::Null);
    assert!(h.requests().is_empty());
    assert!(h.ssh_calls().is_empty());
    assert!(h.disconnects().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn release_with_reuse_lease_and_cancel_stops_marked_work() {
    let h = Harness::new();
    h.ssh_out(Some(0), b"", b"");
    let mut cfg = config();
    cfg["reuseLease"] = json!(true);
    let r = h
        .call(
            "environmentReleaseLease",
            params(
                cfg,
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta(), "cancelActiveWork": true}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"providerLeaseId": VM, "state": "stopped"}));
    assert!(h.requests().is_empty());
    let kill_any = kill_script("x")
        .replace(
            "grep -qx 'PAPERCLIP_EXEC_ID=x'",
            "grep -q '^PAPERCLIP_EXEC_ID='",
        )
        .replace(
            "grep -lF 'PAPERCLIP_EXEC_ID=x'",
            "grep -lF 'PAPERCLIP_EXEC_ID='",
        );
    assert_eq!(
        h.ssh_calls(),
        vec![ssh_call(
            &format!("sh -c {}", q(&kill_any)),
            10_000,
            ONE_MIB,
            false
        )]
    );
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn release_without_reuse_deletes_the_vm() {
    let h = Harness::new();
    h.reply(200, r#"{"deleted":"paperclip-env1-run1"}"#);
    let r = h
        .call(
            "environmentReleaseLease",
            params(
                config(),
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"providerLeaseId": VM, "state": "destroyed"}));
    assert_eq!(
        h.requests(),
        vec![api_request("rm --json 'paperclip-env1-run1'")]
    );
    assert!(h.ssh_calls().is_empty());
    assert_eq!(h.disconnects(), vec![HOST.to_string()]);
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn release_without_a_lease_id_does_nothing() {
    let h = Harness::new();
    let r = h
        .call(
            "environmentReleaseLease",
            params(config(), json!({"providerLeaseId": null})),
        )
        .await
        .unwrap();
    assert_eq!(r, Value::Null);
    assert!(h.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_always_deletes_even_with_reuse_lease() {
    let h = Harness::new();
    h.reply(200, "");
    let mut cfg = config();
    cfg["reuseLease"] = json!(true);
    let r = h
        .call(
            "environmentDestroyLease",
            params(
                cfg,
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"providerLeaseId": VM, "state": "destroyed"}));
    assert_eq!(h.bodies(), vec!["rm --json 'paperclip-env1-run1'"]);
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_of_a_gone_vm_succeeds() {
    for answer in [
        (422, r#"{"error":"vm not found"}"#),
        (404, r#"{"error":"VM paperclip-env1-run1 not found"}"#),
    ] {
        let h = Harness::new();
        h.reply(answer.0, answer.1);
        let r = h
            .call(
                "environmentDestroyLease",
                params(
                    config(),
                    json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            json!({"providerLeaseId": VM, "state": "destroyed"}),
            "{answer:?}"
        );
        assert_eq!(h.bodies(), vec!["rm --json 'paperclip-env1-run1'"]);
        h.assert_script_consumed();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_without_rm_permission_is_an_error_with_the_hint() {
    let h = Harness::new();
    h.reply(403, r#"{"error":"command not allowed"}"#);
    let err = h
        .call(
            "environmentDestroyLease",
            params(
                config(),
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "exe.dev API command failed (403) for: rm --json 'paperclip-env1-run1': command not allowed (the token's cmds do not include `rm`; exe.dev's default token permissions lack `rm` and `cp`, so use a token whose cmds list every command the provider runs (new, ls, rm, and cp for sourceVm))"
    );
    assert_eq!(h.bodies(), vec!["rm --json 'paperclip-env1-run1'"]);
    assert!(h.disconnects().is_empty());
    h.assert_script_consumed();
}

// ---------------------------------------------------------------------------------------------
// realize-workspace

fn lease_without_cwd() -> Value {
    let mut meta = lease_meta();
    meta.as_object_mut().unwrap().remove("remoteCwd");
    json!({"providerLeaseId": VM, "metadata": meta, "expiresAt": null})
}

#[tokio::test(flavor = "multi_thread")]
async fn realize_uses_the_lease_cwd_without_ssh() {
    let h = Harness::new();
    let r = h
        .call(
            "environmentRealizeWorkspace",
            params(
                config(),
                json!({
                    "lease": {"providerLeaseId": VM, "metadata": lease_meta(), "expiresAt": null},
                    "workspace": {"localPath": "/home/me/proj", "remotePath": "/srv/ws"}
                }),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"cwd": CWD, "metadata": {"provider": "exe-dev", "remoteCwd": CWD}})
    );
    assert!(h.ssh_calls().is_empty());
    assert!(h.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn realize_creates_remote_path_then_local_path_then_default() {
    let cases = [
        (
            json!({"localPath": "/home/me/proj", "remotePath": "/w s"}),
            "/w s",
            "sh -lc 'mkdir -p '\"'\"'/w s'\"'\"''".to_string(),
        ),
        (
            json!({"localPath": "/home/me/it's", "remotePath": "  "}),
            "/home/me/it's",
            format!("sh -lc {}", q(&format!("mkdir -p {}", q("/home/me/it's")))),
        ),
        (
            json!({}),
            "/tmp/paperclip-workspace",
            "sh -lc 'mkdir -p '\"'\"'/tmp/paperclip-workspace'\"'\"''".to_string(),
        ),
    ];
    for (workspace, cwd, command) in cases {
        let h = Harness::new();
        h.ssh_out(Some(0), b"", b"");
        let r = h
            .call(
                "environmentRealizeWorkspace",
                params(
                    config(),
                    json!({"lease": lease_without_cwd(), "workspace": workspace}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            json!({"cwd": cwd, "metadata": {"provider": "exe-dev", "remoteCwd": cwd}})
        );
        assert_eq!(
            h.ssh_calls(),
            vec![ssh_call(&command, 60_000, ONE_MIB, false)],
            "{cwd}"
        );
        assert!(h.requests().is_empty());
        h.assert_script_consumed();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn realize_reports_a_failed_mkdir() {
    let h = Harness::new();
    h.ssh_out(
        Some(1),
        b"",
        b"mkdir: cannot create directory '/w': Permission denied\n",
    );
    let err = h
        .call(
            "environmentRealizeWorkspace",
            params(
                config(),
                json!({"lease": lease_without_cwd(), "workspace": {"remotePath": "/w"}}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "Failed to create workspace for exe.dev VM paperclip-env1-run1: mkdir: cannot create directory '/w': Permission denied"
    );
    assert_eq!(err.data, Some(json!({"kind": "ssh"})));
    h.assert_script_consumed();
}

// ---------------------------------------------------------------------------------------------
// execute

fn exec_lease() -> Value {
    json!({"providerLeaseId": VM, "metadata": lease_meta(), "expiresAt": null})
}

/// The 16-hex-digit execution id in a recorded execute command.
fn exec_id_of(command: &str) -> String {
    let at = command
        .find("PAPERCLIP_EXEC_ID=")
        .expect("execution marker")
        + "PAPERCLIP_EXEC_ID=".len();
    let id = &command[at..at + 16];
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    assert_eq!(
        command.as_bytes()[at + 16],
        b' ',
        "the id is exactly 16 digits"
    );
    id.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_runs_the_exact_wrapper_and_returns_output_verbatim() {
    let h = Harness::new();
    let stdout = "out ✓ 日本語\n".as_bytes();
    let stderr = "Permission denied\nerror: boom ✓\n".as_bytes();
    h.ssh_out(Some(1), stdout, stderr);
    let script = "echo \"$(whoami)\" `date` 'q'\nprintf 'héllo ✓\\n'";
    let stdin = "line1\nünïcødé ✓\n\u{1F600} 'quote' $(no)\n";
    let r = h
        .call(
            "environmentExecute",
            params(
                config(),
                json!({
                    "lease": exec_lease(),
                    "command": "sh",
                    "args": ["-c", script, "arg with 'quote'"],
                    "cwd": "/home/exedev/my dir's",
                    "env": {"A": "it's $(rm -rf /) `x`", "B_2": "line1\nline2 é"},
                    "stdin": stdin,
                    "timeoutMs": 5000
                }),
            ),
        )
        .await
        .unwrap();
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 1);
    let id = exec_id_of(&calls[0].command);
    let wrapper = format!(
        "{PROFILE} && cd {} && export PAPERCLIP_EXEC_ID={id} A={} B_2={} && \
         exec 'sh' '-c' {} {}",
        q("/home/exedev/my dir's"),
        q("it's $(rm -rf /) `x`"),
        q("line1\nline2 é"),
        q(script),
        q("arg with 'quote'"),
    );
    let mut expected = durable_call(&wrapper, 5000, 32 * ONE_MIB, true);
    expected.stdin = Some(stdin.as_bytes().to_vec());
    assert_eq!(calls[0], expected);
    assert_eq!(
        r,
        json!({
            "exitCode": 1,
            "signal": null,
            "timedOut": false,
            "stdout": "out ✓ 日本語\n",
            "stderr": "Permission denied\nerror: boom ✓\n",
            "metadata": {
                "provider": "exe-dev",
                "vmName": VM,
                "sshDest": HOST,
                "stdoutTruncated": false,
                "stderrTruncated": false
            }
        })
    );
    assert!(h.requests().is_empty());
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_quoting_is_exact_for_a_simple_command() {
    let h = Harness::new();
    h.ssh_out(Some(0), b"hi\n", b"");
    let r = h
        .call(
            "environmentExecute",
            params(
                config(),
                json!({
                    "lease": exec_lease(),
                    "command": "sh",
                    "args": ["-c", "echo it's"],
                    "env": {"K": "v"}
                }),
            ),
        )
        .await
        .unwrap();
    let calls = h.ssh_calls();
    let id = exec_id_of(&calls[0].command);
    // cwd defaults to the lease's remoteCwd; the timeout to the config's.
    let wrapper_quoted = format!(
        "sh -c 'if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.profile\" ]; then . \"$HOME/.profile\" >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.zprofile\" ]; then . \"$HOME/.zprofile\" >/dev/null 2>&1 || true; fi && cd '\"'\"'/home/exedev/paperclip-workspace'\"'\"' && export PAPERCLIP_EXEC_ID={id} K='\"'\"'v'\"'\"' && exec '\"'\"'sh'\"'\"' '\"'\"'-c'\"'\"' '\"'\"'echo it'\"'\"'\"'\"'\"'\"'\"'\"'s'\"'\"''"
    );
    let wrapper = format!(
        "if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.profile\" ]; then . \"$HOME/.profile\" >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi && if [ -f \"$HOME/.zprofile\" ]; then . \"$HOME/.zprofile\" >/dev/null 2>&1 || true; fi && cd '/home/exedev/paperclip-workspace' && export PAPERCLIP_EXEC_ID={id} K='v' && exec 'sh' '-c' 'echo it'\"'\"'s'"
    );
    assert_eq!(
        calls,
        vec![durable_call(&wrapper, 60_000, 32 * ONE_MIB, true)]
    );
    // The wrapper as one shell word (the direct path's guard takes it so), quoted exactly.
    assert_eq!(format!("sh -c {}", q(&wrapper)), wrapper_quoted);
    assert_eq!(r["exitCode"], json!(0));
    assert_eq!(r["stdout"], json!("hi\n"));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_timeout_kills_the_remote_process_tree() {
    let h = Harness::new();
    h.ssh(Ok(SshOutput {
        exit_code: None,
        exit_code_from_remote: false,
        signal: None,
        timed_out: true,
        stdout: b"partial".to_vec(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
    }))
    .ssh_out(Some(0), b"", b"");
    let r = h
        .call(
            "environmentExecute",
            params(
                config(),
                json!({"lease": exec_lease(), "command": "sleep", "args": ["100"], "timeoutMs": 1000}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r["timedOut"], json!(true));
    assert_eq!(r["exitCode"], Value::Null);
    assert_eq!(r["stdout"], json!("partial"));
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 2);
    let id = exec_id_of(&calls[0].command);
    assert_eq!(calls[0].timeout_ms, 1000);
    assert!(
        calls[0].command.ends_with(&format!(
            "export PAPERCLIP_EXEC_ID={id} && exec 'sleep' '100'"
        )),
        "{}",
        calls[0].command
    );
    assert_eq!(
        calls[1],
        ssh_call(
            &format!("sh -c {}", q(&kill_script(&id))),
            10_000,
            ONE_MIB,
            false
        )
    );
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_passes_multi_mib_stdin_and_stdout_byte_exact() {
    let h = Harness::new();
    // Paperclip's file-sync fallback: ~4 MiB base64 chunks in through stdin, out through stdout.
    let stdin: String = (0..6 * 1024 * 1024 / 64)
        .map(|i| format!("{:0>60}é\n", i))
        .collect();
    let stdout: String = (0..5 * 1024 * 1024 / 32)
        .map(|i| format!("{:x>28}✓\n", i))
        .collect();
    h.ssh_out(Some(0), stdout.as_bytes(), b"");
    let r = h
        .call(
            "environmentExecute",
            params(
                config(),
                json!({
                    "lease": exec_lease(),
                    "command": "sh",
                    "args": ["-c", "base64 -d >> /tmp/x"],
                    "stdin": stdin,
                }),
            ),
        )
        .await
        .unwrap();
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].stdin.as_deref() == Some(stdin.as_bytes()),
        "stdin differs"
    );
    assert!(
        r["stdout"].as_str() == Some(stdout.as_str()),
        "stdout differs"
    );
    assert_eq!(r["metadata"]["stdoutTruncated"], json!(false));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_ids_differ_between_calls() {
    let h = Harness::new();
    h.ssh_out(Some(0), b"", b"").ssh_out(Some(0), b"", b"");
    for _ in 0..2 {
        h.call(
            "environmentExecute",
            params(config(), json!({"lease": exec_lease(), "command": "true"})),
        )
        .await
        .unwrap();
    }
    let commands = h.commands();
    assert_ne!(exec_id_of(&commands[0]), exec_id_of(&commands[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_rejects_an_invalid_env_key_without_running() {
    let h = Harness::new();
    let err = h
        .call(
            "environmentExecute",
            params(
                config(),
                json!({"lease": exec_lease(), "command": "true", "env": {"BAD-KEY": "x"}}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, -32002);
    assert_eq!(
        err.message,
        "Invalid exe.dev environment variable key: BAD-KEY"
    );
    assert_eq!(err.data, Some(json!({"kind": "invalid-request"})));
    assert!(h.ssh_calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_reports_truncation_and_decodes_once() {
    let h = Harness::new();
    // A multibyte character whose bytes would straddle any chunk boundary stays intact, and
    // invalid bytes become U+FFFD.
    let mut stdout = "x".repeat(4095).into_bytes();
    stdout.extend_from_slice("€ end".as_bytes());
    h.ssh(Ok(SshOutput {
        exit_code: Some(0),
        exit_code_from_remote: true,
        signal: None,
        timed_out: false,
        stdout,
        stderr: vec![b'a', 0xff, b'b'],
        stdout_truncated: true,
        stderr_truncated: false,
    }));
    let r = h
        .call(
            "environmentExecute",
            params(config(), json!({"lease": exec_lease(), "command": "cat"})),
        )
        .await
        .unwrap();
    assert_eq!(r["stdout"], json!(format!("{}€ end", "x".repeat(4095))));
    assert_eq!(r["stderr"], json!("a\u{FFFD}b"));
    assert_eq!(r["metadata"]["stdoutTruncated"], json!(true));
    assert_eq!(r["metadata"]["stderrTruncated"], json!(false));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_explains_an_ssh_failure_when_the_command_never_ran() {
    let h = Harness::new();
    h.ssh_out(
        Some(255),
        b"",
        b"ssh: connect to host paperclip-env1-run1.exe.xyz port 22: Connection refused\r\n",
    );
    let err = h
        .call(
            "environmentExecute",
            params(config(), json!({"lease": exec_lease(), "command": "true"})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "Failed to execute commands on exe.dev VM paperclip-env1-run1: ssh: connect to host paperclip-env1-run1.exe.xyz port 22: Connection refused"
    );
    assert_eq!(err.data, Some(json!({"kind": "ssh"})));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_without_a_lease_id_fails_softly() {
    let h = Harness::new();
    let r = h
        .call(
            "environmentExecute",
            params(
                config(),
                json!({"lease": {"providerLeaseId": null, "metadata": {}}, "command": "true"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({
            "exitCode": 1, "signal": null, "timedOut": false, "stdout": "",
            "stderr": "No provider lease ID available for execution.",
            "metadata": {"provider": "exe-dev"}
        })
    );
    assert!(h.ssh_calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// probe

/// Answers a `new` with the VM it names.
fn echo_new(body: &str) -> (u16, String) {
    let name = name_in(body);
    (
        200,
        json!({"vm_name": name, "ssh_dest": format!("{name}.exe.xyz"), "status": "running"})
            .to_string(),
    )
}

/// The VM name in a `new` body.
fn name_in(body: &str) -> &str {
    body.split("--name='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or("missing")
}

/// The probe VM's (random) name, checked for shape.
fn probe_name(h: &Harness) -> String {
    let name = name_in(&h.bodies()[0]).to_string();
    let suffix = name.strip_prefix("paperclip-probe-").expect("probe name");
    let hex = suffix.strip_prefix('r').unwrap_or(suffix);
    assert_eq!(hex.len(), 8, "{name}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    name
}

fn codes_and_severities(v: &Value) -> Vec<(String, String)> {
    v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_creates_prepares_and_always_deletes() {
    let h = Harness::new();
    h.reply_with(echo_new)
        .ssh_out(Some(0), PREPARED, b"")
        .reply(200, "{}");
    let v = h
        .call("environmentProbe", params(config(), json!({})))
        .await
        .unwrap();
    let name = probe_name(&h);
    assert_eq!(
        h.requests(),
        vec![
            api_request(&default_new_body(&name)),
            api_request(&format!("rm --json '{name}'")),
        ]
    );
    let dest = format!("{name}.exe.xyz");
    let calls = h.ssh_calls();
    assert_eq!(calls.len(), 1);
    let mut expected = ssh_call(PREPARE_DEFAULT, 0, ONE_MIB, false);
    expected.host = dest.clone();
    assert_eq!(calls[0], with_timeout(expected, &calls[0]));
    assert_eq!(h.disconnects(), vec![dest.clone()]);
    assert_eq!(v["ok"], json!(true));
    assert_eq!(
        v["summary"],
        json!(format!("Connected to exe.dev VM {name}."))
    );
    assert_eq!(
        codes_and_severities(&v),
        [
            ("create-vm", "info"),
            ("ssh-ready", "info"),
            ("inspect", "info"),
            ("delete-vm", "info")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let messages: Vec<&str> = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        vec![
            format!("Created exe.dev VM {name}."),
            format!("SSH to {dest} is ready."),
            "Home /home/exedev, shell bash, workspace /home/exedev/paperclip-workspace."
                .to_string(),
            format!("Deleted exe.dev VM {name}."),
        ]
    );
    for d in v["diagnostics"].as_array().unwrap() {
        assert!(d["details"]["durationMs"].is_u64(), "{d}");
    }
    assert_eq!(v["diagnostics"][1]["details"]["attempts"], json!(1));
    assert_eq!(
        v["metadata"],
        json!({
            "provider": "exe-dev",
            "vmName": name,
            "sshDest": dest,
            "timeoutMs": 60000,
            "reuseLease": false,
            "remoteCwd": CWD,
            "shellCommand": "bash"
        })
    );
    assert_no_secret(&v);
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_deletes_the_vm_even_when_ssh_fails() {
    let h = Harness::new();
    h.reply_with(echo_new)
        .ssh_out(
            Some(255),
            b"",
            b"exedev@x.exe.xyz: Permission denied (publickey).\r\n",
        )
        .reply(200, "{}");
    let v = h
        .call("environmentProbe", params(config(), json!({})))
        .await
        .unwrap();
    let name = probe_name(&h);
    assert_eq!(
        h.bodies(),
        vec![default_new_body(&name), format!("rm --json '{name}'")]
    );
    assert_eq!(h.commands(), vec![PREPARE_DEFAULT.to_string()]);
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["summary"], json!("exe.dev environment probe failed."));
    assert_eq!(
        codes_and_severities(&v),
        [
            ("create-vm", "info"),
            ("ssh-ready", "error"),
            ("delete-vm", "info")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let failure = format!(
        "Failed to inspect exe.dev VM {name}: exedev@x.exe.xyz: Permission denied (publickey)."
    );
    assert_eq!(v["diagnostics"][1]["message"], json!(failure));
    assert_eq!(v["metadata"]["error"], json!(failure));
    assert_eq!(v["metadata"]["provider"], json!("exe-dev"));
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_deletes_the_vm_when_the_ssh_capability_fails() {
    let h = Harness::new();
    h.reply_with(echo_new)
        .ssh(Err(SshError::Spawn("no ssh binary".to_string())))
        .reply(422, r#"{"error":"vm not found"}"#);
    let v = h
        .call("environmentProbe", params(config(), json!({})))
        .await
        .unwrap();
    let name = probe_name(&h);
    assert_eq!(
        h.bodies(),
        vec![default_new_body(&name), format!("rm --json '{name}'")]
    );
    assert_eq!(
        codes_and_severities(&v),
        [
            ("create-vm", "info"),
            ("ssh-ready", "error"),
            ("delete-vm", "info")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(
        v["diagnostics"][1]["message"],
        json!(format!(
            "Failed to prepare exe.dev VM {name}: the SSH client failed: no ssh binary"
        ))
    );
    assert_eq!(
        v["diagnostics"][2]["message"],
        json!(format!("exe.dev VM {name} was already gone."))
    );
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_with_a_failed_create_still_tries_to_delete() {
    let h = Harness::new();
    // A refused create (422): one look-up. (After a 5xx the name is watched for the cleanup
    // budget instead; the guest's unit tests cover that.)
    h.reply(422, r#"{"error":"boom"}"#)
        .reply(200, r#"{"vms":[]}"#)
        .reply(422, r#"{"error":"vm not found"}"#);
    let v = h
        .call("environmentProbe", params(config(), json!({})))
        .await
        .unwrap();
    let bodies = h.bodies();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    let name = probe_name(&h);
    assert_eq!(
        bodies,
        vec![
            default_new_body(&name),
            format!("ls --json '{name}'"),
            format!("rm --json '{name}'")
        ]
    );
    assert_eq!(
        codes_and_severities(&v),
        [("create-vm", "error"), ("delete-vm", "info")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(h.ssh_calls().is_empty());
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_without_an_api_key_reports_it_and_calls_nothing() {
    let h = Harness::new();
    let v = h
        .call(
            "environmentProbe",
            params(json!({"sshPrivateKey": KEY}), json!({})),
        )
        .await
        .unwrap();
    assert_eq!(v["ok"], json!(false));
    assert_eq!(
        codes_and_severities(&v),
        vec![("create-vm".to_string(), "error".to_string())]
    );
    let message = v["diagnostics"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Could not create exe.dev VM paperclip-probe-")
            && message.ends_with(": invalid config: exe.dev environments require an API key in config or EXE_API_KEY."),
        "{message}"
    );
    assert!(h.requests().is_empty());
    assert!(h.ssh_calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Host policy

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_http_request_is_a_denied_error() {
    let h = Harness::new();
    h.deny();
    let err = h
        .call(
            "environmentDestroyLease",
            params(
                config(),
                json!({"providerLeaseId": VM, "leaseMetadata": lease_meta()}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, -32002);
    assert_eq!(
        err.message,
        "HTTP requests to exe.example (the exe.dev API at https://exe.example/exec) are not allowed by the host; grant that authority to the plugin"
    );
    assert_eq!(err.data, Some(json!({"kind": "denied"})));
    // Denied is final: no retry of the idempotent rm.
    let requests = h.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].uri, API_URL);
    assert!(h.disconnects().is_empty());
    h.assert_script_consumed();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_ssh_target_is_a_denied_error_and_the_vm_is_deleted() {
    let h = Harness::new();
    h.reply(200, NEW_OK)
        .ssh(Err(SshError::Denied(HOST.to_string())))
        .reply(200, "{}");
    let err = h
        .call(
            "environmentAcquireLease",
            params(config(), json!({"runId": "run-1"})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "SSH to paperclip-env1-run1.exe.xyz is not allowed by the host (prepare exe.dev VM paperclip-env1-run1); grant that host to the plugin"
    );
    assert_eq!(err.data, Some(json!({"kind": "denied"})));
    assert_eq!(
        h.bodies(),
        vec![
            default_new_body(VM),
            "rm --json 'paperclip-env1-run1'".to_string()
        ]
    );
    h.assert_script_consumed();
}
