//! Go `flag`-package style parsing, as exe.dev's command system does it (reference §1, "Command
//! parsing details"): `--name=v`, `--name v`, `-name v`, boolean flags, repeated flags, flags
//! interleaved with positionals, `--` ends flags, and a token starting with `-----` (a PEM
//! header) is a positional.

use std::collections::BTreeMap;

/// How a flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `--json`, `--json=false`; never consumes the next token.
    Bool,
    /// One value; a repeated flag keeps the last value, as Go's `flag` does.
    Str,
    /// Repeatable; every value is kept in order.
    Multi,
}

/// The result of parsing one command's arguments.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    values: BTreeMap<String, Vec<String>>,
    bools: BTreeMap<String, bool>,
    /// Positional arguments in their original order.
    pub(crate) positionals: Vec<String>,
    /// `-h` / `--help` was given.
    pub(crate) help: bool,
}

impl Parsed {
    /// The last value of a single-valued flag.
    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of a repeatable flag, in order.
    pub(crate) fn multi(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The value of a boolean flag, if it was given.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }
}

/// Parses `args` against `spec`; the error is Go's `flag` message (without exe.dev's prefix).
pub(crate) fn parse(args: &[String], spec: &[(&str, Kind)]) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut iter = args.iter();
    let mut flags_done = false;
    while let Some(arg) = iter.next() {
        if flags_done || arg == "-" || !arg.starts_with('-') || arg.starts_with("-----") {
            out.positionals.push(arg.clone());
            continue;
        }
        if arg == "--" {
            flags_done = true;
            continue;
        }
        let body = arg.strip_prefix("--").unwrap_or_else(|| &arg[1..]);
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            out.help = true;
            continue;
        }
        let Some(&(_, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            return Err(format!("flag provided but not defined: -{name}"));
        };
        match kind {
            Kind::Bool => {
                let value = match inline {
                    None => true,
                    Some(v) => parse_go_bool(v).ok_or_else(|| {
                        format!("invalid boolean value {v:?} for -{name}: parse error")
                    })?,
                };
                out.bools.insert(name.to_owned(), value);
            }
            Kind::Str | Kind::Multi => {
                let value = match inline {
                    Some(v) => v.to_owned(),
                    // Go's flag package takes the next token as the value even if it starts
                    // with '-', so `--comment -x` sets the comment to "-x".
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("flag needs an argument: -{name}"))?,
                };
                let slot = out.values.entry(name.to_owned()).or_default();
                if kind == Kind::Str {
                    slot.clear();
                }
                slot.push(value);
            }
        }
    }
    Ok(out)
}

/// `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &[(&str, Kind)] = &[
        ("name", Kind::Str),
        ("json", Kind::Bool),
        ("env", Kind::Multi),
    ];

    fn args(s: &str) -> Vec<String> {
        shlex::split(s).unwrap()
    }

    #[test]
    fn forms_and_interleaving() {
        let p = parse(
            &args("a --name=x -json b --env 'K=V 1' -env=Q=2 --name y -- --json"),
            SPEC,
        )
        .unwrap();
        assert_eq!(p.str("name"), Some("y"));
        assert_eq!(p.bool("json"), Some(true));
        assert_eq!(p.multi("env"), ["K=V 1", "Q=2"]);
        assert_eq!(p.positionals, ["a", "b", "--json"]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&args("--nope"), SPEC).unwrap_err(),
            "flag provided but not defined: -nope"
        );
        assert_eq!(
            parse(&args("--name"), SPEC).unwrap_err(),
            "flag needs an argument: -name"
        );
        assert!(parse(&args("--json=maybe"), SPEC).is_err());
        assert!(parse(&args("---x"), SPEC).is_err());
    }

    #[test]
    fn pem_header_is_positional() {
        let p = parse(&args("'-----BEGIN X-----' --json=false"), SPEC).unwrap();
        assert_eq!(p.positionals, ["-----BEGIN X-----"]);
        assert_eq!(p.bool("json"), Some(false));
    }
}
