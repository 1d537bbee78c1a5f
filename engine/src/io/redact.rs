//! Keeps credentials out of everything Kiln prints.
//!
//! Every credential Kiln is handed (from the environment or from
//! `CREATE EXTERNAL TABLE ... OPTIONS`) is registered here, and every message
//! that leaves Kiln (errors, EXPLAIN, logs) goes through [`redact`], which
//! replaces each registered value with `***`. Registering by value rather than
//! scrubbing known patterns means a secret echoed back by a server, or
//! embedded in a URL, is caught too.

use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shorter values are not treated as secrets: no real credential is this
/// short, and redacting `true` or a region name would garble output.
const MIN_SECRET_LEN: usize = 8;

/// Fragments of option or variable names whose values are credentials.
const SENSITIVE: &[&str] = &[
    "secret",
    "token",
    "key",
    "password",
    "sas",
    "credential",
    "signature",
];

/// Whether an option or environment variable name holds a credential.
pub fn is_sensitive_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    // Paths to credential files are not themselves secret.
    !name.ends_with("_path") && SENSITIVE.iter().any(|s| name.contains(s))
}

/// Remembers `value` as a secret to be redacted from now on.
pub fn register_secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    if let Ok(mut secrets) = SECRETS.write()
        && !secrets.iter().any(|s| s == value)
    {
        secrets.push(value.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the credentials found in the standard cloud environment variables.
pub fn register_env_secrets() {
    for (key, value) in std::env::vars() {
        let cloud = ["AWS_", "GOOGLE_", "AZURE_"]
            .iter()
            .any(|p| key.starts_with(p));
        if cloud && is_sensitive_name(&key) {
            register_secret(&value);
        }
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> String {
    let Ok(secrets) = SECRETS.read() else {
        return text.to_string();
    };
    let mut out = text.to_string();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_registered_values_only() {
        register_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        register_secret("true"); // too short to be a secret
        let msg = "denied for key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY (allow_http=true)";
        assert_eq!(redact(msg), "denied for key *** (allow_http=true)");
    }

    #[test]
    fn knows_which_names_are_credentials() {
        for name in [
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "aws.access_key_id",
            "azure_storage_account_key",
            "google_service_account_key",
        ] {
            assert!(is_sensitive_name(name), "{name}");
        }
        for name in ["aws_region", "aws_endpoint", "google_service_account_path"] {
            assert!(!is_sensitive_name(name), "{name}");
        }
    }
}
