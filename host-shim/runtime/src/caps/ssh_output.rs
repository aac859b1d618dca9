//! What a remote command produced, and how it is collected: both output streams read to their
//! end (up to a cap, forwarding live chunks), whichever way the command runs — a spawned `ssh`
//! client (`ssh.rs`) or a session on a live master (`ssh_mux.rs`). A module of its own so that
//! those two depend on it, and not on each other.

use paperclip_provider_types::SshOutput;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Read buffer per stream; also the largest chunk handed to the `on_chunk` callback.
const READ_CHUNK: usize = 64 * 1024;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Live output callback: called with each chunk (up to the cap) as it arrives.
pub type ChunkCallback = Box<dyn FnMut(StreamKind, &[u8]) + Send>;

/// Collects both output streams up to the cap, forwarding kept chunks to the callback.
pub(crate) struct OutputSink {
    cap: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: bool,
    stderr_truncated: bool,
}

impl OutputSink {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    /// Read both pipes to EOF. Reading continues past the cap (bytes are dropped) so the remote
    /// side never blocks on a full pipe. Cancel-safe: `AsyncReadExt::read` loses no data when a
    /// `select!` branch is dropped, and whatever was collected stays in `self`.
    pub(crate) async fn drain(
        &mut self,
        stdout: &mut (impl AsyncRead + Unpin),
        stderr: &mut (impl AsyncRead + Unpin),
        on_chunk: &mut Option<ChunkCallback>,
    ) {
        let mut out_buf = vec![0u8; READ_CHUNK];
        let mut err_buf = vec![0u8; READ_CHUNK];
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                r = stdout.read(&mut out_buf), if out_open => match r {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => self.keep(StreamKind::Stdout, &out_buf[..n], on_chunk),
                },
                r = stderr.read(&mut err_buf), if err_open => match r {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => self.keep(StreamKind::Stderr, &err_buf[..n], on_chunk),
                },
            }
        }
    }

    /// Read what is already buffered in `pipe` without waiting (the writer is known to be
    /// gone); true when the stream reached its end. The pipe is non-blocking (tokio made it
    /// so), and a duplicate of the descriptor shares that, so an empty pipe answers at once.
    pub(crate) fn read_buffered(
        &mut self,
        kind: StreamKind,
        pipe: &impl std::os::fd::AsFd,
        on_chunk: &mut Option<ChunkCallback>,
    ) -> bool {
        use std::io::Read as _;
        let Ok(fd) = pipe.as_fd().try_clone_to_owned() else {
            return false;
        };
        let mut file = std::fs::File::from(fd);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.keep(kind, &buf[..n], on_chunk),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: empty, but a helper still holds the write end.
                Err(_) => return false,
            }
        }
    }

    /// Bytes collected so far of one stream.
    pub(crate) fn len(&self, kind: StreamKind) -> usize {
        match kind {
            StreamKind::Stdout => self.stdout.len(),
            StreamKind::Stderr => self.stderr.len(),
        }
    }

    /// Keep `chunk` of `kind` (up to the cap), forwarding what is kept to the callback.
    pub(crate) fn keep(
        &mut self,
        kind: StreamKind,
        chunk: &[u8],
        on_chunk: &mut Option<ChunkCallback>,
    ) {
        let (buf, truncated) = match kind {
            StreamKind::Stdout => (&mut self.stdout, &mut self.stdout_truncated),
            StreamKind::Stderr => (&mut self.stderr, &mut self.stderr_truncated),
        };
        let room = self.cap.saturating_sub(buf.len());
        let kept = &chunk[..chunk.len().min(room)];
        if kept.len() < chunk.len() {
            *truncated = true;
        }
        if kept.is_empty() {
            return;
        }
        buf.extend_from_slice(kept);
        if let Some(cb) = on_chunk.as_mut() {
            cb(kind, kept);
        }
    }

    pub(crate) fn finish(
        &mut self,
        exit_code: Option<i32>,
        signal: Option<String>,
        timed_out: bool,
    ) -> SshOutput {
        SshOutput {
            exit_code,
            exit_code_from_remote: false,
            signal,
            timed_out,
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
        }
    }
}
