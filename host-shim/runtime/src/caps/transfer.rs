//! The `transfer` capability: one host file or directory tree streamed to a VM, or back, over
//! the VM's SSH connection (the pooled one when it is up), without the bytes passing through the
//! component or being held whole anywhere.
//!
//! Upload: the host reads the source (a directory through the system `tar`, so `--exclude` and
//! `-h` mean exactly what they mean to tar), counts what passes with a tar reader, gzips it and
//! writes it into a pipe that is the remote command's stdin. Download: the remote command's
//! stdout is a pipe the host reads, gunzips when asked for, and unpacks beside the target; the
//! target is replaced by a rename only once the remote command reported success.
//!
//! Compression: gzip level 1 costs about as much CPU per byte as a fast link moves, so it pays
//! only on slower links. The host asks the master how long a channel open takes (one round
//! trip); at [`COMPRESS_AT_ROUND_TRIP`] or more (or with no master to ask) it compresses.
//! Both directions start with one line on the command's stdin, `gzip` or `none`. A gzip upload
//! checks itself (a cut stream fails `gzip -d`), so the VM commits it on its own; a raw one
//! cannot tell a cut at a tar member boundary from its end, so the VM only unpacks it beside the
//! target and the component commits it once this side reports that everything was sent.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::ssh::{ExecIo, SshRequest, SshRunner, SshTarget};
// The boundary types have one home, shared with the guest.
use crate::transfer_roots::{PathRefused, TransferRoots};
pub use paperclip_provider_types::{
    DownloadRequest, EntryKind, TransferError, TransferReport, UploadRequest,
};

/// Round trip from which a stream is compressed (a loopback or LAN link moves bytes faster
/// than gzip packs them; anything a WAN away does not).
pub const COMPRESS_AT_ROUND_TRIP: Duration = Duration::from_millis(10);

/// How long the round-trip question may take.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// Stderr kept from the remote command (its errors are short).
const REMOTE_STDERR_CAP: u64 = 64 * 1024;

/// Stderr kept from the local `tar`.
const LOCAL_STDERR_CAP: u64 = 16 * 1024;

fn refused(e: PathRefused) -> TransferError {
    match e {
        PathRefused::Outside { .. } => TransferError::Denied(e.to_string()),
        PathRefused::Malformed(_) => TransferError::InvalidRequest(e.to_string()),
        PathRefused::Unresolvable { ref error, .. }
            if error.contains("No such file or directory") =>
        {
            TransferError::NotFound(e.to_string())
        }
        PathRefused::Unresolvable { .. } => TransferError::LocalIo(e.to_string()),
    }
}

/// Transfers under a set of allowed host roots, over an SSH runner.
#[derive(Debug)]
pub struct Transfers {
    ssh: Arc<SshRunner>,
    roots: TransferRoots,
}

/// Running totals, shared with the blocking side.
#[derive(Debug, Default)]
struct Counts {
    files: AtomicU64,
    bytes: AtomicU64,
    wire: AtomicU64,
}

impl Counts {
    fn report(&self, compressed: bool) -> TransferReport {
        TransferReport {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            wire_bytes: self.wire.load(Ordering::Relaxed),
            compressed,
        }
    }
}

impl Transfers {
    /// Transfers through `ssh`, reading and writing only under `roots`.
    pub fn new(ssh: Arc<SshRunner>, roots: TransferRoots) -> Self {
        Self { ssh, roots }
    }

    async fn compress_for(&self, target: &SshTarget) -> bool {
        match self.ssh.link_round_trip(target, ROUND_TRIP_TIMEOUT).await {
            Some(rtt) => rtt >= COMPRESS_AT_ROUND_TRIP,
            None => true,
        }
    }

