//! The capability policy: which HTTP authorities and SSH hosts the component may reach.
//!
//! Pure and synchronous on purpose: every capability module asks this one place, and the whole
//! allow/deny matrix is unit-tested here without any network.
//!
//! Grants come from two sources and are unioned:
//! - the plugin manifest (`manifest.json`, host-only key `x-wasm-host`), e.g.
//!   `{"http": ["https://exe.dev:443"], "ssh": ["*.exe.xyz"]}`;
//! - operator flags: `--allow-http HOST[:PORT]` (or `https://HOST[:PORT]` / `http://HOST[:PORT]`)
//!   and `--allow-ssh PATTERN`.
//!
//! Plain `http://` is only ever granted to loopback hosts (`127.0.0.0/8`, `::1`, `localhost`),
//! and only by an operator flag: the manifest can never open a cleartext channel.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The manifest key under which the host reads its grants. Host-only: packaging strips it from
/// `dist/manifest.js` because Paperclip's strict validator does not know it.
pub const MANIFEST_GRANTS_KEY: &str = "x-wasm-host";

/// A grant the policy cannot take: the manifest's `x-wasm-host` or an operator flag is
/// malformed. Printed with its causes (`{:#}`), it names the entry and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `x-wasm-host` is not an object.
    #[error("manifest `{MANIFEST_GRANTS_KEY}` must be an object")]
    GrantsNotAnObject,
    /// `x-wasm-host.<key>` is not an array.
    #[error("manifest `{MANIFEST_GRANTS_KEY}.{0}` must be an array of strings")]
    GrantsNotAnArray(String),
    /// `x-wasm-host.<key>` holds something other than strings.
    #[error("manifest `{MANIFEST_GRANTS_KEY}.{0}` must hold strings")]
    GrantNotAString(String),
    /// `x-wasm-host` names a capability the host does not know.
    #[error("manifest `{MANIFEST_GRANTS_KEY}` has unknown capability {0:?} (known: http, ssh)")]
    UnknownCapability(String),
    /// A manifest HTTP grant is not `https://…`: the manifest never opens cleartext.
    #[error("manifest HTTP grant {0:?} must be https://HOST[:PORT]")]
    ManifestHttpNotHttps(String),
    /// A manifest HTTP grant's authority is malformed.
    #[error("manifest HTTP grant {entry:?}")]
    ManifestHttp {
        /// The entry as written.
        entry: String,
        /// What is wrong with its authority.
        #[source]
        source: AuthorityError,
    },
    /// A manifest SSH pattern is malformed.
    #[error(transparent)]
    ManifestSsh(HostPatternError),
    /// An `--allow-http` flag is malformed.
    #[error("--allow-http {flag:?}")]
    AllowHttp {
        /// The flag's value as given.
        flag: String,
        /// What is wrong with it.
        #[source]
        source: HttpFlagError,
    },
    /// An `--allow-ssh` flag is malformed.
    #[error("--allow-ssh {flag:?}")]
    AllowSsh {
        /// The flag's value as given.
        flag: String,
        /// What is wrong with it.
        #[source]
        source: HostPatternError,
    },
}

/// A malformed `--allow-http` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpFlagError {
    /// A scheme other than `http://` or `https://`.
    #[error("only http:// and https:// are supported")]
    Scheme,
    /// `http://` to a host that is not loopback.
    #[error("plain http:// is only allowed to loopback hosts (127.0.0.0/8, ::1, localhost)")]
    CleartextToRemote,
    /// The `HOST[:PORT]` part is malformed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

/// A malformed `HOST[:PORT]`; each names the text it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// `[` without its `]`.
    #[error("unterminated `[` in {0:?}")]
    UnterminatedBracket(String),
    /// Something other than `:PORT` after `]`.
    #[error("expected `:PORT` after `]` in {0:?}")]
    AfterBracket(String),
    /// Not a host name or IP literal.
    #[error("invalid host in {0:?}")]
    Host(String),
    /// Not a port from 1 to 65535.
    #[error("invalid port in {0:?}")]
    Port(String),
}

