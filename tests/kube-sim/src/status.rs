//! API errors and their wire form: every 4xx/5xx body is a `Status` object
//! shaped exactly as `apimachinery/pkg/api/errors/errors.go` shapes it.

use crate::resource::Resource;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One cause of a 422 Invalid (`details.causes[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueForbidden`.
    pub reason: &'static str,
    /// The field path, e.g. `metadata.name`.
    pub field: String,
    /// The message without the field prefix, e.g. `Invalid value: "X": …`.
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", Value::from(value)),
        }
    }
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported
            .iter()
            .map(|s| Value::from(*s).to_string())
            .collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                Value::from(value),
                list.join(", ")
            ),
        }
    }
    pub fn immutable(field: impl Into<String>, value_repr: String) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value_repr}: field is immutable"),
        }
    }
}

/// An error the API answers with; each maps to one HTTP code and `reason`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 404 NotFound: `jobs.batch "x" not found`.
    #[error("{} {name:?} not found", resource.qualified_resource())]
    NotFound {
        resource: &'static Resource,
        name: String,
    },
    /// 409 AlreadyExists: `jobs.batch "x" already exists`.
    #[error("{} {name:?} already exists", resource.qualified_resource())]
    AlreadyExists {
        resource: &'static Resource,
        name: String,
    },
    /// 409 Conflict: stale resourceVersion or failed precondition; `detail` follows the colon.
    #[error("Operation cannot be fulfilled on {} {name:?}: {detail}", resource.qualified_resource())]
    Conflict {
        resource: &'static Resource,
        name: String,
        detail: String,
    },
    /// 422 Invalid with field causes.
    #[error("{} {name:?} is invalid: {}", resource.qualified_kind(), join_causes(causes))]
    Invalid {
        resource: &'static Resource,
        name: String,
        causes: Vec<Cause>,
    },
    /// 422 Invalid for a PUT without `metadata.resourceVersion` on a
    /// resource whose strategy refuses unconditional updates (Lease). The
    /// generic registry names the resource where the kind belongs
    /// (`leases.coordination.k8s.io "x" is invalid`, `details.kind: leases`).
    #[error("{} {name:?} is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update", resource.qualified_resource())]
    ResourceVersionRequired {
        resource: &'static Resource,
        name: String,
    },
    /// 410 Expired: the requested resourceVersion is older than the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// 410 Expired for a list continue token whose snapshot is gone.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")]
    ContinueExpired,
    /// 400 BadRequest with a free message.
    #[error("{0}")]
    BadRequest(String),
    /// 405 MethodNotAllowed.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 415 UnsupportedMediaType.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    /// 404 for a path the server does not serve.
    #[error("the server could not find the requested resource")]
    UnknownPath,
    /// A chosen code injected by a fault hook.
    #[error("injected fault")]
    Injected(u16),
    /// A create refused by [`crate::KubeSim::deny_creates`], as an admission
    /// webhook, a ResourceQuota or RBAC refuses one: its code and message.
    #[error("{message}")]
    Denied { code: u16, message: String },
}

fn join_causes(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } | ApiError::ResourceVersionRequired { .. } => 422,
            ApiError::Expired { .. } | ApiError::ContinueExpired => 410,
            ApiError::BadRequest(_) => 400,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Injected(c) => *c,
            ApiError::Denied { code, .. } => *code,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } | ApiError::ResourceVersionRequired { .. } => "Invalid",
            ApiError::Expired { .. } | ApiError::ContinueExpired => "Expired",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Injected(500) => "InternalError",
            ApiError::Injected(429) => "TooManyRequests",
            ApiError::Injected(503) => "ServiceUnavailable",
            ApiError::Injected(504) => "Timeout",
            ApiError::Injected(_) => "Unknown",
            ApiError::Denied { code, .. } => match code {
                400 => "BadRequest",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "AlreadyExists",
                422 => "Invalid",
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                500..=599 => "InternalError",
                _ => "Unknown",
            },
        }
    }

    /// The `Status` object sent as the body (and inside watch ERROR events).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. } => {
                Some(details(resource, name, resource.plural))
            }
            ApiError::Invalid {
                resource,
                name,
                causes,
            } => {
                let mut d = details(resource, name, resource.kind);
                d["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                Some(d)
            }
            ApiError::ResourceVersionRequired { resource, name } => {
                let mut d = details(resource, name, resource.plural);
                d["causes"] = json!([{"reason": "FieldValueInvalid", "message": "Invalid value: 0x0: must be specified for an update", "field": "metadata.resourceVersion"}]);
                Some(d)
            }
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status["code"] = self.code().into();
        status
    }
}

fn details(resource: &Resource, name: &str, kind: &str) -> Value {
    let mut d = json!({ "name": name });
    if !resource.group.is_empty() {
        d["group"] = resource.group.into();
    }
    d["kind"] = kind.into();
    d
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

/// The Success `Status` returned by a DELETE that removed the object at once.
pub fn success_status(resource: &Resource, name: &str, uid: &str) -> Value {
    let mut d = details(resource, name, resource.plural);
    d["uid"] = uid.into();
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}
