//! Erasure on a remote: the delete `push` runs after its transfer.
//!
//! A remote is shared by clones that each know only part of what it holds,
//! so "unreferenced here" can never be reason enough to delete there. The
//! rule: an object is deleted from the remote only when
//!
//! 1. an erasure run record (`forget`, `retention`) this project has
//!    indexed lists it as superseded — the deliberate, recorded decision
//!    that these bytes must go, not an inference from what this clone
//!    happens to name;
//! 2. that run record is itself on the remote (pushed in the same `push`,
//!    before any delete), so every other clone that fetches learns why the
//!    object went and drops it from its own keep-set too; and
//! 3. the local keep-set ([`Workspace::roots`], the same one push transfers)
//!    does not name it: an object a pointer in the work tree still names
//!    (someone added those bytes back) is refused and reported.
//!
//! The remote's `index.log` loses the `segment`/`run` lines of what was
//! deleted, so a `fetch` does not look for them.

use std::collections::HashSet;

use serde::Serialize;

use super::{KeepSet, Result, Workspace};
use crate::store::{Digest, ObjectStore};

/// What an erasure did on a remote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteErasure {
    /// Objects deleted from the remote.
    pub deleted: Vec<Digest>,
    /// Erased here, but still named by the keep-set: refused.
    pub still_referenced: Vec<Digest>,
    /// Erased here, but the run record that erased them is not on the
    /// remote: left (should not happen after a successful push).
    pub unrecorded: Vec<Digest>,
    /// Lines removed from the remote's index.log.
    pub index_lines_removed: usize,
}

impl Workspace {
    /// Delete from `remote` what erasure run records superseded (see the
    /// module docs for the rule).
    pub(crate) fn erase_on_remote(
        &self,
        remote: &dyn ObjectStore,
        keep: &KeepSet,
    ) -> Result<RemoteErasure> {
        let mut out = RemoteErasure::default();
        let mut recorded: std::collections::HashMap<Digest, bool> = Default::default();
        for (e, run) in self.lineage.erased()? {
            if keep.contains(&e.digest) {
                out.still_referenced.push(e.digest);
                continue;
            }
            let there = match recorded.get(&run) {
                Some(t) => *t,
                None => {
                    let t = remote.contains(&run)?;
                    recorded.insert(run, t);
                    t
                }
            };
            if !there {
                out.unrecorded.push(e.digest);
                continue;
            }
            if remote.remove(&e.digest)? {
                out.deleted.push(e.digest);
            }
        }
        let left: HashSet<&Digest> = out.still_referenced.iter().chain(&out.unrecorded).collect();
        let drop: HashSet<String> = self
            .lineage
            .erased()?
            .iter()
            .filter(|(e, _)| !left.contains(&e.digest))
            .flat_map(|(e, _)| [format!("segment {}", e.digest), format!("run {}", e.digest)])
            .collect();
        if !drop.is_empty() {
            out.index_lines_removed = remote.index_remove(&drop)?;
        }
        Ok(out)
    }
}
