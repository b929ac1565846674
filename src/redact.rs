//! Redaction of secrets for logs, errors and annotations: a URL's password
//! never leaves kedge in the clear.

/// Returns `url` with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        user.to_string()
    };
    format!("{}://{}@{}", &url[..scheme_end], masked, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("postgres://kedge:s3cret@db:5432/kedge"),
            "postgres://kedge:***@db:5432/kedge"
        );
        assert_eq!(
            redact("postgres://kedge@db/kedge"),
            "postgres://kedge@db/kedge"
        );
        assert_eq!(
            redact("sqlite://.kedge/kedge.db"),
            "sqlite://.kedge/kedge.db"
        );
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
    }
}