/// A malformed SSH host pattern; each names the pattern as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    /// Empty, or longer than a host name can be.
    #[error("SSH host pattern {0:?} must be 1 to 253 characters")]
    Length(String),
    /// A label that is empty, too long, starts with `-` or holds other characters.
    #[error(
        "SSH host pattern {0:?} is invalid: labels are letters, digits, `-` and `*`, non-empty, \
         not starting with `-`"
    )]
    Label(String),
}

/// URL scheme of an HTTP grant or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpScheme {
    /// `http://` (cleartext; loopback only).
    Http,
    /// `https://`.
    Https,
}

impl HttpScheme {
    /// Parse a scheme name case-insensitively (`"http"`, `"https"`).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else {
            None
        }
    }

    /// The port a URL of this scheme uses when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// One allowed `scheme://host:port` triple (host normalised to lowercase, IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpGrant {
    /// The scheme this grant allows.
    pub scheme: HttpScheme,
    /// The normalised host name or IP literal.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// A host pattern for SSH destinations: DNS labels, where a label may contain `*` wildcards.
///
/// A `*` matches one or more characters **within a single label** (never a `.`), so
/// `*.exe.xyz` matches `vm1.exe.xyz` but neither `exe.xyz`, `a.b.exe.xyz` nor
/// `evil.com#.exe.xyz` (which is not a valid host name in the first place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    labels: Vec<String>,
}

impl HostPattern {
    /// Parse a pattern such as `*.exe.xyz`, `exe.dev` or `vm-*.example.com`.
    pub fn parse(pattern: &str) -> Result<Self, HostPatternError> {
        let lower = pattern.trim().to_ascii_lowercase();
        if lower.is_empty() || lower.len() > 253 {
            return Err(HostPatternError::Length(pattern.to_owned()));
        }
        let labels: Vec<String> = lower.split('.').map(str::to_owned).collect();
        for label in &labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*');
            if !ok {
                return Err(HostPatternError::Label(pattern.to_owned()));
            }
        }
        Ok(Self { labels })
    }

    /// True when `host` (already validated and lowercased) matches this pattern.
    fn matches(&self, host: &str) -> bool {
        let host_labels: Vec<&str> = host.split('.').collect();
        host_labels.len() == self.labels.len()
            && self
                .labels
                .iter()
                .zip(host_labels)
                .all(|(pat, label)| glob_label(pat.as_bytes(), label.as_bytes()))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.labels.join("."))
    }
}

/// Glob-match one DNS label: `*` matches one or more characters, everything else literally.
fn glob_label(pat: &[u8], text: &[u8]) -> bool {
    match pat.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (1..=text.len()).any(|n| glob_label(rest, &text[n..])),
        Some((c, rest)) => text.first() == Some(c) && glob_label(rest, &text[1..]),
    }
}

/// Validate a host name the way SSH destinations and HTTP hosts must look here: 1 to 253
/// characters; dot-separated labels of 1 to 63 letters, digits and `-`, never starting or ending
/// with `-`. Returns the lowercased name. IP literals such as `127.0.0.1` pass as digit labels.
///
/// This is the defence against option injection (`-oProxyCommand=…`) and against tricks like
/// `evil.com#.exe.xyz` or `host name` reaching the SSH client or the URL authority.
pub fn normalize_hostname(host: &str) -> Option<String> {
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let valid = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    valid.then(|| host.to_ascii_lowercase())
}

/// Normalise an HTTP host: a bracketed or bare IPv6 literal becomes its canonical text without
/// brackets; anything else must pass [`normalize_hostname`].
fn normalize_http_host(host: &str) -> Option<String> {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(v6) = unbracketed.parse::<Ipv6Addr>() {
        return Some(v6.to_string());
    }
    if unbracketed.len() != host.len() {
        // Brackets around something that is not an IPv6 literal.
        return None;
    }
    normalize_hostname(host)
}

/// True for `localhost`, `127.0.0.0/8` and `::1` (host already normalised).
pub fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => v6 == Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

