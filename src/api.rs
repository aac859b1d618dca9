//! The exe.dev `/exec` client: command lines, redaction, error mapping, retries.

use crate::config::Config;
use crate::error::{ApiError, ProviderError};
use crate::host::{Host, HttpError, LogLevel};
use crate::shell::shell_quote;
use crate::time::{backoff_ms, Deadline};
use serde_json::Value;

/// exe.dev's `/exec` body limit: a body of 64 KB + 1 bytes or more is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Per-call cap, just under exe.dev's 30 s server-side timeout.
pub const API_MAX_TIMEOUT_MS: u64 = 29_000;
/// The Node version the default setup script guarantees: (major, minor). The ONE place it lives.
pub const NODE_MIN_VERSION: (u32, u32) = (24, 11);

/// One exe.dev command line: the body to send and the redacted form for logs and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The command name (`new`, `cp`, `ls`, `rm`, `whoami`).
    pub verb: &'static str,
    /// The exact body sent (may contain secrets).
    body: String,
    /// Safe to log.
    pub redacted: String,
}

impl std::fmt::Debug for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandLine({})", self.redacted)
    }
}

impl CommandLine {
    fn new(verb: &'static str) -> Self {
        CommandLine {
            verb,
            body: verb.to_string(),
            redacted: verb.to_string(),
        }
    }

    /// Append a literal word (same in body and redacted form).
    fn word(mut self, w: &str) -> Self {
        self.body.push(' ');
        self.body.push_str(w);
        self.redacted.push(' ');
        self.redacted.push_str(w);
        self
    }

    /// Append a quoted positional.
    fn positional(self, value: &str) -> Self {
        let q = shell_quote(value);
        self.word(&q)
    }

    /// Append `--name='value'`, with `shown` in the redacted form.
    fn flag_redacted(mut self, name: &str, value: &str, shown: &str) -> Self {
        self.body
            .push_str(&format!(" --{name}={}", shell_quote(value)));
        self.redacted
            .push_str(&format!(" --{name}={}", shell_quote(shown)));
        self
    }

    fn flag(self, name: &str, value: &str) -> Self {
        self.flag_redacted(name, value, value)
    }

    fn opt_flag(self, name: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.flag(name, v),
            None => self,
        }
    }

    /// The exact body (contains secrets; never log it).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Whether retrying the command is harmless.
    pub fn idempotent(&self) -> bool {
        matches!(self.verb, "ls" | "rm" | "whoami")
    }
}

/// The default setup script (v0.1.2 behaviour): install Node ≥ 24.11 from nodesource unless a
/// recent enough `node` is already on PATH.
pub fn default_setup_script() -> String {
    let (major, minor) = NODE_MIN_VERSION;
    format!(
        "#!/bin/sh\n\
         # Paperclip's sandbox callback bridge is a Node program: node >= {major}.{minor} must be on PATH.\n\
         if command -v node >/dev/null 2>&1 && node -e 'const v=process.versions.node.split(\".\").map(Number);process.exit(v[0]>{major}||(v[0]==={major}&&v[1]>={minor})?0:1)' >/dev/null 2>&1; then\n\
         \x20 exit 0\n\
         fi\n\
         curl -fsSL https://deb.nodesource.com/setup_{major}.x | sudo -E bash - && sudo apt-get install -y nodejs\n"
    )
}

/// `new …` (or `cp …` when `sourceVm` is set) for `vm`.
pub fn create_command(config: &Config, vm: &str) -> CommandLine {
    let cpu = config.cpu.map(|c| c.to_string());
    if let Some(src) = &config.source_vm {
        return CommandLine::new("cp")
            .positional(src)
            .positional(vm)
            .word("--json")
            .opt_flag("cpu", cpu.as_deref())
            .opt_flag("memory", config.memory.as_deref())
            .opt_flag("disk", config.disk.as_deref());
    }
    let mut cmd = CommandLine::new("new")
        .word("--json")
        .word("--no-email")
        .flag("name", vm)
        .opt_flag("image", config.image.as_deref())
        .opt_flag("command", config.command.as_deref())
        .opt_flag("cpu", cpu.as_deref())
        .opt_flag("memory", config.memory.as_deref())
        .opt_flag("disk", config.disk.as_deref())
        .opt_flag("comment", config.comment.as_deref());
    for (k, v) in &config.env {
        cmd = cmd.flag_redacted("env", &format!("{k}={v}"), &format!("{k}=[REDACTED]"));
    }
    for i in &config.integrations {
        cmd = cmd.flag("integration", i);
    }
    for t in &config.tags {
        cmd = cmd.flag("tag", t);
    }
    cmd = match &config.setup_script {
        Some(s) => cmd.flag_redacted("setup-script", s, "[REDACTED]"),
        None => cmd.flag("setup-script", &default_setup_script()),
    };
    if let Some(p) = &config.prompt {
        cmd = cmd.flag_redacted("prompt", p, "[REDACTED]");
    }
    cmd
}

