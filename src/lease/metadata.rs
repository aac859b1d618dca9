//! Lease metadata: what acquire and resume hand Paperclip, and what later calls read back.
//!
//! [`LeaseMetadata`] is its one shape. Acquire and resume build it once and serialise it once
//! into the lease; a later call parses it once from what Paperclip sends back. Parsing never
//! fails: keys this provider does not write (Paperclip adds its own, e.g. `pluginId`) are
//! ignored, and a value of the wrong type, or a blank string, counts as absent.
//!
//! The two conversions are written out rather than derived with serde: a derived `Serialize`
//! alone costs the component about 1.5 KB, a derived `Deserialize` far more.

use super::{Provider, PROVIDER};
use crate::error::ProviderError;
use crate::host::SshTarget;
use crate::remote;
use crate::vm::VmRecord;
use serde_json::{Map, Value};

/// The metadata of a lease, in the order its keys are written. Absent values are left out, not
/// `null` (as the seed's `undefined` fields were).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseMetadata {
    /// Always [`PROVIDER`].
    pub provider: Option<String>,
    /// The VM's name (the lease id).
    pub vm_name: Option<String>,
    /// The seed's `sshDest`: exe.dev's `ssh_dest` (possibly `user@host`) or `<vmName>.exe.xyz`.
    pub ssh_dest: Option<String>,
    /// exe.dev's `https_url`.
    pub https_url: Option<String>,
    /// exe.dev's `region`.
    pub region: Option<String>,
    /// exe.dev's `region_display`.
    pub region_display: Option<String>,
    /// The SSH login user, when there is one.
    pub ssh_user: Option<String>,
    /// The VM user's login shell.
    pub shell_command: Option<String>,
    /// The workspace the lease created.
    pub remote_cwd: Option<String>,
    /// The config's `timeoutMs`.
    pub timeout_ms: Option<u64>,
    /// The config's `reuseLease`.
    pub reuse_lease: Option<bool>,
    /// True when resume (not acquire) wrote it.
    pub resumed_lease: Option<bool>,
    /// The host to dial.
    pub ssh_host: Option<String>,
    /// The SSH port (1 to 65535).
    pub ssh_port: Option<u16>,
    /// True (and the only key) when resume found the lease's VM gone.
    pub expired: Option<bool>,
    /// The lease's expiry (ISO-8601, UTC), when it was acquired with `requestedExpiresAt`.
    pub expires_at: Option<String>,
}

impl LeaseMetadata {
    /// Read the metadata of a lease (see the module doc for what is tolerated).
    pub fn from_map(m: &Map<String, Value>) -> LeaseMetadata {
        let text = |k: &str| {
            m.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let flag = |k: &str| m.get(k).and_then(Value::as_bool);
        LeaseMetadata {
            provider: text("provider"),
            vm_name: text("vmName"),
            ssh_dest: text("sshDest"),
            https_url: text("httpsUrl"),
            region: text("region"),
            region_display: text("regionDisplay"),
            ssh_user: text("sshUser"),
            shell_command: text("shellCommand"),
            remote_cwd: text("remoteCwd"),
            timeout_ms: m.get("timeoutMs").and_then(Value::as_u64),
            reuse_lease: flag("reuseLease"),
            resumed_lease: flag("resumedLease"),
            ssh_host: text("sshHost"),
            ssh_port: m
                .get("sshPort")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0),
            expired: flag("expired"),
            expires_at: text("expiresAt"),
        }
    }

