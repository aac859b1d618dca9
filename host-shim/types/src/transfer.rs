//! File transfers between host paths and the VM (WIT `paperclip:sandbox-provider/transfer`).

use crate::ssh::{SshOutput, SshTarget};

/// What a transfer moves (WIT `entry-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// One regular file: the stream is its bytes.
    File,
    /// A directory: the stream is a tar archive of its contents.
    Directory,
}

/// Host → VM: stream a host path into `remote_command` (WIT `upload-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The VM.
    pub target: SshTarget,
    /// Absolute host path to read.
    pub local_path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// `tar --exclude` patterns (directories).
    pub exclude: Vec<String>,
    /// Archive what links point to (`tar -h`).
    pub follow_symlinks: bool,
    /// Reads the gzip stream on stdin; replaces the target only when all of it arrived.
    pub remote_command: String,
    /// Deadline for the whole transfer, in milliseconds.
    pub timeout_ms: u32,
}

/// VM → host: stream `remote_command`'s stdout into a host path (WIT `download-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// The VM.
    pub target: SshTarget,
    /// Writes the stream on stdout (compressed when its first stdin line asks for it).
    pub remote_command: String,
    /// Absolute host path to replace.
    pub local_path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Permission bits for the target.
    pub mode: Option<u32>,
    /// Deadline for the whole transfer, in milliseconds.
    pub timeout_ms: u32,
}

/// What a completed transfer moved (WIT `transfer-report`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// Files and links moved.
    pub files: u64,
    /// Their content bytes.
    pub bytes: u64,
    /// Bytes on the SSH channel.
    pub wire_bytes: u64,
    /// The stream was compressed.
    pub compressed: bool,
}

/// Why a transfer failed (WIT `transfer-error`); the old target is whole after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A host path outside the allowed roots, or an SSH target the host refuses.
    #[error("{0}")]
    Denied(String),
    /// The source does not exist or is not the kind asked for.
    #[error("{0}")]
    NotFound(String),
    /// Malformed request.
    #[error("{0}")]
    InvalidRequest(String),
    /// Reading or writing on the host failed.
    #[error("{0}")]
    LocalIo(String),
    /// The remote command failed or the connection ended first.
    #[error("the remote side of the transfer failed (exit {:?})", .0.exit_code)]
    Remote(SshOutput),
    /// The deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The SSH client could not be started.
    #[error("{0}")]
    Spawn(String),
}

impl From<crate::ssh::SshError> for TransferError {
    /// A transfer's SSH connection could not be used: the same refusal, as a transfer error.
    fn from(e: crate::ssh::SshError) -> Self {
        use crate::ssh::SshError;
        match e {
            SshError::Denied(_) => TransferError::Denied(e.to_string()),
            SshError::InvalidRequest(_) => TransferError::InvalidRequest(e.to_string()),
            SshError::Spawn(m) | SshError::Lost(m) => TransferError::Spawn(m),
        }
    }
}
