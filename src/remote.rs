//! The remote shell scripts run over SSH, and how their results are read.
//!
//! Every script is portable POSIX `sh`. The remote command line is always `sh -c '<script>'`
//! (or `sh -lc` for the lease preparation, which wants the login PATH), so it works whatever
//! the remote login shell is.

use crate::host::SshOutput;
use crate::shell::shell_quote;

/// The workspace created under `$HOME` when Paperclip asks for none.
pub const DEFAULT_WORKSPACE_DIR: &str = "paperclip-workspace";
/// Marker line before the prepare script's answer (so profile noise cannot confuse parsing).
pub const PREPARE_MARKER: &str = "__PAPERCLIP_LEASE__";
/// Exit status of the prepare script when the workspace cannot be created.
pub const PREPARE_MKDIR_FAILED: i32 = 3;
/// Environment variable that marks every process an execute starts.
pub const EXEC_ID_VAR: &str = "PAPERCLIP_EXEC_ID";
/// Cap for each of stdout and stderr of one execute: 32 MiB.
pub const MAX_OUTPUT_BYTES: u64 = 32 * 1024 * 1024;

/// One SSH round trip that proves the VM is reachable and does the lease work: prints the
/// home directory, the shell (`bash` if available, else `sh`) and the workspace (created with
/// `mkdir -p`: `requested_cwd`, else `$HOME/paperclip-workspace`), after a marker line.
pub fn prepare_script(requested_cwd: Option<&str>) -> String {
    let cwd = match requested_cwd {
        Some(c) => shell_quote(c),
        None => format!("\"$home/{DEFAULT_WORKSPACE_DIR}\""),
    };
    format!(
        "home=\"${{HOME:-}}\"; [ -n \"$home\" ] || home=\"$(pwd)\"; [ -n \"$home\" ] || home=/tmp; \
         if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi; \
         cwd={cwd}; \
         mkdir -p \"$cwd\" || exit {PREPARE_MKDIR_FAILED}; \
         printf '%s\\n%s\\n%s\\n%s\\n' '{PREPARE_MARKER}' \"$home\" \"$shell\" \"$cwd\""
    )
}

/// The remote command line for [`prepare_script`].
pub fn prepare_command(requested_cwd: Option<&str>) -> String {
    format!("sh -lc {}", shell_quote(&prepare_script(requested_cwd)))
}

/// What the prepare script reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// `$HOME` (or the login directory, or `/tmp`).
    pub home: String,
    /// `bash` or `sh`.
    pub shell: String,
    /// The workspace, created.
    pub cwd: String,
}

/// Parse the prepare script's stdout (the lines after the last marker).
pub fn parse_prepared(stdout: &str) -> Option<Prepared> {
    let idx = stdout.rfind(PREPARE_MARKER)?;
    let mut lines = stdout[idx + PREPARE_MARKER.len()..].lines().skip(1);
    let home = lines.next()?.trim().to_string();
    let shell = lines.next()?.trim().to_string();
    let cwd = lines.next()?.trim_end_matches('\r').to_string();
    let home = if home.is_empty() {
        "/tmp".to_string()
    } else {
        home
    };
    let shell = if shell == "bash" {
        shell
    } else {
        "sh".to_string()
    };
    if cwd.is_empty() {
        return None;
    }
    Some(Prepared { home, shell, cwd })
}

/// `sh -lc '<quoted "mkdir -p '<cwd>'">'`: the seed's workspace command.
pub fn mkdir_command(cwd: &str) -> String {
    format!(
        "sh -lc {}",
        shell_quote(&format!("mkdir -p {}", shell_quote(cwd)))
    )
}

/// Names a POSIX-ish `sh` may refuse to assign (bash-as-`sh` makes them read-only). With one of
/// these in the request's env the wrapper falls back to `env`, which assigns anything.
const SHELL_READONLY_NAMES: [&str; 7] = [
    "UID",
    "EUID",
    "PPID",
    "SHELLOPTS",
    "BASHOPTS",
    "BASH_VERSINFO",
    "BASH_ARGV0",
];

