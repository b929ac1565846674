//! The HTTP surface: parses kube-style paths and queries and dispatches to
//! create / get / list / watch / update / patch / delete on the store.

use crate::events_v1::{self, view};
use crate::patch;
use crate::resource::{Resource, EVENTS_V1, NAMESPACES};
use crate::selector::{labels_of, FieldSelector, LabelSelector};
use crate::sim::{CreateRecord, Sim};
use crate::status::{success_status, ApiError};
use crate::store::{rv_of, timestamp, Change, Event};
use crate::validation;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A parsed request target.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::UnknownPath),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return Err(ApiError::UnknownPath),
    };
    let resource = Resource::lookup(group, version, plural).ok_or(ApiError::UnknownPath)?;
    if sub.is_some_and(|s| s != "status")
        || (namespace.is_some() && !resource.namespaced)
        || (name.is_some() && resource.namespaced && namespace.is_none())
    {
        return Err(ApiError::UnknownPath);
    }
    Ok(Target {
        resource,
        namespace,
        name,
        status: sub.is_some(),
    })
}

type Query = HashMap<String, String>;

fn parse_query(uri: &Uri) -> Result<Query, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    Ok(pairs.into_iter().collect())
}

fn truthy(q: &Query, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true" | "1"))
}

/// The single entry point: every request lands here.
pub async fn handle(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if sim.faults.hang_next.take() {
        std::future::pending::<()>().await;
    }
    let intent = (method == Method::POST)
        .then(|| CreateIntent::parse(&uri, &body))
        .flatten();
    let denied = intent.as_ref().and_then(|i| sim.faults.denial_of(&i.name));
    let response = if let Some(code) = sim.faults.take_fail() {
        ApiError::Injected(code).into_response()
    } else if let Some((code, message)) = denied {
        ApiError::Denied { code, message }.into_response()
    } else {
        match dispatch(&sim, &method, &uri, &headers, &body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    };
    if let Some(intent) = intent {
        sim.record_create(intent.record(&response));
    }
    response
}

/// What a create request asked for, read before it is answered (for the create log).
struct CreateIntent {
    resource: &'static str,
    namespace: String,
    name: String,
    generate_name: Option<String>,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

/// Set on a create's 201 response for the create log.
#[derive(Debug, Clone)]
struct Created {
    name: String,
    resource_version: Option<String>,
    uid: Option<String>,
    dry_run: bool,
}

impl CreateIntent {
    /// `Some` for a POST to a namespaced collection (`…/namespaces/NS/PLURAL`).
    fn parse(uri: &Uri, body: &Bytes) -> Option<Self> {
        let t = parse_path(uri.path()).ok()?;
        if !t.resource.namespaced || t.name.is_some() {
            return None;
        }
        let namespace = t.namespace?;
        let sent: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let meta = &sent["metadata"];
        let map = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(CreateIntent {
            resource: t.resource.plural,
            namespace,
            name: meta["name"].as_str().unwrap_or("").to_string(),
            generate_name: meta["generateName"].as_str().map(str::to_string),
            annotations: map(&meta["annotations"]),
            labels: map(&meta["labels"]),
        })
    }

    fn record(self, response: &Response) -> CreateRecord {
        let created = response.extensions().get::<Created>().cloned();
        CreateRecord {
            resource: self.resource.to_string(),
            namespace: self.namespace,
            name: created.as_ref().map_or(self.name, |c| c.name.clone()),
            generate_name: self.generate_name,
            code: response.status().as_u16(),
            resource_version: created.as_ref().and_then(|c| c.resource_version.clone()),
            uid: created.as_ref().and_then(|c| c.uid.clone()),
            dry_run: created.is_some_and(|c| c.dry_run),
            at: Instant::now(),
            annotations: self.annotations,
            labels: self.labels,
        }
    }
}

async fn dispatch(
    sim: &Arc<Sim>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if method == Method::GET {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        if let Some(doc) = crate::discovery::document(uri.path(), host) {
            return Ok(json_response(StatusCode::OK, doc));
        }
    }
    let t = parse_path(uri.path())?;
    let q = parse_query(uri)?;
    let ns = t.namespace.clone().unwrap_or_default();
    let r = match (method.clone(), &t.name) {
        (Method::GET, None) if truthy(&q, "watch") => return watch(sim, &t, &q),
        (Method::GET, None) => list(sim, &t, &q)?,
        (Method::POST, None) => create(sim, &t, &q, body)?,
        (Method::GET, Some(name)) => json_response(
            StatusCode::OK,
            view(t.resource, sim.store.get(t.resource, &ns, name)?),
        ),
        (Method::PUT, Some(name))
            if !t.status
                && t.resource.allow_create_on_update
                && sim.store.get(t.resource, &ns, name).is_err() =>
        {
            // AllowCreateOnUpdate (Lease, Event): a PUT to a missing name creates it.
            // The storage layer clears a sent resourceVersion on this path.
            let mut sent = parse_body(body)?;
            check_name_matches_url(&sent, name)?;
            if let Some(m) = sent["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            let sent = Bytes::from(serde_json::to_vec(&sent).unwrap_or_default());
            let mut r = create(sim, &t, &q, &sent)?;
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        (Method::PUT, Some(name)) => {
            let new = parse_body(body)?;
            let out = sim.store.update(t.resource, &ns, name, |cur| {
                update_as(t.resource, cur, |cur| {
                    apply_update(t.resource, cur, new, t.status)
                })
            })?;
            sim.kick_controllers();
            json_response(StatusCode::OK, view(t.resource, out))
        }
        (Method::PATCH, Some(name)) => {
            let p = parse_body(body)?;
            let kind = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let out = sim.store.update(t.resource, &ns, name, |cur| update_as(t.resource, cur, |cur| {
                let mut patched = cur.clone();
                match kind.as_str() {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => patch::merge_patch(&mut patched, &p),
                    "application/json-patch+json" => patch::json_patch(&mut patched, &p)?,
                    _ => {
                        return Err(ApiError::UnsupportedMediaType(
                            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json".into(),
                        ))
                    }
                }
                apply_update(t.resource, cur, patched, t.status)
            }))?;
            sim.kick_controllers();
            json_response(StatusCode::OK, view(t.resource, out))
        }
        (Method::DELETE, Some(name)) if !t.status => delete(sim, &t, name, &q, body)?,
        _ => return Err(ApiError::MethodNotAllowed),
    };
    Ok(r)
}

fn json_response(code: StatusCode, v: Value) -> Response {
    (code, axum::Json(v)).into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("the server could not decode the request body: {e}"))
    })
}

/// Decodes into the typed k8s-openapi struct and back: wrong types are a 400
/// and unknown fields are dropped, as the real server's decoder does.
fn typed_roundtrip(resource: &Resource, obj: Value) -> Result<Value, ApiError> {
    use k8s_openapi::api::{batch::v1::Job, coordination::v1::Lease, core::v1};
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Result<Value, ApiError> {
        let t: T = serde_json::from_value(v).map_err(|e| {
            ApiError::BadRequest(format!("the server could not decode the request body: {e}"))
        })?;
        serde_json::to_value(t).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
    match resource.plural {
        "jobs" => rt::<Job>(obj),
        "pods" => rt::<v1::Pod>(obj),
        "configmaps" => rt::<v1::ConfigMap>(obj),
        "events" if resource == &EVENTS_V1 => rt::<k8s_openapi::api::events::v1::Event>(obj),
        "events" => rt::<v1::Event>(obj),
        "leases" => rt::<Lease>(obj),
        "namespaces" => rt::<v1::Namespace>(obj),
        _ => Ok(obj),
    }
}

fn check_type(resource: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the server could not decode the request body: not an object".into(),
        ));
    }
    let av = resource.api_version();
    match obj["apiVersion"].as_str() {
        None => obj["apiVersion"] = json!(av),
        Some(v) if v == av => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )))
        }
    }
    match obj["kind"].as_str() {
        None => obj["kind"] = json!(resource.kind),
        Some(k) if k == resource.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind
            )))
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    Ok(())
}

