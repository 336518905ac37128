//! Warnings that repeat under load (a full queue, an unreachable broker)
//! are let through at most once a second; the counters in `/metrics` carry
//! the full count. A leaf module: the request log and its Kafka copy both
//! use it, and neither imports the other for it.

use std::sync::atomic::{AtomicI64, Ordering};

/// Lets a warning through at most once a second, across threads.
#[derive(Default)]
pub(crate) struct WarnGate(AtomicI64);

impl WarnGate {
    pub(crate) fn open(&self) -> bool {
        let now = now_ms();
        let last = self.0.load(Ordering::Relaxed);
        now - last >= 1000
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Unix milliseconds now (0 before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