/// The seed's login-shell environment: the profiles a login shell reads, each sourced only when
/// present and silently (their output and failures never reach the command's streams), one
/// `&&`-joinable step each.
pub fn login_profile() -> Vec<String> {
    let source = |f: &str| format!("if [ -f {f} ]; then . {f} >/dev/null 2>&1 || true; fi");
    vec![
        source("/etc/profile"),
        source("\"$HOME/.profile\""),
        "if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi".to_string(),
        source("\"$HOME/.zprofile\""),
    ]
}

/// The seed's login-shell wrapper, plus the execution marker:
/// guarded, silent profile sourcing; `cd '<cwd>'`;
/// `export PAPERCLIP_EXEC_ID=<id> K='v' … && { exec 3>&2 2>/dev/null; (exec 'cmd' 'arg'… 2>&3
/// 3>&-); }; exit $?`.
///
/// The variables are exported by the shell rather than through `exec env …` (the seed's form):
/// it is one program image fewer per execute, which is most of a trivial command's remote cost.
///
/// The command runs in a subshell (which exec's it: one fork, one program image, as before), never
/// in the wrapper's place, and the trailing `exit $?` keeps a shell from exec'ing the last command
/// by itself. So the process the SSH server waits for is always the wrapper shell, which reports a
/// command killed by a signal the shell way, `128 + n` (SIGTERM: 143), as an exit status. Were the command itself that process, the
/// server would send `exit-signal`, which the OpenSSH client (and its connection sharing, which
/// has no message for it) can only report as 255, the code that means "SSH failed". From the
/// command on, the wrapper's own stderr is `/dev/null` (the command gets the real one back
/// through fd 3), so the shell's job report ("Terminated", "Killed") never lands in the
/// command's stderr.
pub fn exec_script(
    exec_id: &str,
    cwd: Option<&str>,
    env: &[(String, String)],
    command: &str,
    args: &[String],
) -> String {
    let (mut parts, exec) = wrapper_parts(exec_id, cwd, env, command, args);
    parts.push(format!(
        "{{ exec 3>&2 2>/dev/null; (exec {exec} 2>&3 3>&-); }}"
    ));
    format!("{}; exit $?", parts.join(" && "))
}

/// The same login-shell wrapper for a durable execute, which the VM agent runs with `/bin/sh
/// -c` itself: `… && export PAPERCLIP_EXEC_ID=<id> K='v' … && exec 'cmd' 'arg'…`.
///
/// The login shell exec's the command instead of forking a subshell for it, so an execute
/// starts the command and its login shell and nothing else. The process the agent waits for is
/// then the command itself, and the host reports a death by signal `n` as `128 + n`, as the
/// wrapper shell of [`exec_script`] does. Where the agent cannot run, the host puts this script
/// behind that same subshell-and-fd-3 guard for the SSH server.
pub fn durable_exec_script(
    exec_id: &str,
    cwd: Option<&str>,
    env: &[(String, String)],
    command: &str,
    args: &[String],
) -> String {
    let (mut parts, exec) = wrapper_parts(exec_id, cwd, env, command, args);
    parts.push(format!("exec {exec}"));
    parts.join(" && ")
}

/// Both wrappers up to the command: the profile, `cd`, the exports; and the command's words
/// for `exec` (through `env` where a name is read-only to some shells).
fn wrapper_parts(
    exec_id: &str,
    cwd: Option<&str>,
    env: &[(String, String)],
    command: &str,
    args: &[String],
) -> (Vec<String>, String) {
    let mut parts = login_profile();
    if let Some(cwd) = cwd {
        parts.push(format!("cd {}", shell_quote(cwd)));
    }
    let assignments: String = env
        .iter()
        .map(|(k, v)| format!(" {k}={}", shell_quote(v)))
        .collect();
    let mut exec = if env
        .iter()
        .any(|(k, _)| SHELL_READONLY_NAMES.contains(&k.as_str()))
    {
        let mut e = format!("env {EXEC_ID_VAR}={exec_id}{assignments} ");
        if command.contains('=') {
            // `env` would take the command for one more assignment: let `sh` exec it instead.
            e.push_str("sh -c 'exec \"$0\" \"$@\"' ");
        }
        e
    } else {
        parts.push(format!("export {EXEC_ID_VAR}={exec_id}{assignments}"));
        String::new()
    };
    exec.push_str(&shell_quote(command));
    for a in args {
        exec.push(' ');
        exec.push_str(&shell_quote(a));
    }
    (parts, exec)
}

