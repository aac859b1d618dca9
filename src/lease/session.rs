//! Sessions that outlive a call: Paperclip's duplex channel (its API bridge over one command's
//! stdin and stdout) and its login PTY (an agent CLI signing in, in a terminal). The provider
//! only decides what runs and checks the request; the host opens the session on the VM's
//! pooled connection and carries its bytes.
//!
//! Both commands run like an execute's: from the login profile, with an execution marker in
//! their environment, so the kill command finds every process they started.

use super::{Lease, Provider};
use crate::error::ProviderError;
use crate::host::{LogLevel, LoginCli, LoginRequest, Purpose, SessionPlan, TerminalSize};
use crate::remote::{self, EXEC_ID_VAR};
use crate::shell::shell_quote;

/// The one directory Paperclip's login session homes live under.
pub const LOGIN_HOME_ROOT: &str = "/tmp/paperclip-adapter-login";

/// A login PTY's terminal: Paperclip has no resize message, and its parsers expect lines that
/// fit (the Daytona provider's size too).
pub const LOGIN_TERMINAL: TerminalSize = TerminalSize {
    columns: 120,
    rows: 30,
};

/// The longest duplex argv accepted, all elements together (Paperclip's bridge command is a
/// few hundred bytes; an SSH command line this long still fits every server's limits).
pub const MAX_ARGV_BYTES: usize = 128 * 1024;

/// Exit status of a login PTY whose CLI is not installed (the shell's "command not found").
pub const LOGIN_CLI_MISSING: i32 = 127;

/// Exit status of a login PTY whose session home cannot be made safely.
pub const LOGIN_HOME_UNSAFE: i32 = 2;

impl Provider<'_> {
    /// What a duplex channel or login PTY runs on the lease's VM.
    pub fn plan_session(
        &self,
        lease: &Lease,
        purpose: &Purpose,
    ) -> Result<SessionPlan, ProviderError> {
        let Some(id) = lease.provider_lease_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(ProviderError::InvalidRequest(
                "the session's lease has no provider lease id".into(),
            ));
        };
        let target = self.target_for_lease(id, &lease.metadata);
        let exec_id = format!("{:016x}", self.host.random_u64());
        let (command, terminal, what) = match purpose {
            Purpose::Duplex(argv) => (
                duplex_command(&exec_id, argv)?,
                None,
                "duplex channel".to_string(),
            ),
            Purpose::Login(login) => (
                login_command(&exec_id, login)?,
                Some(LOGIN_TERMINAL),
                format!("login PTY for {}", login.cli.key()),
            ),
        };
        self.log(
            LogLevel::Info,
            "opening a session on exe.dev VM",
            &[
                ("vmName", id.to_string()),
                ("session", what),
                ("execId", exec_id.clone()),
            ],
        );
        Ok(SessionPlan {
            target,
            command,
            terminal,
            kill_command: remote::sh_c(&remote::kill_script(Some(&exec_id))),
        })
    }
}

/// The remote command line of a duplex channel: `argv` exactly, each element one word.
fn duplex_command(exec_id: &str, argv: &[String]) -> Result<String, ProviderError> {
    let invalid = |m: &str| {
        Err(ProviderError::InvalidRequest(format!(
            "duplex command: {m}"
        )))
    };
    let Some((program, args)) = argv.split_first() else {
        return invalid("the argv is empty");
    };
    if program.is_empty() {
        return invalid("the program name is empty");
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return invalid("an element contains a NUL byte");
    }
    let total: usize = argv.iter().map(String::len).sum();
    if total > MAX_ARGV_BYTES {
        return invalid(&format!(
            "the argv is {total} bytes long; at most {MAX_ARGV_BYTES} are accepted"
        ));
    }
    Ok(remote::exec_script(exec_id, None, &[], program, args))
}

/// Check Paperclip's `sessionHome`: exactly `/tmp/paperclip-adapter-login/<lowercase uuid>`.
pub fn check_session_home(home: &str) -> Result<(), ProviderError> {
    let refuse = || {
        Err(ProviderError::InvalidRequest(format!(
            "sessionHome must be {LOGIN_HOME_ROOT}/<lowercase uuid>, got {}",
            shell_quote(home)
        )))
    };
    let Some(uuid) = home
        .strip_prefix(LOGIN_HOME_ROOT)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return refuse();
    };
    let groups: Vec<&str> = uuid.split('-').collect();
    let shape_ok = groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if shape_ok {
        Ok(())
    } else {
        refuse()
    }
}