fn create(sim: &Arc<Sim>, t: &Target, q: &Query, body: &Bytes) -> Result<Response, ApiError> {
    let resource = t.resource;
    let ns = t.namespace.clone().unwrap_or_default();
    let mut obj = parse_body(body)?;
    check_type(resource, &mut obj)?;
    let mut obj = typed_roundtrip(resource, obj)?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if resource.namespaced {
        match obj["metadata"]["namespace"].as_str() {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into()))
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
        sim.store
            .get(&NAMESPACES, "", &ns)
            .map_err(|_| ApiError::NotFound {
                resource: &NAMESPACES,
                name: ns.clone(),
            })?;
    }
    if obj["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::BadRequest(
            "resourceVersion should not be set on objects to be created".into(),
        ));
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object");
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "selfLink",
    ] {
        meta.remove(field);
    }
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        if let Some(base) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|b| !b.is_empty())
        {
            let name = validation::generate_name(base);
            meta.insert("name".into(), json!(name));
        }
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    if resource.has_status() {
        obj["status"] = match resource.plural {
            "pods" => json!({"phase": "Pending", "qosClass": "BestEffort"}),
            "namespaces" => json!({"phase": "Active"}),
            _ => json!({}),
        };
    }
    if resource == &EVENTS_V1 {
        let core = events_v1::to_core(obj.clone());
        let mut causes = validation::event_causes(&core);
        causes.extend(events_v1::validate(&obj));
        validation::invalid(resource, &obj, causes)?;
        obj = core;
    }
    validation::admit_create(resource, &mut obj)?;
    if q.get("dryRun").is_some_and(|v| v == "All") {
        let mut out = view(resource, obj);
        out["metadata"]["creationTimestamp"] = json!(timestamp());
        let created = Created {
            name: out["metadata"]["name"].as_str().unwrap_or("").to_string(),
            resource_version: None,
            uid: None,
            dry_run: true,
        };
        let mut r = json_response(StatusCode::CREATED, out);
        r.extensions_mut().insert(created);
        return Ok(r);
    }
    let out = view(resource, sim.store.create(resource, &ns, obj)?);
    sim.kick_controllers();
    let meta_str = |f: &str| out["metadata"][f].as_str().map(str::to_string);
    let created = Created {
        name: meta_str("name").unwrap_or_default(),
        resource_version: meta_str("resourceVersion"),
        uid: meta_str("uid"),
        dry_run: false,
    };
    let mut r = json_response(StatusCode::CREATED, out);
    r.extensions_mut().insert(created);
    Ok(r)
}

