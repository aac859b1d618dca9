use super::*;
use crate::testing::FakeHost;
use serde_json::json;

fn config(v: serde_json::Value) -> Config {
    Config::from_json(&v.to_string()).unwrap()
}

#[test]
fn new_command_exact_and_redacted() {
    let c = config(json!({
        "apiKey": "tok", "image": "img", "command": "auto", "cpu": 4, "memory": "8GB",
        "disk": "40GB", "comment": "it's", "env": {"A": "s3cret", "B": "x y"},
        "integrations": ["gh"], "tags": "t1,t2", "setupScript": "echo hi", "prompt": "do it"
    }));
    let cmd = create_command(&c, "paperclip-env1-run1");
    assert_eq!(cmd.verb, "new");
    assert_eq!(
        cmd.body(),
        "new --json --no-email --name='paperclip-env1-run1' --image='img' --command='auto' --cpu='4' --memory='8GB' --disk='40GB' --comment='it'\"'\"'s' --env='A=s3cret' --env='B=x y' --integration='gh' --tag='t1' --tag='t2' --setup-script='echo hi' --prompt='do it'"
    );
    assert_eq!(
        cmd.redacted,
        "new --json --no-email --name='paperclip-env1-run1' --image='img' --command='auto' --cpu='4' --memory='8GB' --disk='40GB' --comment='it'\"'\"'s' --env='A=[REDACTED]' --env='B=[REDACTED]' --integration='gh' --tag='t1' --tag='t2' --setup-script='[REDACTED]' --prompt='[REDACTED]'"
    );
    assert!(!cmd.idempotent());
    assert!(!format!("{cmd:?}").contains("s3cret"));
}

#[test]
fn default_setup_script_is_visible_and_installs_node_24_11() {
    let c = config(json!({"apiKey": "tok"}));
    let cmd = create_command(&c, "paperclip-env1-run1");
    let script = default_setup_script();
    assert_eq!(
        cmd.body(),
        format!(
            "new --json --no-email --name='paperclip-env1-run1' --setup-script={}",
            shell_quote(&script)
        )
    );
    assert_eq!(cmd.body(), cmd.redacted);
    assert!(
        script.contains("v[0]>24||(v[0]===24&&v[1]>=11)"),
        "{script}"
    );
    assert!(script.contains(
        "curl -fsSL https://deb.nodesource.com/setup_24.x | sudo -E bash - && sudo apt-get install -y nodejs"
    ));
    assert!(script.contains("command -v node"));
}

#[test]
fn cp_command_exact() {
    let c = config(json!({
        "apiKey": "tok", "sourceVm": "golden", "cpu": 4, "memory": "8GB", "disk": "40GB",
        "image": "ignored", "setupScript": "ignored"
    }));
    let cmd = create_command(&c, "paperclip-env1-run1");
    assert_eq!(cmd.verb, "cp");
    assert_eq!(
        cmd.body(),
        "cp 'golden' 'paperclip-env1-run1' --json --cpu='4' --memory='8GB' --disk='40GB'"
    );
}

#[test]
fn ls_and_rm_commands() {
    assert_eq!(
        ls_command("paperclip-env-run").body(),
        "ls --json 'paperclip-env-run'"
    );
    assert_eq!(
        rm_command("paperclip-env-run").body(),
        "rm --json 'paperclip-env-run'"
    );
    assert!(ls_command("x").idempotent() && rm_command("x").idempotent());
}

#[test]
fn request_shape_and_timeout_cap() {
    let host = FakeHost::new();
    host.http(200, "{\"vms\":[]}\n");
    let c = config(json!({"apiKey": "tok", "apiUrl": "https://exe.dev"}));
    let api = Api::new(&host, &c).unwrap();
    let deadline = Deadline::after(&host, 300_000);
    assert_eq!(
        api.run(&ls_command("vm"), deadline).unwrap(),
        json!({"vms": []})
    );
    let calls = host.http_calls.borrow();
    assert_eq!(calls[0].url, "https://exe.dev/exec");
    assert_eq!(
        calls[0].headers,
        vec![
            ("Authorization".to_string(), "Bearer tok".to_string()),
            (
                "Content-Type".to_string(),
                "text/plain; charset=utf-8".to_string()
            )
        ]
    );
    assert_eq!(calls[0].timeout_ms, 29_000);
    drop(calls);

    let host = FakeHost::new();
    host.http(200, "");
    let c = config(json!({"apiKey": "tok", "timeoutMs": 5000}));
    let api = Api::new(&host, &c).unwrap();
    assert_eq!(
        api.run(&ls_command("vm"), Deadline::after(&host, 5000))
            .unwrap(),
        Value::Null
    );
    assert_eq!(host.http_calls.borrow()[0].timeout_ms, 5000);
}

#[test]
fn ok_body_parsing() {
    assert_eq!(parse_ok_body(b"  \n"), Value::Null);
    assert_eq!(parse_ok_body(b"{\"a\":1}\n"), json!({"a": 1}));
    assert_eq!(parse_ok_body(b"plain text\n"), json!("plain text"));
}

