//! The scripts run for real under dash and bash with the system gzip and tar: what they leave
//! behind on success, on a cut stream and on a missing source.

use super::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const SHELLS: [&str; 2] = ["/bin/dash", "/bin/bash"];

fn run(shell: &str, script: &str, stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(shell)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    run("/bin/sh", "gzip -1c", data).1
}

/// A stream as the host sends it: the framing line, then the bytes.
fn framed(mode: &str, bytes: &[u8]) -> Vec<u8> {
    let mut v = format!("{mode}\n").into_bytes();
    v.extend_from_slice(bytes);
    v
}

fn tmp_of(target: &Path) -> String {
    temp_path(target.to_str().unwrap(), "0123456789abcdef")
}

fn tar_of(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["-cf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A scratch directory, removed when dropped (also when the test fails).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sync-script-")
        .tempdir()
        .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn paths_are_absolute_and_normal() {
    assert_eq!(check_remote_path("/a/b/").unwrap(), "/a/b");
    assert_eq!(check_remote_path("/a").unwrap(), "/a");
    for bad in ["a/b", "/", "//", "/a/../b", "/a/./b", "/a//b", "/a\nb", ""] {
        assert!(check_remote_path(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn file_upload_replaces_the_target_and_applies_the_mode() {
    for shell in SHELLS {
        let scratch_dir = scratch();
        let dir = scratch_dir.path();
        let target = dir.join("sub/f.tar");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"old").unwrap();
        let script = upload_script(
            target.to_str().unwrap(),
            &tmp_of(&target),
            EntryKind::File,
            Some(0o640),
        );
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (code, _, err) = run(shell, &script, &framed("gzip", &gzip(&payload)));
        assert_eq!(code, 0, "{shell}: {err}");
        assert_eq!(std::fs::read(&target).unwrap(), payload);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(names(target.parent().unwrap()), ["f.tar"]);
        scratch_dir.close().unwrap();
    }
}

#[test]
fn a_cut_stream_leaves_the_old_target_and_no_temp() {
    for shell in SHELLS {
        let scratch_dir = scratch();
        let dir = scratch_dir.path();
        // File target.
        let target = dir.join("f");
        std::fs::write(&target, b"old").unwrap();
        let stream = gzip(&vec![7u8; 200_000]);
        let cut = &stream[..stream.len() / 2];
        let (code, _, err) = run(
            shell,
            &upload_script(
                target.to_str().unwrap(),
                &tmp_of(&target),
                EntryKind::File,
                None,
            ),
            &framed("gzip", cut),
        );
        assert_eq!(code, STREAM_CUT, "{shell}: {err}");
        assert!(err.contains("paperclip-sync: the stream to"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names(dir), ["f"]);

        // Directory target.
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![1u8; 1024]).unwrap();
        std::fs::write(src.join("b"), vec![2u8; 2048]).unwrap();
        let whole = tar_of(&src);
        let old = dir.join("w");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("keep"), b"k").unwrap();
        let script = upload_script(
            old.to_str().unwrap(),
            &tmp_of(&old),
            EntryKind::Directory,
            None,
        );
        let stream = gzip(&whole);
        // Without its trailer the archive is whole up to a member boundary (tar alone would
        // accept that); gzip is what notices.
        for cut in [&stream[..stream.len() - 8], &stream[..stream.len() / 2]] {
            let (code, _, err) = run(shell, &script, &framed("gzip", cut));
            assert_eq!(code, STREAM_CUT, "{shell} cut at {}: {err}", cut.len());
            assert_eq!(names(&old), ["keep"]);
            assert_eq!(names(dir), ["f", "src", "w"]);
        }
        scratch_dir.close().unwrap();
    }
}

/// A lost connection: the stream is cut and stderr is a pipe nobody reads any more, so the
/// failure message itself raises SIGPIPE. The temporary copy must still go.
#[test]
fn a_cut_stream_with_stderr_gone_still_cleans_up() {
    for shell in SHELLS {
        let scratch_dir = scratch();
        let dir = scratch_dir.path();
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![1u8; 100_000]).unwrap();
        let stream = gzip(&tar_of(&src));
        let target = dir.join("t");
        let script = upload_script(
            target.to_str().unwrap(),
            &tmp_of(&target),
            EntryKind::Directory,
            None,
        );
        let stream = framed("gzip", &stream);
        let (err_read, err_write) = std::io::pipe().unwrap();
        drop(err_read);
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err_write))
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(&stream[..stream.len() / 2]).unwrap();
        drop(pipe);
        let status = child.wait().unwrap();
        assert!(!status.success(), "{shell}");
        assert_eq!(names(dir), ["src"], "{shell}: a temporary was left");
        scratch_dir.close().unwrap();
    }
}

#[test]
fn directory_upload_replaces_the_tree() {
    for shell in SHELLS {
        let scratch_dir = scratch();
        let dir = scratch_dir.path();
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("d/é")).unwrap();
        std::fs::write(src.join("d/é/x"), b"x").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("d/é/x", src.join("link")).unwrap();
        let target = dir.join("deep/w");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("stale"), b"s").unwrap();
        let script = upload_script(
            target.to_str().unwrap(),
            &tmp_of(&target),
            EntryKind::Directory,
            Some(0o750),
        );
        let (code, _, err) = run(shell, &script, &framed("gzip", &gzip(&tar_of(&src))));
        assert_eq!(code, 0, "{shell}: {err}");
        assert_eq!(names(&target), ["d", "empty", "link"]);
        assert_eq!(std::fs::read(target.join("d/é/x")).unwrap(), b"x");
        assert_eq!(
            std::fs::read_link(target.join("link")).unwrap(),
            Path::new("d/é/x")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        assert_eq!(names(&dir.join("deep")), ["w"]);
        scratch_dir.close().unwrap();
    }
}

