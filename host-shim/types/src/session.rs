//! Long-lived sessions on a lease's VM: what Paperclip asks for (a duplex channel's argv, a
//! login PTY's CLI and session home) and what the component decides the host opens (WIT
//! `paperclip:sandbox-provider/session`).

use crate::ssh::SshTarget;

/// The agent CLIs Paperclip signs in from its UI (Paperclip's `loginCommandKey`, a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginCli {
    /// `claude setup-token`.
    Claude,
    /// `codex login --device-auth`, with `CODEX_HOME` set to the session home.
    Codex,
    /// `grok login --device-auth`, with `GROK_HOME` set to the session home.
    Grok,
}

impl LoginCli {
    /// Every CLI, in Paperclip's order.
    pub const ALL: [LoginCli; 3] = [LoginCli::Claude, LoginCli::Codex, LoginCli::Grok];

    /// Paperclip's `loginCommandKey` for the CLI (also its program name).
    pub fn key(self) -> &'static str {
        match self {
            LoginCli::Claude => "claude",
            LoginCli::Codex => "codex",
            LoginCli::Grok => "grok",
        }
    }

    /// The CLI whose `loginCommandKey` is `key`, exactly (no case folding: the set is closed).
    pub fn from_key(key: &str) -> Option<LoginCli> {
        LoginCli::ALL.into_iter().find(|c| c.key() == key)
    }
}

/// A login PTY as Paperclip asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// Which CLI signs in.
    pub cli: LoginCli,
    /// Paperclip's `sessionHome`, unchecked (the component checks it).
    pub session_home: String,
}

/// What a session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A duplex channel running this argv, with no terminal.
    Duplex(Vec<String>),
    /// A login PTY running the CLI's fixed sign-in command.
    Login(LoginRequest),
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub columns: u16,
    /// Rows.
    pub rows: u16,
}

/// What the host opens: one session on the target's pooled connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    /// Where it runs (`Debug` redacts pasted key material).
    pub target: SshTarget,
    /// The remote command line, interpreted by the remote login shell.
    pub command: String,
    /// A terminal for the session, or none for plain byte streams.
    pub terminal: Option<TerminalSize>,
    /// The remote command line that ends the session's processes; always exits 0.
    pub kill_command: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_keys_are_exact() {
        for cli in LoginCli::ALL {
            assert_eq!(LoginCli::from_key(cli.key()), Some(cli));
        }
        for bad in ["Claude", "CODEX", " grok", "gemini", ""] {
            assert_eq!(LoginCli::from_key(bad), None, "{bad:?}");
        }
    }
}
