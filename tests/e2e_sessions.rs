//! Duplex channels and login PTYs through the real worker against the simulator: exact bytes
//! both ways, the exit status or the transport's loss, Stop and Close, unknown ids and bad
//! frames, on loopback and over the 30 ms / 100 Mbit/s link model.

mod e2e_support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e_support::{
    eventually, processes_with_env, run_id, unique, Env, EnvOptions, LINK_30MS_100MBIT,
};
use exe_dev_sim::LinkModel;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn open(env: &Env, lease: &Value, route: &str, argv: &[&str]) -> Value {
    env.ok(
        "duplexChannelOpen",
        json!({
            "hostRouteId": route,
            "driverKey": "exe-dev",
            "companyId": "c",
            "environmentId": "e",
            "providerLeaseId": lease["providerLeaseId"],
            "command": argv,
        }),
    )
    .await
}

/// What a route received: its data, decoded, and its exit params.
#[derive(Default)]
struct Received {
    data: Vec<u8>,
    chunks: Vec<usize>,
    exit: Option<Value>,
}

/// Take the notifications so far into `got`; panics on a frame for another pair of ours.
fn collect(env: &Env, route: &str, session: &str, got: &mut Received) {
    for n in env.take_notifications() {
        let p = &n["params"];
        match n["method"].as_str() {
            Some("duplexChannel.data") | Some("duplexChannel.exit") => {}
            _ => continue,
        }
        if p["hostRouteId"] != route {
            continue;
        }
        assert_eq!(p["workerSessionId"], session, "{n}");
        assert!(got.exit.is_none(), "a frame after the exit: {n}");
        if n["method"] == "duplexChannel.data" {
            let chunk = p["chunk"].as_str().unwrap();
            let bytes = B64.decode(chunk).expect("standard padded base64");
            assert_eq!(
                B64.encode(&bytes),
                chunk,
                "the chunk must round-trip exactly"
            );
            assert!(
                !bytes.is_empty() && bytes.len() <= 262_144,
                "{}",
                bytes.len()
            );
            got.chunks.push(bytes.len());
            got.data.extend_from_slice(&bytes);
        } else {
            got.exit = Some(p.clone());
        }
    }
}

