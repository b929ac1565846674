//! The `http` probe: the number at a JSON pointer in the answer to a GET.

use std::sync::OnceLock;

use super::{first_line, shorten, ProbeError};
use crate::config::probe::HttpProbe;

/// The most of an HTTP body a probe reads.
const HTTP_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// One client for every probe (it holds the TLS set-up and a connection pool).
fn http_client() -> Result<reqwest::Client, ProbeError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder()
        .user_agent(concat!("kedge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ProbeError::HttpClient)?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

pub(super) async fn measure(p: &HttpProbe) -> Result<f64, ProbeError> {
    let url = || p.shown.clone();
    let request_err = |e: reqwest::Error| ProbeError::HttpRequest {
        url: url(),
        source: e.without_url(),
    };
    let mut resp = http_client()?
        .get(p.url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(request_err)?;
    let status = resp.status();
    if !status.is_success() {
        // The start of the body, for the message; a broken body is no news.
        let body = match resp.chunk().await {
            Ok(Some(chunk)) => first_line(&chunk),
            _ => String::new(),
        };
        return Err(ProbeError::HttpStatus {
            url: url(),
            status,
            body,
        });
    }
    if resp
        .content_length()
        .is_some_and(|n| n > HTTP_BODY_LIMIT as u64)
    {
        return Err(ProbeError::HttpTooLarge {
            url: url(),
            limit: HTTP_BODY_LIMIT,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(request_err)? {
        if body.len() + chunk.len() > HTTP_BODY_LIMIT {
            return Err(ProbeError::HttpTooLarge {
                url: url(),
                limit: HTTP_BODY_LIMIT,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|source| ProbeError::HttpNotJson { url: url(), source })?;
    let value = doc
        .pointer(&p.pointer)
        .ok_or_else(|| ProbeError::HttpPointerMissing {
            url: url(),
            pointer: p.pointer.clone(),
        })?;
    let not_number = |found: String| ProbeError::HttpNotNumber {
        url: url(),
        pointer: p.pointer.clone(),
        found,
    };
    use serde_json::Value as V;
    match value {
        V::Number(n) => n
            .as_f64()
            .ok_or_else(|| not_number(format!("the number {n}"))),
        V::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| not_number(format!("the string {:?}", shorten(s)))),
        V::Null => Err(not_number("null".into())),
        V::Bool(b) => Err(not_number(format!("{b}"))),
        V::Array(_) => Err(not_number("an array".into())),
        V::Object(_) => Err(not_number("an object".into())),
    }
}
