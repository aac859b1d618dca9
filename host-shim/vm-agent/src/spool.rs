//! A run's spool directory, `~/.cache/paperclip-exe-dev/runs/<id>/`:
//!
//! - `stdin`: the command's stdin, whole. Its presence means *started*: it is put in place with
//!   `link(2)`, which fails when it exists, so of two requests for the same run exactly one
//!   starts the command. An empty stdin has no file of its own: `stdin` is then a link to the
//!   spool root's `.empty`, and the command reads `/dev/null`;
//! - `stdout`, `stderr`: the command's output as the keeper received it, up to the cap plus one
//!   byte (so truncation shows), each created with its first byte (a missing one is empty);
//! - `keeper.<pid>`: the keeper's process id, in the name of one more link to the stdin file,
//!   to tell a running keeper from one that is gone (agents before it wrote `keeper.pid`);
//! - `status`: written (atomically, by rename) after both output files are complete.
//!
//! So a typical run creates three files (its directory, its stdout, its status), not six: on
//! ext4, finding a free inode was about 40 % of the agent's CPU per execute under the churn of
//! a bridge's 14 executes a second, whose spools are removed as fast as they come.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The spool root's one empty file, which the runs with an empty stdin link to.
const EMPTY: &str = ".empty";
/// A run's name that records its keeper: this prefix, then the keeper's pid.
const KEEPER_PREFIX: &str = "keeper.";

/// The directory holding every run's spool, created private (0700).
pub(crate) fn root() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or("HOME is not set on the VM")?;
    let root = Path::new(&home)
        .join(paperclip_vm_agent::AGENT_DIR)
        .join("runs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| format!("creating {} on the VM: {e}", root.display()))?;
    Ok(root)
}

/// How storing stdin went.
pub(crate) enum Stored {
    /// Stored whole, and this request started the run.
    Won,
    /// Stored whole, but another request started the run first.
    Lost,
    /// The host went away before all of stdin arrived; nothing started.
    Incomplete,
}

/// How a run ended, as its keeper recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Status {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) timed_out: bool,
    /// The keeper could not keep the output (e.g. a full disk) or start the command.
    pub(crate) error: Option<String>,
}

impl Status {
    fn encode(&self) -> String {
        let mut s = String::new();
        if let Some(c) = self.code {
            s.push_str(&format!("code {c}\n"));
        }
        if let Some(sig) = self.signal {
            s.push_str(&format!("signal {sig}\n"));
        }
        if self.timed_out {
            s.push_str("timedout\n");
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("error {}\n", e.replace('\n', " ")));
        }
        s
    }

    fn decode(text: &str) -> Status {
        let mut st = Status::default();
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "code" => st.code = value.parse().ok(),
                "signal" => st.signal = value.parse().ok(),
                "timedout" => st.timed_out = true,
                "error" => st.error = Some(value.to_string()),
                _ => {}
            }
        }
        if st.code.is_none() && st.signal.is_none() && st.error.is_none() {
            st.error = Some("the run's status file on the VM is unreadable".into());
        }
        st
    }
}

/// One run's spool.
#[derive(Clone)]
pub(crate) struct Run {
    pub(crate) dir: PathBuf,
    pub(crate) id: u64,
}

