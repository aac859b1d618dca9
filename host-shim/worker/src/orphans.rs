//! The operator's `orphans` command: list the VMs this provider created for a config (by name
//! prefix), mark the ones the host's VM ledger records as orphans, and delete what is asked.
//!
//! Listing runs the component's `list-vms` export (only the guest speaks exe.dev's API);
//! deleting runs `destroy-lease` per VM, which deletes exactly that VM and clears its ledger
//! entry. The command also shows what the worker's reconciler is waiting for ([`pending`]):
//! every ledger entry in the state directory, read from disk, with why it is there, since when
//! and when it is next tried.

use anyhow::Context as _;
use serde_json::{json, Value};

use paperclip_provider_types::LedgerReason;
use paperclip_wasm_runtime::bindings::provider::CallContext;
use paperclip_wasm_runtime::caps::log::CallSink;
use paperclip_wasm_runtime::engine::ProviderHost;

/// One VM of the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The VM name.
    pub name: String,
    /// exe.dev lists it now.
    pub present: bool,
    /// exe.dev's status, when present.
    pub status: Option<String>,
    /// Why the ledger records it: an orphan.
    pub orphan: Option<LedgerReason>,
}

impl Listed {
    /// The JSON the command prints.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "present": self.present,
            "status": self.status,
            "orphan": self.orphan.is_some(),
            "reason": self.orphan.map(LedgerReason::as_str),
        })
    }
}

/// The listing for `config` (a driver config object).
pub async fn list(host: &ProviderHost, config: &Value) -> anyhow::Result<Vec<Listed>> {
    // Not a Paperclip method: the operator's listing takes the timer of the lease methods.
    let inputs = paperclip_wasm_runtime::convert::timer_inputs(&json!({ "config": config }));
    let timeout = paperclip_provider_types::method::sandbox_rpc_timeout(&inputs);
    let ctx = CallContext {
        config: config.to_string(),
        environment_id: "cli-orphans".to_string(),
        company_id: None,
        deadline_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let result = host
        .call(CallSink::stderr_only(), timeout, async |s, g| {
            g.call_list_vms(s, &ctx).await
        })
        .await
        .map_err(anyhow::Error::from)
        .context("listing VMs: the provider component failed")?;
    let vms = result.map_err(|e| {
        let e = crate::rpc::provider_error("list-vms", e.into());
        anyhow::anyhow!("{}", e.message)
    })?;
    Ok(vms
        .into_iter()
        .map(|v| Listed {
            name: v.name,
            present: v.present,
            status: v.status,
            orphan: v.orphan.map(LedgerReason::from),
        })
        .collect())
}

/// One entry the reconciler works through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The VM name.
    pub name: String,
    /// The account's API URL (the token is never on disk).
    pub api_url: String,
    /// Why the ledger records it.
    pub reason: LedgerReason,
    /// When the VM was first recorded (Unix ms).
    pub since_ms: u64,
    /// When it is next due (Unix ms): a lease's expiry, or the next try.
    pub next_try_ms: u64,
    /// Tries made so far.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<String>,
}

impl Pending {
    /// The JSON the command prints (times as ISO-8601).
    pub fn to_json(&self) -> Value {
        use paperclip_exe_dev::timestamp::format_iso8601_ms;
        json!({
            "name": self.name,
            "apiUrl": self.api_url,
            "reason": self.reason.as_str(),
            "since": format_iso8601_ms(self.since_ms),
            "nextTry": format_iso8601_ms(self.next_try_ms),
            "attempts": self.attempts,
            "lastError": self.last_error,
        })
    }
}

/// What the reconciler is waiting for: every entry of the host's ledger, oldest first.
pub fn pending(host: &ProviderHost) -> anyhow::Result<Vec<Pending>> {
    let Some(ledger) = host.ledger() else {
        return Ok(Vec::new());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for account in ledger.scan()? {
        for r in account.entries {
            out.push(Pending {
                api_url: account.api_url.clone(),
                reason: r.entry.reason,
                since_ms: r.since_ms,
                next_try_ms: now + r.due_in_ms(now),
                attempts: r.entry.attempts,
                last_error: r.entry.last_error,
                name: r.entry.name,
            });
        }
    }
    out.sort_by(|a, b| {
        a.since_ms
            .cmp(&b.since_ms)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

/// What to delete: the names asked for (each must be in the listing: this command never
/// deletes a VM that is not the provider's), plus every orphan when `all_orphans`.
pub fn to_delete(
    listing: &[Listed],
    named: &[String],
    all_orphans: bool,
) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for n in named {
        if !listing.iter().any(|l| &l.name == n) {
            anyhow::bail!("{n} is not one of this config's VMs (see the listing)");
        }
        out.push(n.clone());
    }
    if all_orphans {
        out.extend(
            listing
                .iter()
                .filter(|l| l.orphan.is_some())
                .map(|l| l.name.clone()),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, orphan: bool) -> Listed {
        Listed {
            name: name.into(),
            present: true,
            status: None,
            orphan: orphan.then_some(LedgerReason::UncertainCreate),
        }
    }

    #[test]
    fn deletes_what_is_named_or_every_orphan_and_nothing_foreign() {
        let listing = [l("paperclip-a", true), l("paperclip-b", false)];
        assert_eq!(
            to_delete(&listing, &["paperclip-b".into()], false).unwrap(),
            ["paperclip-b"]
        );
        assert_eq!(to_delete(&listing, &[], true).unwrap(), ["paperclip-a"]);
        assert_eq!(
            to_delete(&listing, &["paperclip-a".into()], true).unwrap(),
            ["paperclip-a"]
        );
        assert!(to_delete(&listing, &["someone-else".into()], true).is_err());
        assert!(to_delete(&listing, &[], false).unwrap().is_empty());
    }
}
