//! The exe.dev `/exec` client: command lines, quoting, redaction, error mapping, retries.

use crate::config::Config;

/// exe.dev's `/exec` body limit: a body of 64 KB + 1 bytes or more is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Per-call cap, just under exe.dev's 30 s server-side timeout.
pub const API_MAX_TIMEOUT_MS: u64 = 29_000;
/// The Node version the default setup script guarantees: (major, minor). The ONE place it lives.
pub const NODE_MIN_VERSION: (u32, u32) = (24, 11);

/// The seed's `shellQuote`: wrap in `'…'`, each `'` becomes `'"'"'`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

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