/// Runs an update of stored `cur` as `resource`'s requests see it:
/// events.k8s.io/v1 Events are updated in their events.k8s.io form
/// (validated strictly, only `series` may change) and stored converted back.
fn update_as(
    resource: &'static Resource,
    cur: &Value,
    update: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    if resource != &EVENTS_V1 {
        return update(cur);
    }
    let seen = view(resource, cur.clone());
    let new = update(&seen)?;
    validation::invalid(resource, &new, events_v1::validate_update(&seen, &new))?;
    Ok(events_v1::to_core(new))
}

/// The handler's `checkName`: the body's name (empty if unset) must be the URL's.
fn check_name_matches_url(obj: &Value, name: &str) -> Result<(), ApiError> {
    let sent = obj["metadata"]["name"].as_str().unwrap_or("");
    if sent != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({sent}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

/// The update rules shared by PUT and PATCH (main resource or `/status`).
fn apply_update(
    resource: &'static Resource,
    cur: &Value,
    mut new: Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    let name = cur["metadata"]["name"].as_str().unwrap_or("").to_string();
    check_type(resource, &mut new)?;
    let sent_rv = new["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if sent_rv.is_empty() && !resource.allow_unconditional_update {
        return Err(ApiError::ResourceVersionRequired { resource, name });
    }
    if !sent_rv.is_empty() && sent_rv != rv_of(cur).to_string() {
        return Err(ApiError::Conflict {
            resource,
            name,
            detail: "the object has been modified; please apply your changes to the latest version and try again".into(),
        });
    }
    check_name_matches_url(&new, &name)?;
    let mut new = typed_roundtrip(resource, new)?;
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    if status_only {
        let mut out = cur.clone();
        out["status"] = new["status"].clone();
        return Ok(out);
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match cur["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if resource.has_status() {
        new["status"] = cur["status"].clone();
    }
    validation::admit_update(resource, cur, &mut new)?;
    if resource.has_generation && new["spec"] != cur["spec"] {
        let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    Ok(new)
}

/// DELETE with DeleteOptions: propagation policy, preconditions, dryRun.
fn delete(
    sim: &Arc<Sim>,
    t: &Target,
    name: &str,
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let resource = t.resource;
    let ns = t.namespace.clone().unwrap_or_default();
    let opts = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let policy = opts["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").cloned())
        .or_else(|| match opts["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            Some(false) => Some("Background".into()),
            None => None,
        })
        // batch/v1 Jobs default to orphaning their pods (job strategy's DefaultGarbageCollectionPolicy).
        .unwrap_or_else(|| {
            if resource.plural == "jobs" {
                "Orphan".into()
            } else {
                "Background".into()
            }
        });
    if !matches!(policy.as_str(), "Orphan" | "Background" | "Foreground") {
        return Err(ApiError::Invalid {
            resource,
            name: name.to_string(),
            causes: vec![crate::status::Cause::not_supported(
                "propagationPolicy",
                &policy,
                &["Foreground", "Background", "Orphan"],
            )],
        });
    }
    let dry_run = opts["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "All"))
        || q.get("dryRun").is_some_and(|v| v == "All");
    let cur = sim.store.get(resource, &ns, name)?;
    let precondition = |cur: &Value| -> Result<(), ApiError> {
        let conflict = |detail: String| ApiError::Conflict {
            resource,
            name: name.to_string(),
            detail,
        };
        if let Some(uid) = opts["preconditions"]["uid"].as_str() {
            let have = cur["metadata"]["uid"].as_str().unwrap_or("");
            if uid != have {
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                )));
            }
        }
        if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str() {
            let have = rv_of(cur).to_string();
            if rv != have {
                return Err(conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                )));
            }
        }
        Ok(())
    };
    precondition(&cur)?;
    if dry_run {
        return Ok(json_response(StatusCode::OK, view(resource, cur)));
    }
    let finalizer = match policy.as_str() {
        "Orphan" => Some("orphan"),
        "Foreground" => Some("foregroundDeletion"),
        _ => None,
    };
    let has_finalizers = cur["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if finalizer.is_none() && !has_finalizers && cur["metadata"]["deletionTimestamp"].is_null() {
        precondition(&cur)?;
        let gone = sim.store.remove(resource, &ns, name)?;
        sim.kick_controllers();
        let uid = gone["metadata"]["uid"].as_str().unwrap_or("");
        return Ok(json_response(
            StatusCode::OK,
            success_status(resource, name, uid),
        ));
    }
    // Graceful path: mark for deletion; the garbage collector finishes it.
    let out = sim.store.update(resource, &ns, name, |cur| {
        precondition(cur)?;
        let mut new = cur.clone();
        if new["metadata"]["deletionTimestamp"].is_null() {
            new["metadata"]["deletionTimestamp"] = json!(timestamp());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        if let Some(f) = finalizer {
            let fins = new["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut fins: Vec<Value> = fins
                .into_iter()
                .filter(|v| v != "orphan" && v != "foregroundDeletion")
                .collect();
            fins.push(json!(f));
            new["metadata"]["finalizers"] = json!(fins);
        }
        Ok(new)
    })?;
    sim.kick_controllers();
    Ok(json_response(StatusCode::OK, out))
}

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(t: &Target, q: &Query) -> Result<Self, ApiError> {
        Ok(Filter {
            namespace: t.namespace.clone(),
            labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: FieldSelector::parse(
                q.get("fieldSelector").map(String::as_str).unwrap_or(""),
                t.resource,
            )?,
        })
    }
    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"] == ns)
            && self.labels.matches(&labels_of(obj))
            && self.fields.matches(obj)
    }
}

