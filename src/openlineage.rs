//! OpenLineage 2-0-2 run events for recsys's runs, built as JSON values.
//!
//! This module owns the mapping from recsys's lineage (run records, their
//! inputs and outputs) to OpenLineage's model: a *job* per command
//! (`import.movielens`, `ingest`, `train`, `evaluate`, `pipeline`; a
//! pipeline's steps are runs of `ingest`, `train` and `evaluate` with the
//! pipeline's run as their parent), a *run* per execution, and *datasets* for the artifacts a run read and wrote
//! (datasets and models alike, named by their version name in the
//! project's namespace). Every event carries the recsys run record's
//! digest in the `recsys_run` run facet once there is one, and every
//! artifact its BLAKE3 digest in the `recsys_artifact` dataset facet and
//! as the standard `version` facet.
//!
//! It builds events and nothing else: sending them (HTTP, a file) is the
//! CLI's business, so the module does no I/O and reads no environment.
//!
//! Run ids: a live command's run gets a UUIDv7 when it starts (its START
//! must go out before any run record exists); a run described after the
//! fact (a pipeline's steps, `recsys lineage export --openlineage`) gets a
//! UUID derived from its run record's digest ([`run_id_of`]), so exporting
//! the same records twice gives the same ids.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::lineage::{ArtifactRef, CodeVersion, RunRecord};
use crate::store::Digest;
use crate::store::remote::redact;
use crate::workspace::Workspace;

/// The `schemaURL` of every event: the RunEvent of core spec 2-0-2.
pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";

/// `_schemaURL`s of the standard facets used, at the versions the
/// OpenLineage Python client 1.54 stamps.
const JOB_TYPE_URL: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const SOURCE_CODE_LOCATION_URL: &str = "https://openlineage.io/spec/facets/1-1-0/SourceCodeLocationJobFacet.json#/$defs/SourceCodeLocationJobFacet";
const PROCESSING_ENGINE_URL: &str = "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet";
const ERROR_MESSAGE_URL: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const PARENT_RUN_URL: &str =
    "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet";
const SCHEMA_FACET_URL: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const VERSION_FACET_URL: &str = "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet";

/// recsys's own facets: their JSON schemas are `spec/openlineage/*.json`
/// in recsys's source tree, each with this URN as its `$id`.
pub const RUN_FACET_URL: &str =
    "urn:recsys:openlineage:facets:1-0-0:RecsysRunFacet.json#/$defs/RecsysRunFacet";
pub const ARTIFACT_FACET_URL: &str = "urn:recsys:openlineage:facets:1-0-0:RecsysArtifactDatasetFacet.json#/$defs/RecsysArtifactDatasetFacet";
pub const SOURCE_FACET_URL: &str = "urn:recsys:openlineage:facets:1-0-0:RecsysSourceDatasetFacet.json#/$defs/RecsysSourceDatasetFacet";

/// Who emits, and where recsys's jobs and datasets live.
#[derive(Debug, Clone)]
pub struct Context {
    /// Job namespace (the project's name by default).
    pub namespace: String,
    /// Namespace of the project's datasets and models: the default
    /// remote's URL when there is one (every clone names the same bytes
    /// alike), else `recsys://<namespace>`.
    pub dataset_namespace: String,
    /// The `producer` URI: recsys's version and build commit.
    pub producer: String,
    /// The project's repository URL (git `origin`, credentials removed),
    /// else `file://<project root>`.
    pub repo_url: String,
    /// The project root's path inside the repository ("" at its top).
    pub repo_path: String,
}

impl Context {
    /// The context of a project: `namespace` names its jobs (default: the
    /// project directory's name).
    pub fn for_workspace(ws: &Workspace, namespace: Option<&str>) -> Context {
        let root = ws.root();
        let namespace = namespace.map(str::to_string).unwrap_or_else(|| {
            root.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "recsys".into())
        });
        let dataset_namespace = match ws.config.pick(None) {
            Ok(Some((_, r))) if r.url.contains("://") => redact(&r.url),
            Ok(Some((_, r))) => {
                let p = std::path::Path::new(&r.url);
                let abs = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    root.join(p)
                };
                format!("file://{}", abs.display())
            }
            _ => format!("recsys://{namespace}"),
        };
        let (repo_url, repo_path) = match ws.git() {
            Some(g) => (
                g.origin_url()
                    .map(|u| repo_uri(&redact(&u)))
                    .unwrap_or_else(|| format!("file://{}", root.display())),
                g.prefix().to_string_lossy().to_string(),
            ),
            None => (format!("file://{}", root.display()), String::new()),
        };
        let (v, b) = crate::workspace::recsys_build();
        Context {
            namespace,
            dataset_namespace,
            producer: Context::producer_uri(&v, &b),
            repo_url,
            repo_path,
        }
    }

    /// The producer URI of this build of recsys.
    pub fn producer_uri(version: &str, build_commit: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        format!("urn:recsys:{}:{}", clean(version), clean(build_commit))
    }
}

