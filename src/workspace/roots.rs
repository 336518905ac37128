//! The one answer to "what must be kept": every command that decides which
//! objects matter — `gc` (what it may delete), `push` (what a remote
//! needs), `fetch`/`pull` (what to bring) and `audit` (what must be
//! present) — asks [`Workspace::roots`], so they can never disagree.
//!
//! Roots, in the order that decides which one an object is reported under:
//!
//! 1. pointer files in the work tree ([`Workspace::pointer_files`]: symlinked
//!    directories followed), and with `--all-commits` at every commit: the
//!    artifact (a file, or a directory's manifest and its files) and the run
//!    record that made it;
//! 2. request-log segments — closed ones in the store, open ones in
//!    `log/requests/` — and the request index in lineage.db: the model,
//!    dataset and config of every answer, the train run, and the run that
//!    made the dataset, so a served answer stays explainable and restorable
//!    after its model is retired;
//! 3. the serving config in the work tree (`config.json`), stored by a
//!    server that has not answered with it yet;
//! 4. lineage itself: every run record and closed segment in the store or
//!    in lineage.db (small, and the history; never collected — a segment
//!    only leaves when an erasure supersedes it, below);
//! 5. anything changed less than the grace period ago (mtime or ctime), so
//!    the objects of a writer that has not named them yet are never taken.
//!
//! A kept run record keeps all of its outputs (they are one version of a
//! run's results). Roots found through lineage objects (1, 2) expand; the
//! lineage root (4) keeps run records and segments without expanding them:
//! history says what existed, not what must stay.
//!
//! Erasure: what a `forget` or `retention` run record superseded
//! (lineage.db's `erased` table, [`crate::lineage::erasure`]) is kept by no
//! root but a pointer file in the work tree.
//!
//! Nothing is silently dropped: a pointer file, manifest, run record or
//! segment that cannot be read is a [`Problem`]; `gc` refuses to delete
//! anything while there is one, `audit` reports it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::Serialize;

use super::audit::{Problem, problem};
use super::{LOG_DIR, Pointer, Result, Workspace};
use crate::lineage::RunRecord;
use crate::lineage::run::RUN_MAGIC;
use crate::segment::{SEGMENT_MAGIC, SegmentHeader, ServedBy, served_in_segment};
use crate::store::manifest::{self, Manifest};
use crate::store::{Digest, ObjectStore, StoreError};

/// How long a new object is kept although nothing names it.
pub const GRACE: Duration = Duration::from_secs(3600);

/// Which pointer files are roots.
#[derive(Debug, Clone)]
pub enum PointerRoots {
    /// Every pointer file in the work tree.
    WorkTree,
    /// The work tree's and every git commit's.
    AllCommits,
    /// These (pointer path, pointer): a command's targets, or `--rev`.
    Selected(Vec<(String, Pointer)>),
}

/// What [`Workspace::roots`] starts from.
#[derive(Clone)]
pub struct RootOptions<'a> {
    pub pointers: PointerRoots,
    /// The request log (segments, request index) and the serving config
    /// are roots. Off for a command given explicit targets.
    pub requests: bool,
    /// Keep what changed less than this long ago (by the wall clock, not
    /// `Settings::now_ms`: file times are real). `None`: age keeps nothing.
    pub grace: Option<Duration>,
    /// Retention: only segments opened at or after this time (Unix ms) are
    /// roots, as requests and as lineage. `None`: all.
    pub segments_since: Option<i64>,
    /// Read what the local store lacks from here (`fetch`: a manifest, run
    /// record or segment that is only on the remote), verified.
    pub remote: Option<&'a dyn ObjectStore>,
    /// Treat these as erased too, as if a run record said so (`gc
    /// --requests-older-than --dry-run`: what retention would drop).
    pub erased: HashSet<Digest>,
}

impl RootOptions<'_> {
    /// What `gc` keeps.
    pub fn gc(all_commits: bool, grace: Duration) -> RootOptions<'static> {
        RootOptions {
            pointers: if all_commits {
                PointerRoots::AllCommits
            } else {
                PointerRoots::WorkTree
            },
            requests: true,
            grace: Some(grace),
            segments_since: None,
            remote: None,
            erased: HashSet::new(),
        }
    }

    /// Everything named, nothing kept for its age (`push`, `audit`).
    pub fn named() -> RootOptions<'static> {
        RootOptions {
            pointers: PointerRoots::WorkTree,
            requests: true,
            grace: None,
            segments_since: None,
            remote: None,
            erased: HashSet::new(),
        }
    }
}

