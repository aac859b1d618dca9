//! VM names, VM records and their SSH destinations (`user@host`).
//!
//! Naming keeps the seed's readable shape (`<prefix>-<env8>-<run8>`, e.g.
//! `paperclip-env1-run1`), plus a 6-character digest of both full ids when either was cut to 8
//! characters (so runs whose ids share a prefix never share a VM), and is always valid for
//! exe.dev: starts with a letter, `[a-z0-9]` with single hyphens, at most 63 characters, and
//! never ends in `-<digits>`, `-p<digits>` or `-port<digits>` (which exe.dev rejects as port
//! suffixes). The last segment gets an `r` in front when it would otherwise look like such a
//! suffix (e.g. an all-digit run id part `12345678` becomes `r12345678`).

use serde_json::Value;

/// exe.dev's limit is 64; the seed keeps one character of margin.
pub const MAX_VM_NAME_LEN: usize = 63;
/// Characters of the environment/run ids that go into a name.
pub const ID_PART_LEN: usize = 8;

/// Lowercased ASCII alphanumerics of `id`.
fn alnum_lower(id: &str) -> String {
    id.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Lowercased ASCII alphanumerics of `id`, at most 8.
fn id_part(id: &str) -> String {
    alnum_lower(id).chars().take(ID_PART_LEN).collect()
}

/// A short, stable digest of both full ids (FNV-1a, 6 base-36 characters), so ids that share
/// their first 8 characters (`bench-run-1`, `bench-run-2`) still get different VMs.
fn ids_digest(environment_id: &str, run_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in environment_id.bytes().chain([0]).chain(run_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..6)
        .map(|_| {
            let d = DIGITS[(h % 36) as usize] as char;
            h /= 36;
            d
        })
        .collect()
}

/// True when `segment` (the part after the last hyphen) would be read as a port suffix:
/// all digits, `p<digits>` or `port<digits>`.
fn looks_like_port_suffix(segment: &str) -> bool {
    let digits_after = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    digits_after(segment)
        || segment.strip_prefix("port").is_some_and(digits_after)
        || segment.strip_prefix('p').is_some_and(digits_after)
}

/// Make a final name segment safe: an `r` in front when it looks like a port suffix.
fn safe_last_segment(segment: String) -> String {
    if looks_like_port_suffix(&segment) {
        format!("r{segment}")
    } else {
        segment
    }
}

/// Cut to the length limit without leaving a trailing hyphen.
fn cut(name: String) -> String {
    let mut out: String = name.chars().take(MAX_VM_NAME_LEN).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// 8 lowercase hex characters from a random number.
pub fn random_hex8(random: u64) -> String {
    format!("{:08x}", (random & 0xffff_ffff) as u32)
}

/// The deterministic lease VM name for `(environmentId, runId)`. `fallback_random` supplies the
/// run part when the run id has no alphanumerics (as the seed used a random UUID).
pub fn lease_vm_name(
    prefix: &str,
    environment_id: &str,
    run_id: &str,
    fallback_random: u64,
) -> String {
    let env = id_part(environment_id);
    let env = if env.is_empty() {
        "env".to_string()
    } else {
        env
    };
    let run = id_part(run_id);
    let run = if run.is_empty() {
        random_hex8(fallback_random)
    } else {
        run
    };
    // Short ids keep the seed's exact shape; when an id was cut to 8 characters (Paperclip's
    // UUIDs always are), a digest of both full ids keeps distinct runs on distinct VMs.
    let cut_short =
        alnum_lower(environment_id).len() > ID_PART_LEN || alnum_lower(run_id).len() > ID_PART_LEN;
    if cut_short {
        let digest = ids_digest(environment_id, run_id);
        cut(format!(
            "{prefix}-{env}-{run}-{}",
            safe_last_segment(digest)
        ))
    } else {
        cut(format!("{prefix}-{env}-{}", safe_last_segment(run)))
    }
}

/// A probe VM name: `<prefix>-probe-<8 random hex>`.
pub fn probe_vm_name(prefix: &str, random: u64) -> String {
    cut(format!(
        "{prefix}-probe-{}",
        safe_last_segment(random_hex8(random))
    ))
}

/// exe.dev's name syntax (without the denylist, which this provider cannot know in full): the
/// tests check every generated name against it.
#[cfg(test)]
fn is_valid_vm_name(name: &str) -> bool {
    if name.len() < 5 || name.len() > MAX_VM_NAME_LEN {
        return false;
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return false;
    }
    for segment in name.split('-') {
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return false;
        }
    }
    // The last segment (the whole name when there is no hyphen) must not read as a port
    // suffix: `-<digits>`, `-p<digits>`, `-port<digits>`, or a bare `p<digits>`/`port<digits>`.
    let last = name.rsplit('-').next().unwrap_or_default();
    !looks_like_port_suffix(last)
}

/// An SSH destination (`user@host`, or a bare host) split at its last `@`: the user when there
/// is an `@`, and the host. Either part may be empty (`u@`, `@h`).
pub fn split_dest(dest: &str) -> (Option<&str>, &str) {
    match dest.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, dest),
    }
}

