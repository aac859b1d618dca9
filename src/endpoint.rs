//! The `/exec` endpoint URL: a deliberately small `http(s)://host[:port]/path[?query]` parser.
//!
//! A full URL library (with IDNA tables) would triple the component's size, and every call
//! instantiates the component afresh; the API URL needs none of that.

use std::fmt;

/// A parsed `http`/`https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` (true) or `http`.
    pub https: bool,
    /// Lowercased host name, IPv4 address or bracketed IPv6 address.
    pub host: String,
    /// Explicit non-default port.
    pub port: Option<u16>,
    /// Path (always starting with `/`).
    pub path: String,
    /// Query without the `?`.
    pub query: Option<String>,
}

impl Endpoint {
    /// Parse; `None` for anything that is not a plain absolute http(s) URL (userinfo,
    /// whitespace, empty host, bad port, other schemes).
    pub fn parse(raw: &str) -> Option<Endpoint> {
        let raw = raw.trim();
        let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("https://") {
            (true, &raw[8..])
        } else if lower.starts_with("http://") {
            (false, &raw[7..])
        } else {
            return None;
        };
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        if authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6.find(']')?;
            let host = &v6[..close];
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return None;
            }
            let after = &v6[close + 1..];
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{}]", host.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let valid = !host.is_empty()
                && !host.starts_with(['.', '-'])
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if !valid {
                return None;
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None | Some("") => None,
            Some(p) => {
                if !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u16 = p.parse().ok().filter(|n| *n > 0)?;
                let default = if https { 443 } else { 80 };
                (n != default).then_some(n)
            }
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (tail, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        Some(Endpoint {
            https,
            host,
            port,
            path: path.to_string(),
            query,
        })
    }

    /// `host[:port]`.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// `path[?query]`.
    pub fn path_with_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The same URL with its path ending in `/exec` (a base URL gets `/exec` appended).
    pub fn with_exec_path(mut self) -> Endpoint {
        let trimmed = self.path.trim_end_matches('/');
        self.path = if trimmed.ends_with("/exec") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/exec")
        };
        self
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(
            f,
            "{scheme}://{}{}",
            self.authority(),
            self.path_with_query()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        Endpoint::parse(s).map(|e| e.with_exec_path().to_string())
    }

    #[test]
    fn normalises_to_exec() {
        assert_eq!(
            norm("https://exe.dev").as_deref(),
            Some("https://exe.dev/exec")
        );
        assert_eq!(
            norm("https://exe.dev/").as_deref(),
            Some("https://exe.dev/exec")
        );
        assert_eq!(
            norm("https://exe.dev/exec").as_deref(),
            Some("https://exe.dev/exec")
        );
        assert_eq!(
            norm("https://exe.dev/exec/").as_deref(),
            Some("https://exe.dev/exec")
        );
        assert_eq!(
            norm(" HTTPS://EXE.dev:443/api/ ").as_deref(),
            Some("https://exe.dev/api/exec")
        );
        assert_eq!(
            norm("http://127.0.0.1:8080/x?y=1#frag").as_deref(),
            Some("http://127.0.0.1:8080/x/exec?y=1")
        );
        assert_eq!(
            norm("http://[::1]:9000").as_deref(),
            Some("http://[::1]:9000/exec")
        );
    }

    #[test]
    fn rejects_what_is_not_a_plain_http_url() {
        for bad in [
            "not a url",
            "ftp://exe.dev",
            "https://",
            "https:///exec",
            "https://user:pw@exe.dev",
            "https://exe dev",
            "https://exe.dev:0",
            "https://exe.dev:99999",
            "https://exe.dev:ab",
            "https://[zz]",
            "exe.dev/exec",
            "",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn parts() {
        let e = Endpoint::parse("https://exe.dev:8443/exec?a=b").unwrap();
        assert_eq!(e.authority(), "exe.dev:8443");
        assert_eq!(e.path_with_query(), "/exec?a=b");
        assert!(e.https);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,60}") {
            if let Some(e) = Endpoint::parse(&s) {
                let again = Endpoint::parse(&e.to_string());
                proptest::prop_assert_eq!(again, Some(e));
            }
        }
    }
}
