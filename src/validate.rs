//! `validate-config`: the driver config's own checks ([`crate::config`]) plus the limit of the
//! exe.dev API on the create command it produces ([`crate::api`]). No network.

use crate::api;
use crate::config::{normalized_json, parse_text, ConfigError};
use crate::host::Host;

/// Result of `validate-config` (mirror of the WIT `validation` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// True when `errors` is empty.
    pub ok: bool,
    /// Non-fatal remarks.
    pub warnings: Vec<String>,
    /// Fatal problems.
    pub errors: Vec<String>,
    /// Normalised config as JSON object text, when usable.
    pub normalized_config: Option<String>,
}

/// `validate-config`: no network, never panics.
pub fn validate(text: &str, host: &dyn Host) -> Validation {
    let mut parsed = parse_text(text, true);
    if parsed.raw.is_empty() && !parsed.errors.is_empty() {
        return Validation {
            ok: false,
            warnings: Vec::new(),
            errors: texts(&parsed.errors),
            normalized_config: None,
        };
    }
    if parsed.config.resolve_api_key(host).is_none() {
        // Reported after the field errors of the seed's order would place it: keep it first
        // among "usable" problems, as the seed checks the key before env keys.
        parsed.errors.push(ConfigError::MissingApiKey);
    }
    let mut errors = texts(&parsed.errors);
    if errors.is_empty() {
        if let Err(e) = api::check_create_size(&parsed.config) {
            errors.push(e);
        }
    }
    let ok = errors.is_empty();
    let normalized_config = ok.then(|| normalized_json(&parsed).to_string());
    Validation {
        ok,
        warnings: parsed.warnings,
        errors,
        normalized_config,
    }
}

/// The operator-facing texts of the config's errors, as the validation record carries them.
fn texts(errors: &[ConfigError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}
