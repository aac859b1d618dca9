//! The Paperclip worker protocol through the real binary and the real component.

use std::path::Path;

use paperclip_test_support::client::WorkerClient;
use paperclip_test_support::components::{fixture_wasm, product_wasm};
use serde_json::{json, Value};
use tempfile::TempDir;

/// `paperclip-wasm-host worker <args>` (the binary under test) with a private state dir, which
/// lives as long as the returned `TempDir`.
async fn spawn(args: &[&str]) -> (WorkerClient, TempDir) {
    let state = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["--state-dir", state.path().to_str().unwrap()]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    let host = Path::new(env!("CARGO_BIN_EXE_paperclip-wasm-host"));
    (WorkerClient::spawn(host, &args, &[]).await.unwrap(), state)
}

/// `initialize` params as Paperclip sends them.
fn initialize_params() -> Value {
    json!({
        "manifest": {"id": "paperclip.exe-dev-sandbox-provider"},
        "config": {},
        "instanceInfo": {"instanceId": "test", "hostVersion": "2026.916.1"},
        "apiVersion": 1,
        "databaseNamespace": null
    })
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error in {v}"))
}

#[tokio::test]
async fn answers_the_skeleton_conversation_and_exits_zero_on_shutdown() {
    // Exactly the acceptance script: everything written at once, as `printf … | worker` does.
    let (w, _state) = spawn(&["--component", product_wasm()]).await;
    let lines = [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params": initialize_params()}),
        json!({"jsonrpc":"2.0","id":2,"method":"environmentValidateConfig",
               "params":{"driverKey":"exe-dev","config":{"apiKey":"tok-123"}}}),
        json!({"jsonrpc":"2.0","id":3,"method":"environmentValidateConfig",
               "params":{"driverKey":"exe-dev","config":{"apiKey":"tok-123","timeoutMs":0}}}),
        json!({"jsonrpc":"2.0","id":4,"method":"health","params":{}}),
        json!({"jsonrpc":"2.0","id":5,"method":"noSuchMethod","params":{}}),
    ];
    for l in &lines {
        w.send_raw(l.to_string().as_bytes()).await.unwrap();
    }
    let (init, _) = w.response(1).await.unwrap();
    assert_eq!(init["result"]["ok"], true);
    let supported: Vec<&str> = init["result"]["supportedMethods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for m in [
        "environmentValidateConfig",
        "environmentProbe",
        "environmentAcquireLease",
        "environmentResumeLease",
        "environmentReleaseLease",
        "environmentDestroyLease",
        "environmentRealizeWorkspace",
        "environmentExecute",
        "health",
        "shutdown",
    ] {
        assert!(supported.contains(&m), "{m} missing from {supported:?}");
    }

    // Responses to concurrent requests may come in any order: collect them by id.
    let mut by_id = std::collections::HashMap::new();
    while by_id.len() < 4 {
        let msg = w.recv().await.unwrap();
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            by_id.insert(id, msg);
        }
    }
    let good = &by_id[&2]["result"];
    assert_eq!(good["ok"], true, "{good}");
    assert_eq!(good["normalizedConfig"]["timeoutMs"], 300000);
    assert_eq!(good["normalizedConfig"]["apiKey"], "tok-123");

    let bad = &by_id[&3]["result"];
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(
        bad["errors"][0],
        "timeoutMs must be between 1 and 86400000."
    );

    assert_eq!(by_id[&4]["result"]["status"], "ok");
    assert_eq!(error_code(&by_id[&5]), -32601);

    w.send_raw(r#"{"jsonrpc":"2.0","id":6,"method":"shutdown","params":{}}"#.as_bytes())
        .await
        .unwrap();
    let (bye, _) = w.response(6).await.unwrap();
    assert_eq!(bye["result"], Value::Null);
    assert!(
        w.drain().await.unwrap().is_empty(),
        "nothing may follow the shutdown reply"
    );
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn exits_zero_on_stdin_eof() {
    let (w, _state) = spawn(&[]).await;
    let r = w.call("initialize", initialize_params()).await.unwrap();
    assert_eq!(r["result"]["ok"], true);
    w.close_stdin().await;
    assert!(w.drain().await.unwrap().is_empty());
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn known_but_unimplemented_methods_are_32004_and_garbage_is_32700() {
    let (w, _state) = spawn(&[]).await;
    let r = w.call("onEvent", json!({})).await.unwrap();
    assert_eq!(error_code(&r), -32004);
    assert_eq!(
        r["error"]["message"],
        "onEvent is not implemented by this plugin"
    );
    // Native sync is implemented: params without `operations` are invalid, not unknown.
    let r = w.call("environmentSyncIn", json!({})).await.unwrap();
    assert_eq!(error_code(&r), -32602);
    w.send_raw("this is not json".as_bytes()).await.unwrap();
    let r = w.recv().await.unwrap();
    assert_eq!(error_code(&r), -32700);
    assert_eq!(r["id"], Value::Null);
    // Notifications get no answer; the next request still works.
    w.send_raw(r#"{"jsonrpc":"2.0","method":"onEvent","params":{}}"#.as_bytes())
        .await
        .unwrap();
    let r = w.call("health", json!({})).await.unwrap();
    assert_eq!(r["result"]["status"], "ok");
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn malformed_params_are_32602_not_a_crash() {
    let (w, _state) = spawn(&[]).await;
    let r = w
        .call("environmentExecute", json!({"command": 42}))
        .await
        .unwrap();
    assert_eq!(error_code(&r), -32602);
    let r = w
        .call("environmentValidateConfig", json!({"config": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(r["result"]["ok"], false, "{r}");
    let r = w
        .call("environmentValidateConfig", json!({}))
        .await
        .unwrap();
    assert_eq!(r["result"]["ok"], false, "{r}");
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn a_trapping_guest_becomes_an_error_and_the_worker_keeps_serving() {
    let fixture = fixture_wasm().to_str().unwrap().to_owned();
    let (w, _state) = spawn(&["--component", &fixture]).await;
    let r = w
        .call(
            "environmentValidateConfig",
            json!({"config": {"x": "trap"}}),
        )
        .await
        .unwrap();
    assert_eq!(error_code(&r), -32002, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("trapped"), "{msg}");
    let r = w
        .call(
            "environmentValidateConfig",
            json!({"config": {"x": "fine"}}),
        )
        .await
        .unwrap();
    assert_eq!(r["result"]["ok"], true, "{r}");
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn a_runaway_guest_is_stopped_at_its_deadline_and_the_worker_keeps_serving() {
    // validate has Paperclip's default timer (30 s), whatever the config says; the host stops
    // the component once it has passed (plus the grace).
    let fixture = fixture_wasm().to_str().unwrap().to_owned();
    let (w, _state) = spawn(&["--component", &fixture, "--call-grace-ms", "200"]).await;
    let started = std::time::Instant::now();
    let r = w
        .call(
            "environmentValidateConfig",
            json!({"config": {"x": "loop", "timeoutMs": 300}}),
        )
        .await
        .unwrap();
    assert_eq!(error_code(&r), -32002, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("deadline"),
        "{r}"
    );
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(30) && took < std::time::Duration::from_secs(60),
        "{took:?}"
    );
    let r = w.call("health", json!({})).await.unwrap();
    assert_eq!(r["result"]["message"], "fixture");
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn the_component_is_given_paperclips_timer_as_its_deadline() {
    // The fixture's execute echoes the deadline it was given. Paperclip's rule: the request's
    // timeoutMs + 30 s, else the config's + 30 s, else 30 s; only numbers count, as Paperclip
    // reads them.
    let fixture = fixture_wasm().to_str().unwrap().to_owned();
    let (w, _state) = spawn(&["--component", &fixture]).await;
    let cases = [
        (json!({"command": "x", "timeoutMs": 5000}), "35000"),
        (
            json!({"command": "x", "config": {"timeoutMs": 60000}}),
            "90000",
        ),
        (
            json!({"command": "x", "timeoutMs": 1, "config": {"timeoutMs": 60000}}),
            "30001",
        ),
        (json!({"command": "x"}), "30000"),
        (
            json!({"command": "x", "config": {"timeoutMs": "600000"}}),
            "30000",
        ),
    ];
    for (params, deadline) in cases {
        let r = w.call("environmentExecute", params.clone()).await.unwrap();
        assert_eq!(r["result"]["stdout"], deadline, "{params} {r}");
    }
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn an_allocating_guest_hits_the_memory_limit_and_the_worker_keeps_serving() {
    let fixture = fixture_wasm().to_str().unwrap().to_owned();
    let (w, _state) = spawn(&["--component", &fixture, "--max-memory-mb", "64"]).await;
    let r = w
        .call("environmentValidateConfig", json!({"config": {"x": "oom"}}))
        .await
        .unwrap();
    assert_eq!(error_code(&r), -32002, "{r}");
    // The cause, not a backtrace: the limit, and how to raise it.
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("past its limit of 64 MiB (raise --max-memory-mb)"),
        "{r}"
    );
    let r = w
        .call("environmentValidateConfig", json!({"config": {"x": "ok"}}))
        .await
        .unwrap();
    assert_eq!(r["result"]["ok"], true, "{r}");
    assert_eq!(w.wait().await.unwrap(), 0);
}

#[tokio::test]
async fn no_input_line_stops_the_worker_and_every_real_call_still_answers() {
    let (w, _state) = spawn(&[]).await;
    let validate = |n: u64| {
        json!({"jsonrpc":"2.0","id":n,"method":"environmentValidateConfig",
               "params":{"driverKey":"exe-dev","config":{"apiKey":"tok","namePrefix":format!("p{n}")}}})
        .to_string()
        .into_bytes()
    };
    // (line, the id and code it must be answered with); `None`: a real call.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let long_ok = json!({"jsonrpc":"2.0","id":90,"method":"environmentValidateConfig",
        "params":{"config":{"apiKey":"tok","note":"x".repeat(4 << 20)}}});
    let bad: Vec<(Vec<u8>, Value, i64)> = vec![
        (b"\xff\xfe\xfd not utf-8".to_vec(), Value::Null, -32700),
        (b"{\"jsonrpc\":\"2.0\",\"id\":77,\"method\":\"health\",\"params\":{\"x\":\"\xc3\x28\"}}".to_vec(), Value::Null, -32700),
        (b"not json at all".to_vec(), Value::Null, -32700),
        (deep.into_bytes(), Value::Null, -32700),
        (b"[]".to_vec(), Value::Null, -32600),
        (br#"{"jsonrpc":"2.0","id":{"a":1},"method":"health"}"#.to_vec(), Value::Null, -32600),
        (br#"{"jsonrpc":"2.0","id":81,"method":7}"#.to_vec(), json!(81), -32600),
        (br#"{"id":82,"method":"health"}"#.to_vec(), json!(82), -32600),
        (br#"{"jsonrpc":"2.0","id":83,"method":"health","params":[]}"#.to_vec(), json!(83), -32602),
    ];
    let mut real = Vec::new();
    let mut expected_errors = Vec::new();
    for (i, (line, id, code)) in bad.into_iter().enumerate() {
        let n = i as u64 + 1;
        w.send_raw(&validate(n)).await.unwrap();
        real.push(n);
        w.send_raw(&line).await.unwrap();
        expected_errors.push((id, code));
    }
    w.send_raw(long_ok.to_string().as_bytes()).await.unwrap();
    real.push(90);
    // Over Paperclip's frame limit: discarded as it streams in, answered under its id.
    let mut huge = br#"{"jsonrpc":"2.0","id":91,"method":"environmentValidateConfig","params":{"config":{"pad":""#.to_vec();
    huge.resize(huge.len() + (128 << 20), b'a');
    huge.extend_from_slice(b"\"}}}");
    w.send_raw(&huge).await.unwrap();
    drop(huge);
    expected_errors.push((json!(91), -32600));
    w.send_raw(&validate(92)).await.unwrap();
    real.push(92);

    let mut answers = Vec::new();
    while answers.len() < real.len() + expected_errors.len() {
        answers.push(w.recv().await.unwrap());
    }
    for n in &real {
        let r = answers
            .iter()
            .find(|a| a["id"] == json!(n))
            .unwrap_or_else(|| panic!("no answer to call {n}: {answers:?}"));
        assert_eq!(r["result"]["ok"], true, "{r}");
    }
    let mut errors: Vec<(Value, i64)> = answers
        .iter()
        .filter(|a| a.get("error").is_some())
        .map(|a| (a["id"].clone(), error_code(a)))
        .collect();
    let key = |e: &(Value, i64)| (e.0.to_string(), e.1);
    errors.sort_by_key(key);
    expected_errors.sort_by_key(key);
    assert_eq!(errors, expected_errors);
    let too_long = answers.iter().find(|a| a["id"] == 91).unwrap();
    assert!(
        too_long["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 134217728 bytes"),
        "{too_long}"
    );

    let r = w.call("health", json!({})).await.unwrap();
    assert_eq!(r["result"]["status"], "ok");
    assert_eq!(w.wait().await.unwrap(), 0);
}

/// The worker on Unix-socket stdio, as Node (so Paperclip) spawns it, with our ends
/// non-blocking as libuv leaves them. `shared_stderr`: stderr is the stdout socket too (`2>&1`).
/// Sends `n` `health` requests at once and reads nothing until all are sent, so the worker's
/// writes meet a full socket; then `shutdown`. Returns the protocol lines read, how many other
/// lines (logs) came, and the exit code.
async fn over_socket_stdio(n: usize, shared_stderr: bool) -> (Vec<Value>, usize, i32) {
    use std::os::fd::OwnedFd;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    let state = tempfile::tempdir().unwrap();
    let (ours_in, theirs_in) = std::os::unix::net::UnixStream::pair().unwrap();
    let (ours_out, theirs_out) = std::os::unix::net::UnixStream::pair().unwrap();
    for s in [&ours_in, &ours_out, &theirs_in, &theirs_out] {
        s.set_nonblocking(true).unwrap();
    }
    let stderr = if shared_stderr {
        Stdio::from(OwnedFd::from(theirs_out.try_clone().unwrap()))
    } else {
        Stdio::null()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paperclip-wasm-host"))
        .args(["worker", "--state-dir", state.path().to_str().unwrap()])
        .env("PAPERCLIP_WASM_HOST_LOG", "debug")
        .stdin(Stdio::from(OwnedFd::from(theirs_in)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = tokio::net::UnixStream::from_std(ours_in).unwrap();
    let output = tokio::net::UnixStream::from_std(ours_out).unwrap();
    let mut batch = String::new();
    batch.push_str(
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params": initialize_params()})
            .to_string(),
    );
    batch.push('\n');
    for id in 1..=n {
        batch.push_str(&json!({"jsonrpc":"2.0","id":id,"method":"health","params":{}}).to_string());
        batch.push('\n');
    }
    input.write_all(batch.as_bytes()).await.unwrap();
    // Give the worker time to fill the socket while nobody reads.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let shutdown = json!({"jsonrpc":"2.0","id":"bye","method":"shutdown","params":{}});
    input
        .write_all(format!("{shutdown}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(output).lines();
    let mut read = Vec::new();
    let reading = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            read.push(line);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), reading)
        .await
        .expect("the worker closed its stdout");
    let code = child.wait().await.unwrap().code().unwrap_or(-1);
    let json: Vec<Value> = read
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("jsonrpc").is_some())
        .collect();
    let others = read.len() - json.len();
    (json, others, code)
}

#[tokio::test]
async fn on_non_blocking_socket_stdio_every_answer_arrives_in_full() {
    // Far more than a socket buffer holds (each answer is about 100 bytes).
    let n = 5000;
    let (answers, _, code) = over_socket_stdio(n, false).await;
    assert_eq!(code, 0);
    let mut ids: Vec<i64> = answers.iter().filter_map(|a| a["id"].as_i64()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..=n as i64).collect::<Vec<_>>());
    for a in &answers {
        if a["id"] != 0 && a["id"] != "bye" {
            assert_eq!(a["result"]["status"], "ok", "{a}");
        }
    }
    assert!(answers.iter().any(|a| a["id"] == "bye"));
}

#[tokio::test]
async fn with_stdout_and_stderr_one_socket_logs_and_answers_both_arrive() {
    // Few enough that logs and answers fit the socket's buffer: a line written in parts could
    // be interleaved with a log line, as with any `2>&1`.
    let n = 100;
    let (answers, logs, code) = over_socket_stdio(n, true).await;
    assert_eq!(code, 0);
    assert!(logs > 0, "no log line reached the shared socket");
    let answered = answers
        .iter()
        .filter(|a| a["result"]["status"] == "ok")
        .count();
    assert_eq!(answered, n);
    assert!(answers.iter().any(|a| a["id"] == "bye"));
}
