//! A tower layer on the Kubernetes client's service stack that counts
//! every API request by verb and status code and times it
//! (`kedge_kubernetes_requests_total{verb,code}`,
//! `kedge_kubernetes_request_duration_seconds{verb}`), added where the
//! client is built ([`super::client`]).
//!
//! The verb is the Kubernetes one, read from the method and the path
//! (`list` and `get` differ by whether a name follows the resource;
//! `watch` is a GET with `watch=true`), so the label set stays bounded.
//! A watch is timed to its response's headers, not to its end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use tower::{Layer, Service};

/// Wraps a service in [`Metered`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MeteredLayer;

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// Records each request's verb, status code and time.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verb = verb(req.method(), req.uri().path(), req.uri().query());
        // A measurement, not a scheduling decision: the monotonic clock.
        // A request's duration for its histogram: elapsed wall time, not
        // a scheduling decision, so not the daemon's Clock.
        let start = Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            let code = result.as_ref().ok().map(|r| r.status().as_u16());
            crate::metrics::kubernetes_request(verb, code, start.elapsed());
            result
        })
    }
}

/// The Kubernetes verb of a request: `get`, `list`, `watch`, `create`,
/// `update`, `patch`, `delete`, `deletecollection`, or `other`.
pub fn verb(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let named = names_an_object(path);
    match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    }
}

/// Whether `path` names one object (`…/jobs/NAME`, `…/jobs/NAME/status`)
/// rather than a collection (`…/jobs`).
fn names_an_object(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Past the group and version: /api/v1/… or /apis/GROUP/VERSION/…
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    // Past the namespace: namespaces/NS/RESOURCE…; `namespaces/NS` alone
    // names the namespace itself.
    let rest = match rest {
        ["namespaces", _, resource @ ..] if !resource.is_empty() => resource,
        other => other,
    };
    rest.len() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_method_path_and_watch() {
        let jobs = "/apis/batch/v1/namespaces/default/jobs";
        let cases = [
            (Method::GET, jobs, None, "list"),
            (
                Method::GET,
                jobs,
                Some("watch=true&resourceVersion=5"),
                "watch",
            ),
            (
                Method::GET,
                "/apis/batch/v1/namespaces/default/jobs/a",
                None,
                "get",
            ),
            (Method::POST, jobs, None, "create"),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/kedge",
                None,
                "update",
            ),
            (
                Method::PATCH,
                "/apis/batch/v1/namespaces/d/jobs/a",
                None,
                "patch",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/d/configmaps/c",
                None,
                "delete",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/d/configmaps",
                None,
                "deletecollection",
            ),
            (Method::GET, "/api/v1/pods", Some("labelSelector=a"), "list"),
            (Method::GET, "/api/v1/namespaces/d", None, "get"),
            (Method::GET, "/api/v1/namespaces", None, "list"),
            (Method::HEAD, jobs, None, "other"),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(
                verb(&method, path, query),
                want,
                "{method} {path} {query:?}"
            );
        }
    }
}
