//! Prometheus metrics of the server (the `prometheus-client` crate).
//!
//! Per-model counters are looked up once when a model is loaded and kept
//! with it ([`ModelCounters`]), so the request path only bumps atomics.

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
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5,
    0.6, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
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
    pub models_loaded: Gauge,
}

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
        let models_loaded = Gauge::default();
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
            "models_loaded",
            "Model versions in the serving config",
            models_loaded.clone(),
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
            models_loaded,
        }
    }

    pub fn for_model(&self, model: &str) -> ModelCounters {
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

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "failure" }.into(),
            })
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
