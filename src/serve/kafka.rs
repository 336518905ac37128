//! The request log's optional copy to a Kafka topic.
//!
//! The local segment is the record; the topic is a feed for other systems
//! (monitoring, the next training run). So the copy never slows or stops
//! the log: lines are handed to librdkafka's own queue only after their
//! batch is durable in the segment, a full queue or a failed delivery is
//! counted (`recsys_request_log_kafka_failed_total`) and warned about at
//! most once a second, and delivery reports are served from the log
//! writer's thread. Each line is keyed by its user id, so one user's
//! answers stay in order on one partition. A topic message is the request
//! as one self-contained JSON object (the served-by fields inline, as in
//! segment format 1), since a consumer never sees the segment's
//! `recsys_served` definitions.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::metrics::Metrics;
use super::warn::WarnGate;

/// Where to copy the request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaLogOptions {
    /// `bootstrap.servers`, e.g. `localhost:9092`.
    pub brokers: String,
    pub topic: String,
}

/// The default topic for logged requests.
pub(crate) const DEFAULT_TOPIC: &str = "recsys-requests";

/// How long shutdown waits for lines still in flight.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("request log to Kafka topic {topic} at {brokers}: {source}")]
pub struct KafkaLogError {
    brokers: String,
    topic: String,
    #[source]
    source: Box<KafkaError>,
}

struct Reports {
    metrics: Arc<Metrics>,
    warned: WarnGate,
}

impl Reports {
    fn failed(&self, n: u64, why: &dyn std::fmt::Display) {
        self.metrics.log_kafka_failed.inc_by(n);
        if self.warned.open() {
            tracing::warn!(
                "request log: {n} line(s) not copied to Kafka: {why} (see recsys_request_log_kafka_failed_total; the local log has them)"
            );
        }
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.metrics.log_kafka_delivered.inc();
            }
            Err((e, _)) => self.failed(1, e),
        }
    }
}

/// A producer owned by the log writer thread.
pub struct KafkaSink {
    producer: BaseProducer<Reports>,
    topic: String,
    key: String,
}

impl KafkaSink {
    /// Create the producer. librdkafka connects lazily: an unreachable
    /// cluster shows up as failed deliveries, not as an error here.
    pub fn connect(
        opts: &KafkaLogOptions,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaSink, KafkaLogError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("client.id", "recsys-serve")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "500000")
            // A line not delivered within a minute is counted as failed.
            .set("message.timeout.ms", "60000")
            .create_with_context(Reports {
                metrics,
                warned: WarnGate::default(),
            })
            .map_err(|source| KafkaLogError {
                brokers: opts.brokers.clone(),
                topic: opts.topic.clone(),
                source: Box::new(source),
            })?;
        Ok(KafkaSink {
            producer,
            topic: opts.topic.clone(),
            key: String::new(),
        })
    }

    /// Queue one line (without its newline); never waits.
    pub fn send(&mut self, user: Option<u64>, line: &[u8]) {
        let mut record = BaseRecord::to(&self.topic).payload(line);
        if let Some(u) = user {
            use std::fmt::Write as _;
            self.key.clear();
            let _ = write!(self.key, "{u}");
            record = record.key(self.key.as_str());
        }
        if let Err((e, _)) = self.producer.send(record) {
            let why: &dyn std::fmt::Display = match &e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    &"the producer's queue is full"
                }
                other => other,
            };
            self.producer.context().failed(1, why);
        }
    }

    /// Serve delivery reports (counts them); never waits.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Wait (boundedly) for lines in flight; what is left is counted failed.
    pub fn close(&self) {
        if self.producer.flush(CLOSE_TIMEOUT).is_err() {
            let left = self.producer.in_flight_count().max(0) as u64;
            if left > 0 {
                self.producer
                    .context()
                    .failed(left, &"not delivered before shutdown");
            }
        }
    }
}
