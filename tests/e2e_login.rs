//! Login PTYs through the real worker against the simulator's real PTY, with probe CLIs in
//! every VM's home: each key's fixed command and environment, the session home's checks on the
//! request and on the VM, terminal text (split UTF-8, a lone `\r`), Close while the CLI runs,
//! many sessions at once, and a connection reset; on loopback and over the link model.

mod e2e_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_support::{
    eventually, processes_with_exec_id, run_id, unique, Env, EnvOptions, LINK_30MS_100MBIT,
};
use exe_dev_sim::LinkModel;
use serde_json::{json, Value};

const HOME_ROOT: &str = "/tmp/paperclip-adapter-login";

/// What every probe CLI prints first: how it was started, then its own mode.
const PROBE_HEAD: &str = r#"#!/bin/sh
printf 'argv: %s' "$(basename "$0")"; printf ' [%s]' "$@"; printf '\n'
printf 'env: CODEX_HOME=%s GROK_HOME=%s\n' "${CODEX_HOME-unset}" "${GROK_HOME-unset}"
if [ -t 0 ] && [ -t 1 ]; then printf 'tty: yes %s\n' "$(stty size)"; else printf 'tty: no\n'; fi
for h in "${CODEX_HOME-}" "${GROK_HOME-}"; do
  [ -n "$h" ] && printf 'home: %s\n' "$(stat -c '%a %F' "$h")"
done
printf 'exec-id: %s\n' "$PAPERCLIP_EXEC_ID"
"#;