impl Run {
    pub(crate) fn new(root: &Path, id: u64) -> Run {
        Run {
            dir: root.join(format!("{id:016x}")),
            id,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn create_dir(&self) -> Result<(), String> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("creating {} on the VM: {e}", self.dir.display())),
        }
    }

    /// True once the run's stdin is in place (the run started, or is starting).
    pub(crate) fn started(&self) -> bool {
        self.path("stdin").exists()
    }

    /// Copy exactly `len` bytes of stdin into the spool, then claim the start; the winner
    /// records itself as the run's keeper.
    pub(crate) fn store_stdin(&self, input: &mut impl Read, len: u64) -> Result<Stored, String> {
        if len == 0 {
            if let Some(stored) = self.claim_empty() {
                return stored;
            }
        }
        let tmp = self.path(&format!("stdin.{}", std::process::id()));
        let result = self.copy_then_link(input, len, &tmp);
        if matches!(result, Ok(Stored::Won)) {
            // The same file, under the name that records the keeper.
            if let Err(e) = fs::rename(&tmp, self.keeper_path()) {
                let _ = fs::remove_file(&tmp);
                return Err(self.unrecorded_keeper(e));
            }
            return result;
        }
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Claim the start of a run with an empty stdin by links to the root's `.empty`; `None`
    /// when that file cannot serve (then the run's stdin gets a file of its own, as any other).
    fn claim_empty(&self) -> Option<Result<Stored, String>> {
        let empty = self.dir.with_file_name(EMPTY);
        let regular = || fs::symlink_metadata(&empty).is_ok_and(|m| m.is_file());
        if !regular() {
            // Exclusive, so never through a link someone put there; a run racing to create it
            // too is fine.
            let _ = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&empty);
            if !regular() {
                return None;
            }
        }
        match fs::hard_link(&empty, self.path("stdin")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Some(Ok(Stored::Lost))
            }
            // E.g. `.empty` at its file system's link limit.
            Err(_) => return None,
        }
        Some(match fs::hard_link(&empty, self.keeper_path()) {
            Ok(()) => Ok(Stored::Won),
            Err(e) => Err(self.unrecorded_keeper(e)),
        })
    }

    /// The run was claimed and its keeper could not be recorded: the command does not start,
    /// and its status says why (an attach would otherwise wait for a keeper that never was).
    fn unrecorded_keeper(&self, e: std::io::Error) -> String {
        let why = format!("recording the keeper on the VM: {e}");
        self.write_status_failure(&why);
        why
    }

    /// The name that records this process as the run's keeper.
    fn keeper_path(&self) -> PathBuf {
        self.path(&format!("{KEEPER_PREFIX}{}", std::process::id()))
    }

    fn copy_then_link(
        &self,
        input: &mut impl Read,
        len: u64,
        tmp: &Path,
    ) -> Result<Stored, String> {
        let write_err = |e: std::io::Error| format!("storing the command's stdin on the VM: {e}");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(write_err)?;
        let mut left = len;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match input.read(&mut buf[..want]) {
                Ok(0) | Err(_) => return Ok(Stored::Incomplete),
                Ok(n) => n,
            };
            file.write_all(&buf[..n]).map_err(write_err)?;
            left -= n as u64;
        }
        // No fsync: the spool must outlive the connection, not the VM (a VM that restarts
        // ends the keeper too, and that run is then reported as unknown).
        match fs::hard_link(tmp, self.path("stdin")) {
            Ok(()) => Ok(Stored::Won),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Stored::Lost),
            Err(e) => Err(write_err(e)),
        }
    }

    /// The recorded status, once there is one.
    pub(crate) fn status(&self) -> Option<Status> {
        fs::read_to_string(self.path("status"))
            .ok()
            .map(|t| Status::decode(&t))
    }

    /// Record the status: written beside, then renamed, so a reader sees all of it or none.
    pub(crate) fn write_status(&self, status: &Status) -> Result<(), std::io::Error> {
        let tmp = self.path("status.tmp");
        fs::write(&tmp, status.encode())?;
        fs::rename(&tmp, self.path("status"))
    }

    /// A run that could not be started: its status says why, so an attach does not wait.
    pub(crate) fn write_status_failure(&self, why: &str) {
        let _ = self.write_status(&Status {
            error: Some(why.to_string()),
            ..Status::default()
        });
    }

    /// The keeper's pid, when it recorded one (as `keeper.<pid>`, or in the `keeper.pid` file of
    /// an earlier agent's run).
    pub(crate) fn keeper_pid(&self) -> Option<i32> {
        if let Ok(text) = fs::read_to_string(self.path("keeper.pid")) {
            return text.trim().parse().ok();
        }
        fs::read_dir(&self.dir).ok()?.flatten().find_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix(KEEPER_PREFIX)?
                .parse()
                .ok()
        })
    }

    /// Remove the spool (the host holds the result).
    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        for st in [
            Status {
                code: Some(7),
                ..Status::default()
            },
            Status {
                signal: Some(9),
                timed_out: true,
                ..Status::default()
            },
            Status {
                error: Some("No space left on device".into()),
                ..Status::default()
            },
        ] {
            assert_eq!(Status::decode(&st.encode()), st);
        }
        assert!(Status::decode("").error.is_some());
    }
}
