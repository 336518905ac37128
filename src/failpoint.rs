//! Crash points for the crash tests: named places where a test can make
//! recsys die as a `kill -9` would (`abort`: no destructor, no flush, no
//! cleanup), to prove that every such moment leaves a consistent project.
//!
//! They exist only with the cargo feature `failpoints`. The test programs
//! turn it on for the binary they drive (the package dev-depends on itself
//! with the feature, and cargo unifies features for test builds), so
//! `cargo test` exercises them while `cargo build --release` and
//! `cargo install` produce a binary that carries none: without the feature
//! [`hit`] is an empty inline function and the CLI never reads
//! `RECSYS_CRASH_AT`.
//!
//! The core reads no environment: the CLI hands the configured point to
//! [`arm`] once at start-up.

#[cfg(feature = "failpoints")]
static ARMED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Whether this build has crash points at all.
pub(crate) const ENABLED: bool = cfg!(feature = "failpoints");

/// Crash at the point named `name` (first call wins; later calls are
/// ignored). Without the `failpoints` feature this does nothing.
pub fn arm(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let _ = ARMED.set(name.to_string());
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// A crash point: aborts the process when it is the armed one.
#[inline(always)]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    if ARMED.get().is_some_and(|a| a == name) {
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