    /// Stream a host file or directory into `remote_command`'s stdin.
    pub async fn upload(&self, req: UploadRequest) -> Result<TransferReport, TransferError> {
        let source = self.roots.check_read(&req.local_path).map_err(refused)?;
        let meta = std::fs::metadata(&source)
            .map_err(|e| TransferError::LocalIo(format!("{}: {e}", req.local_path)))?;
        match req.kind {
            EntryKind::File if !meta.is_file() => {
                return Err(TransferError::NotFound(format!(
                    "{} is not a regular file on the host",
                    req.local_path
                )))
            }
            EntryKind::Directory if !meta.is_dir() => {
                return Err(TransferError::NotFound(format!(
                    "{} is not a directory on the host",
                    req.local_path
                )))
            }
            _ => {}
        }
        let compressed = self.compress_for(&req.target).await;
        let (reader, writer) = io::pipe().map_err(|e| TransferError::LocalIo(e.to_string()))?;
        let counts = Arc::new(Counts::default());
        let producer = {
            let counts = counts.clone();
            let (kind, exclude, follow) = (req.kind, req.exclude.clone(), req.follow_symlinks);
            tokio::task::spawn_blocking(move || {
                produce(&source, kind, &exclude, follow, compressed, writer, &counts)
            })
        };
        let exec = SshRequest {
            target: req.target,
            command: req.remote_command,
            stdin: None,
            timeout_ms: req.timeout_ms,
            max_output_bytes: REMOTE_STDERR_CAP,
            stream_output: false,
            durable: false,
        };
        let io = ExecIo {
            stdin: Some(OwnedFd::from(reader)),
            stdout: None,
        };
        let out = self.ssh.exec_io(exec, io, None).await;
        // The remote end of the pipe is closed once the command is over, so the producer
        // finishes (at worst with a broken pipe) soon after.
        let produced = producer
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("the reader panicked: {e}"))));
        let out = out?;
        if out.timed_out {
            return Err(TransferError::Timeout(format!(
                "the upload did not finish within {} ms",
                req.timeout_ms
            )));
        }
        match produced {
            // A broken pipe only echoes the remote side's failure, which says more.
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe || out.exit_code == Some(0) => {
                Err(TransferError::LocalIo(format!(
                    "reading {} on the host failed: {e}",
                    req.local_path
                )))
            }
            _ if out.exit_code == Some(0) => Ok(counts.report(compressed)),
            _ => Err(TransferError::Remote(out)),
        }
    }

    /// Stream `remote_command`'s stdout into a host file or directory, replacing it only once
    /// the remote command reported success.
    pub async fn download(&self, req: DownloadRequest) -> Result<TransferReport, TransferError> {
        let (parent, name) = self.roots.check_write(&req.local_path).map_err(refused)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| TransferError::LocalIo(format!("{}: {e}", parent.display())))?;
        let compressed = self.compress_for(&req.target).await;
        let (reader, writer) = io::pipe().map_err(|e| TransferError::LocalIo(e.to_string()))?;
        let counts = Arc::new(Counts::default());
        let consumer = {
            let counts = counts.clone();
            let (kind, parent, name) = (req.kind, parent.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                stage(reader, kind, compressed, &parent, &name, &counts)
            })
        };
        let exec = SshRequest {
            target: req.target,
            command: req.remote_command,
            stdin: Some(if compressed { b"gzip\n" } else { b"none\n" }.to_vec()),
            timeout_ms: req.timeout_ms,
            max_output_bytes: REMOTE_STDERR_CAP,
            stream_output: false,
            durable: false,
        };
        let io = ExecIo {
            stdin: None,
            stdout: Some(OwnedFd::from(writer)),
        };
        let out = self.ssh.exec_io(exec, io, None).await;
        let staged = consumer
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("the writer panicked: {e}"))));
        let out = out?;
        if out.timed_out {
            return Err(TransferError::Timeout(format!(
                "the download did not finish within {} ms",
                req.timeout_ms
            )));
        }
        if out.exit_code != Some(0) {
            // Whatever was staged is dropped (removed) here: the old target stays.
            return Err(TransferError::Remote(out));
        }
        let staged = staged.map_err(|e| {
            TransferError::LocalIo(format!(
                "writing {} on the host failed: {e}",
                req.local_path
            ))
        })?;
        staged.commit(&parent.join(&name), req.mode).map_err(|e| {
            TransferError::LocalIo(format!(
                "replacing {} on the host failed: {e}",
                req.local_path
            ))
        })?;
        Ok(counts.report(compressed))
    }
}

/// Counts what is written through it.
struct CountingWriter<'a, W> {
    inner: W,
    count: &'a AtomicU64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts what is read through it.
