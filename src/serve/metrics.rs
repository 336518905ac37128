//! Prometheus metrics of the server (the `prometheus-client` crate).
//!
//! Per-model counters are looked up once when a model is loaded and kept
//! with it ([`ModelCounters`]), so the request path only bumps atomics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    model: String,
    reason: String,
}

/// The exemplar on a latency bucket: the request it came from, so a slow
/// bucket in Prometheus leads to `recsys lineage <request_id>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestIdLabel {
    pub request_id: String,
}

/// Latency bucket bounds (seconds). 0.4 is one of them exactly, so "share
/// of answers slower than 400 ms" needs no interpolation; 0.6 is the
/// serving contract's limit.
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5,
    0.6, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    pub latency: HistogramWithExemplars<RequestIdLabel>,
    pub log_dropped: Counter,
    pub log_written: Counter,
    pub log_errors: Counter,
    pub log_kafka_delivered: Counter,
    pub log_kafka_failed: Counter,
    reloads: Family<ResultLabels, Counter>,
    reload_ok: Gauge,
    reload_error: Family<KindLabels, Gauge>,
    last_reload: Gauge<f64, AtomicU64>,
    last_good_reload: Gauge<f64, AtomicU64>,
    pub models_loaded: Gauge,
    pub config_reads: Counter,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    rejected_connections: Family<ReasonLabels, Counter>,
    closed_connections: Family<ReasonLabels, Counter>,
    accept_errors: Family<KindLabels, Counter>,
}

/// Why the server closed or refused a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The request head did not arrive within the header-read timeout.
    HeaderTimeout,
    /// A keep-alive connection sent nothing within the idle timeout.
    IdleTimeout,
    /// A request was not answered and written within the request timeout.
    RequestTimeout,
    /// Closed to make room: the connection cap or the file-descriptor
    /// limit was reached and this one had no request in progress.
    Evicted,
    /// Still open when the shutdown grace period ended.
    Shutdown,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::RequestTimeout => "request_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The kinds a failed config load is reported as (`DeployError::kind`).
pub(crate) const RELOAD_ERROR_KINDS: &[&str] = &[
    "read",
    "not_a_file",
    "too_large",
    "invalid_config",
    "unknown_model",
    "model_missing",
    "bad_model",
    "lineage",
    "store",
    "workspace",
];

