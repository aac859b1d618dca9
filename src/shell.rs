//! POSIX `sh` quoting, shared by the exe.dev command lines ([`crate::api`]) and the scripts run
//! in the VM ([`crate::remote`], [`crate::sync_script`]).

/// The seed's `shellQuote`: wrap in `'…'`, each `'` becomes `'"'"'`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "'abc'");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(shell_quote(""), "''");
    }
}