/// Split `HOST[:PORT]` (HOST may be `[v6]`) into a normalised host and an optional port.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), AuthorityError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| AuthorityError::UnterminatedBracket(s.to_owned()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| AuthorityError::AfterBracket(s.to_owned()))?,
            ),
        };
        (format!("[{inside}]"), port)
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 literal without a port.
        (s.to_owned(), None)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    let host = normalize_http_host(&host).ok_or_else(|| AuthorityError::Host(s.to_owned()))?;
    let port = match port {
        None => None,
        Some(p) => {
            let n: u16 = p
                .parse()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| AuthorityError::Port(s.to_owned()))?;
            Some(n)
        }
    };
    Ok((host, port))
}

/// The capabilities granted to one component instance.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    http: Vec<HttpGrant>,
    ssh: Vec<HostPattern>,
}

impl Policy {
    /// Build the policy from the manifest's `x-wasm-host` grants plus operator flags.
    ///
    /// Manifest `http` entries must be full `https://HOST[:PORT]` URLs (cleartext is refused);
    /// `ssh` entries are [`HostPattern`]s. Flags are parsed by [`Policy::allow_http_flag`] and
    /// [`Policy::allow_ssh_pattern`]. Any malformed entry is an error naming it, so a typo never
    /// silently grants or drops access.
    pub fn from_manifest(
        manifest: &serde_json::Value,
        http_flags: &[String],
        ssh_flags: &[String],
    ) -> Result<Policy, PolicyError> {
        let mut policy = Policy::default();
        if let Some(grants) = manifest.get(MANIFEST_GRANTS_KEY) {
            let grants = grants.as_object().ok_or(PolicyError::GrantsNotAnObject)?;
            for (key, value) in grants {
                let entries = value
                    .as_array()
                    .ok_or_else(|| PolicyError::GrantsNotAnArray(key.clone()))?;
                for entry in entries {
                    let entry = entry
                        .as_str()
                        .ok_or_else(|| PolicyError::GrantNotAString(key.clone()))?;
                    match key.as_str() {
                        "http" => policy.allow_manifest_http(entry)?,
                        "ssh" => policy
                            .allow_ssh_pattern(entry)
                            .map_err(PolicyError::ManifestSsh)?,
                        other => return Err(PolicyError::UnknownCapability(other.to_owned())),
                    }
                }
            }
        }
        for flag in http_flags {
            policy
                .allow_http_flag(flag)
                .map_err(|source| PolicyError::AllowHttp {
                    flag: flag.clone(),
                    source,
                })?;
        }
        for flag in ssh_flags {
            policy
                .allow_ssh_pattern(flag)
                .map_err(|source| PolicyError::AllowSsh {
                    flag: flag.clone(),
                    source,
                })?;
        }
        Ok(policy)
    }

    /// Add a manifest HTTP grant: `https://HOST[:PORT]` only.
    fn allow_manifest_http(&mut self, entry: &str) -> Result<(), PolicyError> {
        let rest = entry
            .strip_prefix("https://")
            .ok_or_else(|| PolicyError::ManifestHttpNotHttps(entry.to_owned()))?;
        let (host, port) = split_host_port(rest.trim_end_matches('/')).map_err(|source| {
            PolicyError::ManifestHttp {
                entry: entry.to_owned(),
                source,
            }
        })?;
        self.push_http(HttpScheme::Https, host, port.unwrap_or(443));
        Ok(())
    }

    /// Add an operator `--allow-http` grant.
    ///
    /// - `https://HOST[:PORT]` allows HTTPS only (port default 443);
    /// - `http://HOST[:PORT]` allows cleartext HTTP only, and HOST must be loopback (default 80);
    /// - bare `HOST[:PORT]` allows HTTPS, plus cleartext HTTP when HOST is loopback; the port
    ///   defaults to each scheme's default port.
    pub fn allow_http_flag(&mut self, flag: &str) -> Result<(), HttpFlagError> {
        let flag = flag.trim();
        let (schemes, rest): (&[HttpScheme], &str) = if let Some(r) = flag.strip_prefix("https://")
        {
            (&[HttpScheme::Https], r)
        } else if let Some(r) = flag.strip_prefix("http://") {
            (&[HttpScheme::Http], r)
        } else if flag.contains("://") {
            return Err(HttpFlagError::Scheme);
        } else {
            (&[HttpScheme::Https, HttpScheme::Http], flag)
        };
        let (host, port) = split_host_port(rest.trim_end_matches('/'))?;
        let loopback = is_loopback_host(&host);
        if schemes == [HttpScheme::Http] && !loopback {
            return Err(HttpFlagError::CleartextToRemote);
        }
        for &scheme in schemes {
            if scheme == HttpScheme::Http && !loopback {
                continue;
            }
            self.push_http(scheme, host.clone(), port.unwrap_or(scheme.default_port()));
        }
        Ok(())
    }

