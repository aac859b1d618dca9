//! The `/exec` endpoint URL, parsed by the `url` crate (WHATWG: IDNA, IPv6, percent-encoding).
//!
//! Only a plain absolute `http(s)` URL is an endpoint: one the WHATWG parser accepts without a
//! validation error (so no credentials, no stray whitespace, no `https:///x`), with a host and
//! a port other than 0. Its fragment is dropped: it never reaches the server.

use std::cell::Cell;
use std::fmt;

use url::Url;

/// A parsed `http`/`https` URL without userinfo or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
}

impl Endpoint {
    /// Parse; `None` for anything that is not a plain absolute http(s) URL (userinfo,
    /// whitespace, empty host, bad port, other schemes, any WHATWG validation error).
    pub fn parse(raw: &str) -> Option<Endpoint> {
        // A config value may carry surrounding whitespace, but none inside: the parser would
        // percent-encode Unicode spaces into the path instead of refusing them.
        let raw = raw.trim();
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        // The parser repairs what it flags (it drops tabs and newlines, reads `https:/x` as
        // `https://x`); an API URL that needed repair is not taken as what its author meant.
        let flagged = Cell::new(false);
        let on_violation = |_| flagged.set(true);
        let mut url = Url::options()
            .syntax_violation_callback(Some(&on_violation))
            .parse(raw)
            .ok()?;
        let plain = !flagged.get()
            && matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.port() != Some(0);
        if !plain {
            return None;
        }
        url.set_fragment(None);
        Some(Endpoint { url })
    }

    /// `https` (true) or `http`.
    pub fn https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// `host[:port]`: the host in its serialised form (lowercase ASCII, IDNA-encoded, IPv6 in
    /// brackets), the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    /// `path[?query]`, percent-encoded.
    pub fn path_with_query(&self) -> String {
        match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_string(),
        }
    }

    /// The same URL with its path ending in `/exec` (a base URL gets `/exec` appended).
    pub fn with_exec_path(mut self) -> Endpoint {
        let trimmed = self.url.path().trim_end_matches('/');
        let path = if trimmed.ends_with("/exec") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/exec")
        };
        self.url.set_path(&path);
        self
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.url, f)
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
    fn ipv6_hosts_are_bracketed_and_canonical() {
        assert_eq!(
            norm("https://[2001:DB8::1]:8443/api").as_deref(),
            Some("https://[2001:db8::1]:8443/api/exec")
        );
        assert_eq!(
            norm("http://[0:0:0:0:0:0:0:1]:80/").as_deref(),
            Some("http://[::1]/exec")
        );
        let e = Endpoint::parse("https://[::ffff:127.0.0.1]:9443").unwrap();
        assert_eq!(e.authority(), "[::ffff:7f00:1]:9443");
    }

    #[test]
    fn idna_hosts_become_ascii() {
        let e = Endpoint::parse("https://BÜCHER.example/exec").unwrap();
        assert_eq!(e.authority(), "xn--bcher-kva.example");
        assert_eq!(e.to_string(), "https://xn--bcher-kva.example/exec");
        assert_eq!(
            norm("https://xn--bcher-kva.example").as_deref(),
            Some("https://xn--bcher-kva.example/exec")
        );
        // Full-width dots and letters map to ASCII (UTS 46).
        assert_eq!(
            norm("https://ｅｘｅ。dev").as_deref(),
            Some("https://exe.dev/exec")
        );
    }

    #[test]
    fn percent_encoding_is_kept_or_applied() {
        // Percent-encoded host bytes are decoded; path and query stay encoded, and raw
        // non-ASCII in them is encoded.
        assert_eq!(
            norm("https://ex%65.dev").as_deref(),
            Some("https://exe.dev/exec")
        );
        assert_eq!(
            norm("https://exe.dev/caf%C3%A9/").as_deref(),
            Some("https://exe.dev/caf%C3%A9/exec")
        );
        let e = Endpoint::parse("https://exe.dev/café?q=é").unwrap();
        assert_eq!(e.path_with_query(), "/caf%C3%A9?q=%C3%A9");
        assert_eq!(
            e.with_exec_path().to_string(),
            "https://exe.dev/caf%C3%A9/exec?q=%C3%A9"
        );
    }

    #[test]
    fn rejects_what_the_parser_would_have_to_repair() {
        for bad in [
            "https:/exe.dev",
            "https:exe.dev",
            "https:\\\\exe.dev",
            "https://exe.dev\\exec",
            "https://exe.dev/ex\tec",
            "https://exe.dev/ex\nec",
            "https://exe.dev/\u{a0}exec",
            "https://exe.dev/\u{3000}exec",
            "https://exe.dev/%zz",
            "https://exe.dev/a|b",
            "https://@exe.dev",
            "https://[::1",
            "http://exe.dev:0/",
            "https://xn--a.example",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad:?}");
        }
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
        assert!(e.https());
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
