//! Request-log retention (`recsys gc --requests-older-than 90d`): closed
//! segments whose newest request is older than the cutoff are dropped,
//! then `gc` collects what only they kept.
//!
//! Order: a `retention` run record lists the segments it drops (digest,
//! name, newest request) and why, and is indexed first — from then on the
//! keep-set treats them as erased ([`crate::lineage::erasure`]), so a crash
//! later loses nothing and the next gc finishes the job; then their
//! requests and rows leave lineage.db (WAL emptied, file vacuumed); then
//! gc removes the objects. The open segment is never dropped (its newest
//! request is now), nor is one only lineage.db knows without a close time.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use super::{IoCtx, Result, Workspace};
use crate::lineage::RunRecord;
use crate::lineage::erasure::Erased;
use crate::lineage::run::RUN_FORMAT;
use crate::segment::{SEGMENT_MAGIC, parse_segment};
use crate::store::{Digest, ObjectStore};

/// A segment retention drops.
#[derive(Debug, Clone, Serialize)]
pub struct DroppedSegment {
    pub name: String,
    pub digest: Digest,
    /// Unix ms of its newest request (its open time when it has none).
    pub newest: i64,
    pub requests: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    /// Requests older than this (Unix ms) go.
    pub cutoff: i64,
    pub older_than_s: u64,
    pub dropped: Vec<DroppedSegment>,
    /// Segments kept (newer than the cutoff).
    pub kept_segments: usize,
    /// The `retention` run record (none on a dry run or when nothing goes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Digest>,
    /// Index rows removed.
    pub index_rows_removed: u64,
    pub lineage_scrubbed: bool,
}

impl Workspace {
    /// Drop closed segments whose newest request is older than
    /// `older_than` (by [`Workspace::now_ms`]); see the module docs.
    pub(crate) fn retention(&self, older_than: Duration, dry_run: bool) -> Result<RetentionReport> {
        let now = self.now_ms();
        let cutoff = now.saturating_sub(older_than.as_millis() as i64);
        let erased = self.lineage.erased_digests()?;
        let mut report = RetentionReport {
            cutoff,
            older_than_s: older_than.as_secs(),
            ..RetentionReport::default()
        };
        let mut closed: BTreeSet<Digest> = BTreeSet::new();
        for d in self.store.list()? {
            if self.object_starts_with(&d, SEGMENT_MAGIC) && !erased.contains(&d) {
                closed.insert(d);
            }
        }
        for d in &closed {
            let p = self.store.verified_path(d)?;
            let bytes = std::fs::read(&p).ctx("read", &p)?;
            let seg = parse_segment(&d.hex(), &bytes)?;
            let newest = seg
                .records
                .iter()
                .map(|r| r.time)
                .max()
                .unwrap_or(seg.header.opened);
            if newest < cutoff {
                report.dropped.push(DroppedSegment {
                    name: seg.header.name,
                    digest: *d,
                    newest,
                    requests: seg.records.len() as u64,
                });
            } else {
                report.kept_segments += 1;
            }
        }
        // Indexed but not here (collected, or never fetched): its close
        // time bounds its newest request.
        for s in self.lineage.segments()? {
            if let (Some(d), Some(closed_at)) = (
                s.digest.as_deref().and_then(|h| h.parse::<Digest>().ok()),
                s.closed,
            ) && !closed.contains(&d)
                && !erased.contains(&d)
                && closed_at < cutoff
            {
                report.dropped.push(DroppedSegment {
                    name: s.name,
                    digest: d,
                    newest: closed_at,
                    requests: 0,
                });
            }
        }
        if dry_run || report.dropped.is_empty() {
            return Ok(report);
        }
        let erased_list: Vec<Erased> = report
            .dropped
            .iter()
            .map(|s| Erased {
                digest: s.digest,
                what: "segment".into(),
                name: s.name.clone(),
                replaced_by: None,
            })
            .collect();
        let record = RunRecord {
            recsys_run: RUN_FORMAT,
            kind: "retention".into(),
            started: now,
            ended: now,
            code: self.code_version()?,
            algorithm: None,
            params: serde_json::json!({
                "requests_older_than_s": older_than.as_secs(),
                "cutoff": cutoff,
            }),
            metrics: serde_json::json!({
                "segments_dropped": report.dropped.len(),
                "requests_dropped": report.dropped.iter().map(|s| s.requests).sum::<u64>(),
                "segments_kept": report.kept_segments,
            }),
            source: serde_json::json!({
                "erased": erased_list,
                "reason": format!(
                    "request-log retention: segments whose newest request is older than {}",
                    humantime::format_duration(older_than)
                ),
            }),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let run_id = crate::store::put_bytes(&self.store, &record.to_bytes())?;
        self.lineage
            .write_txn(|tx| tx.index_run(&run_id, &record, "this project"))?;
        report.run = Some(run_id);
        let names: Vec<String> = report.dropped.iter().map(|s| s.name.clone()).collect();
        report.index_rows_removed = self.lineage.drop_segments(&names)?.requests;
        report.lineage_scrubbed = self.lineage.scrub()?;
        Ok(report)
    }
}
