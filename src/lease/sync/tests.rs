use super::*;
use crate::host::SshOutput;
use crate::lease::CallContext;
use crate::testing::{FakeHost, Transfer};
use serde_json::json;

fn provider(host: &FakeHost) -> Provider<'_> {
    Provider::new(
        host,
        &CallContext {
            config: json!({"apiKey": "tok", "timeoutMs": 60_000}).to_string(),
            environment_id: "env-1".into(),
            company_id: None,
            deadline_ms: 0,
        },
    )
    .unwrap()
}

fn lease() -> Lease {
    Lease {
        provider_lease_id: Some("vm1".into()),
        metadata: json!({"remoteCwd": "/home/exedev/w", "sshDest": "vm1.exe.xyz"})
            .as_object()
            .unwrap()
            .clone(),
        expires_at: None,
    }
}

fn mapping(source: &str, target: &str, kind: EntryKind) -> SyncMapping {
    SyncMapping {
        source_path: source.into(),
        target_path: target.into(),
        kind,
        mode: None,
        exclude: Vec::new(),
        follow_symlinks: false,
    }
}

/// A compressed upload's report: the VM committed it on its own.
fn report(files: u64, bytes: u64) -> Result<TransferReport, TransferError> {
    Ok(TransferReport {
        files,
        bytes,
        wire_bytes: bytes,
        compressed: true,
    })
}

fn op(files: Vec<SyncMapping>, commands: &[&str]) -> SyncOperation {
    SyncOperation {
        operation_id: "sync-op-1".into(),
        files,
        post_upload_commands: commands
            .iter()
            .map(|c| PostUploadCommand {
                command: (*c).into(),
                cwd: None,
                timeout_ms: None,
            })
            .collect(),
    }
}

#[test]
fn sync_in_streams_each_mapping_then_runs_the_commands_in_order() {
    let host = FakeHost::new();
    host.transfer_script
        .borrow_mut()
        .extend([report(1, 1024), report(3, 10)]);
    host.ssh(Some(0), b"", b"").ssh(Some(0), b"", b"");
    let mut d = mapping("/tmp/p/ws", "/home/exedev/w/src", EntryKind::Directory);
    d.exclude = vec![".git".into()];
    d.mode = Some(0o755);
    let ops = [op(
        vec![
            mapping(
                "/tmp/p/ws.tar",
                "/home/exedev/w/.paperclip-runtime/x/ws.tar",
                EntryKind::File,
            ),
            d,
        ],
        &["tar -xf a.tar", "rm -f a.tar"],
    )];
    let results = provider(&host).sync(Direction::In, &lease(), &ops).unwrap();
    assert_eq!(
        results,
        [SyncResult {
            operation_id: "sync-op-1".into(),
            files_transferred: 4,
            bytes_transferred: 1034,
        }]
    );
    let transfers = host.transfers.borrow();
    let Transfer::Upload(first) = &transfers[0] else {
        panic!("an upload")
    };
    assert_eq!(first.local_path, "/tmp/p/ws.tar");
    assert_eq!(first.kind, EntryKind::File);
    assert_eq!(first.target.host, "vm1.exe.xyz");
    assert!(first.remote_command.contains("IFS= read -r z"));
    assert!(first
        .remote_command
        .contains("/home/exedev/w/.paperclip-runtime/x/.ws.tar.paperclip-sync."));
    let Transfer::Upload(second) = &transfers[1] else {
        panic!("an upload")
    };
    assert_eq!(second.exclude, [".git"]);
    assert!(second.remote_command.contains("chmod 755"));
    // The commands ran in order, through the execute wrapper, in the lease's cwd.
    let commands = host.commands();
    assert_eq!(commands.len(), 2);
    assert!(commands[0].contains("tar -xf a.tar"), "{}", commands[0]);
    assert!(commands[0].contains("/home/exedev/w"), "{}", commands[0]);
    assert!(commands[1].contains("rm -f a.tar"));
    assert!(host.ssh_calls.borrow().iter().all(|c| !c.stream_output));
}

#[test]
fn the_first_failing_post_upload_command_stops_the_call_with_its_code_and_stderr() {
    let host = FakeHost::new();
    host.transfer_script.borrow_mut().push_back(report(1, 5));
    host.ssh(
        Some(2),
        b"",
        b"tar: a.tar: Cannot open: No such file or directory\n",
    );
    let ops = [op(
        vec![mapping("/tmp/a", "/home/exedev/a", EntryKind::File)],
        &["tar -xf a.tar", "never"],
    )];
    let e = provider(&host)
        .sync(Direction::In, &lease(), &ops)
        .unwrap_err();
    let ProviderError::Transfer(m) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        m,
        "Post-upload command 1 of 2 (`tar -xf a.tar`) in exe.dev VM vm1 exited with code 2: \
         tar: a.tar: Cannot open: No such file or directory"
    );
    assert_eq!(host.commands().len(), 1);
}

