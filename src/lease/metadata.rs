//! Lease metadata: what acquire and resume hand Paperclip, and what later calls read back.

use super::{Provider, PROVIDER};
use crate::error::ProviderError;
use crate::host::SshTarget;
use crate::remote;
use crate::vm::VmRecord;
use serde_json::{json, Map, Value};

/// Parse lease metadata JSON text; blank gives an empty object.
pub fn parse_metadata(text: Option<&str>) -> Result<Map<String, Value>, ProviderError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        _ => Err(ProviderError::InvalidRequest(
            "lease metadata must be a JSON object".to_string(),
        )),
    }
}

impl Provider<'_> {
    /// The seed's lease metadata plus the non-secret SSH coordinates.
    pub fn lease_metadata(
        &self,
        vm: &VmRecord,
        target: &SshTarget,
        prepared: &remote::Prepared,
        resumed: bool,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("provider".into(), json!(PROVIDER));
        m.insert("vmName".into(), json!(vm.name));
        m.insert("sshDest".into(), json!(vm.dest()));
        // Absent values are left out, not `null` (as the seed's `undefined` fields were).
        let mut opt = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        };
        opt("httpsUrl", &vm.https_url);
        opt("region", &vm.region);
        opt("regionDisplay", &vm.region_display);
        opt("sshUser", &target.user);
        m.insert("shellCommand".into(), json!(prepared.shell));
        m.insert("remoteCwd".into(), json!(prepared.cwd));
        m.insert("timeoutMs".into(), json!(self.config.timeout_ms));
        m.insert("reuseLease".into(), json!(self.config.reuse_lease));
        m.insert("resumedLease".into(), json!(resumed));
        m.insert("sshHost".into(), json!(target.host));
        m.insert("sshPort".into(), json!(target.port));
        m
    }
}