/// The user and host of a destination that names both (`user@host`, neither part empty).
pub fn dest_user_host(dest: &str) -> Option<(&str, &str)> {
    match split_dest(dest) {
        (Some(user), host) if !user.is_empty() && !host.is_empty() => Some((user, host)),
        _ => None,
    }
}

/// A VM as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmRecord {
    /// `vm_name`.
    pub name: String,
    /// `ssh_dest`, possibly `user@host`.
    pub ssh_dest: Option<String>,
    /// `ssh_host`: the host to dial.
    pub ssh_host: Option<String>,
    /// `ssh_user`: the user routing needs.
    pub ssh_user: Option<String>,
    /// `ssh_port`.
    pub ssh_port: Option<u16>,
    /// `https_url`.
    pub https_url: Option<String>,
    /// `status`.
    pub status: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `region_display`.
    pub region_display: Option<String>,
}

fn str_field(obj: &serde_json::Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| obj.get(*k))
        .filter_map(Value::as_str)
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

impl VmRecord {
    /// Parse one VM object, recursing into `.vm` / `.data` up to 4 levels (as the seed does).
    pub fn from_value(value: &Value) -> Option<VmRecord> {
        Self::from_value_depth(value, 0)
    }

    fn from_value_depth(value: &Value, depth: usize) -> Option<VmRecord> {
        let obj = value.as_object()?;
        if let Some(name) = str_field(obj, &["vm_name", "name", "vmName"]) {
            let ssh_port = obj
                .get("ssh_port")
                .or_else(|| obj.get("sshPort"))
                .and_then(|v| match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                })
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0);
            return Some(VmRecord {
                name,
                ssh_dest: str_field(obj, &["ssh_dest", "sshDest"]),
                ssh_host: str_field(obj, &["ssh_host", "sshHost"]),
                ssh_user: str_field(obj, &["ssh_user", "sshUser"]),
                ssh_port,
                https_url: str_field(obj, &["https_url", "httpsUrl"]),
                status: str_field(obj, &["status"]),
                region: str_field(obj, &["region"]),
                region_display: str_field(obj, &["region_display", "regionDisplay"]),
            });
        }
        if depth >= 4 {
            return None;
        }
        ["vm", "data"]
            .iter()
            .filter_map(|k| obj.get(*k))
            .find_map(|v| Self::from_value_depth(v, depth + 1))
    }

    /// All VM records of an `ls` answer: `{vms:[…]}`, a bare array, or a single object.
    pub fn list_from_value(value: &Value) -> Vec<VmRecord> {
        let items: Vec<&Value> = match value {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) => match o.get("vms") {
                Some(Value::Array(a)) => a.iter().collect(),
                _ => vec![value],
            },
            _ => Vec::new(),
        };
        items.into_iter().filter_map(VmRecord::from_value).collect()
    }

    /// The seed's `sshDest`: `ssh_dest` or `<name>.exe.xyz`.
    pub fn dest(&self) -> String {
        self.ssh_dest
            .clone()
            .unwrap_or_else(|| format!("{}.exe.xyz", self.name))
    }

    /// Whether this record is the VM called `name` (by name or ssh destination).
    pub fn matches(&self, name: &str) -> bool {
        if self.name == name {
            return true;
        }
        match &self.ssh_dest {
            Some(d) => {
                let (_, host) = split_dest(d);
                d == name || host == name
            }
            None => false,
        }
    }

    /// Where to SSH: `(host, user)` from `ssh_host`/`ssh_user`, else split `ssh_dest`
    /// (`user@host`), else `<name>.exe.xyz`. `config_user` applies only when the API gave no
    /// user. Never yields a user inside the host.
    pub fn ssh_endpoint(&self, config_user: Option<&str>) -> (String, Option<String>) {
        let (dest_user, dest_host) = match &self.ssh_dest {
            Some(d) => match dest_user_host(d) {
                Some((u, h)) => (Some(u.to_string()), Some(h.to_string())),
                None => (None, Some(d.trim_start_matches('@').to_string())),
            },
            None => (None, None),
        };
        let host = self
            .ssh_host
            .clone()
            .or(dest_host)
            .unwrap_or_else(|| format!("{}.exe.xyz", self.name));
        let user = self
            .ssh_user
            .clone()
            .or(dest_user)
            .or_else(|| config_user.map(str::to_string));
        (host, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_shape_is_kept() {
        assert_eq!(
            lease_vm_name("paperclip", "env-1", "run-1", 0),
            "paperclip-env1-run1"
        );
        assert_eq!(
            lease_vm_name("paperclip", "env", "run", 0),
            "paperclip-env-run"
        );
        assert_eq!(
            lease_vm_name(
                "paperclip",
                "5A3F9C2E-1111-2222-3333-444455556666",
                "0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff",
                0
            ),
            "paperclip-5a3f9c2e-0b1c2d3e-xcvbp9"
        );
    }

    #[test]
    fn runs_sharing_an_eight_character_prefix_get_different_vms() {
        let a = lease_vm_name("paperclip", "bench-env", "bench-run-1", 0);
        let b = lease_vm_name("paperclip", "bench-env", "bench-run-2", 0);
        assert_ne!(a, b);
        assert!(is_valid_vm_name(&a) && is_valid_vm_name(&b), "{a} {b}");
        // Deterministic: a retried acquire finds the same VM.
        assert_eq!(a, lease_vm_name("paperclip", "bench-env", "bench-run-1", 7));
    }

    #[test]
    fn digit_only_run_part_gets_a_letter() {
        assert_eq!(
            lease_vm_name("paperclip", "env-1", "1234", 0),
            "paperclip-env1-r1234"
        );
        // A cut id keeps its digits in the middle; the digest ends the name.
        assert_eq!(
            lease_vm_name("paperclip", "env-1", "12345678-aaaa", 0),
            "paperclip-env1-12345678-po4e57"
        );
        assert_eq!(
            lease_vm_name("paperclip", "e", "p123", 0),
            "paperclip-e-rp123"
        );
        assert_eq!(
            lease_vm_name("paperclip", "e", "port9", 0),
            "paperclip-e-rport9"
        );
        assert_eq!(
            lease_vm_name("paperclip", "e", "portal", 0),
            "paperclip-e-portal"
        );
        assert_eq!(
            lease_vm_name("paperclip", "!!", "??", 0x1234_5678),
            "paperclip-env-r12345678"
        );
        assert_eq!(
            lease_vm_name("paperclip", "!!", "??", 0xab),
            "paperclip-env-000000ab"
        );
    }

    #[test]
    fn probe_names() {
        assert_eq!(
            probe_vm_name("paperclip", 0xdead_beef),
            "paperclip-probe-deadbeef"
        );
        assert_eq!(
            probe_vm_name("paperclip", 0x1234_5678),
            "paperclip-probe-r12345678"
        );
    }

    #[test]
    fn destinations_split_at_the_last_at() {
        assert_eq!(split_dest("u@h"), (Some("u"), "h"));
        assert_eq!(split_dest("a@b@h"), (Some("a@b"), "h"));
        assert_eq!(split_dest("h"), (None, "h"));
        assert_eq!(split_dest("@h"), (Some(""), "h"));
        assert_eq!(split_dest("u@"), (Some("u"), ""));
        assert_eq!(
            dest_user_host("vm+x@vm.exe.xyz"),
            Some(("vm+x", "vm.exe.xyz"))
        );
        for partial in ["h", "@h", "u@", "@"] {
            assert_eq!(dest_user_host(partial), None, "{partial}");
        }
        // A record's host is what follows the last `@`, even when the user is empty.
        let vm = VmRecord {
            name: "a".into(),
            ssh_dest: Some("@h".into()),
            ..VmRecord::default()
        };
        assert!(vm.matches("h"));
        assert_eq!(vm.ssh_endpoint(None), ("h".to_string(), None));
    }

    #[test]
    fn validity_rules() {
        assert!(is_valid_vm_name("paperclip-env1-run1"));
        assert!(!is_valid_vm_name("paperclip-env1-12345678"));
        assert!(!is_valid_vm_name("paperclip-env1-p80"));
        assert!(!is_valid_vm_name("paperclip-env1-port80"));
        assert!(!is_valid_vm_name("1paperclip"));
        assert!(!is_valid_vm_name("paper--clip"));
        assert!(!is_valid_vm_name("paperclip-"));
        assert!(!is_valid_vm_name("p1234"));
        assert!(!is_valid_vm_name(&"a".repeat(64)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn lease_names_always_valid(env in ".{0,40}", run in ".{0,40}", r in any::<u64>(),
                                    prefix in "[a-z][a-z0-9-]{0,30}") {
            let prefix = crate::config::normalize_name_prefix(&prefix);
            let name = lease_vm_name(&prefix, &env, &run, r);
            prop_assert!(is_valid_vm_name(&name), "{}", name);
            prop_assert_eq!(name.clone(), lease_vm_name(&prefix, &env, &run, r));
        }

        #[test]
        fn uuid_names_always_valid(a in any::<u128>(), b in any::<u128>()) {
            let fmt = |x: u128| {
                let h = format!("{x:032x}");
                format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
            };
            let name = lease_vm_name("paperclip", &fmt(a), &fmt(b), 0);
            prop_assert!(is_valid_vm_name(&name), "{}", name);
        }

        #[test]
        fn probe_names_always_valid(r in any::<u64>(), prefix in "[a-zA-Z][a-zA-Z0-9 _-]{0,40}") {
            let prefix = crate::config::normalize_name_prefix(&prefix);
            let name = probe_vm_name(&prefix, r);
            prop_assert!(is_valid_vm_name(&name), "{}", name);
        }
    }
}
