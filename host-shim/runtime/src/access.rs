//! Telling the operator how to allow an HTTP authority the policy refuses.
//!
//! The HTTP policy itself lives in [`crate::policy`] and is enforced by the `wasi:http` hooks
//! ([`crate::caps::http`]). This module turns a refusal into the exact remedy: the
//! `--allow-http HOST:PORT` entry to add to `bin/worker-args.json` of the installed plugin
//! package (the only way operator flags reach a worker Paperclip starts; see the worker's
//! `package` module, which also finds that file beside a packaged binary). It is used twice by
//! the worker:
//! - after the guest's `validate-config`, on the guest-normalised `apiUrl`, so a config the
//!   host would refuse is rejected when the environment is saved, not first by a probe;
//! - after a call during which the hooks refused a request, so the runtime error names the
//!   remedy too.

use std::path::PathBuf;
use std::sync::Arc;

use crate::policy::{is_loopback_host, HttpScheme, Policy};

/// The HTTP policy plus where its operator flags live.
#[derive(Debug, Clone)]
pub struct HttpAccess {
    policy: Arc<Policy>,
    worker_args: Option<PathBuf>,
}

impl HttpAccess {
    /// `policy`, with `worker_args` the absolute path of the package's `worker-args.json` when
    /// known (the worker finds it beside its own binary).
    pub fn new(policy: Arc<Policy>, worker_args: Option<PathBuf>) -> Self {
        Self {
            policy,
            worker_args,
        }
    }

    /// `Ok` when the policy lets the component call `url`; otherwise the message an operator
    /// sees, naming the remedy. `what` names the URL's role (e.g. "apiUrl").
    pub fn check_url(&self, what: &str, url: &str) -> Result<(), String> {
        let Some((scheme, host, port)) = authority_of(url) else {
            return Err(format!(
                "{what} {url} has no http:// or https:// authority this host can check."
            ));
        };
        if self.policy.allows_http(scheme_name(scheme), &host, port) {
            return Ok(());
        }
        Err(format!(
            "{what} {url} is not allowed by the worker's HTTP policy. {}",
            self.remedy(scheme, &host, port)
        ))
    }

    /// The remedy for a refused request to `url` (a `scheme://host[:port]…` URL).
    pub fn remedy_for_url(&self, url: &str) -> Option<String> {
        let (scheme, host, port) = authority_of(url)?;
        Some(self.remedy(scheme, &host, port))
    }

    /// What the operator must do to allow `scheme://host:port`.
    fn remedy(&self, scheme: HttpScheme, host: &str, port: u16) -> String {
        if scheme == HttpScheme::Http && !is_loopback_host(host) {
            return "Plain http:// is only ever allowed to loopback hosts (127.0.0.0/8, ::1, \
                    localhost); use an https:// URL."
                .to_string();
        }
        let entry = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let file = match &self.worker_args {
            Some(path) => path.display().to_string(),
            None => "bin/worker-args.json of the installed plugin package".to_string(),
        };
        format!(
            "To allow it, add \"--allow-http\", \"{entry}\" to the JSON array in {file} (create \
             the file as [\"--allow-http\", \"{entry}\"] if it does not exist), then restart \
             the plugin (disable and enable it in Paperclip)."
        )
    }
}

fn scheme_name(scheme: HttpScheme) -> &'static str {
    match scheme {
        HttpScheme::Http => "http",
        HttpScheme::Https => "https",
    }
}

/// Scheme, host (lowercase, IPv6 without brackets) and port of an absolute http(s) URL.
fn authority_of(url: &str) -> Option<(HttpScheme, String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = HttpScheme::parse(uri.scheme_str()?)?;
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    Some((scheme, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn access(flags: &[&str], worker_args: Option<&str>) -> HttpAccess {
        let manifest = json!({"x-wasm-host": {"http": ["https://exe.dev:443"]}});
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let policy = Policy::from_manifest(&manifest, &flags, &[]).unwrap();
        HttpAccess::new(Arc::new(policy), worker_args.map(PathBuf::from))
    }

    #[test]
    fn allowed_urls_pass() {
        let a = access(&["127.0.0.1:8080"], None);
        assert_eq!(a.check_url("apiUrl", "https://exe.dev/exec"), Ok(()));
        assert_eq!(a.check_url("apiUrl", "https://EXE.dev:443/exec"), Ok(()));
        assert_eq!(a.check_url("apiUrl", "http://127.0.0.1:8080/exec"), Ok(()));
    }

    #[test]
    fn a_refused_url_names_the_exact_flag_and_file() {
        let a = access(&[], Some("/srv/pkg/bin/worker-args.json"));
        let e = a
            .check_url("apiUrl", "https://api.example.com:8443/exec")
            .unwrap_err();
        assert_eq!(
            e,
            "apiUrl https://api.example.com:8443/exec is not allowed by the worker's HTTP \
             policy. To allow it, add \"--allow-http\", \"api.example.com:8443\" to the JSON \
             array in /srv/pkg/bin/worker-args.json (create the file as [\"--allow-http\", \
             \"api.example.com:8443\"] if it does not exist), then restart the plugin (disable \
             and enable it in Paperclip)."
        );
        let e = access(&[], None)
            .check_url("apiUrl", "http://[::1]:9/exec")
            .unwrap_err();
        assert!(e.contains("\"[::1]:9\""), "{e}");
        assert!(
            e.contains("bin/worker-args.json of the installed plugin package"),
            "{e}"
        );
        let e = a
            .check_url("apiUrl", "https://exe.dev:444/exec")
            .unwrap_err();
        assert!(e.contains("\"exe.dev:444\""), "{e}");
    }

    #[test]
    fn cleartext_to_a_remote_host_gets_the_https_remedy() {
        let e = access(&[], None)
            .check_url("apiUrl", "http://exe.dev/exec")
            .unwrap_err();
        assert!(e.contains("use an https:// URL"), "{e}");
        assert!(!e.contains("--allow-http"), "{e}");
    }
}
