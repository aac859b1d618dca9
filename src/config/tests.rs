use super::*;
use crate::testing::FakeHost;
use crate::validate::{validate, Validation};
use proptest::prelude::*;
use serde_json::json;

fn validate_json(v: Value) -> Validation {
    validate(&v.to_string(), &FakeHost::new())
}

fn errors_of(v: Value) -> Vec<String> {
    validate_json(v).errors
}

#[test]
fn defaults_are_normalised_with_every_field() {
    let v = validate_json(json!({"apiKey": "tok"}));
    assert!(v.ok);
    assert_eq!(v.errors, Vec::<String>::new());
    assert_eq!(v.warnings, vec![SSH_ACCESS_WARNING.to_string()]);
    assert_eq!(
        v.normalized_config.unwrap(),
        r#"{"apiKey":"tok","apiUrl":"https://exe.dev/exec","namePrefix":"paperclip","timeoutMs":300000,"reuseLease":false,"sshPort":22,"strictHostKeyChecking":"accept-new"}"#
    );
}

#[test]
fn every_field_is_normalised() {
    let v = validate_json(json!({
        "apiKey": " tok\n",
        "apiUrl": "https://exe.example/api/",
        "namePrefix": "My Team!!",
        "image": " ubuntu:24.04 ",
        "command": "auto",
        "cpu": 4.7,
        "memory": "8GB",
        "disk": 40,
        "comment": "hello",
        "env": {"A": "1", "B_2": "two"},
        "integrations": "github, slack,,",
        "tags": ["x", " y ", ""],
        "setupScript": "  ",
        "prompt": "do it",
        "timeoutMs": "60000",
        "reuseLease": "true",
        "sshUser": "exedev",
        "sshPrivateKey": "0a1b2c3d-0000-4000-8000-123456789abc",
        "sshIdentityFile": "/keys/id",
        "sshPort": 2222,
        "strictHostKeyChecking": "off",
        "custom": {"kept": true}
    }));
    assert_eq!(v.errors, Vec::<String>::new());
    let n: Value = serde_json::from_str(&v.normalized_config.unwrap()).unwrap();
    assert_eq!(
        n,
        json!({
            "apiKey": " tok\n",
            "apiUrl": "https://exe.example/api/exec",
            "namePrefix": "my-team",
            "image": "ubuntu:24.04",
            "command": "auto",
            "cpu": 4,
            "memory": "8GB",
            "disk": "40",
            "comment": "hello",
            "env": {"A": "1", "B_2": "two"},
            "integrations": ["github", "slack"],
            "tags": ["x", "y"],
            "prompt": "do it",
            "timeoutMs": 60000,
            "reuseLease": false,
            "sshUser": "exedev",
            "sshPrivateKey": "0a1b2c3d-0000-4000-8000-123456789abc",
            "sshIdentityFile": "/keys/id",
            "sshPort": 2222,
            "strictHostKeyChecking": "no",
            "custom": {"kept": true}
        })
    );
}

#[test]
fn seed_error_texts() {
    let base = |k: &str, v: Value| {
        let mut o = json!({"apiKey": "tok"});
        o[k] = v;
        errors_of(o)
    };
    assert_eq!(
        base("apiUrl", json!("not a url")),
        vec!["apiUrl must be a valid URL."]
    );
    assert_eq!(
        base("apiUrl", json!("ftp://exe.dev")),
        vec!["apiUrl must be a valid URL."]
    );
    for bad in [
        json!(0),
        json!(86_400_001u64),
        json!("abc"),
        json!(-5),
        json!(true),
    ] {
        assert_eq!(
            base("timeoutMs", bad),
            vec!["timeoutMs must be between 1 and 86400000."]
        );
    }
    assert_eq!(
        base("cpu", json!(0)),
        vec!["cpu must be greater than 0 when provided."]
    );
    assert_eq!(
        base("cpu", json!(0.5)),
        vec!["cpu must be greater than 0 when provided."]
    );
    assert_eq!(
        base("sshPort", json!(70000)),
        vec!["sshPort must be between 1 and 65535."]
    );
    assert_eq!(
        base("sshPort", json!(0)),
        vec!["sshPort must be between 1 and 65535."]
    );
    assert_eq!(
        base("env", json!({"1BAD": "x", "OK": "y"})),
        vec!["env contains an invalid key: 1BAD"]
    );
    assert_eq!(
        base("strictHostKeyChecking", json!("")),
        vec!["strictHostKeyChecking cannot be empty."]
    );
    assert_eq!(
        base("strictHostKeyChecking", json!("maybe")),
        vec!["strictHostKeyChecking must be one of yes, accept-new or no."]
    );
    assert_eq!(errors_of(json!({})), vec![MISSING_API_KEY]);
    assert_eq!(errors_of(json!({"apiKey": "   "})), vec![MISSING_API_KEY]);
}

