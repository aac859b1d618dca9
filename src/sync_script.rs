//! The VM side of native workspace sync: the POSIX `sh` scripts that unpack a stream into a
//! target (sync-in) or produce one from a source (sync-out), and the checks on the VM paths
//! they get.
//!
//! The host streams the bytes (the `transfer` capability); these scripts decide what happens to
//! them in the VM, so that a target is replaced only once the whole stream has arrived and no
//! temporary file outlives a failure. Every failure prints one `paperclip-sync: …` line on
//! stderr and exits with one of the codes below.

use crate::host::EntryKind;
use crate::shell::shell_quote;

/// Exit code: the sync-out source does not exist in the VM (or is not the kind asked for).
pub const SOURCE_MISSING: i32 = 44;
/// Exit code: the sync-in stream ended early or was corrupt (`gzip -d` failed).
pub const STREAM_CUT: i32 = 45;
/// Exit code: unpacking or writing in the VM failed (a full disk, permissions).
pub const UNPACK_FAILED: i32 = 46;
/// Exit code: `tar` could not read all of a sync-out source.
pub const PACK_FAILED: i32 = 47;

/// The prefix of every message these scripts print.
pub const MESSAGE_PREFIX: &str = "paperclip-sync: ";

/// Check a VM path a sync names: absolute, no `.`/`..`/empty components (so what is replaced
/// is exactly what was named), not `/` itself, no NUL or newline. Returns it without a
/// trailing slash.
pub fn check_remote_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("the VM path {path:?} is not absolute"));
    }
    if path.contains(['\0', '\n']) {
        return Err(format!("the VM path {path:?} contains a NUL or newline"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("the VM path `/` cannot be a sync target or source".into());
    }
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "the VM path {path:?} has an empty, `.` or `..` component"
        ));
    }
    Ok(trimmed.to_string())
}

/// `(parent, name)` of a path checked by [`check_remote_path`].
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    }
}

/// Signals end the script through `exit`, so the `EXIT` trap removes the temporary copy
/// (dash does not run it on a signal death). PIPE matters most: when the connection is lost,
/// sshd closes the command's pipes, and the failure message on stderr would otherwise kill the
/// script before its cleanup.
const SIGNAL_TRAPS: &str =
    "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; trap 'exit 143' TERM";

fn fail(code: i32, message: &str) -> String {
    format!(
        "{{ echo {} >&2; exit {code}; }}",
        shell_quote(&format!("{MESSAGE_PREFIX}{message}"))
    )
}

/// The name of the temporary copy of `target` (checked) that an upload writes beside it:
/// `.<name>.paperclip-sync.<tag>`, with `tag` chosen by the caller so that it can commit or
/// discard the copy later.
pub fn temp_path(target: &str, tag: &str) -> String {
    let (parent, name) = split(target);
    let parent = if parent == "/" { "" } else { parent };
    format!("{parent}/.{name}.paperclip-sync.{tag}")
}

/// Sync-in: read the stream on stdin into `tmp` (from [`temp_path`]) beside `target`
/// (checked). The stream's first line says how it is framed:
/// - `gzip`: a gzip stream, which checks itself, so the script commits on its own (`mode`
///   applied, then renamed over the target) once all of it arrived and unpacked;
/// - `none`: the raw bytes, which cannot tell a cut at a tar member boundary from the end, so
///   the script only unpacks and leaves `tmp` for [`commit_script`], run once the host has
///   confirmed it sent everything (or for [`discard_script`]).
///
/// On any failure the script removes `tmp`, so the old target is all that is left.
pub fn upload_script(target: &str, tmp: &str, kind: EntryKind, mode: Option<u32>) -> String {
    let (parent, _) = split(target);
    let head = format!(
        "IFS= read -r z || z=none\nt={t}\ntmp={tmp}\nmkdir -p -- {p} || exit\n",
        t = shell_quote(target),
        tmp = shell_quote(tmp),
        p = shell_quote(parent),
    );
    let cut = fail(STREAM_CUT, &format!("the stream to {target} was cut short"));
    let unpack = fail(UNPACK_FAILED, &format!("could not unpack into {target}"));
    let commit = commit_lines(kind, mode);
    match kind {
        EntryKind::File => format!(
            "{head}trap 'rm -f -- \"$tmp\"' EXIT\n{SIGNAL_TRAPS}\n\
             if [ \"$z\" = gzip ]; then\n\
             gzip -dc > \"$tmp\" || {cut}\n\
             {commit}\
             else\n\
             cat > \"$tmp\" || {unpack}\n\
             fi\n\
             trap - EXIT\n"
        ),
        EntryKind::Directory => format!(
            "{head}mkdir -- \"$tmp\" || exit\n\
             trap 'rm -rf -- \"$tmp\"' EXIT\n{SIGNAL_TRAPS}\n\
             if [ \"$z\" = gzip ]; then\n\
             gz=$( {{ {{ gzip -dc; echo $? >&4; }} | tar -xf - -C \"$tmp\" >&2; }} 4>&1 ) || {unpack}\n\
             [ \"$gz\" = 0 ] || {cut}\n\
             {commit}\
             else\n\
             tar -xf - -C \"$tmp\" || {unpack}\n\
             fi\n\
             trap - EXIT\n"
        ),
    }
}