    /// Add an SSH host pattern (manifest entry or `--allow-ssh`).
    pub fn allow_ssh_pattern(&mut self, pattern: &str) -> Result<(), HostPatternError> {
        let pattern = HostPattern::parse(pattern)?;
        if !self.ssh.contains(&pattern) {
            self.ssh.push(pattern);
        }
        Ok(())
    }

    fn push_http(&mut self, scheme: HttpScheme, host: String, port: u16) {
        let grant = HttpGrant { scheme, host, port };
        if !self.http.contains(&grant) {
            self.http.push(grant);
        }
    }

    /// May the component send a request to `scheme://host:port`?
    ///
    /// `scheme` is compared case-insensitively; `host` may be a bracketed IPv6 literal. Cleartext
    /// HTTP is re-checked to be loopback here as a second line of defence.
    pub fn allows_http(&self, scheme: &str, host: &str, port: u16) -> bool {
        let Some(scheme) = HttpScheme::parse(scheme) else {
            return false;
        };
        let Some(host) = normalize_http_host(host) else {
            return false;
        };
        if scheme == HttpScheme::Http && !is_loopback_host(&host) {
            return false;
        }
        self.http
            .iter()
            .any(|g| g.scheme == scheme && g.port == port && g.host == host)
    }

    /// May the component open SSH to `host`? The host must be a valid host name (see
    /// [`normalize_hostname`]) and match a granted pattern.
    pub fn allows_ssh(&self, host: &str) -> bool {
        let Some(host) = normalize_hostname(host) else {
            return false;
        };
        self.ssh.iter().any(|p| p.matches(&host))
    }

    /// The HTTP grants, for diagnostics (`--help`-style listings, startup logs).
    pub fn http_grants(&self) -> &[HttpGrant] {
        &self.http
    }