fn api_error(status: u16, body: &str, cmd: &CommandLine) -> ApiError {
    let host = FakeHost::new();
    host.http(status, body);
    let c = config(json!({"apiKey": "tok", "env": {"SECRET": "hunter22"}}));
    let api = Api::new(&host, &c).unwrap();
    match api.run_once(cmd, Deadline::after(&host, 300_000)) {
        Err(ProviderError::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn error_mapping_and_hints() {
    let e = api_error(401, "{\"error\":\"token expired\"}", &ls_command("vm"));
    assert_eq!(e.status, 401);
    assert_eq!(e.command, "ls --json 'vm'");
    assert_eq!(e.message, "token expired");
    assert!(e
        .hint
        .unwrap()
        .starts_with("the API token is invalid or expired"));

    let e = api_error(
        403,
        "{\"error\":\"command not allowed by token permissions\"}",
        &rm_command("vm"),
    );
    assert_eq!(e.message, "command not allowed by token permissions");
    assert!(e
        .hint
        .unwrap()
        .starts_with("the token's cmds do not include `rm`"));

    let e = api_error(
        422,
        "{\"error\":\"flag parsing error: bad value hunter22\"}",
        &rm_command("vm"),
    );
    assert_eq!(e.message, "flag parsing error: bad value [REDACTED]");
    assert_eq!(
        e.hint.as_deref(),
        Some("the `rm` command itself failed on exe.dev; its own error is shown")
    );

    let e = api_error(500, "upstream boom", &rm_command("vm"));
    assert_eq!(e.message, "upstream boom");
    assert_eq!(
        ProviderError::Api(e).to_string(),
        "exe.dev API command `rm --json 'vm'` failed (500): upstream boom (exe.dev had a server-side problem; retry later)"
    );
}

#[test]
fn idempotent_commands_retry_with_backoff() {
    let host = FakeHost::new();
    host.http(429, "{\"error\":\"rate limit exceeded\"}")
        .http(503, "")
        .http(504, "{\"error\":\"command timed out\"}")
        .http(200, "{}");
    let c = config(json!({"apiKey": "tok"}));
    let api = Api::new(&host, &c).unwrap();
    api.run(&rm_command("vm"), Deadline::after(&host, 300_000))
        .unwrap();
    assert_eq!(host.bodies().len(), 4);
    let sleeps = host.sleeps.borrow().clone();
    assert_eq!(sleeps.len(), 3);
    // Base 500, 1000, 2000 plus jitter of at most a quarter.
    for (s, base) in sleeps.iter().zip([500u64, 1000, 2000]) {
        assert!(*s >= base && *s <= base + base / 4, "{sleeps:?}");
    }
}

#[test]
fn non_retryable_status_and_commands() {
    let host = FakeHost::new();
    host.http(500, "boom");
    let api = Api::new(&host, &config(json!({"apiKey": "tok"}))).unwrap();
    assert!(api
        .run(&ls_command("vm"), Deadline::after(&host, 300_000))
        .is_err());
    assert_eq!(host.bodies().len(), 1);

    let host = FakeHost::new();
    host.http(503, "busy");
    let c = config(json!({"apiKey": "tok"}));
    let api = Api::new(&host, &c).unwrap();
    assert!(api
        .run(
            &create_command(&c, "vm-abc"),
            Deadline::after(&host, 300_000)
        )
        .is_err());
    assert_eq!(host.bodies().len(), 1, "new is never retried");
}

#[test]
fn retries_stop_at_the_deadline() {
    let host = FakeHost::new();
    host.http(503, "").http(503, "");
    let api = Api::new(&host, &config(json!({"apiKey": "tok"}))).unwrap();
    let e = api
        .run(&ls_command("vm"), Deadline::after(&host, 2_000))
        .unwrap_err();
    assert!(matches!(
        e,
        ProviderError::Api(ApiError { status: 503, .. })
    ));
    assert_eq!(host.bodies().len(), 2);
    assert_eq!(host.sleeps.borrow().len(), 1);
}

#[test]
fn transport_errors() {
    let host = FakeHost::new();
    host.http_err(HttpError::Denied("exe.dev:443".into()));
    let api = Api::new(&host, &config(json!({"apiKey": "tok"}))).unwrap();
    let e = api
        .run(&ls_command("vm"), Deadline::after(&host, 300_000))
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Denied(m) if m.contains("exe.dev:443")),
        "{e:?}"
    );

    let host = FakeHost::new();
    host.http_err(HttpError::Timeout);
    let api = Api::new(&host, &config(json!({"apiKey": "tok"}))).unwrap();
    let c = config(json!({"apiKey": "tok"}));
    let e = api
        .run(
            &create_command(&c, "vm-abc"),
            Deadline::after(&host, 300_000),
        )
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Api(ApiError { status: 0, .. })),
        "{e:?}"
    );
}

#[test]
fn missing_api_key() {
    let host = FakeHost::new();
    let e = Api::new(&host, &config(json!({}))).err().unwrap();
    assert_eq!(
        e,
        ProviderError::InvalidConfig(crate::config::MISSING_API_KEY.into())
    );
}

#[test]
fn token_and_secrets_never_logged() {
    let host = FakeHost::new();
    host.http(422, "{\"error\":\"bad prompt: do the secret thing\"}");
    let c = config(
        json!({"apiKey": "tok-XYZ-123", "prompt": "do the secret thing", "env": {"K": "v4lue"}}),
    );
    let api = Api::new(&host, &c).unwrap();
    let e = api
        .run(
            &create_command(&c, "vm-abc"),
            Deadline::after(&host, 300_000),
        )
        .unwrap_err();
    let text = format!("{e} {e:?} {}", host.log_text());
    for secret in ["tok-XYZ-123", "do the secret thing", "v4lue"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(host.bodies()[0].contains("v4lue"));
}

#[cfg(target_os = "linux")]
#[test]
fn default_setup_script_is_valid_sh() {
    let out = std::process::Command::new("/bin/sh")
        .arg("-n")
        .arg("-c")
        .arg(default_setup_script())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