/// A git remote URL as a URI: the scp-like `git@host:org/repo.git` becomes
/// `ssh://git@host/org/repo.git`; a plain path `file://<path>`.
fn repo_uri(url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    if url.starts_with('/') {
        return format!("file://{url}");
    }
    match url.split_once(':') {
        Some((host, path)) if !host.contains('/') => {
            format!("ssh://{host}/{}", path.trim_start_matches('/'))
        }
        _ => format!("file://{url}"),
    }
}

/// A job and, for a step of a pipeline, the run it belongs to.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub name: String,
    pub parent: Option<Parent>,
}

#[derive(Debug, Clone)]
pub struct Parent {
    pub run_id: Uuid,
    pub job: String,
}

impl JobRef {
    pub fn new(name: &str) -> JobRef {
        JobRef {
            name: name.to_string(),
            parent: None,
        }
    }
}

/// A fresh run id for a run starting now.
pub fn new_run_id() -> Uuid {
    Uuid::now_v7()
}

/// The run id of the run a record describes: a UUID (version 8, RFC 9562)
/// made of the first 122 bits of BLAKE3 over the record's digest, so it
/// never changes for a record.
pub fn run_id_of(run: &Digest) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"recsys-openlineage-run:");
    h.update(&run.0);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// The job a run record's kind runs as.
pub fn job_of_kind(kind: &str) -> String {
    match kind {
        "import" => "import.movielens".into(),
        k => k.to_string(),
    }
}

/// RFC 3339 UTC with milliseconds.
fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn facet(ctx: &Context, schema_url: &str, body: Value) -> Value {
    let mut m = Map::new();
    m.insert("_producer".into(), ctx.producer.clone().into());
    m.insert("_schemaURL".into(), schema_url.into());
    if let Value::Object(b) = body {
        m.extend(b);
    }
    Value::Object(m)
}

fn job(ctx: &Context, j: &JobRef, commit: Option<&str>) -> Value {
    let mut facets = Map::new();
    facets.insert(
        "jobType".into(),
        facet(
            ctx,
            JOB_TYPE_URL,
            json!({
                "processingType": "BATCH",
                "integration": "RECSYS",
                // A job is the same job run alone or as a pipeline's step
                // (the run's parent facet says which).
                "jobType": if j.name == "pipeline" { "DAG" } else { "JOB" },
            }),
        ),
    );
    let mut loc = json!({ "type": "git", "url": ctx.repo_url, "repoUrl": ctx.repo_url });
    if !ctx.repo_path.is_empty() {
        loc["path"] = ctx.repo_path.clone().into();
    }
    if let Some(c) = commit {
        loc["version"] = c.into();
    }
    facets.insert(
        "sourceCodeLocation".into(),
        facet(ctx, SOURCE_CODE_LOCATION_URL, loc),
    );
    json!({ "namespace": ctx.namespace, "name": j.name, "facets": facets })
}

fn run(ctx: &Context, j: &JobRef, id: Uuid, mut facets: Map<String, Value>) -> Value {
    let (v, b) = crate::workspace::recsys_build();
    facets.insert(
        "processing_engine".into(),
        facet(
            ctx,
            PROCESSING_ENGINE_URL,
            json!({ "name": "recsys", "version": v, "openlineageAdapterVersion": format!("{v} ({b})") }),
        ),
    );
    if let Some(p) = &j.parent {
        facets.insert(
            "parent".into(),
            facet(
                ctx,
                PARENT_RUN_URL,
                json!({
                    "run": { "runId": p.run_id.to_string() },
                    "job": { "namespace": ctx.namespace, "name": p.job },
                }),
            ),
        );
    }
    json!({ "runId": id.to_string(), "facets": facets })
}