#[test]
fn sync_out_downloads_with_the_vm_side_script_and_skips_commands() {
    let host = FakeHost::new();
    host.transfer_script.borrow_mut().push_back(report(7, 70));
    let mut m = mapping("/home/exedev/w", "/tmp/restore", EntryKind::Directory);
    m.exclude = vec![".paperclip-runtime".into()];
    m.follow_symlinks = true;
    m.mode = Some(0o700);
    let results = provider(&host)
        .sync(Direction::Out, &lease(), &[op(vec![m], &["ignored"])])
        .unwrap();
    assert_eq!(results[0].files_transferred, 7);
    let transfers = host.transfers.borrow();
    let Transfer::Download(d) = &transfers[0] else {
        panic!("a download")
    };
    assert_eq!(d.local_path, "/tmp/restore");
    assert_eq!(d.mode, Some(0o700));
    assert_eq!(
        d.remote_command,
        remote::sh_c(&sync_script::download_script(
            "/home/exedev/w",
            EntryKind::Directory,
            &[".paperclip-runtime".to_string()],
            true
        ))
    );
    assert!(host.commands().is_empty());
}

#[test]
fn bad_paths_fail_before_anything_moves() {
    for (direction, m) in [
        (
            Direction::In,
            mapping("relative", "/home/exedev/a", EntryKind::File),
        ),
        (Direction::In, mapping("/tmp/a", "/", EntryKind::Directory)),
        (
            Direction::In,
            mapping("/tmp/a", "/home/../etc", EntryKind::Directory),
        ),
        (Direction::Out, mapping("home/a", "/tmp/a", EntryKind::File)),
        (Direction::Out, mapping("/home/a", "tmp", EntryKind::File)),
    ] {
        let host = FakeHost::new();
        let ops = [op(
            vec![mapping("/tmp/ok", "/home/exedev/ok", EntryKind::File), m],
            &[],
        )];
        let e = provider(&host).sync(direction, &lease(), &ops).unwrap_err();
        assert!(matches!(e, ProviderError::InvalidRequest(_)), "{e:?}");
        assert!(host.transfers.borrow().is_empty());
        assert!(host.connects.borrow().is_empty());
    }
}

#[test]
fn transfer_errors_say_what_failed_and_where() {
    let cases: Vec<(TransferError, &str)> = vec![
        (TransferError::Denied("/etc is outside".into()), "Denied"),
        (TransferError::NotFound("no /tmp/x".into()), "NotFound"),
        (
            TransferError::LocalIo("No space left on device".into()),
            "Transfer",
        ),
        (
            TransferError::Remote(SshOutput {
                exit_code: Some(sync_script::SOURCE_MISSING),
                exit_code_from_remote: true,
                stderr: b"paperclip-sync: /w is not a directory in the VM\n".to_vec(),
                ..SshOutput::default()
            }),
            "NotFound",
        ),
        (
            TransferError::Remote(SshOutput {
                exit_code: Some(46),
                exit_code_from_remote: true,
                stderr: b"tar: ./big: Cannot write: No space left on device\n".to_vec(),
                ..SshOutput::default()
            }),
            "Transfer",
        ),
        (
            TransferError::Remote(SshOutput {
                timed_out: true,
                ..SshOutput::default()
            }),
            "Timeout",
        ),
    ];
    for (error, kind) in cases {
        let host = FakeHost::new();
        host.transfer_script
            .borrow_mut()
            .push_back(Err(error.clone()));
        let ops = [op(vec![mapping("/w", "/tmp/w", EntryKind::Directory)], &[])];
        let e = provider(&host)
            .sync(Direction::Out, &lease(), &ops)
            .unwrap_err();
        let text = format!("{e:?}");
        assert!(text.starts_with(kind), "{error:?} → {text}");
        assert!(text.contains("sync-out of /w to /tmp/w"), "{text}");
    }
}

