//! Logs and traces: `tracing` everywhere; spans exported over OTLP/gRPC when the standard
//! `OTEL_*` variables name an endpoint, and nothing exported (or connected to) otherwise.
//!
//! Trace context crosses pods inside the message: the `send` span's W3C `traceparent` is
//! stored in the envelope, and the node that delivers the message starts its `deliver`
//! span as a child of it.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; the hot path checks this before doing any tracing work.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Owns the exporter; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (containers).
    Json,
    /// Human-readable (a terminal).
    Pretty,
}

/// The OTLP endpoint from the environment, if tracing is wanted.
pub fn otlp_endpoint(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let off = |k: &str, v: &str| env(k).is_some_and(|x| x.eq_ignore_ascii_case(v));
    if off("OTEL_SDK_DISABLED", "true") || off("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.trim().is_empty())
}

/// Installs the global subscriber (logs filtered by `RUST_LOG`) and, when an endpoint is
/// configured, the OTLP exporter. Must run inside the tokio runtime.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut provider = None;
    let mut export_error = None;
    let otel = otlp_endpoint(|k| std::env::var(k).ok()).and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build();
        match exporter {
            Ok(exporter) => {
                let p = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(
                                std::env::var("OTEL_SERVICE_NAME")
                                    .unwrap_or_else(|_| "chat-gateway".into()),
                            )
                            .build(),
                    )
                    .build();
                let tracer = p.tracer("chat-gateway");
                provider = Some(p);
                ENABLED.store(true, Ordering::Relaxed);
                Some((tracing_opentelemetry::layer().with_tracer(tracer), endpoint))
            }
            Err(e) => {
                export_error = Some(e.to_string());
                None
            }
        }
    });
    let (layer, endpoint) = match otel {
        Some((l, e)) => (Some(l), Some(e)),
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(layer)
        .try_init();
    match (endpoint, export_error) {
        (Some(e), _) => tracing::info!(endpoint = %e, "exporting traces over OTLP/gRPC"),
        (None, Some(err)) => {
            tracing::error!(error = %err, "OTLP exporter not started; tracing off")
        }
        (None, None) => tracing::debug!("no OTEL_EXPORTER_OTLP_ENDPOINT: tracing off"),
    }
    Telemetry { provider }
}

use tracing_subscriber::Layer as _;

impl Telemetry {
    /// Flushes and stops the exporter (spans of the last moments are not lost).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
                eprintln!("chat-gateway: flushing traces failed: {e}");
            }
        }
    }
}

/// The W3C `traceparent` of a span, if it belongs to a sampled or recorded trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// Makes `span` a child of the remote span named by `traceparent` (ignored if invalid).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier: HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into();
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Records the span's trace id in its `trace_id` field so log lines inside carry it.
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_standard_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(otlp_endpoint(env(&[])), None);
        assert_eq!(
            otlp_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])),
            None
        );
        assert_eq!(
            otlp_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])),
            Some("http://c:4317".into())
        );
        assert_eq!(
            otlp_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317")
            ])),
            Some("http://t:4317".into())
        );
        assert_eq!(
            otlp_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])),
            None
        );
        assert_eq!(
            otlp_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "true")
            ])),
            None
        );
    }
}