fn event(
    ctx: &Context,
    kind: &str,
    time_ms: i64,
    run: Value,
    job: Value,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
) -> Value {
    json!({
        "eventType": kind,
        "eventTime": time(time_ms),
        "run": run,
        "job": job,
        "inputs": inputs,
        "outputs": outputs,
        "producer": ctx.producer,
        "schemaURL": SCHEMA_URL,
    })
}

/// The START of a run; `commit` is the project's commit it runs at.
pub fn start(ctx: &Context, j: &JobRef, id: Uuid, time_ms: i64, commit: Option<&str>) -> Value {
    event(
        ctx,
        "START",
        time_ms,
        run(ctx, j, id, Map::new()),
        job(ctx, j, commit),
        Vec::new(),
        Vec::new(),
    )
}

/// The FAIL of a run, with the error as the `errorMessage` facet.
pub fn fail(
    ctx: &Context,
    j: &JobRef,
    id: Uuid,
    time_ms: i64,
    commit: Option<&str>,
    message: &str,
) -> Value {
    let mut facets = Map::new();
    facets.insert(
        "errorMessage".into(),
        facet(
            ctx,
            ERROR_MESSAGE_URL,
            json!({ "message": message, "programmingLanguage": "Rust" }),
        ),
    );
    event(
        ctx,
        "FAIL",
        time_ms,
        run(ctx, j, id, facets),
        job(ctx, j, commit),
        Vec::new(),
        Vec::new(),
    )
}

/// The COMPLETE of a run that recorded nothing new (an import of bytes
/// already registered).
pub fn complete_unrecorded(
    ctx: &Context,
    j: &JobRef,
    id: Uuid,
    time_ms: i64,
    commit: Option<&str>,
) -> Value {
    event(
        ctx,
        "COMPLETE",
        time_ms,
        run(ctx, j, id, Map::new()),
        job(ctx, j, commit),
        Vec::new(),
        Vec::new(),
    )
}

/// The COMPLETE of a run that wrote the run record `digest`: its inputs
/// and outputs as datasets, the record's digest, parameters and metrics
/// in the `recsys_run` facet, at the record's end time.
pub fn complete(ctx: &Context, j: &JobRef, id: Uuid, digest: &Digest, r: &RunRecord) -> Value {
    let mut facets = Map::new();
    facets.insert("recsys_run".into(), run_facet(ctx, digest, r));
    let formatted = matches!(r.kind.as_str(), "import" | "ingest" | "train" | "evaluate");
    let mut inputs: Vec<Value> = source_datasets(ctx, r);
    inputs.extend(r.inputs.iter().map(|a| artifact(ctx, a, formatted)));
    let outputs = r
        .outputs
        .iter()
        .map(|a| artifact(ctx, a, formatted))
        .collect();
    event(
        ctx,
        "COMPLETE",
        r.ended,
        run(ctx, j, id, facets),
        job(ctx, j, r.code.git_commit.as_deref()),
        inputs,
        outputs,
    )
}

/// START and COMPLETE of a recorded run, described after the fact: run id
/// from the digest, times from the record.
pub fn from_record(ctx: &Context, digest: &Digest, r: &RunRecord) -> [Value; 2] {
    let j = JobRef::new(&job_of_kind(&r.kind));
    let id = run_id_of(digest);
    [
        start(ctx, &j, id, r.started, r.code.git_commit.as_deref()),
        complete(ctx, &j, id, digest, r),
    ]
}

fn code(c: &CodeVersion) -> Value {
    json!({
        "git_commit": c.git_commit,
        "dirty": c.dirty,
        "recsys_version": c.recsys_version,
        "build_commit": c.build_commit,
    })
}

fn run_facet(ctx: &Context, digest: &Digest, r: &RunRecord) -> Value {
    let mut body = json!({
        "run_record": digest.hex(),
        "kind": r.kind,
        "started": time(r.started),
        "ended": time(r.ended),
        "code": code(&r.code),
        "params": r.params,
        "metrics": r.metrics,
    });
    if let Some(a) = &r.algorithm {
        body["algorithm"] = a.clone().into();
    }
    facet(ctx, RUN_FACET_URL, body)
}