/// `ls --json '<name>'`.
pub fn ls_command(vm: &str) -> CommandLine {
    CommandLine::new("ls").word("--json").positional(vm)
}

/// `ls --json`: every VM of the account.
pub fn ls_all_command() -> CommandLine {
    CommandLine::new("ls").word("--json")
}

/// `rm --json '<name>'`.
pub fn rm_command(vm: &str) -> CommandLine {
    CommandLine::new("rm").word("--json").positional(vm)
}

/// Validation: the create command must fit the API's 64 KB body limit (checked with the
/// longest possible VM name).
pub fn check_create_size(config: &Config) -> Result<(), String> {
    let longest = "a".repeat(crate::vm::MAX_VM_NAME_LEN);
    let len = create_command(config, &longest).body().len();
    if len > MAX_BODY_BYTES {
        Err(format!(
            "The exe.dev create command would be {len} bytes, over the /exec API's 64 KB limit ({MAX_BODY_BYTES} bytes); shorten setupScript, prompt, comment or env."
        ))
    } else {
        Ok(())
    }
}

/// Replace every secret occurrence in `text` with `[REDACTED]` (values shorter than 4
/// characters are left alone: they cannot be told apart from ordinary text).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.len() >= 4).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        out = out.replace(s.as_str(), "[REDACTED]");
    }
    out
}

/// The operator hint for an API status.
pub fn hint_for(status: u16, verb: &str) -> Option<String> {
    let h = match status {
        401 => "the API token is invalid or expired; mint a new one (e.g. `ssh exe.dev ssh-key generate-api-key`) and update apiKey or EXE_API_KEY".to_string(),
        403 => format!(
            "the token's cmds do not include `{verb}`; exe.dev's default token permissions lack `rm` and `cp`, so use a token whose cmds list every command the provider runs (new, ls, rm, and cp for sourceVm)"
        ),
        413 => "the command exceeds the /exec API's 64 KB body limit; shorten setupScript, prompt, comment or env".to_string(),
        422 => format!("the `{verb}` command itself failed on exe.dev; its own error is shown"),
        429 => "exe.dev rate-limited this token's SSH key; retry later or use a separate key for independent workloads".to_string(),
        504 => "the command hit exe.dev's 30 s server-side timeout".to_string(),
        s if s >= 500 => "exe.dev had a server-side problem; retry later".to_string(),
        _ => return None,
    };
    Some(h)
}

/// The text of an error body: the `{"error": …}` field, else the raw (trimmed) body.
fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(trimmed) {
        if let Some(Value::String(e)) = o.get("error") {
            return e.clone();
        }
    }
    const MAX: usize = 2000;
    if trimmed.len() > MAX {
        let mut end = MAX;
        while !trimmed.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &trimmed[..end])
    } else if trimmed.is_empty() {
        "(empty response body)".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Parse a 2xx body the seed's way: trimmed; empty → null; JSON if it parses, else the text.
pub fn parse_ok_body(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string()))
}

/// First backoff delay for retried API calls.
pub const RETRY_BASE_MS: u64 = 500;
/// Largest backoff delay.
pub const RETRY_MAX_MS: u64 = 8_000;
/// Most attempts of one idempotent command.
pub const RETRY_MAX_ATTEMPTS: u32 = 6;

/// A `/exec` client bound to one config.
pub struct Api<'a> {
    host: &'a dyn Host,
    url: String,
    token: String,
    timeout_ms: u64,
    secrets: Vec<String>,
}