fn key_of(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn list(sim: &Arc<Sim>, t: &Target, q: &Query) -> Result<Response, ApiError> {
    let filter = Filter::new(t, q)?;
    let ns = t.namespace.as_deref();
    let (rv, objects, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let bad =
                || ApiError::BadRequest("continue key is not valid: invalid continue token".into());
            let rv: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let after = (
                parts.next().ok_or_else(bad)?.to_string(),
                parts.next().ok_or_else(bad)?.to_string(),
            );
            (rv, sim.store.list_at(t.resource, ns, rv)?, Some(after))
        }
        None => {
            let (rv, objects) = sim.store.list(t.resource, ns);
            (rv, objects, None)
        }
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut matching = objects
        .into_iter()
        .map(|o| view(t.resource, o))
        .filter(|o| filter.matches(o))
        .filter(|o| after.as_ref().is_none_or(|a| key_of(o) > *a));
    let mut items: Vec<Value> = matching.by_ref().take(limit).collect();
    let remaining = matching.count();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if remaining > 0 {
        if let Some(last) = items.last() {
            let (n, name) = key_of(last);
            meta["continue"] = json!(format!("{rv}/{n}/{name}"));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    for item in &mut items {
        if let Some(m) = item.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"kind": t.resource.list_kind(), "apiVersion": t.resource.api_version(), "metadata": meta, "items": items}),
    ))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// What a watcher is sent for one stored event, after its selectors
/// (cacheWatcher.convertToWatchEvent): starts matching → ADDED, stops → DELETED
/// with the previous content stamped with the event's resourceVersion.
/// Objects are seen as `resource`'s requests see them ([`view`]).
fn convert(ev: &Event, resource: &Resource, filter: &Filter) -> Option<(&'static str, Value)> {
    let object = view(resource, ev.object.clone());
    let old = ev.old.clone().map(|o| view(resource, o));
    let cur = ev.change != Change::Deleted && filter.matches(&object);
    let was = old.as_ref().is_some_and(|o| filter.matches(o));
    match (cur, was) {
        (true, false) => Some(("ADDED", object)),
        (true, true) => Some(("MODIFIED", object)),
        (false, true) => {
            let mut o = old.unwrap_or_default();
            o["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
            Some(("DELETED", o))
        }
        (false, false) => None,
    }
}

/// Sends one event line to a watch stream through the fault hooks: dropped
/// (`drop_watch_events`), held back (`delay_watch_events`), or cut in half
/// followed by a broken connection (`cut_watches_mid_event` called since the
/// stream opened). `Err` ends the stream.
async fn send_event(
    sim: &Sim,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    cut_mid_seen: u64,
    line: Bytes,
) -> Result<(), ()> {
    let faults = &sim.faults;
    if faults.drop_events.take() {
        return Ok(());
    }
    let delay = faults.event_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if *sim.cut_watches_mid_event.borrow() != cut_mid_seen {
        // Half the line, then an error: hyper aborts the connection without
        // the closing chunk, as a dropped connection looks to the client.
        let _ = tx.send(Ok(line.slice(..line.len() / 2))).await;
        // Let hyper take the half line (and so write it) before the error:
        // queued together, the error would abort the connection first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tx.capacity() < tx.max_capacity() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = tx
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "kube-sim: watch cut mid-event",
            )))
            .await;
        return Err(());
    }
    tx.send(Ok(line)).await.map_err(|_| ())
}

