//! `recsys audit --remote`: is everything this project names on the
//! remote, whole?
//!
//! One listing of the remote, then every object the keep-set names (the
//! same roots push sends and gc keeps; manifests and run records the local
//! store lacks are read from the remote) must be listed there, with the
//! size the local copy has; the remote index's entries too. `--deep`
//! downloads each named object and re-hashes it.

use std::collections::HashMap;

use rayon::prelude::*;

use super::audit::{Problem, problem};
use super::{Result, RootOptions, Workspace, WorkspaceError};
use crate::store::{Digest, ObjectStore};

/// What `audit --remote` checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteAudit {
    pub remote: String,
    /// Objects listed on the remote.
    pub listed: usize,
    /// Named objects checked.
    pub checked: usize,
    /// Named objects downloaded and re-hashed (`--deep`).
    pub rehashed: usize,
    pub problems: Vec<Problem>,
}

impl Workspace {
    pub fn audit_remote(&self, remote_name: Option<&str>, deep: bool) -> Result<RemoteAudit> {
        let (rname, remote) = self.open_remote(remote_name)?;
        let listed: HashMap<Digest, u64> = remote
            .list_info()?
            .into_iter()
            .map(|i| (i.digest, i.size))
            .collect();
        let keep = self.roots(&RootOptions {
            remote: Some(&*remote),
            ..RootOptions::named()
        })?;
        let mut problems: Vec<Problem> = keep.problems().to_vec();
        let mut named: Vec<Digest> = keep.iter().map(|(d, _)| d).collect();
        for line in remote.index_read()? {
            if let Some(d) = line.split_once(' ').and_then(|(_, h)| h.parse().ok()) {
                named.push(d);
            }
        }
        named.sort();
        named.dedup();
        let mut present = Vec::new();
        for d in &named {
            let why = keep
                .why(d)
                .map(|w| format!(" (needed by {})", root_name(w.root)))
                .unwrap_or_else(|| " (listed in the remote's index)".into());
            match listed.get(d) {
                None => problems.push(problem(
                    "missing-on-remote",
                    d.hex(),
                    format!("not on {}{why}", remote.location()),
                )),
                Some(size) => {
                    if let Some(local) = self.store.size_of(d)
                        && local != *size
                    {
                        problems.push(problem(
                            "wrong-size-on-remote",
                            d.hex(),
                            format!("{size} bytes on {}, {local} here{why}", remote.location()),
                        ));
                    }
                    present.push(*d);
                }
            }
        }
        let mut rehashed = 0;
        if deep {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(self.settings.jobs.max(1))
                .build()
                .map_err(|e| WorkspaceError::Remote(format!("thread pool: {e}")))?;
            let remote = &*remote;
            let found: Vec<Problem> = pool.install(|| {
                present
                    .par_iter()
                    .filter_map(|d| rehash(remote, d).err())
                    .collect()
            });
            rehashed = present.len();
            problems.extend(found);
        }
        problems.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
        Ok(RemoteAudit {
            remote: rname,
            listed: listed.len(),
            checked: named.len(),
            rehashed,
            problems,
        })
    }
}

fn root_name(r: &super::Root) -> String {
    match serde_json::to_value(r) {
        Ok(v) => v
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} {}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Download `d` and hash it; a problem when it does not hash to its name.
fn rehash(remote: &dyn ObjectStore, d: &Digest) -> std::result::Result<(), Problem> {
    let mut r = match remote.open(d) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(problem(
                "missing-on-remote",
                d.hex(),
                format!("gone from {} during the audit", remote.location()),
            ));
        }
        Err(e) => return Err(problem("unreadable-on-remote", d.hex(), e.to_string())),
    };
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match std::io::Read::read(&mut r, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) => return Err(problem("unreadable-on-remote", d.hex(), e.to_string())),
        }
    }
    let actual: Digest = h.finalize().into();
    if actual != *d {
        return Err(problem(
            "corrupt-on-remote",
            d.hex(),
            format!("its bytes on {} hash to {actual}", remote.location()),
        ));
    }
    Ok(())
}
