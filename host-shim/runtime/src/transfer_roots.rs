//! Which host paths a transfer may read or write: the host's decision, never the component's.
//!
//! A path is allowed when, after resolving every symbolic link, it lies under one of the
//! allowed roots (themselves resolved). A path that does not exist yet (a sync-out target) is
//! judged by its nearest existing ancestor, and the rest of it must be plain names (no `.` or
//! `..`), so nothing can step out through a link or a parent reference.

use std::path::{Component, Path, PathBuf};

/// Why a host path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRefused {
    /// Outside every allowed root.
    #[error(
        "the host path {path} is outside the directories this plugin may use for file \
         transfers ({roots}); add its directory to the worker's arguments as \
         \"--allow-path\", \"DIR\""
    )]
    Outside {
        /// The path as asked.
        path: String,
        /// The allowed roots, for the operator.
        roots: String,
    },
    /// Not absolute, or with `.`/`..` components where it does not exist yet.
    #[error("the host path {0:?} must be absolute, without `.` or `..` components")]
    Malformed(String),
    /// Resolving it failed (e.g. permission denied on an ancestor).
    #[error("cannot resolve the host path {path}: {error}")]
    Unresolvable {
        /// The path as asked.
        path: String,
        /// What the system said.
        error: String,
    },
}

/// The allowed roots, resolved once.
#[derive(Debug, Clone, Default)]
pub struct TransferRoots {
    roots: Vec<PathBuf>,
}

impl TransferRoots {
    /// Roots from the operator's `--allow-path` flags plus the defaults for a Paperclip install:
    /// the system temp dir (Paperclip stages sync archives and restores there) and the
    /// Paperclip home of the worker's user (`$PAPERCLIP_HOME`, else `~/.paperclip`, with `~`
    /// from the password database because Paperclip passes workers no `HOME`). Roots that do not
    /// exist are skipped.
    pub fn with_defaults(extra: &[PathBuf]) -> Self {
        let mut candidates: Vec<PathBuf> = extra.to_vec();
        candidates.push(std::env::temp_dir());
        match std::env::var_os("PAPERCLIP_HOME") {
            Some(home) => candidates.push(PathBuf::from(home)),
            None => {
                if let Some(home) = user_home() {
                    candidates.push(home.join(".paperclip"));
                }
            }
        }
        Self::new(&candidates)
    }

    /// Exactly these roots (those that exist), resolved.
    pub fn new(roots: &[PathBuf]) -> Self {
        let mut resolved: Vec<PathBuf> = roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        resolved.sort();
        resolved.dedup();
        Self { roots: resolved }
    }

    /// The resolved roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "none".into();
        }
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn inside(&self, resolved: &Path) -> bool {
        self.roots.iter().any(|r| resolved.starts_with(r))
    }

    /// An existing path to read, resolved (links followed) and checked.
    pub fn check_read(&self, path: &str) -> Result<PathBuf, PathRefused> {
        let p = absolute(path)?;
        let resolved = std::fs::canonicalize(p).map_err(|e| PathRefused::Unresolvable {
            path: path.to_string(),
            error: e.to_string(),
        })?;
        if self.inside(&resolved) {
            Ok(resolved)
        } else {
            Err(self.outside(path))
        }
    }

    /// A path to create or replace: its parent resolved and checked; returned as resolved
    /// parent + final name, so the final name itself is replaced (a link there is replaced,
    /// never followed). Missing parents are the caller's to create (plain names only).
    pub fn check_write(&self, path: &str) -> Result<(PathBuf, std::ffi::OsString), PathRefused> {
        let p = absolute(path)?;
        let name = p
            .file_name()
            .ok_or_else(|| PathRefused::Malformed(path.to_string()))?
            .to_os_string();
        let parent = p
            .parent()
            .expect("an absolute path with a file name has a parent");
        // The nearest existing ancestor is resolved; what follows it must be plain names.
        let mut existing = parent.to_path_buf();
        let mut missing = Vec::new();
        while !existing.exists() {
            match (existing.file_name(), existing.parent()) {
                (Some(n), Some(up)) => {
                    missing.push(n.to_os_string());
                    existing = up.to_path_buf();
                }
                _ => return Err(PathRefused::Malformed(path.to_string())),
            }
        }
        let mut resolved =
            std::fs::canonicalize(&existing).map_err(|e| PathRefused::Unresolvable {
                path: path.to_string(),
                error: e.to_string(),
            })?;
        for n in missing.into_iter().rev() {
            resolved.push(n);
        }
        if self.inside(&resolved) && resolved.join(&name).starts_with(&resolved) {
            Ok((resolved, name))
        } else {
            Err(self.outside(path))
        }
    }

    fn outside(&self, path: &str) -> PathRefused {
        PathRefused::Outside {
            path: path.to_string(),
            roots: self.describe(),
        }
    }
}

/// `path` as an absolute path with only plain components.
fn absolute(path: &str) -> Result<&Path, PathRefused> {
    let p = Path::new(path);
    let plain = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if p.is_absolute() && plain && !path.contains('\0') {
        Ok(p)
    } else {
        Err(PathRefused::Malformed(path.to_string()))
    }
}

/// The worker's user's home directory from the password database.
fn user_home() -> Option<PathBuf> {
    // SAFETY: getpwuid_r writes into our buffer and record only; the pointers are checked.
    unsafe {
        let mut record: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut record,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        );
        if rc != 0 || out.is_null() || record.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(record.pw_dir);
        use std::os::unix::ffi::OsStrExt;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_stay_under_the_roots_whatever_the_links_say() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(root.join("ws")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let roots = TransferRoots::new(std::slice::from_ref(&root));
        let s = |p: &Path| p.to_str().unwrap().to_string();

        assert!(roots.check_read(&s(&root.join("ws"))).is_ok());
        for refused in [
            s(&outside.join("secret")),
            s(&root.join("escape/secret")),
            format!("{}/ws/../../outside/secret", root.display()),
            "relative/path".to_string(),
        ] {
            assert!(roots.check_read(&refused).is_err(), "{refused}");
        }

        let (parent, name) = roots.check_write(&s(&root.join("new/deeper/t"))).unwrap();
        assert_eq!(parent, root.canonicalize().unwrap().join("new/deeper"));
        assert_eq!(name, "t");
        // A link as the final name is replaced, not followed: allowed.
        assert!(roots.check_write(&s(&root.join("escape"))).is_ok());
        for refused in [
            s(&root.join("escape/new")),
            s(&outside.join("t")),
            format!("{}/ws/../x", root.display()),
            "/".to_string(),
        ] {
            assert!(roots.check_write(&refused).is_err(), "{refused}");
        }
        let e = roots.check_read(&s(&outside.join("secret"))).unwrap_err();
        assert!(e.to_string().contains("\"--allow-path\", \"DIR\""), "{e}");
    }
}
