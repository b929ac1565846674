//! Optional OpenTelemetry traces (`telemetry.otlp` in the daemon config):
//! each message's way through kedge as spans, exported over OTLP/HTTP
//! (JSON) to a collector.
//!
//! | span | from → to | attributes |
//! |---|---|---|
//! | `kedge.intake` | claimed from the broker → stored | job, message id, source, outcome |
//! | `kedge.launch` | the attempt became due → its Job (or processes) started | job, message id, run, attempt |
//! | `kedge.run` | started → its outcome settled | job, message id, run, attempt, outcome, state |
//!
//! The stages happen in different tasks, possibly in different daemons
//! (after a restart, or on another replica), so their spans are not linked
//! by an in-memory context: every span of one message carries the same
//! trace id and parent span id, both derived from the job and the message
//! id (SHA-256). A collector shows one trace per message, each attempt's
//! launch and run in it.
//!
//! Without `telemetry.otlp` nothing is set up and [`span`] returns at once.
//! Export runs on the SDK's batch processor thread; a collector that is
//! down costs dropped spans (the SDK logs them), never a stalled launch.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};

use crate::config::daemon::OtlpConfig;

struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// Starts exporting to `cfg`'s collector. Call once, outside an async
/// context (the exporter's blocking HTTP client must not be built or
/// dropped on a runtime thread): `kedge run` does it in `spawn_blocking`.
pub fn start(cfg: &OtlpConfig) -> Result<(), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", cfg.endpoint))
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot start the OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "kedge");
    TRACES
        .set(Traces { provider, tracer })
        .map_err(|_| "traces are already being exported".to_string())
}

/// Exports what is buffered and stops. Blocking (up to the export
/// timeout): call it outside an async context.
pub fn stop() {
    if let Some(t) = TRACES.get() {
        if let Err(e) = t.provider.shutdown() {
            tracing::warn!(error = %e, "cannot flush the last traces");
        }
    }
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    TRACES.get().is_some()
}

/// The trace id and the common parent span id of `job`'s message
/// `message_id`.
pub fn ids(job: &str, message_id: &str) -> (TraceId, SpanId) {
    let digest = Sha256::new()
        .chain_update(job.as_bytes())
        .chain_update([0u8])
        .chain_update(message_id.as_bytes())
        .finalize();
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&digest[..16]);
    let mut parent = [0u8; 8];
    parent.copy_from_slice(&digest[16..24]);
    (TraceId::from_bytes(trace), SpanId::from_bytes(parent))
}

/// One stage of a message's way.
pub struct Stage<'a> {
    /// `kedge.intake`, `kedge.launch` or `kedge.run`.
    pub name: &'static str,
    pub job: &'a str,
    pub message_id: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    /// More attributes (`kedge.run`, `kedge.attempt`, …).
    pub attributes: Vec<KeyValue>,
    /// `Some(description)`: the stage failed.
    pub error: Option<String>,
}

/// Exports `stage` as a finished span (nothing without `telemetry.otlp`).
pub fn span(stage: Stage<'_>) {
    let Some(t) = TRACES.get() else {
        return;
    };
    let (trace_id, parent) = ids(stage.job, stage.message_id);
    let cx = Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        parent,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    let mut attributes = vec![
        KeyValue::new("kedge.job", stage.job.to_string()),
        KeyValue::new("kedge.message_id", stage.message_id.to_string()),
    ];
    attributes.extend(stage.attributes);
    let mut span = t
        .tracer
        .span_builder(stage.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(at(stage.start_ms.min(stage.end_ms)))
        .with_attributes(attributes)
        .start_with_context(&t.tracer, &cx);
    if let Some(e) = stage.error {
        span.set_status(Status::error(e));
    }
    span.end_with_timestamp(at(stage.end_ms));
}

/// A run's trace attributes.
pub fn run_attributes(run: &crate::store::Run) -> Vec<opentelemetry::KeyValue> {
    vec![
        opentelemetry::KeyValue::new("kedge.run", run.run_id.clone()),
        opentelemetry::KeyValue::new("kedge.attempt", run.attempt),
    ]
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_one_trace_whatever_the_attempt_and_another_message_another() {
        let (t1, p1) = ids("orders", "m-1");
        assert_eq!(ids("orders", "m-1"), (t1, p1));
        assert_ne!(ids("orders", "m-2").0, t1);
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(ids("a", "bc").0, ids("ab", "c").0);
        assert_ne!(t1, TraceId::INVALID);
        assert_ne!(p1, SpanId::INVALID);
    }

    #[test]
    fn without_a_collector_a_span_is_a_no_op() {
        assert!(!enabled());
        span(Stage {
            name: "kedge.run",
            job: "j",
            message_id: "m",
            start_ms: 0,
            end_ms: 1,
            attributes: Vec::new(),
            error: None,
        });
    }
}