/// `claude`: reads raw bytes from the terminal up to a `\r`, prints them in hex, exits 7.
const PROBE_CLAUDE: &str = r#"stty raw -echo
printf 'raw: ready\r\n'
got=''
while :; do
  b=$(dd bs=1 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')
  [ -z "$b" ] && exit 9
  got="$got $b"
  [ "$b" = 0d ] && break
done
stty sane
printf 'read:%s\n' "$got"
exit 7
"#;

/// `codex`: about 1 MB of mixed-width UTF-8 with no newline (so the PTY passes it unchanged),
/// then exits 0.
const PROBE_CODEX: &str = r#"s='aé€😀'
i=0; while [ $i -lt 10 ]; do s="$s$s"; i=$((i+1)); done
printf 'utf8:'
i=0; while [ $i -lt 100 ]; do printf '%s' "$s"; i=$((i+1)); done
printf ':end\n'
exit 0
"#;

/// `grok`: waits (for Close, or a reset) until killed.
const PROBE_GROK: &str = "exec sleep 1000\n";

/// A home template holding the probe CLIs in `~/.local/bin`, found through `~/.profile` only.
fn probe_home(dir: &Path) {
    let bin = dir.join(".local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        dir.join(".profile"),
        "PATH=\"$HOME/.local/bin:$PATH\"\nexport PATH\n",
    )
    .unwrap();
    for (name, body) in [
        ("claude", PROBE_CLAUDE),
        ("codex", PROBE_CODEX),
        ("grok", PROBE_GROK),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("{PROBE_HEAD}{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// An environment whose VMs hold the probe CLIs; the template dir lives as long as it.
async fn probe_env(link: Option<LinkModel>) -> (Env, tempfile::TempDir) {
    let template = tempfile::tempdir().unwrap();
    probe_home(template.path());
    let mut opts = EnvOptions::over(link);
    opts.sim.home_template = Some(template.path().to_path_buf());
    (Env::start_with(opts).await, template)
}

fn fresh_home() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{HOME_ROOT}/{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

/// One login session as Paperclip sees it.
struct Login {
    route: String,
    session: String,
    text: String,
    chunks: Vec<usize>,
    exit: Option<Value>,
}

impl Login {
    /// The output so far with the terminal's `\r\n` as `\n`.
    fn lines(&self) -> String {
        self.text.replace("\r\n", "\n")
    }

    /// A banner line's value (`key: value`).
    fn field(&self, key: &str) -> Option<String> {
        self.lines()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_string))
    }
}

async fn open_login(env: &Env, lease: &Value, key: &str, home: &str) -> Login {
    let route = format!("login-route-{}", unique());
    let opened = env
        .ok(
            "loginPtyOpen",
            json!({"hostRouteId": route, "driverKey": "exe-dev", "companyId": "c",
                "environmentId": "e", "providerLeaseId": lease["providerLeaseId"],
                "loginCommandKey": key, "sessionHome": home}),
        )
        .await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    assert!(!session.is_empty());
    Login {
        route,
        session,
        text: String::new(),
        chunks: Vec::new(),
        exit: None,
    }
}

/// Take the notifications so far into the sessions they belong to.
fn collect(env: &Env, logins: &mut [&mut Login]) {
    for n in env.take_notifications() {
        let p = &n["params"];
        let Some(l) = logins.iter_mut().find(|l| p["hostRouteId"] == *l.route) else {
            continue;
        };
        assert_eq!(p["workerSessionId"], *l.session, "{n}");
        assert!(l.exit.is_none(), "a frame after the exit: {n}");
        match n["method"].as_str() {
            Some("loginPty.output") => {
                let chunk = p["chunk"].as_str().expect("a text chunk");
                let chars = chunk.chars().count();
                assert!(chars > 0 && chars <= 1_000_000, "{chars}");
                l.chunks.push(chars);
                l.text.push_str(chunk);
            }
            Some("loginPty.exit") => l.exit = Some(p.clone()),
            _ => {}
        }
    }
}

async fn until(env: &Env, l: &mut Login, within: Duration, done: impl Fn(&Login) -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        collect(env, &mut [&mut *l]);
        if done(l) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn input(env: &Env, l: &Login, data: &str) {
    env.ok(
        "loginPtyInput",
        json!({"workerSessionId": l.session, "data": data}),
    )
    .await;
}

async fn close(env: &Env, l: &Login) {
    let started = Instant::now();
    let ack = env
        .ok("loginPtyClose", json!({"hostRouteId": l.route}))
        .await;
    assert_eq!(ack, json!({"hostRouteId": l.route}));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// Each key runs its fixed command, from the login profile's PATH, in a PTY of 30×120, with
/// its home variable (a fresh 0700 directory) and nothing else; Claude's terminal gets the
/// input verbatim, a lone `\r` included, and its exit code is the session's.
async fn each_key(link: Option<LinkModel>) {
    let (env, _template) = probe_env(link).await;
    let lease = env.acquire(&run_id("login-keys")).await;

    let home = fresh_home();
    let mut claude = open_login(&env, &lease, "claude", &home).await;
    assert!(
        until(&env, &mut claude, Duration::from_secs(20), |l| l
            .text
            .contains("raw: ready"))
        .await,
        "{:?}",
        claude.text
    );
    // The browser code, then (as Paperclip sends it, 150 ms later) the carriage return alone.
    input(&env, &claude, "ab-CD").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    input(&env, &claude, "\r").await;
    assert!(
        until(&env, &mut claude, Duration::from_secs(20), |l| l
            .exit
            .is_some())
        .await,
        "{:?}",
        claude.text
    );
    assert_eq!(
        claude.field("argv").as_deref(),
        Some("claude [setup-token]")
    );
    assert_eq!(
        claude.field("env").as_deref(),
        Some("CODEX_HOME=unset GROK_HOME=unset")
    );
    assert_eq!(claude.field("tty").as_deref(), Some("yes 30 120"));
    assert!(
        claude.lines().contains("read: 61 62 2d 43 44 0d\n"),
        "{:?}",
        claude.text
    );
    assert_eq!(claude.exit.as_ref().unwrap()["exitCode"], 7);
    // Claude is stopped even after its exit, then closed.
    env.ok("loginPtyStop", json!({"workerSessionId": claude.session}))
        .await;
    close(&env, &claude).await;

    for key in ["codex", "grok"] {
        let home = fresh_home();
        let mut l = open_login(&env, &lease, key, &home).await;
        assert!(
            until(&env, &mut l, Duration::from_secs(20), |l| l
                .text
                .contains("exec-id: "))
            .await,
            "{:?}",
            l.text
        );
        assert_eq!(
            l.field("argv").as_deref(),
            Some(format!("{key} [login] [--device-auth]").as_str())
        );
        let env_line = if key == "codex" {
            format!("CODEX_HOME={home} GROK_HOME=unset")
        } else {
            format!("CODEX_HOME=unset GROK_HOME={home}")
        };
        assert_eq!(l.field("env"), Some(env_line));
        assert_eq!(l.field("home").as_deref(), Some("700 directory"));
        assert_eq!(l.field("tty").as_deref(), Some("yes 30 120"));
        if key == "codex" {
            assert!(
                until(&env, &mut l, Duration::from_secs(30), |l| l.exit.is_some()).await,
                "{} chars",
                l.text.len()
            );
            check_utf8(&l);
            assert_eq!(l.exit.as_ref().unwrap()["exitCode"], 0);
        } else {
            // grok waits: Close (with no Stop, as Paperclip does for codex and grok) kills it.
            let exec_id = l.field("exec-id").unwrap();
            assert!(!processes_with_exec_id(&exec_id).is_empty());
            close(&env, &l).await;
            assert!(
                eventually(Duration::from_secs(5), || processes_with_exec_id(&exec_id)
                    .is_empty())
                .await,
                "processes left: {:?}",
                processes_with_exec_id(&exec_id)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            collect(&env, &mut [&mut l]);
            assert!(l.exit.is_none(), "nothing is sent after the close");
            let _ = std::fs::remove_dir_all(&home);
            continue;
        }
        close(&env, &l).await;
        let _ = std::fs::remove_dir_all(&home);
    }
    let _ = std::fs::remove_dir_all(&home);
    env.destroy(&lease).await;
    env.finish().await;
}

/// The codex probe's ~1 MB of 1- to 4-byte characters arrived whole: no character was split
/// (a split one would be lost or replaced), and no chunk is over the limit.
fn check_utf8(l: &Login) {
    let unit = "aé€😀".repeat(1024);
    let want = format!("utf8:{}:end", unit.repeat(100));
    let text = l.lines();
    assert!(!text.contains('\u{fffd}'), "a replacement character");
    let got = text
        .lines()
        .find(|x| x.starts_with("utf8:"))
        .expect("the utf8 line");
    assert_eq!(got.len(), want.len(), "{} chunks", l.chunks.len());
    assert!(got == want, "the text differs");
    assert!(l.chunks.len() > 1, "one chunk proves nothing about splits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_runs_its_fixed_command_on_loopback() {
    each_key(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_runs_its_fixed_command_over_the_link() {
    each_key(LINK_30MS_100MBIT).await;
}

/// `sessionHome` is refused before anything runs unless it is exactly Paperclip's shape, and on
/// the VM unless it is a private directory of the lease's user (not a symbolic link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_home_attacks_are_refused() {
    let (env, _template) = probe_env(None).await;
    let lease = env.acquire(&run_id("login-home")).await;
    let good = fresh_home();
    for bad in [
        format!("{HOME_ROOT}/../etc"),
        format!("{good}/.."),
        format!("{good}/../../etc"),
        good.to_uppercase(),
        good.replace(HOME_ROOT, "/tmp/other"),
        good.replace(HOME_ROOT, "/var/tmp/paperclip-adapter-login"),
        format!("{good}/"),
        format!("{good};id"),
        HOME_ROOT.to_string(),
        String::new(),
    ] {
        for key in ["claude", "codex", "grok"] {
            let e = env
                .err(
                    "loginPtyOpen",
                    json!({"hostRouteId": format!("login-route-{}", unique()),
                        "providerLeaseId": lease["providerLeaseId"],
                        "loginCommandKey": key, "sessionHome": bad}),
                )
                .await;
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains("sessionHome must be"),
                "{bad:?}: {e}"
            );
        }
    }
    // An unknown key is refused the same way: no command comes from the request.
    let e = env
        .err(
            "loginPtyOpen",
            json!({"hostRouteId": "login-route-k", "providerLeaseId": lease["providerLeaseId"],
                "loginCommandKey": "sh", "sessionHome": good}),
        )
        .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("loginCommandKey \"sh\" is not one of"),
        "{e}"
    );

    // On the VM (the simulator's VMs share this machine's /tmp): the home is a symbolic link
    // to a directory elsewhere. The CLI never starts, and the target is left as it was.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::create_dir(HOME_ROOT);
    let linked = fresh_home();
    std::os::unix::fs::symlink(elsewhere.path(), &linked).unwrap();
    let mut l = open_login(&env, &lease, "codex", &linked).await;
    assert!(
        until(&env, &mut l, Duration::from_secs(20), |l| l.exit.is_some()).await,
        "{:?}",
        l.text
    );
    assert!(
        l.text.contains("is not a private directory"),
        "{:?}",
        l.text
    );
    assert!(!l.text.contains("argv:"), "the CLI ran: {:?}", l.text);
    assert_eq!(l.exit.as_ref().unwrap()["exitCode"], 2);
    let mode = std::fs::metadata(elsewhere.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755, "the link's target was changed");
    close(&env, &l).await;
    std::fs::remove_file(&linked).unwrap();
    env.destroy(&lease).await;
    env.finish().await;
}

/// Eight Claude sessions on one VM at once, each fed its own code: each prints its own.
async fn many_sessions(link: Option<LinkModel>) {
    let (env, _template) = probe_env(link).await;
    let lease = env.acquire(&run_id("login-many")).await;
    let mut logins = Vec::new();
    for _ in 0..8 {
        logins.push(open_login(&env, &lease, "claude", &fresh_home()).await);
    }
    let ready = eventually(Duration::from_secs(30), || {
        collect(&env, &mut logins.iter_mut().collect::<Vec<_>>());
        logins.iter().all(|l| l.text.contains("raw: ready"))
    })
    .await;
    assert!(ready, "not every session started");
    for (i, l) in logins.iter().enumerate() {
        input(&env, l, &format!("code{i}\r")).await;
    }
    let done = eventually(Duration::from_secs(30), || {
        collect(&env, &mut logins.iter_mut().collect::<Vec<_>>());
        logins.iter().all(|l| l.exit.is_some())
    })
    .await;
    assert!(done, "not every session exited");
    for (i, l) in logins.iter().enumerate() {
        let hex: String = format!("code{i}\r")
            .bytes()
            .map(|b| format!(" {b:02x}"))
            .collect();
        assert!(
            l.lines().contains(&format!("read:{hex}\n")),
            "session {i}: {:?}",
            l.text
        );
        assert_eq!(l.exit.as_ref().unwrap()["exitCode"], 7);
        env.ok("loginPtyStop", json!({"workerSessionId": l.session}))
            .await;
        close(&env, l).await;
    }
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_at_once_on_loopback() {
    many_sessions(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_at_once_over_the_link() {
    many_sessions(LINK_30MS_100MBIT).await;
}

/// A reset of the VM's connection ends a waiting session at once with `exitCode: null` (the
/// CLI's status is unknown), never a made-up code; Close then still acknowledges.
async fn reset_ends_the_session(link: Option<LinkModel>) {
    let (env, _template) = probe_env(link).await;
    let lease = env.acquire(&run_id("login-reset")).await;
    let mut l = open_login(&env, &lease, "grok", &fresh_home()).await;
    assert!(
        until(&env, &mut l, Duration::from_secs(20), |l| l
            .text
            .contains("exec-id: "))
        .await
    );
    assert!(env.sim.reset_ssh_connections() >= 1, "nothing to reset");
    let started = Instant::now();
    assert!(
        until(&env, &mut l, Duration::from_secs(15), |l| l.exit.is_some()).await,
        "no exit after a reset"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        l.exit,
        Some(json!({"hostRouteId": l.route, "workerSessionId": l.session, "exitCode": null}))
    );
    close(&env, &l).await;
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ends_the_session_on_loopback() {
    reset_ends_the_session(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ends_the_session_over_the_link() {
    reset_ends_the_session(LINK_30MS_100MBIT).await;
}
