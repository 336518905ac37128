//! The Kafka edge of ingest: a synchronous librdkafka consumer.
//!
//! Ingest is a batch job that reads every partition of one topic, so it
//! assigns the partitions itself (`assign`) rather than joining a consumer
//! group (`subscribe`): no rebalance wait, and the partitions and start
//! offsets are exactly what the run records. The group id names where the
//! job's committed position is kept. Offsets are never committed
//! automatically: [`KafkaSource::commit`] is called by the caller only after
//! the dataset is durable.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::IngestError;
use super::collect::Collector;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_SLICE: Duration = Duration::from_millis(100);

/// When to stop consuming: whichever limit is reached first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stop {
    /// Stop after exactly this many messages.
    pub max_messages: Option<u64>,
    /// Stop after this much wall-clock time.
    pub duration: Option<Duration>,
}

/// How consuming ended.
#[derive(Debug, Clone, Default)]
pub struct ConsumeOutcome {
    /// `max_messages` or `minutes`.
    pub stopped_by: &'static str,
    /// Errors the consumer reported while polling (it keeps going).
    pub errors: u64,
    pub last_error: Option<String>,
}

pub struct KafkaSource {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
}

impl KafkaSource {
    pub fn connect(brokers: &str, topic: &str, group: &str) -> Result<KafkaSource, IngestError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", "recsys-ingest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // End of partition is not the end of a stream: never stop there.
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| kafka_err("create consumer for", brokers, topic, e))?;
        Ok(KafkaSource {
            consumer,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(KafkaError) -> IngestError + '_ {
        move |e| kafka_err(op, &self.brokers, &self.topic, e)
    }

    /// The topic's partition ids, sorted.
    pub fn partitions(&self) -> Result<Vec<i32>, IngestError> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(self.err("fetch metadata of"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| IngestError::NoTopic {
                topic: self.topic.clone(),
                brokers: self.brokers.clone(),
            })?;
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The group's committed next offset per partition (absent: none yet).
    pub fn committed(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, IngestError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, METADATA_TIMEOUT)
            .map_err(self.err("read committed offsets of"))?;
        let mut out = BTreeMap::new();
        for e in got.elements_for_topic(&self.topic) {
            if let Offset::Offset(o) = e.offset()
                && o >= 0
            {
                out.insert(e.partition(), o);
            }
        }
        Ok(out)
    }

    /// Read each partition from its given next offset, or from the earliest
    /// message when `None`.
    pub fn assign(&self, starts: &BTreeMap<i32, Option<i64>>) -> Result<(), IngestError> {
        let mut tpl = TopicPartitionList::new();
        for (&p, start) in starts {
            let off = match start {
                Some(o) => Offset::Offset(*o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(&self.topic, p, off)
                .map_err(self.err("assign"))?;
        }
        self.consumer.assign(&tpl).map_err(self.err("assign"))
    }

    /// Poll into `c` until `stop` says so. Never stops at the end of a
    /// partition: with only `max_messages` it waits for more messages.
    pub fn consume(&self, stop: &Stop, c: &mut Collector) -> ConsumeOutcome {
        let deadline = stop.duration.map(|d| Instant::now() + d);
        let mut out = ConsumeOutcome::default();
        loop {
            if let Some(max) = stop.max_messages
                && c.messages >= max
            {
                out.stopped_by = "max_messages";
                break;
            }
            let slice = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        out.stopped_by = "minutes";
                        break;
                    }
                    (d - now).min(POLL_SLICE)
                }
                None => POLL_SLICE,
            };
            match self.consumer.poll(slice) {
                None => {}
                Some(Ok(m)) => c.push(m.partition(), m.offset(), m.payload()),
                Some(Err(e)) => {
                    out.errors += 1;
                    out.last_error = Some(e.to_string());
                }
            }
        }
        out
    }

    /// Commit `next` (partition -> next offset to read) for the group,
    /// synchronously.
    pub fn commit(&self, next: &BTreeMap<i32, i64>) -> Result<(), IngestError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in next {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(self.err("commit offsets of"))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(self.err("commit offsets of"))
    }
}

fn kafka_err(op: &'static str, brokers: &str, topic: &str, source: KafkaError) -> IngestError {
    IngestError::Kafka {
        op,
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        source: Box::new(source),
    }
}
