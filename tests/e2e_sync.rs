//! Native workspace sync through the real worker and component against the simulator:
//! `environmentSyncIn` / `environmentSyncOut` round trips of a tree with empty and large files,
//! non-ASCII names, symbolic links (kept and followed), modes and excludes, byte for byte, on
//! loopback and over the link model; and the failures: a missing source, a path outside the
//! allowed roots, a failing post-upload command; and a connection cut mid-stream, which is retried
//! after reconnecting. After every failure the old target is whole and no temporary file is
//! left on either side.

mod e2e_support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use e2e_support::{run_id, Env, EnvOptions, LINK_30MS_100MBIT};
use exe_dev_sim::LinkModel;
use serde_json::{json, Value};

/// What a tree holds, for comparison: relative path → kind, permission bits, content or link.
fn tree(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let link = std::fs::read_link(&path).unwrap();
                out.insert(rel, ('l', 0, link.to_string_lossy().as_bytes().to_vec()));
            } else if meta.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                stack.push(path);
            } else {
                out.insert(rel, ('f', mode, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// A workspace: empty and large files, non-ASCII names, a link, modes, and what excludes drop.
fn workspace(root: &Path, large: usize) {
    let mkdir = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    let write = |p: &str, data: &[u8], mode: u32| {
        std::fs::write(root.join(p), data).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mkdir("src/日本/é");
    mkdir(".git/objects");
    mkdir("node_modules/pkg");
    mkdir("empty-dir");
    write("empty", b"", 0o644);
    write("run.sh", b"#!/bin/sh\necho hi\n", 0o750);
    write("src/日本/é/naïve 😀.txt", "ünïcödé\n".as_bytes(), 0o600);
    let mut big = Vec::with_capacity(large);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while big.len() < large {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half random, half text: compressible enough to show, random enough to be honest.
        if (big.len() / 65536) % 2 == 0 {
            big.extend_from_slice(&x.to_le_bytes());
        } else {
            big.extend_from_slice(b"fn main() { println!(\"hello\"); }\n");
        }
    }
    big.truncate(large);
    write("src/big.bin", &big, 0o644);
    write(".git/objects/ab", b"git object", 0o444);
    write("node_modules/pkg/index.js", b"module.exports = 1;\n", 0o644);
    std::os::unix::fs::symlink("src/big.bin", root.join("link-to-big")).unwrap();
}

fn mapping(source: &Path, target: &Path, kind: &str, extra: Value) -> Value {
    let mut m = json!({
        "sourcePath": source.to_str().unwrap(),
        "targetPath": target.to_str().unwrap(),
        "kind": kind,
    });
    e2e_support::merge(&mut m, &extra);
    m
}

fn sync_params(env: &Env, lease: &Value, files: Vec<Value>, commands: Value) -> Value {
    env.params(json!({
        "lease": lease,
        "operations": [{"operationId": "sync-op-1", "files": files, "postUploadCommands": commands}],
    }))
}

/// Names directly in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The bytes that have arrived so far in the temporary copy of `name` that a transfer writes
/// in `dir` (`.<name>.paperclip-sync.*`, on the VM and on the host alike).
fn staged_bytes(dir: &Path, name: &str) -> u64 {
    let prefix = format!(".{name}.paperclip-sync.");
    names(dir)
        .iter()
        .filter(|n| n.starts_with(&prefix))
        .flat_map(|n| e2e_support::files_below(&dir.join(n)))
        // A file may be renamed into place between the listing and this look.
        .filter_map(|f| std::fs::symlink_metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_round_trips_byte_exactly() {
    round_trip(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_round_trips_byte_exactly_over_30ms_100mbit() {
    round_trip(LINK_30MS_100MBIT).await;
}

async fn round_trip(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("sync")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let home = env.sim.vm_home(&vm).unwrap();
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("ws");
    workspace(&source, 12 << 20);
    let excludes = json!([".git", "node_modules/*"]);

    // In: the directory replaces an existing remote target; links kept.
    let remote = home.join("work/ws");
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join("stale"), b"gone after the sync").unwrap();
    let answer = env
        .ok(
            "environmentSyncIn",
            sync_params(
                &env,
                &lease,
                vec![mapping(
                    &source,
                    &remote,
                    "directory",
                    json!({"exclude": excludes}),
                )],
                json!([]),
            ),
        )
        .await;
    let mut expected = tree(&source);
    expected.retain(|k, _| !k.starts_with(".git") && !k.starts_with("node_modules/"));
    let got = tree(&remote);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert!(got == expected, "the VM tree differs from the source");
    let op = &answer["operations"][0];
    assert_eq!(op["operationId"], "sync-op-1");
    let files = expected.values().filter(|v| v.0 != 'd').count() as u64;
    assert_eq!(op["filesTransferred"], files, "{answer}");
    let bytes: usize = expected
        .values()
        .filter(|v| v.0 == 'f')
        .map(|v| v.2.len())
        .sum();
    assert_eq!(op["bytesTransferred"], bytes as u64, "{answer}");
    assert_eq!(
        names(&home.join("work")),
        ["ws"],
        "no temporary left in the VM"
    );

    // Out: back into a fresh host directory, byte for byte, with the mode asked for.
    let restored = host.path().join("restore");
    std::fs::create_dir(&restored).unwrap();
    env.ok(
        "environmentSyncOut",
        sync_params(
            &env,
            &lease,
            vec![mapping(
                &remote,
                &restored,
                "directory",
                json!({"mode": 0o700}),
            )],
            json!([]),
        ),
    )
    .await;
    assert!(tree(&restored) == expected, "the restored tree differs");
    let mode = std::fs::metadata(&restored).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    assert_eq!(
        names(host.path()),
        ["restore", "ws"],
        "no temporary left on the host"
    );

    // followSymlinks: the link arrives as the file it points to.
    let followed = home.join("followed");
    env.ok(
        "environmentSyncIn",
        sync_params(
            &env,
            &lease,
            vec![mapping(
                &source,
                &followed,
                "directory",
                json!({"followSymlinks": true, "exclude": excludes}),
            )],
            json!([]),
        ),
    )
    .await;
    let link = std::fs::symlink_metadata(followed.join("link-to-big")).unwrap();
    assert!(link.is_file());
    assert_eq!(
        std::fs::read(followed.join("link-to-big")).unwrap(),
        std::fs::read(source.join("src/big.bin")).unwrap()
    );

    // A file with a mode, then Paperclip's extract command, in order.
    let archive = host.path().join("ws.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&source)
        .arg("run.sh")
        .status()
        .unwrap();
    assert!(status.success());
    let runtime = home.join("work/.paperclip-runtime/opencode");
    let upload = runtime.join("workspace-upload.tar");
    let extract = format!(
        "mkdir -p {w} && tar -xf {t} -C {w} && rm -f {t}",
        w = home.join("work/extracted").display(),
        t = upload.display()
    );
    env.ok(
        "environmentSyncIn",
        sync_params(
            &env,
            &lease,
            vec![mapping(&archive, &upload, "file", json!({"mode": 0o600}))],
            json!([{"command": extract}, {"command": "test -x extracted/run.sh", "cwd": home.join("work").to_str().unwrap()}]),
        ),
    )
    .await;
    assert_eq!(
        std::fs::read(home.join("work/extracted/run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert!(!upload.exists(), "the extract command removed the archive");
    assert!(names(&runtime).is_empty());

    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_clear_and_leave_the_old_target_whole() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("syncfail")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let home = env.sim.vm_home(&vm).unwrap();
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("ws");
    workspace(&source, 1 << 20);
    let remote = home.join("target");
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join("old"), b"old").unwrap();

    // A host source that does not exist.
    let e = env
        .err(
            "environmentSyncIn",
            sync_params(
                &env,
                &lease,
                vec![mapping(
                    &host.path().join("nope"),
                    &remote,
                    "directory",
                    json!({}),
                )],
                json!([]),
            ),
        )
        .await;
    assert_eq!(e["data"]["kind"], "not-found", "{e}");

    // A host path outside the allowed roots: refused, with the flag that allows it.
    let e = env
        .err(
            "environmentSyncIn",
            sync_params(
                &env,
                &lease,
                vec![mapping(Path::new("/etc"), &remote, "directory", json!({}))],
                json!([]),
            ),
        )
        .await;
    assert_eq!(e["data"]["kind"], "denied", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("--allow-path"),
        "{e}"
    );

    // A VM source that does not exist: the host target stays as it was.
    let keep = host.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("mine"), b"mine").unwrap();
    let e = env
        .err(
            "environmentSyncOut",
            sync_params(
                &env,
                &lease,
                vec![mapping(
                    &home.join("missing"),
                    &keep,
                    "directory",
                    json!({}),
                )],
                json!([]),
            ),
        )
        .await;
    assert_eq!(e["data"]["kind"], "not-found", "{e}");
    assert_eq!(names(&keep), ["mine"]);

    // A failing post-upload command stops the rest, naming its exit code and stderr.
    let marker = home.join("second-ran");
    let e = env
        .err(
            "environmentSyncIn",
            sync_params(
                &env,
                &lease,
                vec![mapping(&source, &remote, "directory", json!({}))],
                json!([{"command": "echo broken >&2; exit 3"}, {"command": format!("touch {}", marker.display())}]),
            ),
        )
        .await;
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("exited with code 3: broken"), "{e}");
    assert!(!marker.exists(), "the second command must not run");

    // A VM target whose parent is a file: unpacking fails, nothing is left behind.
    let blocker = home.join("blocker");
    std::fs::write(&blocker, b"a file").unwrap();
    let e = env
        .err(
            "environmentSyncIn",
            sync_params(
                &env,
                &lease,
                vec![mapping(&source, &blocker.join("t"), "directory", json!({}))],
                json!([]),
            ),
        )
        .await;
    assert_eq!(e["data"]["kind"], "transfer", "{e}");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"a file");

    let leftovers: Vec<String> = names(&home)
        .into_iter()
        .chain(names(host.path()))
        .filter(|n| n.contains("paperclip-sync"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    env.destroy(&lease).await;
    env.finish().await;
}

/// A connection cut mid-stream (every live connection reset, as when a NAT entry expires):
/// the mapping is sent again after reconnecting, within the call's deadline, and the target
/// ends up whole, with no temporary left on either side. Both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_stream_is_retried_after_reconnecting() {
    let env = Env::start_with(EnvOptions::over(LINK_30MS_100MBIT)).await;
    let lease = env.acquire(&run_id("synccut")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let home = env.sim.vm_home(&vm).unwrap();
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("ws");
    // 40 MiB at 100 Mbit/s: seconds on the wire, time enough to cut it.
    workspace(&source, 40 << 20);
    let remote = home.join("target");
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join("old"), b"old").unwrap();
    let back = host.path().join("back");

    // Each direction with where its copy arrives: beside the target, on the receiving side.
    for (method, files, receiving) in [
        (
            "environmentSyncIn",
            vec![mapping(&source, &remote, "directory", json!({}))],
            (home.as_path(), "target"),
        ),
        (
            "environmentSyncOut",
            vec![mapping(&remote, &back, "directory", json!({}))],
            (host.path(), "back"),
        ),
    ] {
        let params = sync_params(&env, &lease, files, json!([]));
        let inv = params["paperclipInvocation"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let call = env.call(method, params);
        let cutter = async {
            // Cut once the stream is well under way: 4 of its 40 MiB have arrived.
            let (dir, name) = receiving;
            let under_way = e2e_support::eventually(std::time::Duration::from_secs(60), || {
                staged_bytes(dir, name) >= 4 << 20
            })
            .await;
            assert!(under_way, "{method}: the copy never got under way");
            env.sim.reset_ssh_connections()
        };
        let (answer, reset) = tokio::join!(call, cutter);
        assert!(reset > 0, "{method}: a connection was up to reset");
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        let notes = env.take_notifications();
        let retried = e2e_support::logs_of(&notes, &inv).iter().any(|n| {
            n["params"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("reconnecting")
        });
        assert!(
            retried,
            "{method}: the cut was seen and the mapping sent again"
        );
    }
    assert_eq!(
        tree(&remote),
        tree(&source),
        "the VM target is the source, whole"
    );
    assert_eq!(
        tree(&back),
        tree(&source),
        "the host target is the VM's tree, whole"
    );
    let settled = e2e_support::eventually(std::time::Duration::from_secs(10), || {
        names(&home).iter().all(|n| !n.contains("paperclip-sync"))
            && names(host.path())
                .iter()
                .all(|n| !n.contains("paperclip-sync"))
    })
    .await;
    assert!(
        settled,
        "temporary left: {:?} {:?}",
        names(&home),
        names(host.path())
    );
    env.destroy(&lease).await;
    env.finish().await;
}