/// A transfer whose connection died mid-stream is sent again after reconnecting (its partial
/// temporary discarded first); when the connection never comes back, the error says so.
#[test]
fn a_lost_connection_is_retried_within_the_deadline() {
    let lost = || {
        TransferError::Remote(SshOutput {
            exit_code: Some(255),
            exit_code_from_remote: false,
            ..SshOutput::default()
        })
    };
    let host = FakeHost::new();
    host.transfer_script.borrow_mut().push_back(Err(lost()));
    host.transfer_script
        .borrow_mut()
        .push_back(Ok(TransferReport {
            files: 3,
            bytes: 30,
            wire_bytes: 30,
            compressed: true,
        }));
    host.ssh(Some(0), b"", b"");
    let ops = [op(vec![mapping("/w", "/tmp/w", EntryKind::Directory)], &[])];
    let results = provider(&host)
        .sync(Direction::Out, &lease(), &ops)
        .unwrap();
    assert_eq!(
        (results[0].files_transferred, results[0].bytes_transferred),
        (3, 30)
    );
    assert_eq!(host.transfers.borrow().len(), 2, "sent again");
    assert!(
        host.ssh_calls.borrow()[0].command.contains("rm -rf"),
        "the partial temporary goes"
    );
    assert_eq!(
        host.connects.borrow().len(),
        2,
        "connected, then reconnected"
    );

    // The VM never comes back: the deadline ends the retries with the connection's error.
    let host = FakeHost::new();
    host.transfer_script.borrow_mut().push_back(Err(lost()));
    host.ssh(Some(255), b"", b"");
    for _ in 0..1000 {
        host.connect_script
            .borrow_mut()
            .push_back(Ok(Connected::Failed(SshOutput {
                exit_code: Some(255),
                stderr: b"ssh: connect to host vm port 22: Connection refused\n".to_vec(),
                ..SshOutput::default()
            })));
    }
    // The first connect (before the transfer) succeeds.
    host.connect_script
        .borrow_mut()
        .push_front(Ok(Connected::Ready));
    let e = provider(&host)
        .sync(Direction::Out, &lease(), &ops)
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Ssh(m) if m.contains("ended before the transfer completed")),
        "{e:?}"
    );
    assert_eq!(host.transfers.borrow().len(), 1);
    assert!(
        host.sleeps.borrow().iter().all(|s| *s <= 2_000),
        "backoff capped"
    );
}

#[test]
fn a_lease_without_an_id_is_refused() {
    let host = FakeHost::new();
    let mut l = lease();
    l.provider_lease_id = None;
    let e = provider(&host).sync(Direction::In, &l, &[]).unwrap_err();
    assert!(matches!(e, ProviderError::InvalidRequest(_)));
}

#[test]
fn an_uncompressed_upload_is_committed_after_the_host_reports_success() {
    let host = FakeHost::new();
    host.transfer_script
        .borrow_mut()
        .push_back(Ok(TransferReport {
            files: 2,
            bytes: 20,
            wire_bytes: 30,
            compressed: false,
        }));
    host.ssh(Some(0), b"", b"");
    let mut m = mapping("/tmp/ws", "/home/exedev/w", EntryKind::Directory);
    m.mode = Some(0o755);
    provider(&host)
        .sync(Direction::In, &lease(), &[op(vec![m], &[])])
        .unwrap();
    let transfers = host.transfers.borrow();
    let Transfer::Upload(up) = &transfers[0] else {
        panic!("an upload")
    };
    let commands = host.commands();
    assert_eq!(commands.len(), 1);
    // The commit names the same temporary the upload wrote.
    let tmp_start = up
        .remote_command
        .find("/home/exedev/.w.paperclip-sync.")
        .unwrap();
    let tmp =
        &up.remote_command[tmp_start..tmp_start + "/home/exedev/.w.paperclip-sync.".len() + 16];
    assert!(commands[0].contains(tmp), "{}", commands[0]);
    assert!(commands[0].contains("chmod 755"));

    // A commit that fails is the call's failure.
    let host = FakeHost::new();
    host.transfer_script
        .borrow_mut()
        .push_back(Ok(TransferReport::default()));
    host.ssh(
        Some(46),
        b"",
        b"paperclip-sync: the upload to /home/exedev/w is gone\n",
    );
    let e = provider(&host)
        .sync(
            Direction::In,
            &lease(),
            &[op(
                vec![mapping("/tmp/ws", "/home/exedev/w", EntryKind::Directory)],
                &[],
            )],
        )
        .unwrap_err();
    assert!(matches!(e, ProviderError::Transfer(_)), "{e:?}");
}

#[test]
fn a_host_side_failure_discards_the_vm_copy() {
    let host = FakeHost::new();
    host.transfer_script
        .borrow_mut()
        .push_back(Err(TransferError::LocalIo("Input/output error".into())));
    host.ssh(Some(0), b"", b"");
    let e = provider(&host)
        .sync(
            Direction::In,
            &lease(),
            &[op(
                vec![mapping("/tmp/ws", "/home/exedev/w", EntryKind::Directory)],
                &[],
            )],
        )
        .unwrap_err();
    assert!(matches!(e, ProviderError::Transfer(_)), "{e:?}");
    let commands = host.commands();
    assert_eq!(commands.len(), 1);
    assert!(
        commands[0].contains("rm -rf -- ")
            && commands[0].contains("/home/exedev/.w.paperclip-sync."),
        "{}",
        commands[0]
    );
}