/// `sh -c '<script>'`.
pub fn sh_c(script: &str) -> String {
    format!("sh -c {}", shell_quote(script))
}

/// Kill every process whose initial environment contains `PAPERCLIP_EXEC_ID=<exec_id>` exactly
/// (TERM, then up to a second of grace polled every 0.1 s — so a command that exits on TERM
/// costs no wait — then KILL for whatever is left); `None` matches any execution
/// marker (used when a retained lease's active work is cancelled). Errors are ignored; the
/// script always exits 0.
pub fn kill_script(exec_id: Option<&str>) -> String {
    let (needle, test) = match exec_id {
        Some(id) => {
            let entry = format!("{EXEC_ID_VAR}={id}");
            (
                shell_quote(&entry),
                format!("grep -qx {}", shell_quote(&entry)),
            )
        }
        None => (
            shell_quote(&format!("{EXEC_ID_VAR}=")),
            format!("grep -q {}", shell_quote(&format!("^{EXEC_ID_VAR}="))),
        ),
    };
    // One `grep -l` over every environ file finds the candidates without a process per pid
    // (a scan forking twice per process took about a second on a busy machine); each
    // candidate is then checked exactly, entry by entry.
    format!(
        "scan() {{ pids=''; for f in $(grep -lF {needle} /proc/[0-9]*/environ 2>/dev/null); do \
         p=\"${{f#/proc/}}\"; p=\"${{p%/environ}}\"; [ \"$p\" = \"$$\" ] && continue; \
         if tr '\\0' '\\n' < \"$f\" 2>/dev/null | {test}; then pids=\"$pids $p\"; fi; done; }}; \
         scan; [ -n \"$pids\" ] || exit 0; kill -s TERM $pids 2>/dev/null; \
         i=0; while [ $i -lt 10 ]; do sleep 0.1 2>/dev/null || {{ sleep 1; i=9; }}; scan; [ -n \"$pids\" ] || exit 0; i=$((i+1)); done; \
         kill -s KILL $pids 2>/dev/null; exit 0"
    )
}

/// The markers exe.dev prints when the SSH key has not finished onboarding.
pub const ONBOARDING_MARKERS: [&str; 2] = [
    "Please complete registration by running: ssh exe.dev",
    "Please enter your email address:",
];

/// The operator message for a connection that could not be opened before an execute (no
/// command of the caller's ran, so whatever the client printed is about SSH).
pub fn connect_failure(vm: &str, out: &SshOutput) -> String {
    failure_message("execute commands on", vm, &output_text(out))
}

/// SSH failures that will not go away by waiting.
const FATAL_SSH_MARKERS: [&str; 4] = [
    "Permission denied",
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "invalid format",
];

/// SSH failures of a VM that is still booting.
const TRANSIENT_SSH_MARKERS: [&str; 9] = [
    "Connection refused",
    "Connection timed out",
    "Operation timed out",
    "No route to host",
    "Could not resolve hostname",
    "Connection closed",
    "Connection reset",
    "kex_exchange_identification",
    "Network is unreachable",
];

/// How a failed SSH call should be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshFailure {
    /// The command never ran and waiting will not help; the text is the operator message.
    Fatal(String),
    /// The VM is not reachable yet; retry with backoff.
    NotReady(String),
}

fn output_text(out: &SshOutput) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

fn has_bad_key_format(text: &str) -> bool {
    text.lines().any(|l| {
        let lower = l.to_ascii_lowercase();
        lower.contains("load key") && lower.contains("invalid format")
    })
}

/// The seed's operator messages (`formatSshFailure`).
fn failure_message(action: &str, vm: &str, text: &str) -> String {
    if ONBOARDING_MARKERS.iter().any(|m| text.contains(m)) {
        return format!(
            "Failed to {action} exe.dev VM {vm}: the Paperclip host SSH key is not registered with exe.dev. Complete exe.dev's one-time SSH onboarding on this host by running `ssh exe.dev` and following the email verification prompt, then retry."
        );
    }
    if has_bad_key_format(text) {
        return format!(
            "Failed to {action} exe.dev VM {vm}: the configured SSH private key isn't an OpenSSH-format private key. Paste the private key file as written by ssh-keygen (-----BEGIN OPENSSH PRIVATE KEY-----), or convert it with `ssh-keygen -p -f <key>`."
        );
    }
    let detail = text.trim();
    let detail = if detail.is_empty() {
        "unknown error"
    } else {
        detail
    };
    format!("Failed to {action} exe.dev VM {vm}: {detail}")
}

