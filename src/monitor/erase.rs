//! One user's rows out of the monitoring database (`recsys forget --user`).
//!
//! The raw tables that name a user (`user_id`) lose that user's rows; the
//! malformed-input table (`mon_bad`) loses the lines whose user field is
//! theirs; the per-minute rollups hold counts only and stay, so figures of
//! past minutes do not change. A monitor still running keeps the user's
//! answers that are open (at most `--window`) in memory and writes their
//! outcomes when they close: the report says so when one is running, and a
//! second `forget` after the window removes them.

use std::collections::BTreeMap;

use serde::Serialize;

/// The raw tables with a `user_id` column.
pub(crate) const USER_TABLES: [&str; 5] = [
    "mon_events",
    "mon_answers",
    "mon_answer_items",
    "mon_outcomes",
    "mon_stream_requests",
];

/// What `erase_user` found (and, unless a dry run, removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserRows {
    /// The database (never a password).
    pub db: String,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// Malformed stream lines whose user field is the user's.
    pub bad_lines: u64,
    /// A `recsys monitor` is writing to this database right now.
    pub monitor_running: bool,
    /// Freed pages were emptied (SQLite: WAL checkpointed and the file
    /// vacuumed; PostgreSQL: `VACUUM` of the tables). `false` on a dry run,
    /// when nothing was removed, or when another connection kept it busy.
    pub scrubbed: bool,
}

impl UserRows {
    pub fn total(&self) -> u64 {
        self.tables.values().sum::<u64>() + self.bad_lines
    }
}

/// The user a malformed stream line names, when its second field is a
/// number (`<time>,<user>,...`, the course format).
pub(crate) fn bad_line_user(text: &str) -> Option<i64> {
    text.split(',').nth(1)?.trim().parse().ok()
}

/// The `application_name` a running monitor's PostgreSQL sessions carry,
/// per schema (monitors on different schemas of one database are apart).
pub(crate) const PG_RUNNING_APP: &str = "recsys-monitor";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_lines_user_is_its_second_field() {
        assert_eq!(
            bad_line_user("2026-01-01T10:00:00,42,GET /rate/x=9"),
            Some(42)
        );
        assert_eq!(bad_line_user("garbage"), None);
        assert_eq!(bad_line_user("t, 7 ,x"), Some(7));
        assert_eq!(bad_line_user("t,abc,x"), None);
    }
}