fn watch(sim: &Arc<Sim>, t: &Target, q: &Query) -> Result<Response, ApiError> {
    let filter = Filter::new(t, q)?;
    let resource = t.resource;
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s}")))?,
        ),
    };
    let bookmarks = truthy(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let sub = sim.store.subscribe(resource, t.namespace.as_deref(), from);
    let mut cut = sim.cut_watches.subscribe();
    let bookmark_every = sim.config.bookmark_interval;
    let sim = sim.clone();
    let cut_mid_seen = *sim.cut_watches_mid_event.borrow();
    let send = move |line: Bytes| {
        let tx = tx.clone();
        let sim = sim.clone();
        async move { send_event(&sim, &tx, cut_mid_seen, line).await }
    };
    let tx_err = send.clone();
    tokio::spawn(async move {
        let mut sub = match sub {
            Ok(sub) => sub,
            Err(e) => {
                // Too old: HTTP 200, then one ERROR event with a 410 Status, then close.
                let _ = tx_err(event_line("ERROR", &e.to_status())).await;
                return;
            }
        };
        for obj in &sub.initial {
            let obj = view(resource, obj.clone());
            if filter.matches(&obj) && send(event_line("ADDED", &obj)).await.is_err() {
                return;
            }
        }
        let mut progress = sub.start_rv;
        for ev in &sub.backlog {
            progress = ev.rv;
            if ev.resource.plural != resource.plural {
                continue;
            }
            if let Some((kind, obj)) = convert(ev, resource, &filter) {
                if send(event_line(kind, &obj)).await.is_err() {
                    return;
                }
            }
        }
        let deadline = tokio::time::Instant::now()
            + timeout.unwrap_or(Duration::from_secs(60 * 60 * 24 * 365));
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = sub.rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= progress { continue; }
                        progress = ev.rv;
                        if ev.resource.plural != resource.plural { continue; }
                        if let Some((kind, obj)) = convert(&ev, resource, &filter) {
                            if send(event_line(kind, &obj)).await.is_err() { return; }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::Expired { requested: progress, oldest: progress + 1 };
                        let _ = send(event_line("ERROR", &e.to_status())).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": {"resourceVersion": progress.to_string()}});
                    if send(event_line("BOOKMARK", &obj)).await.is_err() { return; }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = cut.changed() => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
