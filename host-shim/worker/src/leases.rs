//! What the worker learned about each lease it served: the call context (driver config with its
//! secrets, ids) and the lease metadata. `duplexChannelOpen` and `loginPtyOpen` name only the
//! lease, so their plan is asked for with what is remembered here. Memory only: nothing of it is
//! written anywhere, and a restarted worker knows no lease until one is used again.

use std::collections::HashMap;
use std::sync::Mutex;

use paperclip_provider_types::Method;
use serde_json::{json, Value};

/// How many leases are remembered at most (the least recently learned one goes first).
const MAX_LEASES: usize = 4096;

/// The lease → context memory.
#[derive(Default)]
pub struct LeaseMemory {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<String, (u64, Value)>,
    clock: u64,
}

impl std::fmt::Debug for LeaseMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The contexts hold secrets: only their number is shown.
        let n = self.inner.lock().unwrap().leases.len();
        f.debug_struct("LeaseMemory").field("leases", &n).finish()
    }
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl LeaseMemory {
    /// Learn from one answered call of `method`.
    pub fn learn(&self, method: Method, params: &Value, result: Option<&Value>) {
        let Some(result) = result else { return };
        match method {
            Method::EnvironmentAcquireLease | Method::EnvironmentResumeLease => {
                if let Some(id) = text(result.get("providerLeaseId")) {
                    self.remember(id, params, result.get("metadata"));
                }
            }
            Method::EnvironmentExecute
            | Method::EnvironmentRealizeWorkspace
            | Method::EnvironmentSyncIn
            | Method::EnvironmentSyncOut => {
                let lease = params.get("lease");
                if let Some(id) = text(lease.and_then(|l| l.get("providerLeaseId"))) {
                    self.remember(id, params, lease.and_then(|l| l.get("metadata")));
                }
            }
            Method::EnvironmentReleaseLease | Method::EnvironmentDestroyLease => {
                if let Some(id) = text(params.get("providerLeaseId")) {
                    self.inner.lock().unwrap().leases.remove(id);
                }
            }
            _ => {}
        }
    }

    fn remember(&self, id: &str, params: &Value, metadata: Option<&Value>) {
        let context = json!({
            "config": params.get("config").cloned().unwrap_or(Value::Null),
            "environmentId": params.get("environmentId").cloned().unwrap_or(Value::Null),
            "companyId": params.get("companyId").cloned().unwrap_or(Value::Null),
            "lease": {
                "providerLeaseId": id,
                "metadata": metadata.cloned().unwrap_or_else(|| json!({})),
            },
        });
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let stamp = inner.clock;
        inner.leases.insert(id.to_string(), (stamp, context));
        if inner.leases.len() > MAX_LEASES {
            if let Some(oldest) = inner
                .leases
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                inner.leases.remove(&oldest);
            }
        }
    }

    /// The remembered context of lease `id`: `{config, environmentId, companyId, lease}`.
    pub fn recall(&self, id: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap()
            .leases
            .get(id)
            .map(|(_, c)| c.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_learned_from_acquire_and_use_and_forgotten_on_release() {
        let m = LeaseMemory::default();
        let params = json!({"config": {"apiKey": "k"}, "environmentId": "e", "companyId": "c"});
        m.learn(
            Method::EnvironmentAcquireLease,
            &params,
            Some(&json!({"providerLeaseId": "vm-1", "metadata": {"sshDest": "x"}})),
        );
        let got = m.recall("vm-1").unwrap();
        assert_eq!(got["config"]["apiKey"], "k");
        assert_eq!(got["lease"]["metadata"]["sshDest"], "x");
        assert_eq!(format!("{m:?}"), "LeaseMemory { leases: 1 }");

        let exec = json!({"config": {"apiKey": "k2"}, "environmentId": "e",
            "lease": {"providerLeaseId": "vm-2", "metadata": {"a": 1}}});
        m.learn(Method::EnvironmentExecute, &exec, Some(&json!({})));
        assert_eq!(m.recall("vm-2").unwrap()["config"]["apiKey"], "k2");
        // A failed call teaches nothing.
        m.learn(Method::EnvironmentAcquireLease, &json!({}), None);
        m.learn(
            Method::EnvironmentReleaseLease,
            &json!({"providerLeaseId": "vm-1"}),
            Some(&Value::Null),
        );
        assert!(m.recall("vm-1").is_none());
        assert!(m.recall("nope").is_none());
    }
}
