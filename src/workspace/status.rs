//! `recsys status`: how each tracked artifact compares with its pointer,
//! the store and the default remote.

use serde::Serialize;

use super::scan::{Scan, artifact_digest};
use super::{Kind, Result, Workspace};
use crate::store::{Digest, ObjectStore, remote};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkState {
    Unchanged,
    Modified,
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreState {
    Present,
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteState {
    Pushed,
    NotPushed,
    NoRemote,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactStatus {
    pub path: String,
    pub pointer: String,
    pub name: String,
    pub kind: Kind,
    pub digest: Digest,
    pub workspace: WorkState,
    pub store: StoreState,
    pub remote: RemoteState,
}

impl ArtifactStatus {
    pub fn differs(&self) -> bool {
        self.workspace != WorkState::Unchanged
            || self.store != StoreState::Present
            || self.remote == RemoteState::NotPushed
    }
}

impl Workspace {
    /// Status of every tracked artifact (or of `only` pointer paths).
    /// Re-hashes only files whose stat stamp changed.
    pub fn status(&self, only: Option<&[String]>) -> Result<Vec<ArtifactStatus>> {
        let remote = match self.remote_spec(None)? {
            Some(spec) => Some(remote::open(&spec)?),
            None => None,
        };
        let pointers = match only {
            Some(p) => p.to_vec(),
            None => self.pointer_files()?,
        };
        let mut out = Vec::with_capacity(pointers.len());
        for ptr_rel in pointers {
            let (p, art_rel) = self.read_pointer(&ptr_rel)?;
            let mut scan = self.scan(&art_rel)?;
            let workspace = match &scan {
                Scan::Missing => WorkState::Missing,
                _ => {
                    if self.hash_uncached(&mut scan)? {
                        self.remember(&art_rel, &scan)?;
                    }
                    match artifact_digest(&scan) {
                        Some(d) if d == p.digest => WorkState::Unchanged,
                        _ => WorkState::Modified,
                    }
                }
            };
            let store = if self.store.contains(&p.digest)? {
                StoreState::Present
            } else {
                StoreState::Missing
            };
            // The top object is pushed last (after a directory's files), so
            // its presence on the remote means the whole artifact is there.
            let remote = match &remote {
                None => RemoteState::NoRemote,
                Some(r) if r.contains(&p.digest)? => RemoteState::Pushed,
                Some(_) => RemoteState::NotPushed,
            };
            out.push(ArtifactStatus {
                path: art_rel,
                pointer: ptr_rel,
                name: p.name,
                kind: p.kind,
                digest: p.digest,
                workspace,
                store,
                remote,
            });
        }
        Ok(out)
    }
}