struct CountingReader<'a, R> {
    inner: R,
    count: &'a AtomicU64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Passes what it reads on to `out` as well (the tar reader counts; the bytes flow on).
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Kills and reaps the local `tar` if the producer stops early.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn count_entry<R: Read>(entry: &tar::Entry<'_, R>, counts: &Counts) {
    let kind = entry.header().entry_type();
    if kind.is_dir() {
        return;
    }
    counts.files.fetch_add(1, Ordering::Relaxed);
    if kind.is_file() {
        counts.bytes.fetch_add(entry.size(), Ordering::Relaxed);
    }
}

/// The upload's blocking side: the framing line (`gzip` or `none`), then the source — through
/// `tar` for a directory — gzip-compressed or raw, into the pipe.
fn produce(
    source: &Path,
    kind: EntryKind,
    exclude: &[String],
    follow_symlinks: bool,
    compress: bool,
    pipe: io::PipeWriter,
    counts: &Counts,
) -> io::Result<()> {
    let mut wire = io::BufWriter::with_capacity(
        256 * 1024,
        CountingWriter {
            inner: pipe,
            count: &counts.wire,
        },
    );
    if compress {
        wire.write_all(b"gzip\n")?;
        let mut gz = GzEncoder::new(wire, Compression::fast());
        write_source(source, kind, exclude, follow_symlinks, &mut gz, counts)?;
        gz.finish()?.flush()
    } else {
        wire.write_all(b"none\n")?;
        write_source(source, kind, exclude, follow_symlinks, &mut wire, counts)?;
        wire.flush()
    }
}

/// The source's bytes into `out`: a file as is, a directory as the system `tar` writes it
/// (counted on the way by a tar reader).
fn write_source(
    source: &Path,
    kind: EntryKind,
    exclude: &[String],
    follow_symlinks: bool,
    out: &mut dyn Write,
    counts: &Counts,
) -> io::Result<()> {
    match kind {
        EntryKind::File => {
            let n = io::copy(&mut File::open(source)?, out)?;
            counts.files.store(1, Ordering::Relaxed);
            counts.bytes.store(n, Ordering::Relaxed);
        }
        EntryKind::Directory => {
            let mut cmd = Command::new("tar");
            cmd.arg("-cf").arg("-");
            if follow_symlinks {
                cmd.arg("-h");
            }
            for pattern in exclude {
                cmd.arg(format!("--exclude={pattern}"));
            }
            cmd.arg("-C").arg(source).arg(".");
            let mut tar = Reaped(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| io::Error::other(format!("cannot start tar: {e}")))?,
            );
            let stdout = tar.0.stdout.take().expect("piped");
            let stderr = tar.0.stderr.take().expect("piped");
            let errors = std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.take(LOCAL_STDERR_CAP).read_to_string(&mut text);
                text
            });
            let mut archive = tar::Archive::new(Tee { inner: stdout, out });
            for entry in archive.entries()? {
                count_entry(&entry?, counts);
            }
            // The end-of-archive blocks and padding follow the last entry.
            io::copy(&mut archive.into_inner(), &mut io::sink())?;
            let status = tar.0.wait()?;
            let errors = errors.join().unwrap_or_default();
            // GNU tar's 1 is "a file changed as it was read": the archive is whole.
            if !(status.success() || status.code() == Some(1)) {
                return Err(io::Error::other(format!(
                    "tar failed ({status}): {}",
                    errors.trim()
                )));
            }
        }
    }
    Ok(())
}

/// A download unpacked beside its target, not yet in place. Dropping it removes it.
enum Staged {
    File(tempfile::NamedTempFile),
    Directory {
        dir: tempfile::TempDir,
        /// The permission bits the archive gave its top directory.
        root_mode: Option<u32>,
    },
}

impl Staged {
    /// Apply the mode and rename into place (a directory target is swapped out first and
    /// removed after, so a reader sees the old tree or the new one).
    fn commit(self, target: &Path, mode: Option<u32>) -> io::Result<()> {
        match self {
            Staged::File(file) => {
                let bits = mode.unwrap_or(0o600) & 0o7777;
                file.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(bits))?;
                file.persist(target).map_err(|e| e.error)?;
            }
            Staged::Directory { dir, root_mode } => {
                let bits = mode.or(root_mode).unwrap_or(0o755) & 0o7777;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(bits))?;
                let staged = dir.keep();
                let parent = target.parent().expect("a checked target has a parent");
                let old = match std::fs::symlink_metadata(target) {
                    Ok(_) => {
                        let aside = tempfile::Builder::new()
                            .prefix(".paperclip-sync-old.")
                            .tempdir_in(parent)?
                            .keep();
                        let old = aside.join("old");
                        std::fs::rename(target, &old)?;
                        Some(aside)
                    }
                    Err(_) => None,
                };
                if let Err(e) = std::fs::rename(&staged, target) {
                    let _ = std::fs::remove_dir_all(&staged);
                    if let Some(aside) = &old {
                        let _ = std::fs::rename(aside.join("old"), target);
                        let _ = std::fs::remove_dir_all(aside);
                    }
                    return Err(e);
                }
                if let Some(aside) = old {
                    std::fs::remove_dir_all(aside)?;
                }
            }
        }
        Ok(())
    }
}