#[test]
fn host_key_policies() {
    for (given, want) in [
        ("yes", HostKeyPolicy::Yes),
        ("accept-new", HostKeyPolicy::AcceptNew),
        ("no", HostKeyPolicy::No),
        ("off", HostKeyPolicy::No),
        ("YES", HostKeyPolicy::Yes),
    ] {
        let c = Config::from_json(&json!({"strictHostKeyChecking": given}).to_string()).unwrap();
        assert_eq!(c.strict_host_key_checking, want, "{given}");
    }
}

#[test]
fn api_key_from_environment() {
    let mut host = FakeHost::new();
    host.env.insert(API_KEY_ENV.into(), "envtok".into());
    let v = validate("{}", &host);
    assert!(v.ok, "{:?}", v.errors);
    let c = Config::from_json("{}").unwrap();
    assert_eq!(c.resolve_api_key(&host).as_deref(), Some("envtok"));
    let c = Config::from_json(r#"{"apiKey":" cfg "}"#).unwrap();
    assert_eq!(c.resolve_api_key(&host).as_deref(), Some("cfg"));
}

#[test]
fn never_traps_on_odd_json() {
    for text in ["", "null", "42", "[]", "\"x\"", "{", "{\"a\":}", "true"] {
        let v = validate(text, &FakeHost::new());
        assert!(!v.ok, "{text}");
        assert_eq!(v.errors, vec!["config must be a JSON object."], "{text}");
        assert_eq!(v.normalized_config, None);
    }
    let v = validate_json(json!({
        "apiKey": 5, "apiUrl": [], "namePrefix": {}, "cpu": "x", "env": [1], "tags": 3,
        "integrations": [1], "reuseLease": "yes", "sshPort": {}, "strictHostKeyChecking": 1,
        "sshPrivateKey": false, "memory": [], "timeoutMs": null
    }));
    assert!(!v.ok);
    assert_eq!(
        v.errors,
        vec![
            "apiKey must be a string.",
            "apiUrl must be a string.",
            "namePrefix must be a string.",
            "cpu must be greater than 0 when provided.",
            "memory must be a string.",
            "env must be an object of string values.",
            "integrations must be an array of strings or a comma-separated string.",
            "tags must be an array of strings or a comma-separated string.",
            "sshPrivateKey must be a string.",
            "sshPort must be between 1 and 65535.",
            "strictHostKeyChecking must be one of yes, accept-new or no.",
            MISSING_API_KEY,
        ]
    );
}

#[test]
fn secret_refs_and_pem_checks() {
    let uuid = "4D34FA65-1234-4abc-8def-0123456789AB";
    assert!(is_secret_ref(uuid));
    assert!(!is_secret_ref("4d34fa65-1234-4abc-8def-0123456789a"));
    let v = validate_json(json!({"apiKey": uuid, "sshPrivateKey": uuid}));
    assert!(v.ok, "{:?}", v.errors);
    let n: Value = serde_json::from_str(&v.normalized_config.unwrap()).unwrap();
    assert_eq!(n["apiKey"], json!(uuid));
    assert_eq!(n["sshPrivateKey"], json!(uuid));

    let errs = errors_of(json!({"apiKey": "t", "sshPrivateKey": "ssh-ed25519 AAAA me@host"}));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("public key"), "{errs:?}");
    assert!(!errs[0].contains("AAAA"));
}