/// Why an object is kept: the root, as data (`gc --dry-run --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "root", rename_all = "kebab-case")]
pub enum Root {
    /// A pointer file: its path in the work tree, or `<commit>:<path>`.
    Pointer { pointer: String },
    /// A request-log segment: closed (a store object) or open (a file in
    /// `log/requests/`, no digest yet).
    Segment {
        segment: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        stored_as: Option<Digest>,
        opened: i64,
    },
    /// The request index in lineage.db.
    RequestIndex,
    /// The serving config in the work tree.
    ServingConfig { path: String },
    /// Data an `ingest` run consumed from a stream: its offsets count as
    /// read, so this is the only copy (kept until `forget`/retention).
    Ingested,
    /// Lineage: run records and closed segments are history.
    Lineage,
    /// Changed less than `grace_s` seconds ago.
    Recent { grace_s: u64 },
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Pointer { pointer } => write!(f, "pointer {pointer}"),
            Root::Segment {
                segment,
                stored_as: Some(_),
                ..
            } => write!(f, "request-log segment {segment}"),
            Root::Segment { segment, .. } => write!(f, "open request-log segment {segment}"),
            Root::RequestIndex => f.write_str("the request index in lineage.db"),
            Root::ServingConfig { path } => write!(f, "the serving config {path}"),
            Root::Ingested => f.write_str("ingested stream data"),
            Root::Lineage => f.write_str("lineage"),
            Root::Recent { grace_s } => write!(f, "changed less than {grace_s} s ago"),
        }
    }
}

/// What the object is to its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The artifact a pointer names: a file, or a directory's manifest.
    Artifact,
    /// A file of a directory artifact (`via`: the manifest).
    File,
    /// A run record.
    RunRecord,
    /// An output of a kept run record (`via`: the run).
    Output,
    /// The model, dataset or config that answered requests.
    Model,
    Dataset,
    Config,
    /// A closed request-log segment.
    Segment,
    /// Nothing names it (kept for its age).
    Unnamed,
}

#[derive(Debug, Clone, Copy)]
struct Keep {
    root: u32,
    role: Role,
    via: Option<Digest>,
    /// When the first root is not the request log but the request log
    /// names it too (a served model a pointer also names): that root and
    /// role, so `audit` can say the answers lose it as well.
    served: Option<(u32, Role)>,
}

fn is_request_role(r: Role) -> bool {
    matches!(r, Role::Model | Role::Dataset | Role::Config)
}

/// Why one object is kept.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reason<'a> {
    #[serde(flatten)]
    pub root: &'a Root,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Digest>,
}

/// Every object that must be kept, each with the first root that keeps it,
/// and what could not be read while finding them.
pub struct KeepSet {
    roots: Vec<Root>,
    kept: BTreeMap<Digest, Keep>,
    problems: Vec<Problem>,
}

impl KeepSet {
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.kept.contains_key(d)
    }

    pub fn why(&self, d: &Digest) -> Option<Reason<'_>> {
        self.kept.get(d).map(|k| self.reason(k))
    }

    fn reason(&self, k: &Keep) -> Reason<'_> {
        Reason {
            root: &self.roots[k.root as usize],
            role: k.role,
            via: k.via,
        }
    }

    /// The request-log root that also names `d` as a model, dataset or
    /// config, when [`KeepSet::why`] gives another root first.
    pub(crate) fn also_served(&self, d: &Digest) -> Option<(&Root, Role)> {
        let (root, role) = self.kept.get(d)?.served?;
        Some((&self.roots[root as usize], role))
    }

    /// Every kept object with its reason, by digest.
    pub fn iter(&self) -> impl Iterator<Item = (Digest, Reason<'_>)> + '_ {
        self.kept.iter().map(|(d, k)| (*d, self.reason(k)))
    }

    /// What could not be read: the set may be incomplete while any exists.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The kept objects `pick` selects, in the order transfers must commit
    /// them so that an object's presence implies what it names is there:
    /// directories' files, then artifacts and configs (manifests after
    /// their files), then run records, then segments.
    pub(crate) fn phases(
        &self,
        mut pick: impl FnMut(&Digest, Reason<'_>) -> bool,
    ) -> Vec<Vec<Digest>> {
        let mut phases = vec![Vec::new(); 4];
        for (d, r) in self.iter() {
            if !pick(&d, r) {
                continue;
            }
            let i = match r.role {
                Role::File => 0,
                Role::RunRecord => 2,
                Role::Segment => 3,
                _ => 1,
            };
            phases[i].push(d);
        }
        phases
    }
}

/// One object of the store as listed: what its first bytes say it is and
/// when it last changed.
struct Listed {
    digest: Digest,
    run: bool,
    segment: bool,
    changed_ms: i64,
}

/// A closed segment as the keep-set sees it (cached in store/state.db).
#[derive(Serialize, serde::Deserialize)]
struct SegmentNames {
    header: SegmentHeader,
    served: Vec<ServedBy>,
}

struct Builder<'a> {
    ws: &'a Workspace,
    remote: Option<&'a dyn ObjectStore>,
    roots: Vec<Root>,
    kept: HashMap<Digest, Keep>,
    problems: Vec<Problem>,
    /// Objects a `forget` or `retention` run record superseded: kept by no
    /// root but a work-tree pointer (see [`crate::lineage::erasure`]).
    erased: HashSet<Digest>,
    /// Off while the work tree's pointer files are walked.
    honour_erased: bool,
}