/// The remote command line of a login PTY: the CLI's fixed sign-in command, `exec`'d from the
/// login profile so its exit status is the session's, in a home made private first.
fn login_command(exec_id: &str, login: &LoginRequest) -> Result<String, ProviderError> {
    check_session_home(&login.session_home)?;
    let home = shell_quote(&login.session_home);
    let cli = login.cli.key();
    let exec = match login.cli {
        LoginCli::Claude => "exec claude setup-token".to_string(),
        LoginCli::Codex => format!("exec env CODEX_HOME={home} codex login --device-auth"),
        LoginCli::Grok => format!("exec env GROK_HOME={home} grok login --device-auth"),
    };
    let root = LOGIN_HOME_ROOT;
    // The home must be a directory of ours, never reached through a symbolic link (the root
    // and the home are both checked after `mkdir`, which does not follow a link it creates),
    // and private to us. What a CLI later writes there (codex's `auth.json`) is a credential.
    let private_dir = |d: &str| {
        format!(
            "{{ mkdir -m 700 {d} 2>/dev/null; [ -d {d} ] && [ ! -L {d} ] && [ -O {d} ] && chmod 700 {d}; }}"
        )
    };
    let mut parts = remote::login_profile();
    parts.push(format!("export {EXEC_ID_VAR}={exec_id}"));
    parts.push(format!(
        "stty sane rows {} cols {} 2>/dev/null; umask 077",
        LOGIN_TERMINAL.rows, LOGIN_TERMINAL.columns
    ));
    parts.push(format!(
        "{{ {} && {} || {{ echo 'paperclip-exe-dev: the session home '{home}' is not a private directory of this user (a symbolic link, or owned by someone else); refusing to sign in there.'; exit {LOGIN_HOME_UNSAFE}; }}; }}",
        private_dir(root),
        private_dir(&home),
    ));
    parts.push(format!(
        "{{ command -v {cli} >/dev/null 2>&1 || {{ echo 'paperclip-exe-dev: {cli} is not installed on this VM (not on the login PATH). Provide it through the environment config: an image that has it (image), a VM to copy (sourceVm), or a setupScript that installs it.'; exit {LOGIN_CLI_MISSING}; }}; }}"
    ));
    parts.push(exec);
    Ok(parts.join(" && "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_homes_are_exactly_paperclips_shape() {
        let good = "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e";
        assert!(check_session_home(good).is_ok());
        for bad in [
            "",
            "/tmp/paperclip-adapter-login/",
            "/tmp/paperclip-adapter-login",
            "/tmp/paperclip-adapter-login/0F8FAD5B-D9CB-469F-A165-70867728950E",
            "/tmp/paperclip-adapter-login/../etc",
            "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e/..",
            "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e/",
            "/tmp/paperclip-adapter-login//0f8fad5b-d9cb-469f-a165-70867728950e",
            "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950",
            "/tmp/paperclip-adapter-login/0f8fad5bd9cb469fa16570867728950e",
            "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950g",
            "/tmp/other/0f8fad5b-d9cb-469f-a165-70867728950e",
            "/var/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e",
            "tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e",
            "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e\n",
            "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e;rm",
        ] {
            assert!(check_session_home(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duplex_argv_is_checked() {
        assert!(duplex_command("1", &[]).is_err());
        assert!(duplex_command("1", &["".into()]).is_err());
        assert!(duplex_command("1", &["sh".into(), "a\0b".into()]).is_err());
        assert!(duplex_command("1", &["x".repeat(MAX_ARGV_BYTES + 1)]).is_err());
        let c = duplex_command("1", &["sh".into(), "-c".into(), "echo 'hi' $X".into()]).unwrap();
        assert!(c.contains(r#"'sh' '-c' 'echo '"'"'hi'"'"' $X'"#), "{c}");
    }

    #[test]
    fn login_commands_are_fixed_per_cli() {
        let home = "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e".to_string();
        let cmd = |cli| {
            login_command(
                "7",
                &LoginRequest {
                    cli,
                    session_home: home.clone(),
                },
            )
            .unwrap()
        };
        assert!(cmd(LoginCli::Claude).ends_with(" && exec claude setup-token"));
        assert!(cmd(LoginCli::Codex).ends_with(&format!(
            " && exec env CODEX_HOME='{home}' codex login --device-auth"
        )));
        assert!(cmd(LoginCli::Grok).ends_with(&format!(
            " && exec env GROK_HOME='{home}' grok login --device-auth"
        )));
        assert!(cmd(LoginCli::Codex).contains("export PAPERCLIP_EXEC_ID=7"));
    }
}