async fn until_exit(env: &Env, route: &str, session: &str, within: Duration) -> Received {
    let mut got = Received::default();
    let end = Instant::now() + within;
    while got.exit.is_none() && Instant::now() < end {
        collect(env, route, session, &mut got);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

async fn write(env: &Env, route: &str, session: &str, bytes: &[u8]) -> Value {
    env.call(
        "duplexChannelWrite",
        json!({"hostRouteId": route, "workerSessionId": session, "data": B64.encode(bytes)}),
    )
    .await
}

async fn round_trip(link: Option<LinkModel>, size: usize) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("duplex")).await;
    let route = format!("duplex-route-{}", unique());
    let opened = open(
        &env,
        &lease,
        &route,
        &["sh", "-c", "cat; echo done >&2; exit 3"],
    )
    .await;
    assert_eq!(opened["hostRouteId"], route);
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    let mut sent = vec![0u8; size];
    rand::fill(&mut sent[..]);
    // Writes go out as fast as Paperclip would send them, unanswered ones overlapping: their
    // order on the wire is the order of the input lines.
    let w = env.worker();
    let mut pending = Vec::new();
    for piece in sent.chunks(262_144) {
        let params = json!({"hostRouteId": route, "workerSessionId": session,
            "data": B64.encode(piece)});
        pending.push(w.call("duplexChannelWrite", params));
    }
    let mut got = Received::default();
    // Collect while the writes go, so the child's stdout never backs up into a stall.
    let writes = async {
        let mut answers = Vec::new();
        for p in pending {
            answers.push(p.await.unwrap());
        }
        answers
    };
    let (answers, ()) = tokio::join!(writes, async {
        let end = Instant::now() + Duration::from_secs(120);
        while got.data.len() < size && Instant::now() < end {
            collect(&env, &route, &session, &mut got);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for a in &answers {
        assert!(a.get("error").is_none(), "{a}");
    }
    env.ok(
        "duplexChannelStop",
        json!({"hostRouteId": route, "workerSessionId": session}),
    )
    .await;
    let rest = until_exit(&env, &route, &session, Duration::from_secs(30)).await;
    got.data.extend_from_slice(&rest.data);
    got.chunks.extend(rest.chunks);
    assert_eq!(
        got.data.len(),
        sent.len(),
        "chunks: {:?}, exit: {:?}",
        &got.chunks[..got.chunks.len().min(8)],
        rest.exit
    );
    assert!(got.data == sent, "the bytes differ");
    assert_eq!(
        rest.exit,
        Some(json!({"hostRouteId": route, "workerSessionId": session, "exitCode": 3}))
    );
    let closed = env
        .ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    assert_eq!(
        closed,
        json!({"hostRouteId": route, "workerSessionId": session})
    );
    // Once closed, the pair takes nothing more.
    let late = write(&env, &route, &session, b"x").await;
    assert!(late.get("error").is_some(), "{late}");
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_exactly_on_loopback() {
    round_trip(None, 64 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_exactly_over_the_link() {
    round_trip(LINK_30MS_100MBIT, 64 << 20).await;
}

async fn close_kills(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("dclose")).await;
    let route = format!("duplex-route-{}", unique());
    let mark = format!("DUPLEX_MARK={}", unique());
    let opened = open(
        &env,
        &lease,
        &route,
        &["env", &mark, "sh", "-c", "sleep 1000"],
    )
    .await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || !processes_with_env(&mark)
            .is_empty())
        .await,
        "the command never started"
    );
    let started = Instant::now();
    let closed = env
        .ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        closed,
        json!({"hostRouteId": route, "workerSessionId": session})
    );
    assert!(
        eventually(Duration::from_secs(5), || processes_with_env(&mark)
            .is_empty())
        .await,
        "processes left: {:?}",
        processes_with_env(&mark)
    );
    // Nothing is sent for the closed pair, and a second close is acknowledged the same way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Received::default();
    collect(&env, &route, &session, &mut got);
    assert!(got.exit.is_none() && got.data.is_empty());
    let again = env
        .ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    assert_eq!(again, closed);
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_kills_a_running_command_on_loopback() {
    close_kills(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_kills_a_running_command_over_the_link() {
    close_kills(LINK_30MS_100MBIT).await;
}

/// The connection faults of the simulator: an RST, or a connection that goes silent.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Reset,
    Silence,
}

async fn reset_ends_the_channel(link: Option<LinkModel>) {
    fault_ends_the_channel(link, Fault::Reset).await;
}

/// A channel whose connection dies ends with `transportClosed` promptly: at once after a reset,
/// within the keepalive's few seconds after a silence. Never a hang, never a made-up code.
async fn fault_ends_the_channel(link: Option<LinkModel>, fault: Fault) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("dreset")).await;
    let route = format!("duplex-route-{}", unique());
    let opened = open(
        &env,
        &lease,
        &route,
        &["sh", "-c", "while :; do echo tick; sleep 0.1; done"],
    )
    .await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match fault {
        Fault::Reset => assert!(env.sim.reset_ssh_connections() >= 1, "nothing to reset"),
        Fault::Silence => assert!(env.sim.silence_ssh_connections() >= 1, "nothing to silence"),
    }
    let started = Instant::now();
    let got = until_exit(&env, &route, &session, Duration::from_secs(15)).await;
    assert!(
        got.data.starts_with(b"tick\n"),
        "{:?}",
        String::from_utf8_lossy(&got.data)
    );
    assert_eq!(
        got.exit,
        Some(json!({"hostRouteId": route, "workerSessionId": session,
            "exitCode": null, "transportClosed": true}))
    );
    let bound = match fault {
        Fault::Reset => Duration::from_secs(5),
        // The pooled connection's keepalive gives up after 2–3 s of silence (`conn_faults`).
        Fault::Silence => Duration::from_secs(8),
    };
    println!(
        "{fault:?}: transportClosed {:?} after the fault",
        started.elapsed()
    );
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    env.ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_connection_ends_the_channel_with_transport_closed_on_loopback() {
    fault_ends_the_channel(None, Fault::Silence).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_connection_ends_the_channel_with_transport_closed_over_the_link() {
    fault_ends_the_channel(LINK_30MS_100MBIT, Fault::Silence).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ends_the_channel_with_transport_closed_on_loopback() {
    reset_ends_the_channel(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ends_the_channel_with_transport_closed_over_the_link() {
    reset_ends_the_channel(LINK_30MS_100MBIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_bad_frames_and_unknown_leases_get_clear_errors_on_loopback() {
    bad_requests(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_bad_frames_and_unknown_leases_get_clear_errors_over_the_link() {
    bad_requests(LINK_30MS_100MBIT).await;
}

async fn bad_requests(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("dbad")).await;
    let route = format!("duplex-route-{}", unique());
    let opened = open(&env, &lease, &route, &["cat"]).await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    for data in ["", "AAEC/w", "not base64!"] {
        let r = env
            .call(
                "duplexChannelWrite",
                json!({"hostRouteId": route, "workerSessionId": session, "data": data}),
            )
            .await;
        assert_eq!(r["error"]["code"], -32602, "{data:?}: {r}");
    }
    let r = write(&env, &route, "no-such-session", b"x").await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no open session"),
        "{r}"
    );
    let r = write(&env, "duplex-route-0", &session, b"x").await;
    assert!(r.get("error").is_some(), "{r}");
    // The same route again, or a lease this worker never saw.
    let again = env
        .err(
            "duplexChannelOpen",
            json!({"hostRouteId": route, "providerLeaseId": lease["providerLeaseId"], "command": ["cat"]}),
        )
        .await;
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already in use"),
        "{again}"
    );
    let unknown = env
        .err(
            "duplexChannelOpen",
            json!({"hostRouteId": "duplex-route-x", "providerLeaseId": "vm-nobody", "command": ["cat"]}),
        )
        .await;
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("lease vm-nobody is not known"),
        "{unknown}"
    );
    // The worker still serves: the channel works.
    let ok = write(&env, &route, &session, b"still here\n").await;
    assert!(ok.get("error").is_none(), "{ok}");
    let mut got = Received::default();
    assert!(
        eventually(Duration::from_secs(10), || {
            collect(&env, &route, &session, &mut got);
            got.data == b"still here\n"
        })
        .await
    );
    env.ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_pty_for_a_missing_cli_says_so_and_exits_127() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("login")).await;
    let route = format!("login-route-{}", unique());
    let home = "/tmp/paperclip-adapter-login/0f8fad5b-d9cb-469f-a165-70867728950e";
    let opened = env
        .ok(
            "loginPtyOpen",
            json!({"hostRouteId": route, "providerLeaseId": lease["providerLeaseId"],
                "loginCommandKey": "grok", "sessionHome": home}),
        )
        .await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    let mut text = String::new();
    let mut exit = None;
    let end = Instant::now() + Duration::from_secs(20);
    while exit.is_none() && Instant::now() < end {
        for n in env.take_notifications() {
            let p = &n["params"];
            if p["hostRouteId"] != route {
                continue;
            }
            assert_eq!(p["workerSessionId"], session, "{n}");
            match n["method"].as_str() {
                Some("loginPty.output") => text.push_str(p["chunk"].as_str().unwrap()),
                Some("loginPty.exit") => exit = Some(p["exitCode"].clone()),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        text.contains("grok is not installed on this VM"),
        "{text:?}"
    );
    assert_eq!(exit, Some(json!(127)), "{text:?}");
    let closed = env.ok("loginPtyClose", json!({"hostRouteId": route})).await;
    assert_eq!(closed, json!({"hostRouteId": route}));
    let bad = env
        .err(
            "loginPtyOpen",
            json!({"hostRouteId": "login-route-x", "providerLeaseId": lease["providerLeaseId"],
                "loginCommandKey": "codex", "sessionHome": "/tmp/paperclip-adapter-login/../etc"}),
        )
        .await;
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("sessionHome must be"),
        "{bad}"
    );
    env.destroy(&lease).await;
    env.finish().await;
}

/// Take the notifications so far into one [`Received`] per bound `(route, session)` pair;
/// panics on a frame of one of these routes that names another session.
fn collect_routes(env: &Env, routes: &mut [(String, String, Received)]) {
    for n in env.take_notifications() {
        let p = &n["params"];
        let Some((_, session, got)) = routes.iter_mut().find(|(r, _, _)| p["hostRouteId"] == *r)
        else {
            continue;
        };
        assert_eq!(p["workerSessionId"], *session, "{n}");
        assert!(got.exit.is_none(), "a frame after the exit: {n}");
        match n["method"].as_str() {
            Some("duplexChannel.data") => {
                let bytes = B64.decode(p["chunk"].as_str().unwrap()).unwrap();
                assert!(!bytes.is_empty() && bytes.len() <= 262_144);
                got.chunks.push(bytes.len());
                got.data.extend_from_slice(&bytes);
            }
            Some("duplexChannel.exit") => got.exit = Some(p.clone()),
            _ => {}
        }
    }
}

async fn exits_by_itself(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("dself")).await;
    let route = format!("duplex-route-{}", unique());
    let opened = open(
        &env,
        &lease,
        &route,
        &[
            "sh",
            "-c",
            "printf 'partial \\000\\377'; echo noise >&2; exit 5",
        ],
    )
    .await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    let got = until_exit(&env, &route, &session, Duration::from_secs(15)).await;
    assert_eq!(got.data, b"partial \0\xff", "stderr never mixes in");
    assert_eq!(
        got.exit,
        Some(json!({"hostRouteId": route, "workerSessionId": session, "exitCode": 5}))
    );
    // Paperclip may still stop it (twice, even) and then closes it: each is answered, and
    // nothing more is sent.
    for _ in 0..2 {
        env.ok(
            "duplexChannelStop",
            json!({"hostRouteId": route, "workerSessionId": session}),
        )
        .await;
    }
    let closed = env
        .ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    assert_eq!(
        closed,
        json!({"hostRouteId": route, "workerSessionId": session})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = Received::default();
    collect(&env, &route, &session, &mut late);
    assert!(late.data.is_empty() && late.exit.is_none());
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_by_itself_reports_its_code_on_loopback() {
    exits_by_itself(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_by_itself_reports_its_code_over_the_link() {
    exits_by_itself(LINK_30MS_100MBIT).await;
}

/// Stop ends stdin (a `cat` then finishes with 0), and ends a child that ignores its stdin;
/// Close afterwards acknowledges, and nothing is left on the VM.
async fn stop_then_close(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("dstop")).await;

    let route = format!("duplex-route-{}", unique());
    let opened = open(&env, &lease, &route, &["cat"]).await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    let w = write(&env, &route, &session, b"last words").await;
    assert!(w.get("error").is_none(), "{w}");
    env.ok(
        "duplexChannelStop",
        json!({"hostRouteId": route, "workerSessionId": session}),
    )
    .await;
    let got = until_exit(&env, &route, &session, Duration::from_secs(15)).await;
    assert_eq!(got.data, b"last words");
    assert_eq!(got.exit.as_ref().unwrap()["exitCode"], 0, "{:?}", got.exit);
    let closed = env
        .ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    assert_eq!(closed["workerSessionId"], session);

    let route = format!("duplex-route-{}", unique());
    let mark = format!("DUPLEX_MARK={}", unique());
    let opened = open(&env, &lease, &route, &["env", &mark, "sleep", "1000"]).await;
    let session = opened["workerSessionId"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || !processes_with_env(&mark)
            .is_empty())
        .await
    );
    let stopped = Instant::now();
    env.ok(
        "duplexChannelStop",
        json!({"hostRouteId": route, "workerSessionId": session}),
    )
    .await;
    let got = until_exit(&env, &route, &session, Duration::from_secs(15)).await;
    let exit = got
        .exit
        .expect("a child deaf to its stdin is ended after Stop");
    assert!(exit["exitCode"].as_i64().is_some_and(|c| c != 0), "{exit}");
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || processes_with_env(&mark)
            .is_empty())
        .await,
        "processes left: {:?}",
        processes_with_env(&mark)
    );
    let closed = env
        .ok("duplexChannelClose", json!({"hostRouteId": route}))
        .await;
    assert_eq!(closed["workerSessionId"], session);
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_close_on_loopback() {
    stop_then_close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_close_over_the_link() {
    stop_then_close(LINK_30MS_100MBIT).await;
}

/// Many channels on one VM at once, each with its own random bytes and exit code: nothing
/// crosses between them.
async fn many_channels(link: Option<LinkModel>, channels: usize, size: usize) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("dmany")).await;
    let mut routes = Vec::new();
    let mut sent = Vec::new();
    for i in 0..channels {
        let route = format!("duplex-route-{}", unique());
        let script = format!("cat; exit {}", 10 + i);
        let opened = open(&env, &lease, &route, &["sh", "-c", &script]).await;
        let session = opened["workerSessionId"].as_str().unwrap().to_string();
        let mut bytes = vec![0u8; size];
        rand::fill(&mut bytes[..]);
        sent.push(bytes);
        routes.push((route, session, Received::default()));
    }
    let w = env.worker();
    let mut pending = Vec::new();
    for piece in 0..size.div_ceil(65_536) {
        for (i, (route, session, _)) in routes.iter().enumerate() {
            let end = ((piece + 1) * 65_536).min(size);
            let data = B64.encode(&sent[i][piece * 65_536..end]);
            pending.push(w.call(
                "duplexChannelWrite",
                json!({"hostRouteId": route, "workerSessionId": session, "data": data}),
            ));
        }
    }
    for p in pending {
        let a = p.await.unwrap();
        assert!(a.get("error").is_none(), "{a}");
        collect_routes(&env, &mut routes);
    }
    for (route, session, _) in &routes {
        env.ok(
            "duplexChannelStop",
            json!({"hostRouteId": route, "workerSessionId": session}),
        )
        .await;
    }
    let done = eventually(Duration::from_secs(60), || {
        collect_routes(&env, &mut routes);
        routes.iter().all(|(_, _, g)| g.exit.is_some())
    })
    .await;
    assert!(done, "not every channel exited");
    for (i, (route, session, got)) in routes.iter().enumerate() {
        assert_eq!(got.data.len(), size, "channel {i}");
        assert!(got.data == sent[i], "channel {i}: the bytes differ");
        assert_eq!(
            got.exit,
            Some(json!({"hostRouteId": route, "workerSessionId": session,
                "exitCode": 10 + i}))
        );
        env.ok("duplexChannelClose", json!({"hostRouteId": route}))
            .await;
    }
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_at_once_on_loopback() {
    many_channels(None, 16, 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_at_once_over_the_link() {
    many_channels(LINK_30MS_100MBIT, 16, 256 << 10).await;
}

/// A worker that shuts down closes every channel it holds: nothing it started is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_the_worker_closes_every_channel() {
    let mut env = Env::start().await;
    let lease = env.acquire(&run_id("dshut")).await;
    let mark = format!("DUPLEX_MARK={}", unique());
    for _ in 0..3 {
        let route = format!("duplex-route-{}", unique());
        open(&env, &lease, &route, &["env", &mark, "sleep", "1000"]).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || processes_with_env(&mark).len()
            == 3)
        .await,
        "{:?}",
        processes_with_env(&mark)
    );
    let started = Instant::now();
    assert_eq!(env.stop_worker().await, 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || processes_with_env(&mark)
            .is_empty())
        .await,
        "processes left: {:?}",
        processes_with_env(&mark)
    );
    env.start_worker(&[]).await;
    env.destroy(&lease).await;
    env.finish().await;
}