/// Classify an SSH result whose command did not succeed, for a step that the provider runs
/// itself (prepare): `None` means the remote command ran and failed on its own.
pub fn classify_failure(action: &str, vm: &str, out: &SshOutput) -> Option<SshFailure> {
    let text = output_text(out);
    if ONBOARDING_MARKERS.iter().any(|m| text.contains(m)) || has_bad_key_format(&text) {
        return Some(SshFailure::Fatal(failure_message(action, vm, &text)));
    }
    if out.timed_out {
        return Some(SshFailure::NotReady(format!(
            "Failed to {action} exe.dev VM {vm}: SSH did not answer in time"
        )));
    }
    if out.exit_code != Some(255) {
        return None;
    }
    if FATAL_SSH_MARKERS.iter().any(|m| text.contains(m)) {
        return Some(SshFailure::Fatal(failure_message(action, vm, &text)));
    }
    if TRANSIENT_SSH_MARKERS.iter().any(|m| text.contains(m)) {
        return Some(SshFailure::NotReady(failure_message(action, vm, &text)));
    }
    Some(SshFailure::Fatal(failure_message(action, vm, &text)))
}

/// For execute: `Some(message)` when the user's command never ran (ssh itself failed or
/// exe.dev answered with its onboarding text); `None` when the command ran, whatever its
/// exit status, so its output must be returned verbatim.
pub fn execute_never_ran(vm: &str, out: &SshOutput) -> Option<String> {
    if out.timed_out {
        return None;
    }
    let text = output_text(out);
    let onboarding =
        out.exit_code != Some(0) && ONBOARDING_MARKERS.iter().any(|m| text.contains(m));
    // A 255 the SSH server reported is the command's own, whatever its stderr says.
    let ssh_failed = out.exit_code == Some(255)
        && !out.exit_code_from_remote
        && (FATAL_SSH_MARKERS.iter().any(|m| text.contains(m))
            || TRANSIENT_SSH_MARKERS.iter().any(|m| text.contains(m))
            || String::from_utf8_lossy(&out.stderr).starts_with("ssh:"));
    (onboarding || ssh_failed).then(|| failure_message("execute commands on", vm, &text))
}

