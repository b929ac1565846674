//! Name rules shared by the definition files (jobs, calendars, guards,
//! the daemon config): a leaf module, so the files' modules do not import
//! each other for them.

use crate::lifecycle::K8S_NAME_MAX;

/// Checks a DNS-1123 label (lower-case alphanumerics and '-', alphanumeric at
/// both ends, at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= K8S_NAME_MAX && has_dns1123_characters(s)
}

/// The DNS-1123 label rule without the length limit (checked on its own, so
/// a name that is both too long and badly spelt gets both problems reported).
pub fn has_dns1123_characters(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