    /// The metadata object handed to Paperclip: the keys in field order, absent ones left out.
    pub fn into_map(self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("provider", self.provider.map(Value::from));
        put("vmName", self.vm_name.map(Value::from));
        put("sshDest", self.ssh_dest.map(Value::from));
        put("httpsUrl", self.https_url.map(Value::from));
        put("region", self.region.map(Value::from));
        put("regionDisplay", self.region_display.map(Value::from));
        put("sshUser", self.ssh_user.map(Value::from));
        put("shellCommand", self.shell_command.map(Value::from));
        put("remoteCwd", self.remote_cwd.map(Value::from));
        put("timeoutMs", self.timeout_ms.map(Value::from));
        put("reuseLease", self.reuse_lease.map(Value::from));
        put("resumedLease", self.resumed_lease.map(Value::from));
        put("sshHost", self.ssh_host.map(Value::from));
        put("sshPort", self.ssh_port.map(Value::from));
        put("expired", self.expired.map(Value::from));
        put("expiresAt", self.expires_at.map(Value::from));
        m
    }
}

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
    ) -> LeaseMetadata {
        LeaseMetadata {
            provider: Some(PROVIDER.to_string()),
            vm_name: Some(vm.name.clone()),
            ssh_dest: Some(vm.dest()),
            https_url: vm.https_url.clone(),
            region: vm.region.clone(),
            region_display: vm.region_display.clone(),
            ssh_user: target.user.clone(),
            shell_command: Some(prepared.shell.clone()),
            remote_cwd: Some(prepared.cwd.clone()),
            timeout_ms: Some(self.configured_timeout_ms),
            reuse_lease: Some(self.config.reuse_lease),
            resumed_lease: Some(resumed),
            ssh_host: Some(target.host.clone()),
            ssh_port: Some(target.port),
            expired: None,
            expires_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn written_in_the_seed_order_and_read_back_whole() {
        let m = LeaseMetadata {
            provider: Some(PROVIDER.into()),
            vm_name: Some("vm1".into()),
            ssh_dest: Some("u@vm1.exe.xyz".into()),
            https_url: Some("https://vm1.exe.xyz".into()),
            region: Some("lon".into()),
            region_display: Some("London".into()),
            ssh_user: Some("u".into()),
            shell_command: Some("bash".into()),
            remote_cwd: Some("/w".into()),
            timeout_ms: Some(300_000),
            reuse_lease: Some(false),
            resumed_lease: Some(true),
            ssh_host: Some("vm1.exe.xyz".into()),
            ssh_port: Some(22),
            expired: None,
            expires_at: None,
        };
        let written = m.clone().into_map();
        let keys: Vec<&str> = written.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "provider",
                "vmName",
                "sshDest",
                "httpsUrl",
                "region",
                "regionDisplay",
                "sshUser",
                "shellCommand",
                "remoteCwd",
                "timeoutMs",
                "reuseLease",
                "resumedLease",
                "sshHost",
                "sshPort"
            ]
        );
        assert_eq!(written["timeoutMs"], json!(300_000));
        assert_eq!(written["sshPort"], json!(22));
        assert_eq!(LeaseMetadata::from_map(&written), m);
        let gone = LeaseMetadata {
            expired: Some(true),
            ..LeaseMetadata::default()
        };
        assert_eq!(Value::Object(gone.into_map()), json!({"expired": true}));
    }

    #[test]
    fn reading_tolerates_what_paperclip_sends_back() {
        let m = LeaseMetadata::from_map(&map(json!({
            "pluginId": "paperclip.exe-dev-sandbox-provider",
            "sandboxProviderPlugin": {"any": ["thing"]},
            "sshDest": "  u@h.exe.xyz ",
            "sshHost": 5,
            "sshUser": "   ",
            "remoteCwd": ["/w"],
            "sshPort": 70_000,
            "timeoutMs": "300000",
            "reuseLease": "true",
            "vmName": null,
        })));
        assert_eq!(
            m,
            LeaseMetadata {
                ssh_dest: Some("u@h.exe.xyz".into()),
                ..LeaseMetadata::default()
            }
        );
        let port = |v: Value| LeaseMetadata::from_map(&map(json!({ "sshPort": v }))).ssh_port;
        assert_eq!(port(json!(2222)), Some(2222));
        assert_eq!(port(json!(0)), None);
        assert_eq!(port(json!(-22)), None);
        assert_eq!(port(json!(22.0)), None);
        assert_eq!(port(json!("22")), None);
        assert_eq!(
            LeaseMetadata::from_map(&Map::new()),
            LeaseMetadata::default()
        );
    }
}