impl Builder<'_> {
    fn root(&mut self, r: Root) -> u32 {
        self.roots.push(r);
        (self.roots.len() - 1) as u32
    }

    /// Keep `d` unless kept already; whether it is new.
    fn mark(&mut self, d: Digest, root: u32, role: Role, via: Option<Digest>) -> bool {
        use std::collections::hash_map::Entry;
        if self.honour_erased && self.erased.contains(&d) {
            return false;
        }
        match self.kept.entry(d) {
            Entry::Occupied(mut o) => {
                let k = o.get_mut();
                if is_request_role(role) && k.served.is_none() && !is_request_role(k.role) {
                    k.served = Some((root, role));
                }
                false
            }
            Entry::Vacant(v) => {
                v.insert(Keep {
                    root,
                    role,
                    via,
                    served: None,
                });
                true
            }
        }
    }

    fn subject(&self, root: u32) -> String {
        self.roots[root as usize].to_string()
    }

    /// The verified bytes of a small object (manifest, run record,
    /// segment), from the local store or else the remote. `Ok(None)`: in
    /// neither.
    fn verified(&self, d: &Digest) -> std::result::Result<Option<Vec<u8>>, String> {
        match self.ws.store.verified_path(d) {
            Ok(p) => fs::read(&p)
                .map(Some)
                .map_err(|e| format!("read {}: {e}", p.display())),
            Err(StoreError::Missing(_)) => match self.remote {
                None => Ok(None),
                Some(r) => match r.get(d).map_err(|e| e.to_string())? {
                    None => Ok(None),
                    Some(b) if Digest::of(&b) == *d => Ok(Some(b)),
                    Some(b) => Err(format!(
                        "object {d} on {} hashes to {}",
                        r.location(),
                        Digest::of(&b)
                    )),
                },
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether an object's first bytes are a manifest header (unverified:
    /// only decides whether to read it as one, which verifies it).
    fn looks_like_manifest(&self, d: &Digest) -> bool {
        let mut head = [0u8; manifest::MAGIC.len()];
        let local = fs::File::open(self.ws.store.object_path(d))
            .ok()
            .map(|f| Box::new(f) as Box<dyn Read + Send>);
        let reader = match local {
            Some(r) => Some(r),
            None => self.remote.and_then(|r| r.open(d).ok().flatten()),
        };
        reader.is_some_and(|mut r| r.read_exact(&mut head).is_ok() && head == manifest::MAGIC)
    }

    /// Keep an artifact (and, for a directory, its manifest's files).
    /// `is_dir`: `None` when the namer does not say (a request's dataset).
    fn artifact(
        &mut self,
        d: Digest,
        root: u32,
        role: Role,
        via: Option<Digest>,
        is_dir: Option<bool>,
    ) {
        if !self.mark(d, root, role, via) {
            return;
        }
        let is_dir = match is_dir {
            Some(b) => b,
            None => self.looks_like_manifest(&d),
        };
        if !is_dir {
            return;
        }
        match self.verified(&d) {
            Ok(None) => {} // missing: `audit` says so
            Ok(Some(bytes)) => match Manifest::parse(&d, &bytes) {
                Ok(m) => {
                    for e in m.entries {
                        self.mark(e.digest, root, Role::File, Some(d));
                    }
                }
                Err(e) => {
                    let s = self.subject(root);
                    self.problems
                        .push(problem("bad-manifest", s, e.to_string()));
                }
            },
            Err(e) => {
                let s = self.subject(root);
                self.problems.push(problem("unreadable-manifest", s, e));
            }
        }
    }

    /// Keep a run record and everything it names as output.
    fn run(&mut self, id: Digest, root: u32) {
        if !self.mark(id, root, Role::RunRecord, None) {
            return;
        }
        let record = match self.verified(&id) {
            Ok(None) => return,
            Ok(Some(bytes)) => RunRecord::parse(&id, &bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match record {
            Ok(r) => {
                for o in r.outputs {
                    self.artifact(
                        o.digest,
                        root,
                        Role::Output,
                        Some(id),
                        Some(o.files.is_some()),
                    );
                }
            }
            Err(e) => {
                let s = self.subject(root);
                self.problems.push(problem("bad-run-record", s, e));
            }
        }
    }

    fn pointer(&mut self, name: String, p: &Pointer) {
        let root = self.root(Root::Pointer { pointer: name });
        self.artifact(p.digest, root, Role::Artifact, None, Some(p.is_dir));
        if let Some(r) = p.run {
            self.run(r, root);
        }
    }

    /// Keep what answered requests: model, dataset, config, the train run
    /// and the run that made the dataset.
    fn served(&mut self, s: &ServedBy, root: u32) -> Result<()> {
        if let Ok(d) = s.model_digest.parse() {
            self.artifact(d, root, Role::Model, None, Some(false));
        }
        if let Ok(d) = s.dataset_digest.parse::<Digest>() {
            let made = self
                .ws
                .lineage
                .artifacts_by_digest_prefix(&d.hex())?
                .into_iter()
                .find(|a| a.digest == d);
            self.artifact(
                d,
                root,
                Role::Dataset,
                None,
                made.as_ref().map(|a| a.files.is_some()),
            );
            if let Some(a) = made {
                self.run(a.run, root);
            }
        }
        if let Ok(d) = s.config_digest.parse() {
            self.mark(d, root, Role::Config, None);
        }
        if let Ok(d) = s.train_run.parse() {
            self.run(d, root);
        }
        Ok(())
    }

    /// What a closed segment names, from the cache or by reading it.
    fn segment_names(&self, d: &Digest) -> std::result::Result<Option<SegmentNames>, String> {
        let state = self.ws.store.state();
        if let Some(s) = state
            && let Ok(Some(json)) = s.segment_served(d)
            && let Ok(n) = serde_json::from_str::<SegmentNames>(&json)
        {
            return Ok(Some(n));
        }
        let Some(bytes) = self.verified(d)? else {
            return Ok(None);
        };
        let (header, served) = served_in_segment(&d.hex(), &bytes).map_err(|e| e.to_string())?;
        let n = SegmentNames { header, served };
        if let (Some(s), Ok(json)) = (state, serde_json::to_string(&n)) {
            // Only a cache: a failed write costs a re-read next time.
            let _ = s.set_segment_served(d, &json);
        }
        Ok(Some(n))
    }
}

impl Workspace {
    /// The keep-set: every object that must be kept, why, and what could not
    /// be read while finding out (see the module docs for the roots).
    pub(crate) fn roots(&self, opts: &RootOptions<'_>) -> Result<KeepSet> {
        let mut b = Builder {
            ws: self,
            remote: opts.remote,
            roots: Vec::new(),
            kept: HashMap::new(),
            problems: Vec::new(),
            erased: {
                let mut e = self.lineage.erased_digests()?;
                e.extend(opts.erased.iter().copied());
                e
            },
            honour_erased: true,
        };

        // 1. Pointer files.
        match &opts.pointers {
            PointerRoots::Selected(list) => {
                for (rel, p) in list {
                    b.pointer(rel.clone(), p);
                }
            }
            PointerRoots::WorkTree | PointerRoots::AllCommits => {
                // What the work tree names now is kept even if an erasure
                // superseded it (someone added those bytes back): deleting
                // it would break a pointer. History is not: old commits'
                // pointers and the request log lose what was erased.
                b.honour_erased = false;
                for rel in self.pointer_files()? {
                    match self.read_pointer(&rel) {
                        Ok((p, _)) => b.pointer(rel, &p),
                        Err(e) => b.problems.push(problem("bad-pointer", rel, e.to_string())),
                    }
                }
                b.honour_erased = true;
            }
        }
        if matches!(opts.pointers, PointerRoots::AllCommits)
            && let Some(g) = self.git()
        {
            for c in g.all_commits()? {
                let short = &c[..c.len().min(12)];
                match self.pointers_at(&c) {
                    Ok(list) => {
                        for (rel, p, _) in list {
                            b.pointer(format!("{short}:{rel}"), &p);
                        }
                    }
                    Err(e) => b.problems.push(problem(
                        "bad-pointer",
                        format!("commit {short}"),
                        e.to_string(),
                    )),
                }
            }
        }

        // The rest of the store, looked at once: what pointers keep need not
        // be (a 20,000-file dataset is 20,000 opens saved).
        let listed = self.list_objects(&b.kept)?;

        // Closed segments: in the store, or known to lineage.db.
        let recent_enough = |opened: i64| opts.segments_since.is_none_or(|t| opened >= t);
        let mut segments: BTreeSet<Digest> = listed
            .iter()
            .filter(|l| l.segment && !b.erased.contains(&l.digest))
            .map(|l| l.digest)
            .collect();
        let mut indexed_segments = Vec::new();
        for s in self.lineage.segments()? {
            if let Some(d) = s.digest.as_deref().and_then(|h| h.parse::<Digest>().ok())
                && recent_enough(s.opened)
                && !b.erased.contains(&d)
            {
                indexed_segments.push(d);
                segments.insert(d);
            }
        }

        // 2. The request log.
        let mut closed: Vec<(Digest, SegmentNames)> = Vec::new();
        for d in &segments {
            match b.segment_names(d) {
                Ok(Some(n)) if recent_enough(n.header.opened) => closed.push((*d, n)),
                Ok(_) => {}
                Err(e) => b.problems.push(problem("bad-log-segment", d.hex(), e)),
            }
        }
        closed.sort_by_key(|a| (a.1.header.opened, a.0));
        if opts.requests {
            for (d, n) in &closed {
                let root = b.root(Root::Segment {
                    segment: n.header.name.clone(),
                    stored_as: Some(*d),
                    opened: n.header.opened,
                });
                b.mark(*d, root, Role::Segment, None);
                for s in &n.served {
                    b.served(s, root)?;
                }
            }
            for (rel, header, served) in self.open_segments()? {
                if !recent_enough(header.opened) {
                    continue;
                }
                let root = b.root(Root::Segment {
                    segment: rel,
                    stored_as: None,
                    opened: header.opened,
                });
                for s in &served {
                    b.served(s, root)?;
                }
            }
            let index = self.lineage.served_all()?;
            if !index.is_empty() {
                let root = b.root(Root::RequestIndex);
                for s in &index {
                    b.served(s, root)?;
                }
            }
            // 3. The serving config, once it is stored.
            let cfg = self.root.join(SERVING_CONFIG);
            if let Ok(bytes) = fs::read(&cfg) {
                let d = Digest::of(&bytes);
                if self.store.contains(&d)? {
                    let root = b.root(Root::ServingConfig {
                        path: SERVING_CONFIG.into(),
                    });
                    b.mark(d, root, Role::Config, None);
                }
            }
        }

        // 3b. What ingest runs consumed: the next ingest resumes after the
        //     offsets a run recorded, so its dataset is the only copy of
        //     those events, pointer file or not (a kill between indexing
        //     the run and writing the pointer leaves none).
        let root = b.root(Root::Ingested);
        for id in self.lineage.run_ids_of_kind("ingest")? {
            b.run(id, root);
        }

        // 4. Lineage: run records and segments, unexpanded.
        let root = b.root(Root::Lineage);
        for l in listed.iter().filter(|l| l.run) {
            b.mark(l.digest, root, Role::RunRecord, None);
        }
        for id in self.lineage.run_ids()? {
            b.mark(id, root, Role::RunRecord, None);
        }
        for (d, _) in &closed {
            b.mark(*d, root, Role::Segment, None);
        }
        for d in indexed_segments {
            b.mark(d, root, Role::Segment, None);
        }

        // 5. Anything changed within the grace period.
        if let Some(grace) = opts.grace {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(i64::MAX);
            let since = now.saturating_sub(grace.as_millis() as i64);
            let root = b.root(Root::Recent {
                grace_s: grace.as_secs(),
            });
            for l in &listed {
                if l.changed_ms >= since {
                    b.mark(l.digest, root, Role::Unnamed, None);
                }
            }
        }

        Ok(KeepSet {
            roots: b.roots,
            kept: b.kept.into_iter().collect(),
            problems: b.problems,
        })
    }

    /// The objects of the local store: whether each is a run record or a
    /// segment (by its first bytes, so lineage survives a lost lineage.db)
    /// and when it last changed (the later of mtime and ctime).
    /// Objects `skip` holds are left out: they are kept already, and no
    /// pointer names a run record or a segment as its artifact.
    fn list_objects(&self, skip: &HashMap<Digest, Keep>) -> Result<Vec<Listed>> {
        let ds = self.store.list()?;
        let store = &self.store;
        Ok(ds
            .par_iter()
            .filter(|d| !skip.contains_key(d))
            .filter_map(|d| {
                let mut f = fs::File::open(store.object_path(d)).ok()?;
                let m = f.metadata().ok()?;
                let changed_ms = (m.mtime() * 1000 + m.mtime_nsec() / 1_000_000)
                    .max(m.ctime() * 1000 + m.ctime_nsec() / 1_000_000);
                let mut head = [0u8; 24];
                let mut n = 0;
                while n < head.len() {
                    match f.read(&mut head[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let head = &head[..n];
                Some(Listed {
                    digest: *d,
                    run: head.starts_with(RUN_MAGIC),
                    segment: head.starts_with(SEGMENT_MAGIC),
                    changed_ms,
                })
            })
            .collect())
    }

    /// The open request-log segments in the work tree: (path relative to the
    /// root, header, what they name so far). A file without a whole header
    /// line has logged nothing (`serve` sets it aside at its next start).
    fn open_segments(&self) -> Result<Vec<(String, SegmentHeader, Vec<ServedBy>)>> {
        let dir = self.root.join(LOG_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).map_err(|e| io_err("list", &dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| io_err("list", &dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if !(name.starts_with("open-") && name.ends_with(".jsonl")) {
                continue;
            }
            let p = e.path();
            let mut bytes = match fs::read(&p) {
                Ok(b) => b,
                // Closed into the store since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &p, e)),
            };
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
            if let Ok((header, served)) = served_in_segment(&name, &bytes) {
                out.push((format!("{LOG_DIR}/{name}"), header, served));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The serving config `recsys serve` reads by default.
pub const SERVING_CONFIG: &str = "config.json";

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> super::WorkspaceError {
    super::WorkspaceError::Io(crate::fs_error::FsError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::progress::NoProgress;
    use crate::workspace::{AddOptions, Kind, Output, RunSpec, Settings};

    struct T {
        _dir: tempfile::TempDir,
        ws: Workspace,
    }

    impl T {
        fn new() -> T {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("proj");
            fs::create_dir_all(&root).expect("mkdir");
            let (ws, _) = Workspace::init(&root, Settings::default()).expect("init");
            T { _dir: dir, ws }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.ws.root().join(rel)
        }

        fn write(&self, rel: &str, bytes: &str) {
            let p = self.path(rel);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, bytes).expect("write");
        }

        /// Add one path; its (digest, run).
        fn add(&self, rel: &str) -> (Digest, Digest) {
            let a = self
                .ws
                .add(&[self.path(rel)], &AddOptions::default(), &NoProgress)
                .expect("add");
            (a[0].digest, a[0].run.expect("run"))
        }

        fn keep(&self, opts: &RootOptions<'_>) -> KeepSet {
            self.ws.roots(opts).expect("roots")
        }

        fn put(&self, bytes: &[u8]) -> Digest {
            crate::store::put_bytes(&self.ws.store, bytes).expect("put")
        }
    }

    fn old_only() -> RootOptions<'static> {
        RootOptions::gc(false, Duration::ZERO)
    }

    fn root_of(k: &KeepSet, d: &Digest) -> (Root, Role, Option<Digest>) {
        let r = k.why(d).unwrap_or_else(|| panic!("{d} is not kept"));
        (r.root.clone(), r.role, r.via)
    }

    fn pointer(p: &str) -> Root {
        Root::Pointer { pointer: p.into() }
    }

    #[test]
    fn pointers_keep_their_artifact_files_and_run_and_old_versions_only_by_age() {
        let t = T::new();
        t.write("a.csv", "v1");
        let (v1, run1) = t.add("a.csv");
        t.write("a.csv", "v2");
        let (v2, run2) = t.add("a.csv");
        t.write("d/x", "x");
        t.write("d/sub/y", "y");
        let (d, _) = t.add("d");
        let k = t.keep(&old_only());
        assert!(k.problems().is_empty(), "{:?}", k.problems());
        assert_eq!(
            root_of(&k, &v2),
            (pointer("a.csv.recsys"), Role::Artifact, None)
        );
        assert_eq!(
            root_of(&k, &run2),
            (pointer("a.csv.recsys"), Role::RunRecord, None)
        );
        assert_eq!(root_of(&k, &d), (pointer("d.recsys"), Role::Artifact, None));
        for f in ["x", "y"] {
            let fd = Digest::of(f.as_bytes());
            assert_eq!(root_of(&k, &fd), (pointer("d.recsys"), Role::File, Some(d)));
        }
        // The old version is history: its run record stays, its bytes do not.
        assert_eq!(root_of(&k, &run1).0, Root::Lineage);
        assert!(!k.contains(&v1));
        // ... unless they are younger than the grace period.
        let k = t.keep(&RootOptions::gc(false, GRACE));
        assert_eq!(
            root_of(&k, &v1),
            (Root::Recent { grace_s: 3600 }, Role::Unnamed, None)
        );
        // Transfers: files, then artifacts, then run records, then segments.
        let phases = k.phases(|_, r| r.role != Role::Unnamed);
        assert_eq!(phases.len(), 4);
        assert!(phases[0].contains(&Digest::of(b"x")));
        assert!(phases[1].contains(&d) && phases[1].contains(&v2));
        assert!(phases[2].contains(&run1) && phases[2].contains(&run2));
        assert!(!phases.iter().flatten().any(|x| *x == v1));
    }

    #[test]
    fn what_an_ingest_consumed_is_kept_without_a_pointer_and_other_runs_outputs_are_not() {
        // A kill between indexing the run and writing the pointer leaves
        // an ingest's dataset with no pointer, and the next ingest resumes
        // after its offsets: it is the only copy of those events.
        let t = T::new();
        t.write("data/dataset_1/events.csv", "e");
        t.write("data/imported.csv", "i");
        let (ingest, added) =
            t.ws.record_run(
                RunSpec::new("ingest", 0),
                &[Output {
                    path: t.path("data/dataset_1"),
                    kind: Some(Kind::Dataset),
                    name: None,
                }],
                &NoProgress,
            )
            .expect("ingest run");
        let (_, imported) =
            t.ws.record_run(
                RunSpec::new("import", 0),
                &[Output {
                    path: t.path("data/imported.csv"),
                    kind: Some(Kind::Dataset),
                    name: None,
                }],
                &NoProgress,
            )
            .expect("import run");
        fs::remove_file(t.path("data/dataset_1.recsys")).expect("rm pointer");
        fs::remove_file(t.path("data/imported.csv.recsys")).expect("rm pointer");
        let k = t.keep(&old_only());
        assert_eq!(
            root_of(&k, &added[0].digest),
            (Root::Ingested, Role::Output, ingest)
        );
        assert_eq!(
            root_of(&k, &Digest::of(b"e")),
            (Root::Ingested, Role::File, Some(added[0].digest))
        );
        assert!(!k.contains(&imported[0].digest), "an import is re-runnable");
    }

    #[test]
    fn a_kept_run_keeps_every_output_and_selected_pointers_keep_only_theirs() {
        let t = T::new();
        t.write("models/m.bin", "model");
        t.write("models/metrics.json", "{}");
        let (run, added) =
            t.ws.record_run(
                RunSpec::new("train", 0),
                &[
                    Output {
                        path: t.path("models/m.bin"),
                        kind: Some(Kind::Model),
                        name: None,
                    },
                    Output {
                        path: t.path("models/metrics.json"),
                        kind: Some(Kind::Dataset),
                        name: None,
                    },
                ],
                &NoProgress,
            )
            .expect("run");
        let run = run.expect("recorded");
        fs::remove_file(t.path("models/metrics.json.recsys")).expect("rm pointer");
        let k = t.keep(&old_only());
        let metrics = added[1].digest;
        assert_eq!(
            root_of(&k, &metrics),
            (pointer("models/m.bin.recsys"), Role::Output, Some(run))
        );

        t.write("other.csv", "other");
        let (other, _) = t.add("other.csv");
        let (p, _) = t.ws.read_pointer("other.csv.recsys").expect("pointer");
        let k = t.keep(&RootOptions {
            pointers: PointerRoots::Selected(vec![("other.csv.recsys".into(), p)]),
            requests: false,
            ..RootOptions::named()
        });
        assert!(k.contains(&other));
        assert!(!k.contains(&added[0].digest), "not selected");
        assert_eq!(root_of(&k, &run).0, Root::Lineage, "lineage always travels");
    }

    /// A format-2 segment naming one served-by.
    fn segment(
        name: &str,
        opened: i64,
        model: &Digest,
        dataset: &Digest,
        run: &Digest,
        config: &Digest,
    ) -> String {
        format!(
            "{{\"recsys_log_segment\":2,\"name\":\"{name}\",\"host\":\"h\",\"opened\":{opened}}}\n\
             {{\"recsys_served\":0,\"model\":\"model_v1\",\"model_digest\":\"{model}\",\"dataset\":\"dataset_1\",\
             \"dataset_digest\":\"{dataset}\",\"train_run\":\"{run}\",\"code_commit\":\"\",\"config_digest\":\"{config}\"}}\n\
             {{\"id\":\"r1\",\"time\":{opened},\"user\":1,\"served\":0,\"route\":\"default\",\"status\":\"ok\",\"latency_us\":1,\"items\":[]}}\n"
        )
    }

    #[test]
    fn what_the_request_log_names_is_kept_after_its_pointers_are_gone() {
        let t = T::new();
        t.write("data/ds/events.csv", "e");
        let (ds, ds_run) = t.add("data/ds");
        t.write("models/m.bin", "weights");
        let (model, train) = t.add("models/m.bin");
        let config = t.put(b"{\"default\":\"model_v1\"}");
        let seg = t.put(segment("seg-a", 1_000, &model, &ds, &train, &config).as_bytes());
        for p in ["data/ds.recsys", "models/m.bin.recsys"] {
            fs::remove_file(t.path(p)).expect("retire");
        }
        let k = t.keep(&old_only());
        assert!(k.problems().is_empty(), "{:?}", k.problems());
        let root = Root::Segment {
            segment: "seg-a".into(),
            stored_as: Some(seg),
            opened: 1_000,
        };
        assert_eq!(root_of(&k, &seg), (root.clone(), Role::Segment, None));
        assert_eq!(root_of(&k, &model), (root.clone(), Role::Model, None));
        assert_eq!(root_of(&k, &ds), (root.clone(), Role::Dataset, None));
        assert_eq!(
            root_of(&k, &Digest::of(b"e")),
            (root.clone(), Role::File, Some(ds))
        );
        assert_eq!(root_of(&k, &config), (root.clone(), Role::Config, None));
        assert_eq!(root_of(&k, &train), (root.clone(), Role::RunRecord, None));
        assert_eq!(
            root_of(&k, &ds_run),
            (root.clone(), Role::RunRecord, None),
            "what made the dataset"
        );

        // Retention: a segment opened before the cut is no root at all.
        let k = t.keep(&RootOptions {
            segments_since: Some(2_000),
            ..old_only()
        });
        for d in [seg, model, ds, config] {
            assert!(!k.contains(&d), "{d}");
        }
        assert_eq!(root_of(&k, &train).0, Root::Lineage);
        // Named by a pointer too: the pointer comes first, the request log
        // is remembered.
        t.write("models/m.bin", "weights");
        t.add("models/m.bin");
        let k = t.keep(&old_only());
        assert_eq!(root_of(&k, &model).0, pointer("models/m.bin.recsys"));
        assert_eq!(k.also_served(&model), Some((&root, Role::Model)));
        assert_eq!(k.also_served(&config), None);
    }

    #[test]
    fn open_segments_the_request_index_and_the_serving_config_are_roots() {
        let t = T::new();
        let (c_open, c_index, c_live) = (
            t.put(b"{\"default\":\"a\"}"),
            t.put(b"{\"default\":\"b\"}"),
            t.put(b"{\"default\":\"c\"}"),
        );
        let none = Digest::of(b"nothing");
        // Cut mid-line, as a crash leaves it: the whole lines still count.
        let mut open = segment("seg-open", 5, &none, &none, &none, &c_open);
        open.push_str("{\"id\":\"torn");
        t.write(&format!("{LOG_DIR}/open-seg-open.jsonl"), &open);
        let by = ServedBy {
            model: "m".into(),
            model_digest: String::new(),
            dataset: String::new(),
            dataset_digest: String::new(),
            train_run: String::new(),
            code_commit: String::new(),
            config_digest: c_index.hex(),
        };
        let seg = crate::lineage::requests::SegmentRef {
            name: "seg-live",
            host: "h",
            opened: 7,
        };
        let row = crate::lineage::requests::RequestRow {
            id: "r",
            time: 7,
            user: 1,
            served: &by,
            route: "default",
            status: "ok",
            latency_us: 1,
            items: "",
        };
        t.ws.lineage.insert_requests(&seg, &[row]).expect("index");
        t.write(SERVING_CONFIG, "{\"default\":\"c\"}");
        let k = t.keep(&old_only());
        assert_eq!(
            root_of(&k, &c_open),
            (
                Root::Segment {
                    segment: format!("{LOG_DIR}/open-seg-open.jsonl"),
                    stored_as: None,
                    opened: 5
                },
                Role::Config,
                None
            )
        );
        assert_eq!(
            root_of(&k, &c_index),
            (Root::RequestIndex, Role::Config, None)
        );
        assert_eq!(
            root_of(&k, &c_live),
            (
                Root::ServingConfig {
                    path: SERVING_CONFIG.into()
                },
                Role::Config,
                None
            )
        );
        // Named but absent (nothing was ever stored under it): kept, so
        // `audit` can say it is missing.
        assert!(k.contains(&none));
        // Without the request roots, none of it.
        let k = t.keep(&RootOptions {
            requests: false,
            ..old_only()
        });
        for d in [c_open, c_index, c_live] {
            assert!(!k.contains(&d));
        }
    }

    #[test]
    fn what_cannot_be_read_is_a_problem_and_the_rest_is_still_found() {
        let t = T::new();
        t.write("a.csv", "a");
        let (a, _) = t.add("a.csv");
        t.write("d/x", "x");
        let (d, _) = t.add("d");
        t.write("bad.recsys", "recsys-pointer: 1\ngarbage\n");
        // The directory's manifest damaged in place.
        let m = t.ws.store.object_path(&d);
        fs::set_permissions(&m, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        let mut bytes = fs::read(&m).expect("read");
        bytes[0] ^= 1;
        fs::write(&m, &bytes).expect("damage");
        let k = t.keep(&old_only());
        let kinds: Vec<(&str, &str)> = k
            .problems()
            .iter()
            .map(|p| (p.kind, p.subject.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("bad-pointer", "bad.recsys"),
                ("unreadable-manifest", "pointer d.recsys")
            ]
        );
        assert!(k.contains(&a) && k.contains(&d));
    }

    #[test]
    fn the_walk_follows_symlinked_directories_once_and_ends_on_cycles() {
        let t = T::new();
        let outside = t._dir.path().join("bigdisk");
        fs::create_dir_all(&outside).expect("mkdir");
        t.write("real/a.csv", "a");
        t.add("real/a.csv");
        fs::rename(t.path("real"), outside.join("real")).expect("move");
        std::os::unix::fs::symlink(outside.join("real"), t.path("data")).expect("link out");
        t.write("in/b.csv", "b");
        t.add("in/b.csv");
        std::os::unix::fs::symlink(t.path("in"), t.path("alias")).expect("link in");
        std::os::unix::fs::symlink(t.ws.root(), t.path("in/loop")).expect("cycle");
        std::os::unix::fs::symlink(t.path("gone"), t.path("dangling")).expect("dangling");
        let found = t.ws.pointer_files().expect("walk");
        assert_eq!(found, ["data/a.csv.recsys", "in/b.csv.recsys"]);
        let k = t.keep(&old_only());
        assert!(
            k.contains(&Digest::of(b"a")),
            "data behind the link is kept"
        );
    }
}