impl<'a> Api<'a> {
    /// A client for `config`; fails when no API key is available.
    pub fn new(host: &'a dyn Host, config: &Config) -> Result<Api<'a>, ProviderError> {
        let token = config.resolve_api_key(host).ok_or_else(|| {
            ProviderError::InvalidConfig(crate::config::MISSING_API_KEY.to_string())
        })?;
        let mut secrets: Vec<String> = config.env.iter().map(|(_, v)| v.clone()).collect();
        secrets.extend(config.prompt.clone());
        secrets.extend(config.setup_script.clone());
        secrets.push(token.clone());
        Ok(Api {
            host,
            url: config.api_url.clone(),
            token,
            timeout_ms: config.timeout_ms,
            secrets,
        })
    }

    /// Run `cmd`; idempotent commands are retried on 429/503/504 and connection failures
    /// with backoff while `deadline` allows, never sooner than the answer's `Retry-After`.
    pub fn run(&self, cmd: &CommandLine, deadline: Deadline) -> Result<Value, ProviderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.run_once(cmd, deadline);
            let retryable = cmd.idempotent()
                && attempt < RETRY_MAX_ATTEMPTS
                && match &result {
                    Err(ProviderError::Api(e)) => {
                        matches!(e.status, 429 | 503 | 504) || e.status == 0
                    }
                    _ => false,
                };
            if !retryable {
                return result;
            }
            let backoff = backoff_ms(RETRY_BASE_MS, RETRY_MAX_MS, attempt);
            let jitter = self.host.random_u64() % (backoff / 4 + 1);
            let retry_after = match &result {
                Err(ProviderError::Api(e)) => e.retry_after_ms.unwrap_or(0),
                _ => 0,
            };
            let wait = (backoff + jitter).max(retry_after);
            // Leave at least a second for the next attempt itself.
            if deadline.remaining(self.host) < wait + 1_000 {
                return result;
            }
            self.host.log(
                LogLevel::Warn,
                "exe.dev API call failed; retrying",
                &[
                    ("command", cmd.redacted.clone()),
                    ("attempt", attempt.to_string()),
                    ("backoffMs", wait.to_string()),
                ],
            );
            self.host.sleep_ms(wait);
        }
    }

    /// One attempt, no retry.
    pub fn run_once(&self, cmd: &CommandLine, deadline: Deadline) -> Result<Value, ProviderError> {
        let remaining = deadline.remaining(self.host);
        if remaining == 0 {
            return Err(ProviderError::Timeout(format!(
                "no time left to run exe.dev API command `{}`",
                cmd.redacted
            )));
        }
        let timeout = self.timeout_ms.min(API_MAX_TIMEOUT_MS).min(remaining);
        self.host.log(
            LogLevel::Info,
            "exe.dev API call",
            &[("command", cmd.redacted.clone())],
        );
        let headers = vec![
            (
                "Authorization".to_string(),
                format!("Bearer {}", self.token),
            ),
            (
                "Content-Type".to_string(),
                "text/plain; charset=utf-8".to_string(),
            ),
        ];
        let started = self.host.now_ms();
        let response = self
            .host
            .http_post(&self.url, &headers, cmd.body().as_bytes(), timeout);
        let elapsed = self.host.now_ms().saturating_sub(started);
        match response {
            Ok(r) if (200..300).contains(&r.status) => {
                self.host.log(
                    LogLevel::Debug,
                    "exe.dev API call succeeded",
                    &[
                        ("command", cmd.redacted.clone()),
                        ("status", r.status.to_string()),
                        ("durationMs", elapsed.to_string()),
                    ],
                );
                Ok(parse_ok_body(&r.body))
            }
            Ok(r) => {
                let message = scrub(&error_text(&r.body), &self.secrets);
                self.host.log(
                    LogLevel::Warn,
                    "exe.dev API call failed",
                    &[
                        ("command", cmd.redacted.clone()),
                        ("status", r.status.to_string()),
                        ("error", message.clone()),
                    ],
                );
                Err(ProviderError::Api(ApiError {
                    status: r.status,
                    command: cmd.redacted.clone(),
                    message,
                    hint: hint_for(r.status, cmd.verb),
                    retry_after_ms: r.retry_after_ms,
                }))
            }
            Err(HttpError::Denied(authority)) => Err(ProviderError::Denied(format!(
                "HTTP requests to {authority} (the exe.dev API at {}) are not allowed by the host; grant that authority to the plugin",
                self.url
            ))),
            Err(HttpError::Timeout) => Err(ProviderError::Api(ApiError {
                status: 0,
                command: cmd.redacted.clone(),
                message: format!("no response within {timeout} ms"),
                hint: Some(
                    "exe.dev did not answer in time; the command may still complete on exe.dev"
                        .to_string(),
                ),
                retry_after_ms: None,
            })),
            Err(HttpError::Connect(m)) | Err(HttpError::Other(m)) => {
                Err(ProviderError::Api(ApiError {
                    status: 0,
                    command: cmd.redacted.clone(),
                    message: scrub(&m, &self.secrets),
                    hint: Some(format!("could not reach the exe.dev API at {}", self.url)),
                    retry_after_ms: None,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