/// The download's blocking side: pipe → (gunzip) → a temporary file or tree beside the target.
fn stage(
    pipe: io::PipeReader,
    kind: EntryKind,
    compressed: bool,
    parent: &Path,
    name: &OsString,
    counts: &Counts,
) -> io::Result<Staged> {
    let wire = CountingReader {
        inner: io::BufReader::with_capacity(256 * 1024, pipe),
        count: &counts.wire,
    };
    let mut stream: Box<dyn Read> = if compressed {
        Box::new(GzDecoder::new(wire))
    } else {
        Box::new(wire)
    };
    let prefix = {
        let mut p = OsString::from(".");
        p.push(name);
        p.push(".paperclip-sync.");
        p
    };
    match kind {
        EntryKind::File => {
            // Created 0600: the content is never readable by others while it arrives.
            let mut file = tempfile::Builder::new()
                .prefix(&prefix)
                .tempfile_in(parent)?;
            let n = io::copy(&mut stream, &mut file)?;
            file.as_file().sync_all()?;
            counts.files.store(1, Ordering::Relaxed);
            counts.bytes.store(n, Ordering::Relaxed);
            Ok(Staged::File(file))
        }
        EntryKind::Directory => {
            // Created 0700; its final mode is applied just before the rename.
            let dir = tempfile::Builder::new()
                .prefix(&prefix)
                .tempdir_in(parent)?;
            let mut archive = tar::Archive::new(&mut stream);
            archive.set_overwrite(true);
            let mut root_mode = None;
            for entry in archive.entries()? {
                let mut entry = entry?;
                let path = entry.path()?.into_owned();
                if path
                    .components()
                    .all(|c| matches!(c, std::path::Component::CurDir))
                {
                    // The top directory itself: its mode is applied at commit.
                    root_mode = entry.header().mode().ok();
                    continue;
                }
                count_entry(&entry, counts);
                if !entry.unpack_in(dir.path())? {
                    return Err(io::Error::other(format!(
                        "the VM sent an entry outside the target: {}",
                        path.display()
                    )));
                }
            }
            // What follows the last entry is read to the end too: for gzip this checks the
            // trailer (length and CRC).
            io::copy(&mut stream, &mut io::sink())?;
            Ok(Staged::Directory { dir, root_mode })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_directories_replace_the_target_and_failures_leave_nothing() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("t");
        std::fs::create_dir_all(target.join("old")).unwrap();
        // A tar of one file, gzip-framed, through a real pipe.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "new", &b"abc"[..])
            .unwrap();
        let tar_bytes = builder.into_inner().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        let gz = gz.finish().unwrap();

        for (bytes, whole) in [(gz.clone(), true), (gz[..gz.len() - 4].to_vec(), false)] {
            let (r, mut w) = io::pipe().unwrap();
            let writer = std::thread::spawn(move || w.write_all(&bytes));
            let counts = Counts::default();
            let staged = stage(
                r,
                EntryKind::Directory,
                true,
                base.path(),
                &"t".into(),
                &counts,
            );
            writer.join().unwrap().unwrap();
            if whole {
                staged.unwrap().commit(&target, Some(0o750)).unwrap();
                assert_eq!(std::fs::read(target.join("new")).unwrap(), b"abc");
                assert!(!target.join("old").exists());
                let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
                assert_eq!(mode, 0o750);
                assert_eq!(counts.report(true).files, 1);
                assert_eq!(counts.report(true).bytes, 3);
            } else {
                assert!(staged.is_err(), "a cut gzip stream must not stage");
            }
            let mut names: Vec<_> = std::fs::read_dir(base.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(names, ["t"], "only the target is left");
        }
    }
}