    /// The SSH host patterns, for diagnostics.
    pub fn ssh_patterns(&self) -> &[HostPattern] {
        &self.ssh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> serde_json::Value {
        json!({
            "id": "paperclip.exe-dev-sandbox-provider",
            "x-wasm-host": {"http": ["https://exe.dev:443"], "ssh": ["*.exe.xyz"]}
        })
    }

    fn policy(http: &[&str], ssh: &[&str]) -> Policy {
        let http: Vec<String> = http.iter().map(|s| s.to_string()).collect();
        let ssh: Vec<String> = ssh.iter().map(|s| s.to_string()).collect();
        Policy::from_manifest(&manifest(), &http, &ssh).unwrap()
    }

    #[test]
    fn manifest_grants_exe_dev_https_only() {
        let p = policy(&[], &[]);
        assert!(p.allows_http("https", "exe.dev", 443));
        assert!(p.allows_http("HTTPS", "EXE.DEV", 443));
        assert!(!p.allows_http("http", "exe.dev", 443));
        assert!(!p.allows_http("http", "exe.dev", 80));
        assert!(!p.allows_http("https", "exe.dev", 8443));
        assert!(!p.allows_http("https", "api.exe.dev", 443));
        assert!(!p.allows_http("https", "exe.dev.evil.com", 443));
        assert!(!p.allows_http("https", "evil.com", 443));
        assert!(!p.allows_http("ftp", "exe.dev", 443));
    }

    #[test]
    fn tricky_http_hosts_are_denied() {
        let p = policy(&["127.0.0.1:8080"], &[]);
        for host in [
            "exe.dev.",
            "exe.dev#",
            "exe.dev@evil.com",
            "evil.com#.exe.dev",
            "exe dev",
            "",
            "-exe.dev",
            "exe..dev",
            "[exe.dev]",
            "127.0.0.1.nip.io",
        ] {
            assert!(
                !p.allows_http("https", host, 443),
                "{host:?} must be denied"
            );
            assert!(
                !p.allows_http("http", host, 8080),
                "{host:?} must be denied"
            );
        }
    }

    #[test]
    fn bare_loopback_flag_allows_http_and_https_on_that_port() {
        let p = policy(&["127.0.0.1:8080"], &[]);
        assert!(p.allows_http("http", "127.0.0.1", 8080));
        assert!(p.allows_http("https", "127.0.0.1", 8080));
        assert!(!p.allows_http("http", "127.0.0.1", 8081));
        assert!(!p.allows_http("http", "127.0.0.2", 8080));
        assert!(!p.allows_http("http", "localhost", 8080));
    }

    #[test]
    fn bare_non_loopback_flag_allows_https_only() {
        let p = policy(&["sim.example.com:8443"], &[]);
        assert!(p.allows_http("https", "sim.example.com", 8443));
        assert!(!p.allows_http("http", "sim.example.com", 8443));
        let p = policy(&["api.example.com"], &[]);
        assert!(p.allows_http("https", "api.example.com", 443));
        assert!(!p.allows_http("http", "api.example.com", 80));
    }

    #[test]
    fn explicit_scheme_flags() {
        let p = policy(&["http://localhost:3000", "https://10.0.0.5:9443"], &[]);
        assert!(p.allows_http("http", "localhost", 3000));
        assert!(!p.allows_http("https", "localhost", 3000));
        assert!(p.allows_http("https", "10.0.0.5", 9443));
        assert!(!p.allows_http("http", "10.0.0.5", 9443));
        let p = policy(&["http://127.0.0.1"], &[]);
        assert!(p.allows_http("http", "127.0.0.1", 80));
    }

    #[test]
    fn ipv6_loopback_flag() {
        let p = policy(&["[::1]:8080"], &[]);
        assert!(p.allows_http("http", "[::1]", 8080));
        assert!(p.allows_http("http", "::1", 8080));
        assert!(p.allows_http("http", "[0:0:0:0:0:0:0:1]", 8080));
        assert!(!p.allows_http("http", "[::2]", 8080));
    }

    #[test]
    fn cleartext_to_non_loopback_is_refused_at_parse_time() {
        let http = vec!["http://example.com:80".to_owned()];
        assert!(Policy::from_manifest(&manifest(), &http, &[]).is_err());
        let http = vec!["http://10.0.0.1".to_owned()];
        assert!(Policy::from_manifest(&manifest(), &http, &[]).is_err());
        let m = json!({"x-wasm-host": {"http": ["http://127.0.0.1:80"]}});
        assert!(Policy::from_manifest(&m, &[], &[]).is_err());
    }

    #[test]
    fn malformed_flags_and_manifest_entries_are_errors() {
        for bad in [
            "",
            "host:0",
            "host:99999",
            "host:abc",
            "ftp://host",
            "ho st",
            "[::1",
            "[exe.dev]:443",
        ] {
            let http = vec![bad.to_owned()];
            assert!(
                Policy::from_manifest(&manifest(), &http, &[]).is_err(),
                "{bad:?} must be rejected"
            );
        }
        for bad in [
            "",
            "-evil.com",
            "evil.com#.exe.xyz",
            "a..b",
            "a b",
            "*.exe.xyz:22",
        ] {
            let ssh = vec![bad.to_owned()];
            assert!(
                Policy::from_manifest(&manifest(), &[], &ssh).is_err(),
                "{bad:?} must be rejected"
            );
        }
        for m in [
            json!({"x-wasm-host": []}),
            json!({"x-wasm-host": {"http": "https://exe.dev"}}),
            json!({"x-wasm-host": {"http": [1]}}),
            json!({"x-wasm-host": {"sockets": ["*"]}}),
        ] {
            assert!(
                Policy::from_manifest(&m, &[], &[]).is_err(),
                "{m} must be rejected"
            );
        }
    }

    #[test]
    fn manifest_without_grants_allows_nothing() {
        let p = Policy::from_manifest(&json!({"id": "x"}), &[], &[]).unwrap();
        assert!(!p.allows_http("https", "exe.dev", 443));
        assert!(!p.allows_ssh("vm.exe.xyz"));
    }

    #[test]
    fn ssh_star_matches_exactly_one_label() {
        let p = policy(&[], &[]);
        assert!(p.allows_ssh("vm1.exe.xyz"));
        assert!(p.allows_ssh("VM1.EXE.XYZ"));
        assert!(p.allows_ssh("paperclip-env1-run1.exe.xyz"));
        assert!(!p.allows_ssh("exe.xyz"));
        assert!(!p.allows_ssh(".exe.xyz"));
        assert!(!p.allows_ssh("a.b.exe.xyz"));
        assert!(!p.allows_ssh("vm.exe.xyz.evil.com"));
        assert!(!p.allows_ssh("vmexe.xyz"));
        assert!(!p.allows_ssh("exe.dev"));
    }

    #[test]
    fn ssh_tricky_hosts_are_denied() {
        let p = policy(&[], &["*"]);
        for host in [
            "evil.com#.exe.xyz",
            "evil.com/.exe.xyz",
            "evil.com .exe.xyz",
            "-oProxyCommand=touch.exe.xyz",
            "-vm.exe.xyz",
            "vm-.exe.xyz",
            "vm.exe.xyz.",
            "user@vm.exe.xyz",
            "vm.exe.xyz:22",
            "vm.exe.xyz\n",
            "vm\0.exe.xyz",
            "ssh://vm.exe.xyz",
            "",
        ] {
            assert!(!p.allows_ssh(host), "{host:?} must be denied");
        }
        // `*` alone is a single-label pattern, not "anything".
        assert!(p.allows_ssh("localhost"));
        assert!(!p.allows_ssh("evil.com"));
    }

    #[test]
    fn ssh_flag_patterns_add_to_manifest() {
        let p = policy(&[], &["127.0.0.1", "vm-*.example.com", "exe.dev"]);
        assert!(p.allows_ssh("127.0.0.1"));
        assert!(!p.allows_ssh("127.0.0.2"));
        assert!(p.allows_ssh("vm-1.example.com"));
        assert!(!p.allows_ssh("vm-.example.com"));
        assert!(!p.allows_ssh("xvm-1.example.com"));
        assert!(p.allows_ssh("exe.dev"));
        assert!(p.allows_ssh("vm.exe.xyz"));
    }

    #[test]
    fn glob_label_semantics() {
        assert!(glob_label(b"*", b"a"));
        assert!(!glob_label(b"*", b""));
        assert!(glob_label(b"a*c", b"abbc"));
        assert!(!glob_label(b"a*c", b"ac"));
        assert!(glob_label(b"*-*", b"a-b"));
        assert!(!glob_label(b"*-*", b"-b"));
    }

    #[test]
    fn grants_are_listed_for_diagnostics() {
        let p = policy(&["[::1]:8080"], &[]);
        let listed: Vec<String> = p.http_grants().iter().map(|g| g.to_string()).collect();
        assert_eq!(
            listed,
            [
                "https://exe.dev:443",
                "https://[::1]:8080",
                "http://[::1]:8080"
            ]
        );
        assert_eq!(p.ssh_patterns()[0].to_string(), "*.exe.xyz");
    }

    /// What an operator reads (`{:#}`, cause after cause) for each malformed grant: the texts
    /// from before the errors were typed.
    #[test]
    fn malformed_grants_keep_their_texts() {
        fn text<E: Into<anyhow::Error>>(r: Result<Policy, E>) -> String {
            format!("{:#}", r.map(drop).unwrap_err().into())
        }
        let http = |flag: &str| text(Policy::from_manifest(&manifest(), &[flag.into()], &[]));
        let ssh = |flag: &str| text(Policy::from_manifest(&manifest(), &[], &[flag.into()]));
        let grants = |m: serde_json::Value| text(Policy::from_manifest(&m, &[], &[]));
        let cases = [
            (
                http("ftp://host"),
                r#"--allow-http "ftp://host": only http:// and https:// are supported"#,
            ),
            (
                http("http://example.com:80"),
                r#"--allow-http "http://example.com:80": plain http:// is only allowed to loopback hosts (127.0.0.0/8, ::1, localhost)"#,
            ),
            (
                http("[::1"),
                r#"--allow-http "[::1": unterminated `[` in "[::1""#,
            ),
            (
                http("[::1]8080"),
                r#"--allow-http "[::1]8080": expected `:PORT` after `]` in "[::1]8080""#,
            ),
            (
                http("ho st"),
                r#"--allow-http "ho st": invalid host in "ho st""#,
            ),
            (
                http("host:0"),
                r#"--allow-http "host:0": invalid port in "host:0""#,
            ),
            (
                ssh(""),
                r#"--allow-ssh "": SSH host pattern "" must be 1 to 253 characters"#,
            ),
            (
                ssh("a..b"),
                r#"--allow-ssh "a..b": SSH host pattern "a..b" is invalid: labels are letters, digits, `-` and `*`, non-empty, not starting with `-`"#,
            ),
            (
                grants(json!({"x-wasm-host": []})),
                "manifest `x-wasm-host` must be an object",
            ),
            (
                grants(json!({"x-wasm-host": {"http": "https://exe.dev"}})),
                "manifest `x-wasm-host.http` must be an array of strings",
            ),
            (
                grants(json!({"x-wasm-host": {"ssh": [1]}})),
                "manifest `x-wasm-host.ssh` must hold strings",
            ),
            (
                grants(json!({"x-wasm-host": {"sockets": ["*"]}})),
                r#"manifest `x-wasm-host` has unknown capability "sockets" (known: http, ssh)"#,
            ),
            (
                grants(json!({"x-wasm-host": {"http": ["http://127.0.0.1:80"]}})),
                r#"manifest HTTP grant "http://127.0.0.1:80" must be https://HOST[:PORT]"#,
            ),
            (
                grants(json!({"x-wasm-host": {"http": ["https://exe.dev:x"]}})),
                r#"manifest HTTP grant "https://exe.dev:x": invalid port in "exe.dev:x""#,
            ),
            (
                grants(json!({"x-wasm-host": {"ssh": ["-evil.com"]}})),
                r#"SSH host pattern "-evil.com" is invalid: labels are letters, digits, `-` and `*`, non-empty, not starting with `-`"#,
            ),
        ];
        for (actual, expected) in cases {
            assert_eq!(actual, expected);
        }
    }

    #[test]
    fn malformed_grants_are_typed() {
        let http = |flag: &str| Policy::from_manifest(&manifest(), &[flag.into()], &[]).err();
        assert_eq!(
            http("host:0"),
            Some(PolicyError::AllowHttp {
                flag: "host:0".into(),
                source: HttpFlagError::Authority(AuthorityError::Port("host:0".into())),
            })
        );
        assert_eq!(
            http("http://10.0.0.1"),
            Some(PolicyError::AllowHttp {
                flag: "http://10.0.0.1".into(),
                source: HttpFlagError::CleartextToRemote,
            })
        );
        assert_eq!(
            Policy::from_manifest(&manifest(), &[], &["*.exe.xyz:22".into()]).err(),
            Some(PolicyError::AllowSsh {
                flag: "*.exe.xyz:22".into(),
                source: HostPatternError::Label("*.exe.xyz:22".into()),
            })
        );
        let m = json!({"x-wasm-host": {"http": ["https://[::1"]}});
        assert_eq!(
            Policy::from_manifest(&m, &[], &[]).err(),
            Some(PolicyError::ManifestHttp {
                entry: "https://[::1".into(),
                source: AuthorityError::UnterminatedBracket("[::1".into()),
            })
        );
    }
}