/// The counters a loaded model bumps on every answer.
#[derive(Clone, Debug)]
pub struct ModelCounters {
    pub answered: Counter,
    pub fallback_unknown_user: Counter,
    pub fallback_error: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("recsys");
        let requests = Family::<RequestLabels, Counter>::default();
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        let latency = HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter());
        let log_dropped = Counter::default();
        let log_written = Counter::default();
        let log_errors = Counter::default();
        let log_kafka_delivered = Counter::default();
        let log_kafka_failed = Counter::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let reload_ok = Gauge::default();
        let reload_error = Family::<KindLabels, Gauge>::default();
        let last_reload = Gauge::<f64, AtomicU64>::default();
        let last_good_reload = Gauge::<f64, AtomicU64>::default();
        let models_loaded = Gauge::default();
        let config_reads = Counter::default();
        let connections_open = Gauge::default();
        let connections_accepted = Counter::default();
        let rejected_connections = Family::<ReasonLabels, Counter>::default();
        let closed_connections = Family::<ReasonLabels, Counter>::default();
        let accept_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "requests",
            "Answered /recommend requests by HTTP status and model version",
            requests.clone(),
        );
        registry.register(
            "fallbacks",
            "Answers that fell back to the routed model's popularity list, by reason",
            fallbacks.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer /recommend, from routing to response body (exemplar: request_id)",
            latency.clone(),
        );
        registry.register(
            "request_log_dropped",
            "Request log events dropped because the log queue was full",
            log_dropped.clone(),
        );
        registry.register(
            "request_log_written",
            "Request log events written to the durable log",
            log_written.clone(),
        );
        registry.register(
            "request_log_errors",
            "Failures writing the request log or indexing it in lineage.db",
            log_errors.clone(),
        );
        registry.register(
            "request_log_kafka_delivered",
            "Request log lines delivered to the Kafka topic (when configured)",
            log_kafka_delivered.clone(),
        );
        registry.register(
            "request_log_kafka_failed",
            "Request log lines not copied to Kafka (queue full, delivery failed); the local log has them",
            log_kafka_failed.clone(),
        );
        registry.register(
            "config_reloads",
            "Attempts to load a changed config.json or model, by result",
            reloads.clone(),
        );
        registry.register(
            "config_reload_ok",
            "1 when the last load of config.json succeeded, 0 while it fails (the last good config is still served)",
            reload_ok.clone(),
        );
        registry.register(
            "config_reload_error",
            "1 for the kind of error the last load of config.json failed with, 0 for earlier kinds",
            reload_error.clone(),
        );
        registry.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last attempt to load config.json, successful or not",
            last_reload.clone(),
        );
        registry.register(
            "config_last_good_reload_timestamp_seconds",
            "Unix time config.json was last loaded successfully",
            last_good_reload.clone(),
        );
        registry.register(
            "models_loaded",
            "Model versions in the serving config",
            models_loaded.clone(),
        );
        registry.register(
            "config_reads",
            "Times config.json was read (at start, when its stamp changed, and each poll while loading it fails)",
            config_reads.clone(),
        );
        registry.register(
            "connections_open",
            "HTTP connections open now",
            connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "HTTP connections accepted",
            connections_accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections answered 503 and closed at once because the connection cap was reached and none could be evicted",
            rejected_connections.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the server closed itself, by reason (header_timeout, idle_timeout, request_timeout, evicted, shutdown)",
            closed_connections.clone(),
        );
        registry.register(
            "accept_errors",
            "Errors accepting a connection, by kind (fd_exhausted: EMFILE/ENFILE, no_memory, other); the server backs off and keeps accepting",
            accept_errors.clone(),
        );
        Metrics {
            registry,
            requests,
            fallbacks,
            latency,
            log_dropped,
            log_written,
            log_errors,
            log_kafka_delivered,
            log_kafka_failed,
            reloads,
            reload_ok,
            reload_error,
            last_reload,
            last_good_reload,
            models_loaded,
            config_reads,
            connections_open,
            connections_accepted,
            rejected_connections,
            closed_connections,
            accept_errors,
        }
    }

    pub(crate) fn for_model(&self, model: &str) -> ModelCounters {
        let fb = |reason: &str| {
            self.fallbacks.get_or_create_owned(&FallbackLabels {
                model: model.into(),
                reason: reason.into(),
            })
        };
        ModelCounters {
            answered: self.requests.get_or_create_owned(&RequestLabels {
                status: "200".into(),
                model: model.into(),
            }),
            fallback_unknown_user: fb("unknown_user"),
            fallback_error: fb("model_error"),
        }
    }

    /// Count an answer without a model (4xx, 503).
    pub fn rejected(&self, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                status: status.to_string(),
                model: "none".into(),
            })
            .inc();
    }

    /// Record a load of config.json: `Err(kind)` names the error's kind.
    /// `count` is false for the load at start, which is not a reload.
    pub fn reload(&self, outcome: Result<(), &str>, at_unix: f64, count: bool) {
        if count {
            self.reloads
                .get_or_create(&ResultLabels {
                    result: if outcome.is_ok() {
                        "success"
                    } else {
                        "failure"
                    }
                    .into(),
                })
                .inc();
        }
        self.last_reload.set(at_unix);
        // Only the current error's kind reads 1.
        let current = outcome.err();
        for kind in RELOAD_ERROR_KINDS {
            let labels = KindLabels {
                kind: (*kind).into(),
            };
            if Some(*kind) == current {
                self.reload_error.get_or_create(&labels).set(1);
            } else if let Some(g) = self.reload_error.get(&labels) {
                g.set(0);
            }
        }
        match outcome {
            Ok(()) => {
                self.reload_ok.set(1);
                self.last_good_reload.set(at_unix);
            }
            Err(_) => {
                self.reload_ok.set(0);
            }
        }
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        self.closed_connections
            .get_or_create(&ReasonLabels {
                reason: reason.label().into(),
            })
            .inc();
    }

    pub(crate) fn connection_rejected(&self) {
        self.rejected_connections
            .get_or_create(&ReasonLabels {
                reason: "over_limit".into(),
            })
            .inc();
    }

    pub(crate) fn accept_error(&self, kind: &str) {
        self.accept_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_has_a_bucket_at_0_4_s_with_request_id_exemplars() {
        let m = Metrics::new();
        let id = "0190f5a4-0000-7000-8000-000000000001";
        m.latency.observe(
            0.35,
            Some(RequestIdLabel {
                request_id: id.into(),
            }),
            None,
        );
        let t = m.encode();
        let line = t
            .lines()
            .find(|l| l.starts_with("recsys_request_duration_seconds_bucket{le=\"0.4\"}"))
            .unwrap_or_else(|| panic!("no 0.4 s bucket in {t}"));
        assert!(
            line.contains(&format!("# {{request_id=\"{id}\"}} 0.35")),
            "{line}"
        );
        assert!(t.contains("le=\"0.6\""), "{t}");
    }
}
