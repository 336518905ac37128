//! A progress sink the core reports to. The core never draws anything itself:
//! the CLI passes a terminal progress bar, tests and scripts pass [`NoProgress`].

/// Receives byte counts from long-running store operations.
pub trait Progress: Sync {
    /// Whether anyone looks at the totals given to [`Progress::start`]:
    /// when not, a caller may skip work done only to compute them (a stat
    /// per object before a push).
    fn shown(&self) -> bool {
        false
    }
    /// A new phase starts, moving `total_bytes` in all.
    fn start(&self, _label: &str, _total_bytes: u64) {}
    /// `bytes` more were moved.
    fn advance(&self, _bytes: u64) {}
    /// The phase ended.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