#[test]
fn download_writes_raw_or_gzip_and_reports_a_missing_source() {
    for shell in SHELLS {
        let scratch_dir = scratch();
        let dir = scratch_dir.path();
        let file = dir.join("f");
        std::fs::write(&file, b"hello").unwrap();
        let script = download_script(file.to_str().unwrap(), EntryKind::File, &[], false);
        let (code, out, _) = run(shell, &script, b"none\n");
        assert_eq!((code, out.as_slice()), (0, &b"hello"[..]));
        let (code, out, _) = run(shell, &script, b"gzip\n");
        assert_eq!(code, 0);
        assert_eq!(run("/bin/sh", "gzip -dc", &out).1, b"hello");

        let tree = dir.join("t");
        std::fs::create_dir_all(tree.join(".git")).unwrap();
        std::fs::write(tree.join(".git/HEAD"), b"ref").unwrap();
        std::fs::write(tree.join("kept"), b"k").unwrap();
        let script = download_script(
            tree.to_str().unwrap(),
            EntryKind::Directory,
            &[".git".to_string()],
            false,
        );
        for line in ["none\n", "gzip\n"] {
            let (code, out, err) = run(shell, &script, line.as_bytes());
            assert_eq!(code, 0, "{shell} {line}: {err}");
            let tar = if line == "gzip\n" {
                run("/bin/sh", "gzip -dc", &out).1
            } else {
                out
            };
            let (_, listing, _) = run("/bin/sh", "tar -tf -", &tar);
            let listing = String::from_utf8(listing).unwrap();
            assert!(listing.contains("./kept"), "{listing}");
            assert!(!listing.contains(".git"), "{listing}");
        }

        let missing = dir.join("nope");
        for kind in [EntryKind::File, EntryKind::Directory] {
            let script = download_script(missing.to_str().unwrap(), kind, &[], false);
            let (code, out, err) = run(shell, &script, b"gzip\n");
            assert_eq!(code, SOURCE_MISSING, "{shell}: {err}");
            assert!(out.is_empty());
            assert!(err.starts_with(MESSAGE_PREFIX), "{err}");
        }
        scratch_dir.close().unwrap();
    }
}

#[test]
fn a_failing_tar_fails_the_download_even_through_gzip() {
    for shell in SHELLS {
        let scratch_dir = scratch();
        let dir = scratch_dir.path();
        let tree = dir.join("t");
        std::fs::create_dir_all(&tree).unwrap();
        // tar fails (exit 2) on an unreadable option value; gzip alone would hide it.
        let script = download_script(tree.to_str().unwrap(), EntryKind::Directory, &[], false)
            .replace("tar -cf -", "tar --no-such-option -cf -");
        let (code, _, err) = run(shell, &script, b"gzip\n");
        assert_eq!(code, PACK_FAILED, "{shell}: {err}");
        scratch_dir.close().unwrap();
    }
}

/// Uncompressed: the script only unpacks beside the target; the commit (or the discard) is a
/// separate step, taken once the host knows it sent everything.
#[test]
fn an_uncompressed_upload_waits_for_its_commit() {
    for shell in SHELLS {
        for kind in [EntryKind::File, EntryKind::Directory] {
            let scratch_dir = scratch();
            let dir = scratch_dir.path();
            let src = dir.join("src");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("a"), b"new").unwrap();
            let target = dir.join("t");
            let bytes = match kind {
                EntryKind::File => b"new".to_vec(),
                EntryKind::Directory => tar_of(&src),
            };
            match kind {
                EntryKind::File => std::fs::write(&target, b"old").unwrap(),
                EntryKind::Directory => std::fs::create_dir(&target).unwrap(),
            }
            let tmp = tmp_of(&target);
            let t = target.to_str().unwrap();
            let script = upload_script(t, &tmp, kind, Some(0o700));
            for finish in ["discard", "commit"] {
                let (code, _, err) = run(shell, &script, &framed("none", &bytes));
                assert_eq!(code, 0, "{shell} {kind:?}: {err}");
                assert!(
                    Path::new(&tmp).exists(),
                    "{shell}: unpacked beside the target"
                );
                if kind == EntryKind::File {
                    assert_eq!(std::fs::read(&target).unwrap(), b"old", "not committed yet");
                } else {
                    assert!(names(&target).is_empty(), "not committed yet");
                }
                let next = if finish == "commit" {
                    commit_script(t, &tmp, kind, Some(0o700))
                } else {
                    discard_script(&tmp)
                };
                let (code, _, err) = run(shell, &next, b"");
                assert_eq!(code, 0, "{shell} {finish}: {err}");
                assert!(!Path::new(&tmp).exists());
                if finish == "commit" {
                    let file = match kind {
                        EntryKind::File => target.clone(),
                        EntryKind::Directory => target.join("a"),
                    };
                    assert_eq!(std::fs::read(file).unwrap(), b"new");
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
                    assert_eq!(mode, 0o700);
                }
            }
            assert_eq!(names(dir), ["src", "t"]);
            scratch_dir.close().unwrap();
        }
    }
}
