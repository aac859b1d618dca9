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

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::policy::{is_loopback_host, HttpScheme, Policy};

/// Why the host would refuse the component's requests to a URL. The text is what the operator
/// sees (in `validate`'s errors), with the remedy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// The URL has no `http://` or `https://` authority to check.
    #[error("{what} {url} has no http:// or https:// authority this host can check.")]
    NoAuthority {
        /// The URL's role in the config, e.g. `apiUrl`.
        what: String,
        /// The URL as given.
        url: String,
    },
    /// The policy does not grant the URL's authority.
    #[error("{what} {url} is not allowed by the worker's HTTP policy. {remedy}")]
    NotAllowed {
        /// The URL's role in the config, e.g. `apiUrl`.
        what: String,
        /// The URL as given.
        url: String,
        /// What the operator can do about it.
        remedy: Remedy,
    },
}

/// What the operator must do to allow an HTTP authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// Cleartext to a host that is not loopback: never allowed, so use `https://`.
    UseHttps,
    /// Add `--allow-http <entry>` to the worker's arguments in `file` and restart the plugin.
    AllowHttp {
        /// `host:port`, an IPv6 host in brackets.
        entry: String,
        /// The `worker-args.json` to edit: its absolute path when known, otherwise a
        /// description.
        file: String,
    },
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UseHttps => f.write_str(
                "Plain http:// is only ever allowed to loopback hosts (127.0.0.0/8, ::1, \
                 localhost); use an https:// URL.",
            ),
            Self::AllowHttp { entry, file } => write!(
                f,
                "To allow it, add \"--allow-http\", \"{entry}\" to the JSON array in {file} \
                 (create the file as [\"--allow-http\", \"{entry}\"] if it does not exist), \
                 then restart the plugin (disable and enable it in Paperclip)."
            ),
        }
    }
}

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
    pub fn check_url(&self, what: &str, url: &str) -> Result<(), UrlRefused> {
        let Some((scheme, host, port)) = authority_of(url) else {
            return Err(UrlRefused::NoAuthority {
                what: what.to_owned(),
                url: url.to_owned(),
            });
        };
        if self.policy.allows_http(scheme_name(scheme), &host, port) {
            return Ok(());
        }
        Err(UrlRefused::NotAllowed {
            what: what.to_owned(),
            url: url.to_owned(),
            remedy: self.remedy(scheme, &host, port),
        })
    }

    /// The remedy for a refused request to `url` (a `scheme://host[:port]…` URL).
    pub fn remedy_for_url(&self, url: &str) -> Option<Remedy> {
        let (scheme, host, port) = authority_of(url)?;
        Some(self.remedy(scheme, &host, port))
    }

    /// What the operator must do to allow `scheme://host:port`.
    fn remedy(&self, scheme: HttpScheme, host: &str, port: u16) -> Remedy {
        if scheme == HttpScheme::Http && !is_loopback_host(host) {
            return Remedy::UseHttps;
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
        Remedy::AllowHttp { entry, file }
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
            .unwrap_err()
            .to_string();
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
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"[::1]:9\""), "{e}");
        assert!(
            e.contains("bin/worker-args.json of the installed plugin package"),
            "{e}"
        );
        let e = a
            .check_url("apiUrl", "https://exe.dev:444/exec")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"exe.dev:444\""), "{e}");
    }

    /// The typed refusals print what the string errors printed before them.
    #[test]
    fn refusals_are_typed_and_keep_their_texts() {
        let a = access(&[], Some("/srv/pkg/bin/worker-args.json"));
        assert_eq!(
            a.check_url("apiUrl", "ftp://exe.dev/exec"),
            Err(UrlRefused::NoAuthority {
                what: "apiUrl".into(),
                url: "ftp://exe.dev/exec".into()
            })
        );
        assert_eq!(
            a.check_url("apiUrl", "ftp://exe.dev/exec")
                .unwrap_err()
                .to_string(),
            "apiUrl ftp://exe.dev/exec has no http:// or https:// authority this host can check."
        );
        let allow = Remedy::AllowHttp {
            entry: "api.example.com:8443".into(),
            file: "/srv/pkg/bin/worker-args.json".into(),
        };
        assert_eq!(
            a.check_url("apiUrl", "https://api.example.com:8443/exec"),
            Err(UrlRefused::NotAllowed {
                what: "apiUrl".into(),
                url: "https://api.example.com:8443/exec".into(),
                remedy: allow.clone(),
            })
        );
        assert_eq!(
            allow.to_string(),
            "To allow it, add \"--allow-http\", \"api.example.com:8443\" to the JSON array in \
             /srv/pkg/bin/worker-args.json (create the file as [\"--allow-http\", \
             \"api.example.com:8443\"] if it does not exist), then restart the plugin (disable \
             and enable it in Paperclip)."
        );
        assert_eq!(
            a.remedy_for_url("http://exe.dev/exec"),
            Some(Remedy::UseHttps)
        );
        assert_eq!(
            Remedy::UseHttps.to_string(),
            "Plain http:// is only ever allowed to loopback hosts (127.0.0.0/8, ::1, localhost); \
             use an https:// URL."
        );
    }

    #[test]
    fn cleartext_to_a_remote_host_gets_the_https_remedy() {
        let e = access(&[], None)
            .check_url("apiUrl", "http://exe.dev/exec")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use an https:// URL"), "{e}");
        assert!(!e.contains("--allow-http"), "{e}");
    }
}
