//! The driver config: parse, normalise and check every field. `validate-config` as a whole
//! (which also checks the create command against the API's limit) is [`crate::validate`].
//!
//! Field names, defaults and error/warning texts follow the seed plugin (v0.1.2), as the team's
//! notes record them (`shared/reference/exe-dev.md` §3, beside this repository). Parsing never
//! panics, whatever JSON arrives.

use crate::error::ProviderError;
use crate::host::{Host, HostKeyPolicy};
use serde_json::{Map, Value};

/// Default `/exec` endpoint.
pub const DEFAULT_API_URL: &str = "https://exe.dev/exec";
/// Default VM name prefix.
pub const DEFAULT_NAME_PREFIX: &str = "paperclip";
/// Default deadline for API calls, SSH readiness and execute.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// Largest accepted `timeoutMs` (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Longest normalised `namePrefix`.
pub const MAX_NAME_PREFIX_LEN: usize = 24;
/// Environment variable that supplies the API token when the config has none.
pub const API_KEY_ENV: &str = "EXE_API_KEY";

/// The warning every validation carries.
pub const SSH_ACCESS_WARNING: &str = "The Paperclip host must have SSH access to the created exe.dev VM, and its SSH key must be registered with exe.dev. The API token only covers provisioning.";
/// The warning for `reuseLease: true`.
pub const REUSE_LEASE_WARNING: &str =
    "reuseLease keeps the VM alive between runs; this provider does not suspend retained VMs.";
/// Error when neither config nor environment supplies a token.
pub const MISSING_API_KEY: &str =
    "exe.dev environments require an API key in config or EXE_API_KEY.";

/// A problem with a field of the driver config. The texts are what operators (and Paperclip's
/// environment form) see, the seed plugin's where it had one; they do not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The config is not a JSON object (or not JSON at all).
    #[error("config must be a JSON object.")]
    NotAnObject,
    /// A field that takes a string holds something else.
    #[error("{0} must be a string.")]
    NotAString(&'static str),
    /// A list field is neither an array of strings nor a comma-separated string.
    #[error("{0} must be an array of strings or a comma-separated string.")]
    NotAStringList(&'static str),
    /// `apiUrl` is not an http(s) URL.
    #[error("apiUrl must be a valid URL.")]
    ApiUrl,
    /// The normalised `namePrefix` (given) cannot begin an exe.dev VM name.
    #[error(
        "namePrefix must start with a letter: exe.dev VM names begin with a-z, and \"{0}\" does not."
    )]
    NamePrefixStart(String),
    /// `cpu` is not a positive number.
    #[error("cpu must be greater than 0 when provided.")]
    Cpu,
    /// The `env` entry of this key has a value that is not a string, number or boolean.
    #[error("env value for {0} must be a string.")]
    EnvValue(String),
    /// This `env` key is not `^[A-Za-z_][A-Za-z0-9_]*$`.
    #[error("env contains an invalid key: {0}")]
    EnvKey(String),
    /// `env` is not an object.
    #[error("env must be an object of string values.")]
    EnvNotAnObject,
    /// `timeoutMs` is not a number from 1 to [`MAX_TIMEOUT_MS`].
    #[error("timeoutMs must be between 1 and 86400000.")]
    Timeout,
    /// The pasted `sshPrivateKey` is unusable; the text says why (see [`crate::pem`]).
    #[error("{0}")]
    PrivateKey(String),
    /// `sshIdentityFile` is a relative path.
    #[error("sshIdentityFile must be an absolute path on the Paperclip host.")]
    IdentityFileRelative,
    /// `sshPort` is not a number from 1 to 65535.
    #[error("sshPort must be between 1 and 65535.")]
    SshPort,
    /// `strictHostKeyChecking` is blank.
    #[error("strictHostKeyChecking cannot be empty.")]
    HostKeyPolicyEmpty,
    /// `strictHostKeyChecking` is none of the known policies.
    #[error("strictHostKeyChecking must be one of yes, accept-new or no.")]
    HostKeyPolicy,
    /// Neither the config nor the environment supplies a token.
    #[error("{}", MISSING_API_KEY)]
    MissingApiKey,
}

