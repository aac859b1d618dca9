//! What a Paperclip-like caller needs to drive a worker against the simulator: the worker flags
//! that grant access to it, a driver config pointing at it, and Paperclip-shaped params.
//! Shared by `paperclip-dev`'s `demo` and `bench` and by the end-to-end tests.

use std::path::Path;

use serde_json::{json, Value};

use exe_dev_sim::Simulator;

/// Worker flags granting HTTP to the simulator's API and routing SSH through its config.
pub fn worker_args(sim: &Simulator, state_dir: &Path) -> Vec<String> {
    vec![
        "--state-dir".to_string(),
        state_dir.display().to_string(),
        "--allow-http".to_string(),
        sim.api_authority(),
        "--ssh-config".to_string(),
        sim.ssh_config_path().display().to_string(),
    ]
}

/// Keep the worker's own progress lines out of a report: warnings and errors only.
pub fn quiet_env() -> Vec<(String, String)> {
    vec![("PAPERCLIP_WASM_HOST_LOG".to_string(), "warn".to_string())]
}

/// An exe-dev driver config for the simulator (secrets as Paperclip resolves them: plaintext).
pub fn driver_config(sim: &Simulator, timeout_ms: u64) -> Value {
    json!({
        "apiKey": sim.token(),
        "apiUrl": sim.api_url(),
        "sshPrivateKey": sim.client_key_pem(),
        "timeoutMs": timeout_ms,
    })
}

/// The params Paperclip sends for an environment call: the base keys plus `extra`'s.
pub fn call_params(config: &Value, company_id: &str, environment_id: &str, extra: Value) -> Value {
    let mut p = json!({
        "driverKey": "exe-dev",
        "companyId": company_id,
        "environmentId": environment_id,
        "config": config,
        "paperclipInvocation": {"id": format!("{environment_id}-invocation")},
    });
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), extra) {
        p.extend(extra);
    }
    p
}

/// Await futures concurrently without spawning (they may borrow the caller's state).
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}
