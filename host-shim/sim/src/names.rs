//! exe.dev VM-name rules (`boxname` package; the team's notes, `shared/reference/exe-dev.md` §1) and name generation.

use rand::RngExt;

/// Exact-match reserved words. exe.dev's list is longer; these are the documented examples plus a
/// few obvious infrastructure names, enough for tests to exercise the rule.
const RESERVED: &[&str] = &[
    "admin", "build", "cache", "teams", "shelley", "exedev", "support", "status",
];

/// Substrings that exe.dev's spam denylist rejects anywhere in a name (documented examples).
const DENIED_SUBSTRINGS: &[&str] = &["adderall", "hiv", "xanax"];

/// Checks `name` against exe.dev's naming rules; the error is the message sent to the client.
pub(crate) fn validate(name: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid VM name {name:?}: {why}"));
    if name.len() < 5 || name.len() > 64 {
        return invalid("must be 5 to 64 characters");
    }
    if !matches_shape(name) {
        return invalid(
            "must start with a letter and contain only lowercase letters, digits and single hyphens, not ending with a hyphen",
        );
    }
    if ends_with_port_like_suffix(name) {
        return invalid(
            "must not end with -<digits>, -p<digits> or -port<digits>, nor be p<digits> or port<digits>",
        );
    }
    if RESERVED.contains(&name) {
        return invalid("name is reserved");
    }
    if DENIED_SUBSTRINGS.iter().any(|w| name.contains(w)) {
        return invalid("name contains a disallowed word");
    }
    Ok(())
}

/// `^[a-z][a-z0-9]*(-[a-z0-9]+)*$`, without pulling in a regex engine.
fn matches_shape(name: &str) -> bool {
    let bytes = name.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_lowercase) || name.ends_with('-') {
        return false;
    }
    name.split('-').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// Newer `boxname` rules: names that look like a port or a numeric suffix are ambiguous in
/// exe.dev's proxy routing (`<vm>-<port>` style hostnames), so they are rejected.
fn ends_with_port_like_suffix(name: &str) -> bool {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let port_like = |s: &str| {
        all_digits(s)
            || s.strip_prefix("port").is_some_and(all_digits)
            || s.strip_prefix('p').is_some_and(all_digits)
    };
    match name.rsplit_once('-') {
        Some((_, last)) => port_like(last),
        None => name
            .strip_prefix("port")
            .or_else(|| name.strip_prefix('p'))
            .is_some_and(all_digits),
    }
}

/// A fresh name that satisfies [`validate`]: two short words and a random letter suffix, like
/// exe.dev's generated names. Letters only in the suffix, so it never looks like a port.
pub(crate) fn generate() -> String {
    const ADJ: &[&str] = &[
        "amber", "brisk", "calm", "dusty", "eager", "fuzzy", "glad", "humble", "ivory", "jolly",
        "keen", "lucky", "mellow", "nimble", "quiet", "rapid", "sunny", "tidy", "vivid", "witty",
    ];
    const NOUN: &[&str] = &[
        "otter", "falcon", "badger", "heron", "lynx", "marten", "panda", "raven", "robin", "tapir",
        "walrus", "yak", "zebra", "bison", "crane", "dingo", "gecko", "koala", "llama", "moose",
    ];
    let mut rng = rand::rng();
    let suffix: String = (0..4)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    format!(
        "{}-{}-{}",
        ADJ[rng.random_range(0..ADJ.len())],
        NOUN[rng.random_range(0..NOUN.len())],
        suffix
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "paperclip-env1-run1",
            "abcde",
            "a1b2c3",
            "my-box-x1",
            "vm-port",
        ] {
            assert_eq!(validate(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "abcd",
            "Abcde",
            "1abcde",
            "ab--cd",
            "abcde-",
            "mybox-123",
            "mybox-p80",
            "mybox-port80",
            "port8080",
            "p12345",
            "admin",
            "archive-box",
            &"a".repeat(65),
            "ab_cde",
            "héllo",
        ] {
            assert!(validate(n).is_err(), "{n}");
        }
    }

    #[test]
    fn generated_names_are_valid() {
        for _ in 0..200 {
            let n = generate();
            assert_eq!(validate(&n), Ok(()), "{n}");
        }
    }
}