/// A parsed, normalised driver config.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `apiKey` exactly as given (a secret).
    pub api_key: Option<String>,
    /// `/exec` URL.
    pub api_url: String,
    /// Normalised name prefix.
    pub name_prefix: String,
    /// Copy this VM with `cp` instead of `new`.
    pub source_vm: Option<String>,
    /// `--image`.
    pub image: Option<String>,
    /// `--command`.
    pub command: Option<String>,
    /// `--cpu`.
    pub cpu: Option<u64>,
    /// `--memory`.
    pub memory: Option<String>,
    /// `--disk`.
    pub disk: Option<String>,
    /// `--comment`.
    pub comment: Option<String>,
    /// `--env` pairs, in config order (values are secrets for logging purposes).
    pub env: Vec<(String, String)>,
    /// `--integration` values.
    pub integrations: Vec<String>,
    /// `--tag` values.
    pub tags: Vec<String>,
    /// Custom setup script; none means the default Node installer.
    pub setup_script: Option<String>,
    /// `--prompt` (redacted in logs).
    pub prompt: Option<String>,
    /// Deadline in ms.
    pub timeout_ms: u64,
    /// Keep the VM on release.
    pub reuse_lease: bool,
    /// SSH login user when the API names none.
    pub ssh_user: Option<String>,
    /// Pasted private key (a secret).
    pub ssh_private_key: Option<String>,
    /// Key file path on the host.
    pub ssh_identity_file: Option<String>,
    /// SSH port.
    pub ssh_port: u16,
    /// Host-key policy.
    pub strict_host_key_checking: HostKeyPolicy,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("api_url", &self.api_url)
            .field("name_prefix", &self.name_prefix)
            .field("source_vm", &self.source_vm)
            .field("timeout_ms", &self.timeout_ms)
            .field("reuse_lease", &self.reuse_lease)
            .field("ssh_user", &self.ssh_user)
            .field(
                "ssh_private_key",
                &self.ssh_private_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("ssh_identity_file", &self.ssh_identity_file)
            .field("ssh_port", &self.ssh_port)
            .field("strict_host_key_checking", &self.strict_host_key_checking)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parse a runtime config (JSON object text). The first validation error becomes an
    /// `invalid-config` error; a missing API key is only reported when an API call needs one.
    ///
    /// The pasted-key format checks run only in `validate-config`: at runtime the key has been
    /// resolved from a secret and SSH itself is the judge (a failure then gets an operator hint).
    pub fn from_json(text: &str) -> Result<Config, ProviderError> {
        let parsed = parse_text(text, false);
        match parsed.errors.into_iter().next() {
            Some(e) => Err(ProviderError::InvalidConfig(e.to_string())),
            None => Ok(parsed.config),
        }
    }

    /// The token to send: `apiKey` from config, else `EXE_API_KEY`. Whitespace is trimmed.
    pub fn resolve_api_key(&self, host: &dyn Host) -> Option<String> {
        let from_config = self
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        from_config.or_else(|| {
            host.env_var(API_KEY_ENV)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    }
}

/// The outcome of parsing: a config with defaults for every invalid field, plus the problems.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The config (usable only when `errors` is empty).
    pub config: Config,
    /// Fatal problems, in field order.
    pub errors: Vec<ConfigError>,
    /// Non-fatal remarks.
    pub warnings: Vec<String>,
    /// The input object (for passing unknown keys through).
    pub raw: Map<String, Value>,
}

/// `^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$` (case-insensitive): a
/// Paperclip secret reference.
pub fn is_secret_ref(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() != 36 {
        return false;
    }
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    })
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`.
pub fn is_valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The seed's prefix normalisation: lowercase, runs outside `[a-z0-9-]` become `-`, dashes
/// collapsed and trimmed, cut to 24 characters; empty gives `paperclip`.
pub fn normalize_name_prefix(raw: &str) -> String {
    let lower = raw.to_lowercase();
    let mut out = String::new();
    for c in lower.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    let mut out: String = out
        .trim_matches('-')
        .chars()
        .take(MAX_NAME_PREFIX_LEN)
        .collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        DEFAULT_NAME_PREFIX.to_string()
    } else {
        out
    }
}

/// Parse `apiUrl`: any base URL is normalised to end in `/exec`.
pub fn normalize_api_url(raw: &str) -> Option<String> {
    crate::endpoint::Endpoint::parse(raw).map(|e| e.with_exec_path().to_string())
}

/// Parse config JSON text; text that is not JSON gives the defaults and one error.
pub fn parse_text(text: &str, check_key: bool) -> Parsed {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => parse_value(&v, check_key),
        Err(_) => Parsed {
            config: defaults(),
            errors: vec![ConfigError::NotAnObject],
            ..Parsed::default()
        },
    }
}

fn defaults() -> Config {
    Config {
        api_url: DEFAULT_API_URL.to_string(),
        name_prefix: DEFAULT_NAME_PREFIX.to_string(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        ssh_port: DEFAULT_SSH_PORT,
        strict_host_key_checking: HostKeyPolicy::AcceptNew,
        ..Config::default()
    }
}

/// Read an optional string field: absent/null gives none; a non-string is an error; blank
/// strings give none. Returns the trimmed value.
fn opt_string(
    obj: &Map<String, Value>,
    key: &'static str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = s.trim();
            (!t.is_empty()).then(|| t.to_string())
        }
        Some(Value::Number(n)) if matches!(key, "memory" | "disk") => Some(n.to_string()),
        Some(_) => {
            errors.push(ConfigError::NotAString(key));
            None
        }
    }
}

/// A secret string: kept exactly as given (only blank is treated as absent).
fn secret_string(
    obj: &Map<String, Value>,
    key: &'static str,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => (!s.trim().is_empty()).then(|| s.clone()),
        Some(_) => {
            errors.push(ConfigError::NotAString(key));
            None
        }
    }
}

fn number_field(obj: &Map<String, Value>, key: &str) -> Option<Result<f64, ()>> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_f64().ok_or(())),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().parse::<f64>().map_err(|_| ())),
        Some(_) => Some(Err(())),
    }
}

/// `timeoutMs` as every part of the product reads it: a number or a numeric string, the
/// fraction dropped, 1 ms to one day. `None` when absent, null or blank.
fn timeout_field(obj: &Map<String, Value>) -> Option<Result<u64, ConfigError>> {
    Some(match number_field(obj, "timeoutMs")? {
        Ok(n) if n.is_finite() && n.trunc() >= 1.0 && n.trunc() <= MAX_TIMEOUT_MS as f64 => {
            Ok(n.trunc() as u64)
        }
        _ => Err(ConfigError::Timeout),
    })
}

/// The deadline (ms) the provider works to in a call with this driver config: its normalised
/// `timeoutMs` (see [`parse_value`]), else [`DEFAULT_TIMEOUT_MS`] (also when the field is
/// invalid: such a call fails at once with `invalid-config`).
///
/// Pure and native-friendly on purpose: the host-shim links this crate as an rlib and derives
/// each call's hard deadline from exactly this function, so the two sides can never disagree.
pub fn effective_timeout_ms(config: &Value) -> u64 {
    config
        .as_object()
        .and_then(timeout_field)
        .and_then(Result::ok)
        .unwrap_or(DEFAULT_TIMEOUT_MS)
}

/// The deadline (ms) of one `execute`: the request's own `timeoutMs`, else the config's; at
/// least 1 ms and at most `u32::MAX` ms (what the SSH capability takes).
pub fn execute_timeout_ms(requested: Option<u64>, config_timeout_ms: u64) -> u32 {
    requested
        .unwrap_or(config_timeout_ms)
        .clamp(1, u64::from(u32::MAX)) as u32
}

fn string_list(
    obj: &Map<String, Value>,
    key: &'static str,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    match obj.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                    Value::String(_) | Value::Null => {}
                    _ => {
                        errors.push(ConfigError::NotAStringList(key));
                        return Vec::new();
                    }
                }
            }
            out
        }
        Some(_) => {
            errors.push(ConfigError::NotAStringList(key));
            Vec::new()
        }
    }
}

/// Parse a config value (any JSON) into a normalised config plus errors and warnings;
/// `check_key` enables the pasted-key format checks.
pub fn parse_value(value: &Value, check_key: bool) -> Parsed {
    let mut config = defaults();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let Some(obj) = value.as_object() else {
        return Parsed {
            config,
            errors: vec![ConfigError::NotAnObject],
            warnings,
            raw: Map::new(),
        };
    };

    config.api_key = secret_string(obj, "apiKey", &mut errors);

    if let Some(raw) = opt_string(obj, "apiUrl", &mut errors) {
        match normalize_api_url(&raw) {
            Some(u) => config.api_url = u,
            None => errors.push(ConfigError::ApiUrl),
        }
    }

    if let Some(raw) = opt_string(obj, "namePrefix", &mut errors) {
        config.name_prefix = normalize_name_prefix(&raw);
        if !config
            .name_prefix
            .starts_with(|c: char| c.is_ascii_lowercase())
        {
            errors.push(ConfigError::NamePrefixStart(config.name_prefix.clone()));
        }
    }

    config.source_vm = opt_string(obj, "sourceVm", &mut errors);
    config.image = opt_string(obj, "image", &mut errors);
    config.command = opt_string(obj, "command", &mut errors);

    match number_field(obj, "cpu") {
        None => {}
        Some(Ok(n)) if n.is_finite() && n.trunc() > 0.0 => config.cpu = Some(n.trunc() as u64),
        Some(_) => errors.push(ConfigError::Cpu),
    }
    config.memory = opt_string(obj, "memory", &mut errors);
    config.disk = opt_string(obj, "disk", &mut errors);
    config.comment = opt_string(obj, "comment", &mut errors);

    match obj.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => continue,
                    _ => {
                        errors.push(ConfigError::EnvValue(k.clone()));
                        continue;
                    }
                };
                if !is_valid_env_key(k) {
                    errors.push(ConfigError::EnvKey(k.clone()));
                    continue;
                }
                config.env.push((k.clone(), v));
            }
        }
        Some(_) => errors.push(ConfigError::EnvNotAnObject),
    }

    config.integrations = string_list(obj, "integrations", &mut errors);
    config.tags = string_list(obj, "tags", &mut errors);
    config.setup_script = opt_string(obj, "setupScript", &mut errors);
    config.prompt = opt_string(obj, "prompt", &mut errors);

    match timeout_field(obj) {
        None => {}
        Some(Ok(ms)) => config.timeout_ms = ms,
        Some(Err(e)) => errors.push(e),
    }

    config.reuse_lease = obj.get("reuseLease") == Some(&Value::Bool(true));
    config.ssh_user = opt_string(obj, "sshUser", &mut errors);

    config.ssh_private_key = secret_string(obj, "sshPrivateKey", &mut errors);
    if let Some(key) = config.ssh_private_key.as_ref().filter(|_| check_key) {
        if !is_secret_ref(key.trim()) {
            if let Err(e) = crate::pem::check_private_key(key) {
                errors.push(ConfigError::PrivateKey(e));
            }
        }
    }

    config.ssh_identity_file = opt_string(obj, "sshIdentityFile", &mut errors);
    if let Some(p) = &config.ssh_identity_file {
        if !p.starts_with('/') && !p.starts_with('~') {
            errors.push(ConfigError::IdentityFileRelative);
        }
    }

    match number_field(obj, "sshPort") {
        None => {}
        Some(Ok(n)) if n.is_finite() && n.trunc() >= 1.0 && n.trunc() <= 65535.0 => {
            config.ssh_port = n.trunc() as u16
        }
        Some(_) => errors.push(ConfigError::SshPort),
    }

    match obj.get("strictHostKeyChecking") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "" => errors.push(ConfigError::HostKeyPolicyEmpty),
            "yes" => config.strict_host_key_checking = HostKeyPolicy::Yes,
            "accept-new" => config.strict_host_key_checking = HostKeyPolicy::AcceptNew,
            "no" | "off" => config.strict_host_key_checking = HostKeyPolicy::No,
            _ => errors.push(ConfigError::HostKeyPolicy),
        },
        Some(Value::Bool(true)) => config.strict_host_key_checking = HostKeyPolicy::Yes,
        Some(Value::Bool(false)) => config.strict_host_key_checking = HostKeyPolicy::No,
        Some(_) => errors.push(ConfigError::HostKeyPolicy),
    }

    warnings.push(SSH_ACCESS_WARNING.to_string());
    if config.reuse_lease {
        warnings.push(REUSE_LEASE_WARNING.to_string());
    }
    if config.source_vm.is_some() {
        let ignored = ignored_by_cp(&config);
        if !ignored.is_empty() {
            warnings.push(format!(
                "sourceVm copies an existing VM with `exe.dev cp`, which does not accept {}; these settings are ignored.",
                ignored.join(", ")
            ));
        }
    }

    Parsed {
        config,
        errors,
        warnings,
        raw: obj.clone(),
    }
}

/// The configured `new`-only settings that `cp` does not accept.
fn ignored_by_cp(c: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if c.image.is_some() {
        out.push("image");
    }
    if c.command.is_some() {
        out.push("command");
    }
    if c.comment.is_some() {
        out.push("comment");
    }
    if !c.env.is_empty() {
        out.push("env");
    }
    if !c.integrations.is_empty() {
        out.push("integrations");
    }
    if !c.tags.is_empty() {
        out.push("tags");
    }
    if c.setup_script.is_some() {
        out.push("setupScript");
    }
    if c.prompt.is_some() {
        out.push("prompt");
    }
    out
}

/// The normalised config as a JSON object: unknown keys pass through, every known field is
/// replaced by its normalised value (or removed when unset); secrets exactly as given.
pub fn normalized_json(parsed: &Parsed) -> Value {
    let c = &parsed.config;
    let mut obj = parsed.raw.clone();
    let mut set = |key: &str, v: Option<Value>| match v {
        Some(v) => {
            obj.insert(key.to_string(), v);
        }
        None => {
            obj.remove(key);
        }
    };
    let s = |v: &Option<String>| v.clone().map(Value::String);
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| Value::from(v.clone()));
    set("apiKey", s(&c.api_key));
    set("apiUrl", Some(Value::String(c.api_url.clone())));
    set("namePrefix", Some(Value::String(c.name_prefix.clone())));
    set("sourceVm", s(&c.source_vm));
    set("image", s(&c.image));
    set("command", s(&c.command));
    set("cpu", c.cpu.map(Value::from));
    set("memory", s(&c.memory));
    set("disk", s(&c.disk));
    set("comment", s(&c.comment));
    set(
        "env",
        (!c.env.is_empty()).then(|| {
            Value::Object(
                c.env
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        }),
    );
    set("integrations", list(&c.integrations));
    set("tags", list(&c.tags));
    set("setupScript", s(&c.setup_script));
    set("prompt", s(&c.prompt));
    set("timeoutMs", Some(Value::from(c.timeout_ms)));
    set("reuseLease", Some(Value::Bool(c.reuse_lease)));
    set("sshUser", s(&c.ssh_user));
    set("sshPrivateKey", s(&c.ssh_private_key));
    set("sshIdentityFile", s(&c.ssh_identity_file));
    set("sshPort", Some(Value::from(c.ssh_port)));
    set(
        "strictHostKeyChecking",
        Some(Value::String(
            c.strict_host_key_checking.as_str().to_string(),
        )),
    );
    Value::Object(obj)
}

#[cfg(test)]
mod tests;
