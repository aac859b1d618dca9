//! SSH: where to connect, one remote command, what it produced, and why it could not run
//! (WIT `paperclip:sandbox-provider/ssh`).

use std::fmt;

/// Which private key authenticates a connection (WIT `identity`).
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// The host's SSH agent (`SSH_AUTH_SOCK`) and the client's default keys.
    Agent,
    /// A key file on the host, by absolute path.
    KeyFile(String),
    /// Pasted OpenSSH private key material (a secret: `Debug` redacts it, nothing prints it).
    KeyMaterial(String),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent => f.write_str("Agent"),
            Identity::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
            Identity::KeyMaterial(_) => f.write_str("KeyMaterial([REDACTED])"),
        }
    }
}

/// OpenSSH `StrictHostKeyChecking` (WIT `host-key-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Only host keys already known are accepted.
    Yes,
    /// Unknown hosts are added; changed keys are refused (the default).
    #[default]
    AcceptNew,
    /// Any host key is accepted.
    No,
}

impl HostKeyPolicy {
    /// The OpenSSH spelling (`-o StrictHostKeyChecking=…`).
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyPolicy::Yes => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::No => "no",
        }
    }
}

/// Where and as whom to connect (WIT `target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name to dial (e.g. `vm.exe.xyz`); the host's policy must allow it.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user; none lets the SSH client choose.
    pub user: Option<String>,
    /// The key to authenticate with.
    pub identity: Identity,
    /// Host-key policy.
    pub host_key_policy: HostKeyPolicy,
}

impl SshTarget {
    /// `user@host` (or `host`), for messages and metadata.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// One remote command (WIT `exec-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRequest {
    /// Where to run it.
    pub target: SshTarget,
    /// The remote command line, interpreted by the remote login shell (with `durable`: a script
    /// for `/bin/sh -c`). May hold secrets (environment values), so it is never logged.
    pub command: String,
    /// Bytes for stdin; none closes stdin at once.
    pub stdin: Option<Vec<u8>>,
    /// Deadline for the whole call, in milliseconds.
    pub timeout_ms: u32,
    /// Cap per output stream (the host may lower it).
    pub max_output_bytes: u64,
    /// Forward output live to Paperclip while the command runs.
    pub stream_output: bool,
    /// Run it detached on the VM so it outlives its connection.
    pub durable: bool,
}

/// What a remote command produced (WIT `exec-output`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SshOutput {
    /// Exit status (255 from a spawned client may be SSH's own failure); none on a signal or
    /// timeout.
    pub exit_code: Option<i32>,
    /// `exit_code` is what the SSH server reported for the command: even 255 is its own.
    pub exit_code_from_remote: bool,
    /// Signal name (e.g. `SIGKILL`) when the command or client died from one.
    pub signal: Option<String>,
    /// The deadline passed and the host killed the command.
    pub timed_out: bool,
    /// Standard output bytes, exactly as received (up to the cap).
    pub stdout: Vec<u8>,
    /// Standard error bytes, exactly as received (up to the cap).
    pub stderr: Vec<u8>,
    /// stdout exceeded the cap.
    pub stdout_truncated: bool,
    /// stderr exceeded the cap.
    pub stderr_truncated: bool,
}

/// What making sure of a pooled connection found or did (WIT `connect-outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// A pooled connection is up: exit statuses will come from the SSH server.
    Ready,
    /// The host does not pool connections to this target; commands run as always.
    Unpooled,
    /// Opening the connection failed; what the SSH client reported.
    Failed(SshOutput),
}

/// Why the host could not run an SSH command at all (WIT `ssh-error`). Messages never contain
/// key material or the remote command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The destination is not allow-listed by the host.
    #[error("SSH to {0} is not allowed by the host policy")]
    Denied(String),
    /// The request is malformed (e.g. a host name with spaces).
    #[error("invalid SSH request: {0}")]
    InvalidRequest(String),
    /// The host could not start the SSH client or write the key.
    #[error("could not run ssh: {0}")]
    Spawn(String),
    /// A durable command's outcome is unknown (the connection stayed lost, or the VM forgot
    /// the command); the message says what is known.
    #[error("{0}")]
    Lost(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_material_never_prints() {
        let id = Identity::KeyMaterial("-----BEGIN OPENSSH PRIVATE KEY-----".into());
        assert_eq!(format!("{id:?}"), "KeyMaterial([REDACTED])");
        let t = SshTarget {
            host: "vm.exe.xyz".into(),
            port: 22,
            user: Some("exedev".into()),
            identity: id,
            host_key_policy: HostKeyPolicy::default(),
        };
        assert!(!format!("{t:?}").contains("BEGIN"));
        assert_eq!(t.destination(), "exedev@vm.exe.xyz");
        assert_eq!(t.host_key_policy.as_str(), "accept-new");
    }
}