#[test]
fn name_prefix_rules() {
    assert_eq!(normalize_name_prefix("My Prefix!!"), "my-prefix");
    assert_eq!(normalize_name_prefix("--a__b--"), "a-b");
    assert_eq!(normalize_name_prefix("!!!"), "paperclip");
    assert_eq!(normalize_name_prefix(&"x".repeat(40)), "x".repeat(24));
    assert_eq!(
        normalize_name_prefix("abcdefghijklmnopqrstuvw-z"),
        "abcdefghijklmnopqrstuvw"
    );
    let errs = errors_of(json!({"apiKey": "t", "namePrefix": "123abc"}));
    assert_eq!(
        errs,
        vec!["namePrefix must start with a letter: exe.dev VM names begin with a-z, and \"123abc\" does not."]
    );
}

#[test]
fn warnings() {
    let v = validate_json(json!({"apiKey": "t", "reuseLease": true}));
    assert_eq!(v.warnings, vec![SSH_ACCESS_WARNING, REUSE_LEASE_WARNING]);
    let v = validate_json(
        json!({"apiKey": "t", "sourceVm": "golden", "image": "x", "tags": "a", "cpu": 2}),
    );
    assert_eq!(
        v.warnings,
        vec![
            SSH_ACCESS_WARNING.to_string(),
            "sourceVm copies an existing VM with `exe.dev cp`, which does not accept image, tags; these settings are ignored.".to_string()
        ]
    );
}

#[test]
fn create_body_limit() {
    let v = validate_json(json!({"apiKey": "t", "setupScript": "x".repeat(70_000)}));
    assert!(!v.ok);
    assert_eq!(v.errors.len(), 1);
    assert!(
        v.errors[0].starts_with("The exe.dev create command would be 70"),
        "{}",
        v.errors[0]
    );
    assert!(v.errors[0].contains("64 KB"));
    assert!(validate_json(json!({"apiKey": "t", "setupScript": "x".repeat(60_000)})).ok);
}