/// A recsys artifact (dataset or model) as an OpenLineage dataset.
fn artifact(ctx: &Context, a: &ArtifactRef, formatted: bool) -> Value {
    let mut facets = Map::new();
    let mut body = json!({ "digest": a.digest.hex(), "kind": a.kind, "size": a.size });
    if let Some(n) = a.files {
        body["files"] = n.into();
    }
    if let Some(p) = &a.path {
        body["path"] = p.clone().into();
    }
    facets.insert(
        "recsys_artifact".into(),
        facet(ctx, ARTIFACT_FACET_URL, body),
    );
    facets.insert(
        "version".into(),
        facet(
            ctx,
            VERSION_FACET_URL,
            json!({ "datasetVersion": a.digest.hex() }),
        ),
    );
    if formatted && a.kind == "dataset" {
        let tables: Vec<Value> = crate::dataset::TABLES
            .iter()
            .map(|(file, cols)| {
                let fields: Vec<Value> = cols
                    .iter()
                    .map(|(n, t)| json!({ "name": n, "type": t }))
                    .collect();
                json!({ "name": file, "type": "csv", "fields": fields })
            })
            .collect();
        facets.insert(
            "schema".into(),
            facet(ctx, SCHEMA_FACET_URL, json!({ "fields": tables })),
        );
    }
    json!({ "namespace": ctx.dataset_namespace, "name": a.name, "facets": facets })
}

/// Where an import or ingest read from, as input datasets named by the
/// OpenLineage naming spec: a directory as `file` + its path (with each
/// file's BLAKE3 digest), a Kafka topic as `kafka://<first broker>` +
/// topic.
fn source_datasets(ctx: &Context, r: &RunRecord) -> Vec<Value> {
    let s = &r.source;
    let mut out = Vec::new();
    if let Some(dir) = s["dir"].as_str() {
        let mut body = json!({ "type": s["type"], "files": s["files"] });
        if let Some(l) = s["layout"].as_str() {
            body["layout"] = l.into();
        }
        let mut facets = Map::new();
        facets.insert("recsys_source".into(), facet(ctx, SOURCE_FACET_URL, body));
        out.push(json!({ "namespace": "file", "name": dir, "facets": facets }));
    }
    let k = &s["kafka"];
    if let (Some(brokers), Some(topic)) = (k["brokers"].as_str(), k["topic"].as_str()) {
        let first = brokers.split(',').next().unwrap_or(brokers).trim();
        let mut facets = Map::new();
        facets.insert(
            "recsys_source".into(),
            facet(
                ctx,
                SOURCE_FACET_URL,
                json!({ "type": "kafka", "group": k["group"], "offsets": k["offsets"] }),
            ),
        );
        out.push(json!({
            "namespace": format!("kafka://{first}"),
            "name": topic,
            "facets": facets,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            namespace: "recs".into(),
            dataset_namespace: "recsys://recs".into(),
            producer: Context::producer_uri("0.1.0", "abc"),
            repo_url: "file:///srv/recs".into(),
            repo_path: String::new(),
        }
    }

    #[test]
    fn a_record_always_gets_the_same_run_id() {
        let d = Digest::of(b"x");
        assert_eq!(run_id_of(&d), run_id_of(&d));
        assert_ne!(run_id_of(&d), run_id_of(&Digest::of(b"y")));
        assert_eq!(run_id_of(&d).get_version_num(), 8);
    }

    #[test]
    fn a_step_names_its_parent() {
        let parent = Parent {
            run_id: new_run_id(),
            job: "pipeline".into(),
        };
        let j = JobRef {
            name: "pipeline.train".into(),
            parent: Some(parent.clone()),
        };
        let e = start(&ctx(), &j, new_run_id(), 0, Some("c0ffee"));
        assert_eq!(
            e["run"]["facets"]["parent"]["run"]["runId"],
            parent.run_id.to_string()
        );
        assert_eq!(e["job"]["facets"]["jobType"]["jobType"], "JOB");
        assert_eq!(
            e["job"]["facets"]["sourceCodeLocation"]["version"],
            "c0ffee"
        );
        assert_eq!(e["eventTime"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn git_remotes_become_uris() {
        assert_eq!(
            repo_uri("git@github.com:org/recs.git"),
            "ssh://git@github.com/org/recs.git"
        );
        assert_eq!(repo_uri("https://h/x.git"), "https://h/x.git");
        assert_eq!(repo_uri("/srv/git/recs"), "file:///srv/git/recs");
    }

    #[test]
    fn the_producer_is_a_uri() {
        assert_eq!(
            Context::producer_uri("0.1.0", "ab cd/ef"),
            "urn:recsys:0.1.0:ab-cd-ef"
        );
    }
}