/// Apply the mode to `$tmp` and rename it over `$t`, failing the script if either fails.
fn commit_lines(kind: EntryKind, mode: Option<u32>) -> String {
    let chmod = mode
        .map(|m| format!("chmod {:o} \"$tmp\" || exit\n", m & 0o7777))
        .unwrap_or_default();
    match kind {
        EntryKind::File => format!("{chmod}mv -f -- \"$tmp\" \"$t\" || exit\n"),
        EntryKind::Directory => {
            format!("{chmod}rm -rf -- \"$t\" && mv -- \"$tmp\" \"$t\" || exit\n")
        }
    }
}

/// Put an uncompressed upload's `tmp` in place of `target` (see [`upload_script`]); removes
/// `tmp` if that fails.
pub fn commit_script(target: &str, tmp: &str, kind: EntryKind, mode: Option<u32>) -> String {
    format!(
        "t={t}\ntmp={tmp}\n[ -e \"$tmp\" ] || {gone}\n\
         trap 'rm -rf -- \"$tmp\"' EXIT\n{SIGNAL_TRAPS}\n{commit}trap - EXIT\n",
        t = shell_quote(target),
        tmp = shell_quote(tmp),
        gone = fail(UNPACK_FAILED, &format!("the upload to {target} is gone")),
        commit = commit_lines(kind, mode),
    )
}

/// Remove an upload's `tmp` (an uncompressed upload the host could not finish).
pub fn discard_script(tmp: &str) -> String {
    format!("rm -rf -- {}\n", shell_quote(tmp))
}

/// Sync-out: write `source` (checked) on stdout — the file's bytes, or a tar archive of the
/// directory's contents with `exclude` (tar `--exclude` patterns) and `-h` when
/// `follow_symlinks` — gzip-compressed when the first line on stdin is `gzip`. Exits non-zero
/// when the source is missing or `tar` could not read all of it (its exit 1, a file that
/// changed while it was read, is a complete archive of a live tree and counts as success).
pub fn download_script(
    source: &str,
    kind: EntryKind,
    exclude: &[String],
    follow_symlinks: bool,
) -> String {
    let head = format!("IFS= read -r z || z=none\ns={}\n", shell_quote(source));
    match kind {
        EntryKind::File => format!(
            "{head}[ -f \"$s\" ] || {missing}\n\
             if [ \"$z\" = gzip ]; then gzip -1c < \"$s\"; else cat < \"$s\"; fi\n",
            missing = fail(SOURCE_MISSING, &format!("{source} is not a file in the VM")),
        ),
        EntryKind::Directory => {
            let mut tar = String::from("tar -cf -");
            if follow_symlinks {
                tar.push_str(" -h");
            }
            for pattern in exclude {
                tar.push_str(" --exclude=");
                tar.push_str(&shell_quote(pattern));
            }
            tar.push_str(" -C \"$s\" .");
            format!(
                "{head}[ -d \"$s\" ] || {missing}\n\
                 if [ \"$z\" = gzip ]; then\n\
                 {{ rc=$( {{ {{ {tar}; echo $? >&4; }} | gzip -1 >&3; }} 4>&1 ); }} 3>&1\n\
                 else\n{tar}; rc=$?\nfi\n\
                 [ \"$rc\" -le 1 ] || {pack}\n",
                missing = fail(
                    SOURCE_MISSING,
                    &format!("{source} is not a directory in the VM")
                ),
                pack = fail(PACK_FAILED, &format!("tar could not read all of {source}")),
            )
        }
    }
}

#[cfg(test)]
mod tests;