/// For an execute over a pooled connection: `Some(message)` when no exit status came back from
/// the SSH server (the connection ended first), so the 255 in `out` is not the command's; the
/// command may have run, and may still be running. Never a result: the outcome is unknown.
pub fn status_lost(vm: &str, out: &SshOutput) -> Option<String> {
    (out.exit_code == Some(255) && !out.exit_code_from_remote && !out.timed_out).then(|| {
        format!(
            "Failed to execute commands on exe.dev VM {vm}: the SSH connection ended before the \
             command's exit status arrived ({} bytes of stdout and {} of stderr had come), so its \
             outcome is unknown; it may still be running on the VM.",
            out.stdout.len(),
            out.stderr.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: Option<i32>, stdout: &str, stderr: &str) -> SshOutput {
        SshOutput {
            exit_code: code,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
            ..SshOutput::default()
        }
    }

    #[test]
    fn prepare_command_exact() {
        assert_eq!(
            prepare_command(None),
            "sh -lc 'home=\"${HOME:-}\"; [ -n \"$home\" ] || home=\"$(pwd)\"; [ -n \"$home\" ] || home=/tmp; if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi; cwd=\"$home/paperclip-workspace\"; mkdir -p \"$cwd\" || exit 3; printf '\"'\"'%s\\n%s\\n%s\\n%s\\n'\"'\"' '\"'\"'__PAPERCLIP_LEASE__'\"'\"' \"$home\" \"$shell\" \"$cwd\"'"
        );
        assert!(prepare_command(Some("/work/it's"))
            .contains("cwd='\"'\"'/work/it'\"'\"'\"'\"'\"'\"'\"'\"'s'\"'\"';"));
    }

    #[test]
    fn parse_prepared_skips_noise() {
        let p = parse_prepared(
            "motd\n__PAPERCLIP_LEASE__\n/home/exe\nbash\n/home/exe/paperclip-workspace\n",
        )
        .unwrap();
        assert_eq!(p.home, "/home/exe");
        assert_eq!(p.shell, "bash");
        assert_eq!(p.cwd, "/home/exe/paperclip-workspace");
        assert_eq!(parse_prepared("/home/exe\nbash\n"), None);
        let p = parse_prepared("__PAPERCLIP_LEASE__\n\nzsh\n/w\n").unwrap();
        assert_eq!((p.home.as_str(), p.shell.as_str()), ("/tmp", "sh"));
    }

    #[test]
    fn mkdir_command_exact() {
        assert_eq!(
            mkdir_command("/w s"),
            "sh -lc 'mkdir -p '\"'\"'/w s'\"'\"''"
        );
    }

    #[test]
    fn exec_script_exact() {
        let s = exec_script(
            "00ff",
            Some("/home/exe/w"),
            &[("A".into(), "it's".into())],
            "sh",
            &["-c".into(), "echo hi".into()],
        );
        assert_eq!(
            s,
            "if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi && \
             if [ -f \"$HOME/.profile\" ]; then . \"$HOME/.profile\" >/dev/null 2>&1 || true; fi && \
             if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi && \
             if [ -f \"$HOME/.zprofile\" ]; then . \"$HOME/.zprofile\" >/dev/null 2>&1 || true; fi && \
             cd '/home/exe/w' && export PAPERCLIP_EXEC_ID=00ff A='it'\"'\"'s' && \
             { exec 3>&2 2>/dev/null; (exec 'sh' '-c' 'echo hi' 2>&3 3>&-); }; exit $?"
        );
        assert!(!s.contains("nvm"));
        let bare = exec_script("ab", None, &[], "ls", &[]);
        assert!(
            bare.ends_with(
                "fi && export PAPERCLIP_EXEC_ID=ab && { exec 3>&2 2>/dev/null; (exec 'ls' 2>&3 3>&-); }; exit $?"
            ),
            "{bare}"
        );
        let eq = exec_script("ab", None, &[], "./a=b", &["x".into()]);
        assert!(
            eq.ends_with(
                "fi && export PAPERCLIP_EXEC_ID=ab && { exec 3>&2 2>/dev/null; (exec './a=b' 'x' 2>&3 3>&-); }; \
                 exit $?"
            ),
            "{eq}"
        );
        // A name bash-as-sh keeps read-only: assigned through `env` instead.
        let ro = exec_script("ab", None, &[("UID".into(), "7".into())], "./a=b", &[]);
        assert!(
            ro.ends_with(
                "fi && { exec 3>&2 2>/dev/null; (exec env PAPERCLIP_EXEC_ID=ab UID='7' sh -c 'exec \"$0\" \"$@\"' \
                 './a=b' 2>&3 3>&-); }; exit $?"
            ),
            "{ro}"
        );
    }

    #[test]
    fn kill_script_exact() {
        assert_eq!(
            kill_script(Some("abc")),
            "scan() { pids=''; for f in $(grep -lF 'PAPERCLIP_EXEC_ID=abc' /proc/[0-9]*/environ 2>/dev/null); do p=\"${f#/proc/}\"; p=\"${p%/environ}\"; [ \"$p\" = \"$$\" ] && continue; if tr '\\0' '\\n' < \"$f\" 2>/dev/null | grep -qx 'PAPERCLIP_EXEC_ID=abc'; then pids=\"$pids $p\"; fi; done; }; scan; [ -n \"$pids\" ] || exit 0; kill -s TERM $pids 2>/dev/null; i=0; while [ $i -lt 10 ]; do sleep 0.1 2>/dev/null || { sleep 1; i=9; }; scan; [ -n \"$pids\" ] || exit 0; i=$((i+1)); done; kill -s KILL $pids 2>/dev/null; exit 0"
        );
        assert!(kill_script(None).contains("grep -q '^PAPERCLIP_EXEC_ID='"));
    }

    #[test]
    fn classification() {
        let onboarding = out(
            Some(1),
            "Please complete registration by running: ssh exe.dev\r\n",
            "",
        );
        assert!(
            matches!(classify_failure("inspect", "vm", &onboarding), Some(SshFailure::Fatal(m)) if m.contains("not registered with exe.dev"))
        );
        let refused = out(
            Some(255),
            "",
            "ssh: connect to host vm.exe.xyz port 22: Connection refused\n",
        );
        assert!(matches!(
            classify_failure("inspect", "vm", &refused),
            Some(SshFailure::NotReady(_))
        ));
        let denied = out(
            Some(255),
            "",
            "exedev@vm.exe.xyz: Permission denied (publickey).\n",
        );
        assert!(matches!(
            classify_failure("inspect", "vm", &denied),
            Some(SshFailure::Fatal(_))
        ));
        let hostkey = out(Some(255), "", "Host key verification failed.\n");
        assert!(matches!(
            classify_failure("inspect", "vm", &hostkey),
            Some(SshFailure::Fatal(_))
        ));
        let badkey = out(
            Some(255),
            "",
            "Load key \"/tmp/x/id_ed25519\": invalid format\nPermission denied (publickey).",
        );
        assert!(
            matches!(classify_failure("inspect", "vm", &badkey), Some(SshFailure::Fatal(m)) if m.contains("isn't an OpenSSH-format private key"))
        );
        let ran = out(Some(2), "", "boom");
        assert_eq!(classify_failure("inspect", "vm", &ran), None);
    }

    #[test]
    fn a_missing_exit_status_is_never_a_result() {
        let lost = out(Some(255), "part", "");
        assert!(status_lost("vm", &lost)
            .unwrap()
            .contains("outcome is unknown"));
        let own = SshOutput {
            exit_code_from_remote: true,
            ..out(Some(255), "", "")
        };
        assert_eq!(status_lost("vm", &own), None);
        assert_eq!(status_lost("vm", &out(Some(1), "", "")), None);
    }

    #[test]
    fn execute_hints_only_when_command_never_ran() {
        assert_eq!(
            execute_never_ran("vm", &out(Some(1), "", "Permission denied\n")),
            None
        );
        assert_eq!(
            execute_never_ran("vm", &out(Some(255), "", "my tool failed\n")),
            None
        );
        assert!(execute_never_ran(
            "vm",
            &out(
                Some(255),
                "",
                "ssh: connect to host vm port 22: Connection refused\n"
            )
        )
        .is_some());
        assert!(execute_never_ran(
            "vm",
            &out(
                Some(1),
                "Please complete registration by running: ssh exe.dev\r\n",
                ""
            )
        )
        .unwrap()
        .contains("onboarding"));
        // The same 255 and text, reported by the SSH server as the command's own status.
        let own = SshOutput {
            exit_code_from_remote: true,
            ..out(
                Some(255),
                "",
                "ssh: connect to host vm port 22: Connection refused\n",
            )
        };
        assert_eq!(execute_never_ran("vm", &own), None);
    }
}

/// The scripts really run under the local `/bin/sh` (Linux: the kill script needs `/proc`).
#[cfg(all(test, target_os = "linux"))]
mod shell_tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A private `$HOME`, removed when dropped (also when the test fails).
    fn temp_home(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("paperclip-guest-{tag}-"))
            .tempdir()
            .unwrap()
    }

    /// Run a remote command line the way sshd does: `$SHELL -c '<command line>'`.
    fn run(home: &std::path::Path, command_line: &str, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command_line)
            .env_clear()
            .env("HOME", home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn prepare_script_creates_the_workspace() {
        let dir = temp_home("prepare");
        let home = dir.path();
        std::fs::write(home.join(".profile"), "echo noisy profile\n").unwrap();
        let out = run(home, &prepare_command(None), b"");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let p = parse_prepared(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!(p.home, home.to_str().unwrap());
        assert!(p.shell == "bash" || p.shell == "sh");
        assert_eq!(p.cwd, format!("{}/paperclip-workspace", home.display()));
        assert!(home.join("paperclip-workspace").is_dir());

        let odd = home.join("it's a dir");
        let out = run(home, &prepare_command(Some(odd.to_str().unwrap())), b"");
        let p = parse_prepared(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!(p.cwd, odd.to_str().unwrap());
        assert!(odd.is_dir());

        std::fs::write(home.join("file"), "").unwrap();
        let out = run(
            home,
            &prepare_command(Some(home.join("file/sub").to_str().unwrap())),
            b"",
        );
        assert_eq!(out.status.code(), Some(PREPARE_MKDIR_FAILED));
    }

    #[test]
    fn durable_exec_script_exact() {
        let s = durable_exec_script(
            "00ff",
            Some("/home/exe/w"),
            &[("A".into(), "it's".into())],
            "sh",
            &["-c".into(), "echo hi".into()],
        );
        assert_eq!(
            s,
            "if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi && \
             if [ -f \"$HOME/.profile\" ]; then . \"$HOME/.profile\" >/dev/null 2>&1 || true; fi && \
             if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi && \
             if [ -f \"$HOME/.zprofile\" ]; then . \"$HOME/.zprofile\" >/dev/null 2>&1 || true; fi && \
             cd '/home/exe/w' && export PAPERCLIP_EXEC_ID=00ff A='it'\"'\"'s' && \
             exec 'sh' '-c' 'echo hi'"
        );
        let ro = durable_exec_script("ab", None, &[("UID".into(), "7".into())], "./a=b", &[]);
        assert!(
            ro.ends_with(
                "fi && exec env PAPERCLIP_EXEC_ID=ab UID='7' sh -c 'exec \"$0\" \"$@\"' './a=b'"
            ),
            "{ro}"
        );
    }

    /// As the VM agent runs a durable script (`/bin/sh -c`, and waits for that process): the
    /// login shell becomes the command, so the agent waits for the command itself, with no
    /// process in between; a death by signal is the command's own (the host reports it as
    /// `128 + n`), and a command's own `exit 255` stays 255.
    #[test]
    fn durable_script_puts_the_command_in_the_login_shells_place() {
        use std::os::unix::process::ExitStatusExt;
        let dir = temp_home("durable-signals");
        let home = dir.path();
        let pid_of_command = {
            let script =
                durable_exec_script("5e", None, &[], "sh", &["-c".into(), "echo $$".into()]);
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .env_clear()
                .env("HOME", home)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0));
            (pid, String::from_utf8(out.stdout).unwrap())
        };
        assert_eq!(pid_of_command.1.trim(), pid_of_command.0.to_string());
        for (script, signal, code) in [
            ("kill -TERM $$", Some(15), None),
            ("kill -KILL $$", Some(9), None),
            ("exit 255", None, Some(255)),
        ] {
            let wrapper = durable_exec_script("5e", None, &[], "sh", &["-c".into(), script.into()]);
            let out = run(home, &wrapper, b"");
            assert_eq!(out.status.signal(), signal, "{script}");
            assert_eq!(out.status.code(), code, "{script}");
            assert_eq!(out.stderr, b"", "{script}");
        }
    }

    /// A command killed by a signal is reported by the wrapper shell as `128 + n`, whichever
    /// shell is the login shell (bash exec's a lone last command by itself, dash need not), and
    /// never by the death of the process the SSH server waits for; a command's own `exit 255`
    /// stays 255.
    #[test]
    fn signalled_commands_exit_128_plus_n_under_every_login_shell() {
        use std::os::unix::process::ExitStatusExt;
        let dir = temp_home("signals");
        let home = dir.path();
        for login_shell in ["/bin/sh", "/bin/bash", "/bin/dash"] {
            if !std::path::Path::new(login_shell).exists() {
                continue;
            }
            for (script, code) in [
                ("kill -TERM $$", 143),
                ("kill -KILL $$", 137),
                ("kill -INT $$", 130),
                ("exit 255", 255),
            ] {
                let wrapper = exec_script("5e", None, &[], "sh", &["-c".into(), script.into()]);
                let out = Command::new(login_shell)
                    .arg("-c")
                    .arg(sh_c(&wrapper))
                    .env_clear()
                    .env("HOME", home)
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                assert_eq!(out.status.signal(), None, "{login_shell}: {script}");
                assert_eq!(out.status.code(), Some(code), "{login_shell}: {script}");
                // No "Terminated"/"Killed" job report from the wrapper shell.
                assert_eq!(out.stderr, b"", "{login_shell}: {script}");
                assert_eq!(out.stdout, b"", "{login_shell}: {script}");
            }
        }
    }

    /// Both wrappers, each run as it is run: the subshell form behind `sh -c` as sshd runs it,
    /// the durable form by `/bin/sh -c` as the VM agent runs it.
    #[test]
    fn exec_wrapper_runs_the_command_verbatim() {
        type Wrapper = fn(&str, Option<&str>, &[(String, String)], &str, &[String]) -> String;
        type AsRun = fn(&str) -> String;
        let dir = temp_home("exec");
        let home = dir.path();
        std::fs::write(
            home.join(".profile"),
            "echo profile noise; export FROM_PROFILE=yes\n",
        )
        .unwrap();
        std::fs::create_dir_all(home.join("w d")).unwrap();
        let forms: [(Wrapper, AsRun); 2] =
            [(exec_script, sh_c), (durable_exec_script, str::to_string)];
        for (wrapper, as_run) in forms {
            let script = wrapper(
                "feedc0de",
                Some(home.join("w d").to_str().unwrap()),
                &[("GREETING".into(), "it's \"quoted\" $HOME".into())],
                "sh",
                &[
                    "-c".into(),
                    "pwd; printf '%s|%s|%s\\n' \"$GREETING\" \"$FROM_PROFILE\" \"$PAPERCLIP_EXEC_ID\"; cat; echo err >&2; exit 7".into(),
                ],
            );
            let out = run(home, &as_run(&script), &[b'a', 0, 0xff, b'\n']);
            assert_eq!(out.status.code(), Some(7), "{script}");
            let mut expected = format!(
                "{}/w d\nit's \"quoted\" $HOME|yes|feedc0de\n",
                home.display()
            )
            .into_bytes();
            expected.extend_from_slice(&[b'a', 0, 0xff, b'\n']);
            assert_eq!(out.stdout, expected, "{script}");
            assert_eq!(out.stderr, b"err\n", "{script}");
        }
        // A command that is not there: the login shell's one line, and 127.
        let missing = durable_exec_script("ab", None, &[], "no-such-command-here", &[]);
        let out = run(home, &missing, b"");
        assert_eq!(out.status.code(), Some(127));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("no-such-command-here"), "{said}");
        assert_eq!(said.lines().count(), 1, "{said}");
    }

    #[test]
    fn kill_script_ends_only_the_marked_tree() {
        let dir = temp_home("kill");
        let home = dir.path();
        let spawn = |id: &str| {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(sh_c(&exec_script(
                    id,
                    None,
                    &[],
                    "sh",
                    &["-c".into(), "sleep 30 & sleep 30; wait".into()],
                )))
                .env_clear()
                .env("HOME", home)
                .env("PATH", "/usr/bin:/bin")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut victim = spawn("0000aaaa");
        let mut bystander = spawn("0000bbbb");
        let marked = |id: &str| -> usize {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| std::fs::read(e.ok()?.path().join("environ")).ok())
                .filter(|env| {
                    env.split(|b| *b == 0)
                        .any(|v| v == format!("PAPERCLIP_EXEC_ID={id}").as_bytes())
                })
                .count()
        };
        // Poll every 20 ms for up to 10 s.
        let soon = |holds: &dyn Fn() -> bool| {
            (0..500).any(|_| {
                holds() || {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    false
                }
            })
        };
        assert!(
            soon(&|| marked("0000aaaa") >= 2 && marked("0000bbbb") >= 2),
            "the command and its children carry the marker"
        );
        let out = run(home, &sh_c(&kill_script(Some("0000aaaa"))), b"");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let status = victim.wait().unwrap();
        assert!(!status.success());
        assert!(soon(&|| marked("0000aaaa") == 0), "the marked tree is gone");
        assert!(marked("0000bbbb") >= 2, "other executions survive");
        // (`kill_script(None)` would also end other test suites' executions on this machine.)
        let out = run(home, &sh_c(&kill_script(Some("0000bbbb"))), b"");
        assert_eq!(out.status.code(), Some(0));
        let _ = bystander.wait();
        assert!(soon(&|| marked("0000bbbb") == 0), "the second tree is gone");
        // Nothing to kill is still success.
        assert_eq!(
            run(home, &sh_c(&kill_script(Some("ffff"))), b"")
                .status
                .code(),
            Some(0)
        );
    }
}