#[test]
fn runtime_parse_reports_first_error() {
    assert_eq!(
        Config::from_json(r#"{"timeoutMs": 0}"#),
        Err(ProviderError::InvalidConfig(
            "timeoutMs must be between 1 and 86400000.".into()
        ))
    );
    // A missing API key is not a parse error at runtime (execute needs no token).
    assert!(Config::from_json("{}").is_ok());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("apiKey".to_string()),
                        Just("env".to_string()),
                        Just("tags".to_string()),
                        Just("cpu".to_string()),
                        Just("timeoutMs".to_string()),
                        Just("sshPrivateKey".to_string()),
                        Just("namePrefix".to_string()),
                        Just("apiUrl".to_string()),
                        ".{0,8}"
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn validate_never_panics(v in arb_json()) {
        let r = validate(&v.to_string(), &FakeHost::new());
        prop_assert_eq!(r.ok, r.errors.is_empty());
        prop_assert_eq!(r.ok, r.normalized_config.is_some());
    }

    #[test]
    fn validate_never_panics_on_text(s in ".{0,200}") {
        let _ = validate(&s, &FakeHost::new());
    }
}

#[test]
fn effective_timeout_is_the_normalised_field_or_the_default() {
    for (v, ms) in [
        (json!({"timeoutMs": 600000}), 600_000),
        (json!({"timeoutMs": "600000"}), 600_000),
        (json!({"timeoutMs": " 1500.9 "}), 1_500),
        (json!({"timeoutMs": 1.5}), 1),
        (json!({"timeoutMs": ""}), DEFAULT_TIMEOUT_MS),
        (json!({"timeoutMs": null}), DEFAULT_TIMEOUT_MS),
        (json!({"timeoutMs": 0}), DEFAULT_TIMEOUT_MS),
        (json!({"timeoutMs": "abc"}), DEFAULT_TIMEOUT_MS),
        (json!({"timeoutMs": 86_400_001}), DEFAULT_TIMEOUT_MS),
        (json!({"timeoutMs": [1]}), DEFAULT_TIMEOUT_MS),
        (json!({}), DEFAULT_TIMEOUT_MS),
        (json!("x"), DEFAULT_TIMEOUT_MS),
    ] {
        assert_eq!(effective_timeout_ms(&v), ms, "{v}");
    }
    assert_eq!(execute_timeout_ms(Some(5), 9), 5);
    assert_eq!(execute_timeout_ms(None, 9), 9);
    assert_eq!(execute_timeout_ms(Some(0), 9), 1);
    assert_eq!(execute_timeout_ms(Some(u64::MAX), 9), u32::MAX);
}

proptest! {
    /// The deadline the host computes from a config is the one the provider works to.
    #[test]
    fn effective_timeout_agrees_with_the_parsed_config(v in arb_json()) {
        let parsed = parse_value(&v, false);
        prop_assert_eq!(effective_timeout_ms(&v), parsed.config.timeout_ms);
    }
}

/// Each config error prints exactly the text validation reported before the errors were typed
/// (the seed plugin's where it had one): operators and Paperclip's form show these.
#[test]
fn every_config_error_keeps_its_text() {
    let cases = [
        (ConfigError::NotAnObject, "config must be a JSON object."),
        (ConfigError::NotAString("sshUser"), "sshUser must be a string."),
        (
            ConfigError::NotAStringList("tags"),
            "tags must be an array of strings or a comma-separated string.",
        ),
        (ConfigError::ApiUrl, "apiUrl must be a valid URL."),
        (
            ConfigError::NamePrefixStart("9lives".into()),
            "namePrefix must start with a letter: exe.dev VM names begin with a-z, and \"9lives\" does not.",
        ),
        (ConfigError::Cpu, "cpu must be greater than 0 when provided."),
        (
            ConfigError::EnvValue("FOO".into()),
            "env value for FOO must be a string.",
        ),
        (
            ConfigError::EnvKey("1BAD".into()),
            "env contains an invalid key: 1BAD",
        ),
        (
            ConfigError::EnvNotAnObject,
            "env must be an object of string values.",
        ),
        (
            ConfigError::Timeout,
            "timeoutMs must be between 1 and 86400000.",
        ),
        (
            ConfigError::PrivateKey(crate::pem::ENCRYPTED_KEY.into()),
            crate::pem::ENCRYPTED_KEY,
        ),
        (
            ConfigError::IdentityFileRelative,
            "sshIdentityFile must be an absolute path on the Paperclip host.",
        ),
        (ConfigError::SshPort, "sshPort must be between 1 and 65535."),
        (
            ConfigError::HostKeyPolicyEmpty,
            "strictHostKeyChecking cannot be empty.",
        ),
        (
            ConfigError::HostKeyPolicy,
            "strictHostKeyChecking must be one of yes, accept-new or no.",
        ),
        (
            ConfigError::MissingApiKey,
            "exe.dev environments require an API key in config or EXE_API_KEY.",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text, "{error:?}");
    }
}

/// Parsing reports typed errors, in field order; `from_json` hands the first one's text on.
#[test]
fn parsing_reports_typed_errors() {
    let parsed = parse_value(
        &json!({"cpu": 0, "env": {"1BAD": "x"}, "sshPort": 0, "tags": 3}),
        false,
    );
    assert_eq!(
        parsed.errors,
        [
            ConfigError::Cpu,
            ConfigError::EnvKey("1BAD".into()),
            ConfigError::NotAStringList("tags"),
            ConfigError::SshPort,
        ]
    );
    assert_eq!(
        Config::from_json(r#"{"timeoutMs": 0}"#),
        Err(ProviderError::InvalidConfig(
            "timeoutMs must be between 1 and 86400000.".into()
        ))
    );
}
