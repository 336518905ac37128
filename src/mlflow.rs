//! Mirroring recsys's model versions into an MLflow model registry
//! (`recsys registry sync --mlflow URL`), through MLflow's REST API.
//!
//! One registered model per project (named like the project unless told
//! otherwise) whose versions are recsys's `model_vN`, oldest first: what
//! an MLflow user browsing "Models" expects, one model with a version
//! history. A version is found again by its `recsys.model` tag, never by
//! its number (MLflow numbers versions itself). Each carries tags for the
//! model's BLAKE3 digest, its training dataset and that dataset's digest,
//! the code commit, the algorithm, the train run record, and the metrics of
//! its latest `evaluate` run (`metric.<name>`). The arms `config.json`
//! serves become aliases (`default`, `<rule>`, `<rule>-split-<i>`,
//! `<rule>-canary`); aliases recsys set before and no longer serves are
//! removed (the registered model's `recsys.aliases` tag lists those it
//! manages; aliases someone else set are left alone).
//!
//! Idempotent: the registry is read first and only what differs is
//! written; a second sync writes nothing and says so. It never deletes a
//! model version (recsys never reuses a version name).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::lineage::ArtifactRow;
use crate::serve::config as router;
use crate::workspace::{Workspace, WorkspaceError};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The tag that ties an MLflow version to a recsys model version.
pub const MODEL_TAG: &str = "recsys.model";
/// The registered model's tag listing the aliases recsys manages.
const ALIASES_TAG: &str = "recsys.aliases";

#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("MLflow {method} {url}: HTTP {status}: {message}")]
    Api {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("--mlflow {0}: expected http://host:port (this build has no TLS)")]
    BadUrl(String),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("{path}: {message}")]
    Config { path: String, message: String },
}

impl From<crate::lineage::LineageError> for MlflowError {
    fn from(e: crate::lineage::LineageError) -> Self {
        MlflowError::Workspace(e.into())
    }
}

pub type Result<T, E = MlflowError> = std::result::Result<T, E>;

/// What the registry should hold for one recsys model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WantedVersion {
    pub model: String,
    pub source: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// What the registry should hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wanted {
    pub name: String,
    pub versions: Vec<WantedVersion>,
    /// alias -> recsys model name.
    pub aliases: BTreeMap<String, String>,
}

/// `s` as an MLflow alias: lower-case letters, digits, `-` and `_`.
fn alias_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The aliases of a serving config: each arm it serves and its model.
pub fn config_aliases(cfg: &router::RouterConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(d) = &cfg.default {
        out.insert("default".to_string(), d.clone());
    }
    for r in &cfg.rules {
        let base = alias_name(&r.name);
        if let Some(m) = &r.model {
            out.insert(base.clone(), m.clone());
        }
        for (j, a) in r.split.iter().flatten().enumerate() {
            out.insert(format!("{base}-split-{j}"), a.model.clone());
        }
        if let Some(c) = &r.canary {
            out.insert(format!("{base}-canary"), c.model.clone());
        }
    }
    out
}

fn model_number(name: &str) -> u64 {
    crate::text::number_after(name, "model_v").unwrap_or(u64::MAX)
}

fn metric_text(v: &Value) -> Option<String> {
    let f = v.as_f64()?;
    Some(if v.is_i64() || v.is_u64() {
        v.to_string()
    } else {
        format!("{f:.6}")
    })
}

/// The registry's wanted state from the project: its models (oldest
/// first) and, when `config` exists, the arms it serves.
pub fn wanted(ws: &Workspace, name: &str, project: &str, config: &Path) -> Result<Wanted> {
    let mut models: Vec<ArtifactRow> = ws.lineage.artifacts(Some("model"))?;
    models.sort_by_key(|m| (model_number(&m.name), m.created));
    let mut versions = Vec::new();
    for m in &models {
        let mut tags = BTreeMap::new();
        tags.insert(MODEL_TAG.to_string(), m.name.clone());
        tags.insert("recsys.digest".into(), m.digest.hex());
        tags.insert("recsys.train_run".into(), m.run.hex());
        let run = ws.lineage.run(&m.run)?;
        let commit = run
            .as_ref()
            .and_then(|r| r.git_commit.clone())
            .or_else(|| m.git_commit.clone());
        let dirty = run.as_ref().map_or(m.dirty, |r| r.dirty);
        tags.insert(
            "recsys.code_commit".into(),
            match commit {
                Some(c) if dirty => format!("{c}+dirty"),
                Some(c) => c,
                None => "uncommitted".into(),
            },
        );
        let mut algorithm = None;
        if let Some(r) = &run {
            if let Some(a) = &r.algorithm {
                tags.insert("recsys.algorithm".into(), a.clone());
                algorithm = Some(a.clone());
            }
            tags.insert("recsys.run_kind".into(), r.kind.clone());
        }
        let mut dataset = None;
        for (dir, n, d) in ws.lineage.run_edges(&m.run)? {
            if dir == "in" {
                tags.insert("recsys.dataset".into(), n.clone());
                tags.insert("recsys.dataset_digest".into(), d.hex());
                dataset = Some(n);
                break;
            }
        }
        if let Some(metrics) = crate::pipeline::latest_evaluation(ws, m)? {
            for (k, v) in metrics.as_object().into_iter().flatten() {
                if let Some(t) = metric_text(v) {
                    tags.insert(format!("metric.{k}"), t);
                }
            }
        }
        let description = match (&algorithm, &dataset) {
            (Some(a), Some(d)) => format!("recsys {}: {a} trained on {d}", m.name),
            _ => format!("recsys {}", m.name),
        };
        versions.push(WantedVersion {
            model: m.name.clone(),
            source: format!("recsys://{project}/{}", m.name),
            description,
            tags,
        });
    }
    let aliases = match std::fs::read(config) {
        Ok(bytes) => {
            let cfg = router::parse(&bytes).map_err(|e| MlflowError::Config {
                path: config.display().to_string(),
                message: e.to_string(),
            })?;
            config_aliases(&cfg)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            return Err(MlflowError::Config {
                path: config.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    for (alias, model) in &aliases {
        if !versions.iter().any(|v| &v.model == model) {
            return Err(MlflowError::Config {
                path: config.display().to_string(),
                message: format!("arm {alias} serves {model}, which is not a registered model"),
            });
        }
    }
    Ok(Wanted {
        name: name.to_string(),
        versions,
        aliases,
    })
}

/// What a sync changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub registered_model: String,
    pub url: String,
    pub created_registered_model: bool,
    /// recsys model -> MLflow version number.
    pub versions: BTreeMap<String, String>,
    pub versions_created: Vec<String>,
    pub tags_set: usize,
    pub aliases_set: Vec<String>,
    pub aliases_removed: Vec<String>,
    /// Nothing had to change.
    pub unchanged: bool,
}

/// A blocking MLflow REST client.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(url: &str) -> Result<Client> {
        let u = url.trim().trim_end_matches('/');
        if !u.starts_with("http://") || u.len() <= "http://".len() {
            return Err(MlflowError::BadUrl(url.to_string()));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: u.to_string(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.base)
    }

    /// `Ok(None)` for RESOURCE_DOES_NOT_EXIST.
    fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let url = self.url(path);
        let unreachable = |e: ureq::Error| MlflowError::Unreachable {
            url: crate::store::remote::redact(&self.base),
            message: e.to_string(),
        };
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call().map_err(unreachable)?,
            ("DELETE", Some(b)) => self
                .agent
                .delete(&url)
                .force_send_body()
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes())
                .map_err(unreachable)?,
            (_, b) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.map(Value::to_string).unwrap_or_default().as_bytes())
                .map_err(unreachable)?,
        };
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(unreachable)?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 200 {
            return Ok(Some(v));
        }
        if v["error_code"] == "RESOURCE_DOES_NOT_EXIST" {
            return Ok(None);
        }
        Err(MlflowError::Api {
            method,
            url: crate::store::remote::redact(&url),
            status,
            message: v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| crate::text::clip(&text).to_string()),
        })
    }

    fn ok(&self, method: &'static str, path: &str, body: Value) -> Result<Value> {
        self.call(method, path, Some(&body))?
            .ok_or_else(|| MlflowError::Api {
                method,
                url: self.url(path),
                status: 404,
                message: "not found".into(),
            })
    }

    /// Every version of registered model `name`.
    fn versions(&self, name: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut path = format!(
                "model-versions/search?filter={}&max_results=1000",
                encode(&format!("name='{}'", name.replace('\'', "\\'")))
            );
            if !token.is_empty() {
                path.push_str(&format!("&page_token={}", encode(&token)));
            }
            let v = self.call("GET", &path, None)?.unwrap_or(Value::Null);
            out.extend(v["model_versions"].as_array().cloned().unwrap_or_default());
            match v["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }
}

fn tags_of(v: &Value) -> BTreeMap<String, String> {
    v["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["key"].as_str()?.to_string(),
                t["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn tag_list(tags: &BTreeMap<String, String>) -> Value {
    Value::Array(
        tags.iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect(),
    )
}

/// Make the registry at `client` hold `w`, writing only what differs.
pub fn sync(client: &Client, w: &Wanted) -> Result<SyncReport> {
    let mut rep = SyncReport {
        registered_model: w.name.clone(),
        url: crate::store::remote::redact(&client.base),
        ..Default::default()
    };
    let name_q = encode(&w.name);
    let rm = match client.call("GET", &format!("registered-models/get?name={name_q}"), None)? {
        Some(v) => v["registered_model"].clone(),
        None => {
            let v = client.ok(
                "POST",
                "registered-models/create",
                json!({
                    "name": w.name,
                    "description": "Model versions mirrored from recsys (`recsys registry sync`).",
                    "tags": [{ "key": "recsys.source", "value": "recsys" }],
                }),
            )?;
            rep.created_registered_model = true;
            v["registered_model"].clone()
        }
    };
    // recsys model -> (MLflow version, its tags).
    let mut have: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    for v in client.versions(&w.name)? {
        let tags = tags_of(&v);
        if let (Some(m), Some(n)) = (tags.get(MODEL_TAG), v["version"].as_str()) {
            have.insert(m.clone(), (n.to_string(), tags));
        }
    }
    for want in &w.versions {
        match have.get(&want.model) {
            None => {
                let v = client.ok(
                    "POST",
                    "model-versions/create",
                    json!({
                        "name": w.name,
                        "source": want.source,
                        "description": want.description,
                        "tags": tag_list(&want.tags),
                    }),
                )?;
                let n = v["model_version"]["version"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                rep.versions_created.push(want.model.clone());
                rep.versions.insert(want.model.clone(), n);
            }
            Some((n, tags)) => {
                for (k, val) in &want.tags {
                    if tags.get(k) != Some(val) {
                        client.ok(
                            "POST",
                            "model-versions/set-tag",
                            json!({ "name": w.name, "version": n, "key": k, "value": val }),
                        )?;
                        rep.tags_set += 1;
                    }
                }
                rep.versions.insert(want.model.clone(), n.clone());
            }
        }
    }
    // Aliases: the served arms; those recsys set before and no longer serves go.
    let current: BTreeMap<String, String> = rm["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["alias"].as_str()?.to_string(),
                a["version"].as_str()?.to_string(),
            ))
        })
        .collect();
    let managed: BTreeSet<String> = tags_of(&rm)
        .get(ALIASES_TAG)
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for (alias, model) in &w.aliases {
        let Some(n) = rep.versions.get(model) else {
            continue;
        };
        if current.get(alias) != Some(n) {
            client.ok(
                "POST",
                "registered-models/alias",
                json!({ "name": w.name, "alias": alias, "version": n }),
            )?;
            rep.aliases_set.push(alias.clone());
        }
    }
    for alias in &managed {
        if !w.aliases.contains_key(alias) && current.contains_key(alias) {
            client.ok(
                "DELETE",
                "registered-models/alias",
                json!({ "name": w.name, "alias": alias }),
            )?;
            rep.aliases_removed.push(alias.clone());
        }
    }
    let listed: Vec<&str> = w.aliases.keys().map(String::as_str).collect();
    let listed = listed.join(",");
    if tags_of(&rm).get(ALIASES_TAG).map_or("", String::as_str) != listed {
        client.ok(
            "POST",
            "registered-models/set-tag",
            json!({ "name": w.name, "key": ALIASES_TAG, "value": listed }),
        )?;
        rep.tags_set += 1;
    }
    rep.unchanged = !rep.created_registered_model
        && rep.versions_created.is_empty()
        && rep.tags_set == 0
        && rep.aliases_set.is_empty()
        && rep.aliases_removed.is_empty();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_arm_is_an_alias() {
        let cfg = router::parse(
            br#"{"default":"model_v1","rules":[
                {"name":"Students 2026","when":{"occupation":"student"},"model":"model_v3"},
                {"name":"ab","split":[{"model":"model_v1","weight":1},{"model":"model_v2","weight":1}]},
                {"name":"new","canary":{"model":"model_v4","percent":5}}]}"#,
        )
        .expect("config");
        let a = config_aliases(&cfg);
        let want: BTreeMap<String, String> = [
            ("default", "model_v1"),
            ("students-2026", "model_v3"),
            ("ab-split-0", "model_v1"),
            ("ab-split-1", "model_v2"),
            ("new-canary", "model_v4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(a, want);
    }

    #[test]
    fn urls_and_query_values() {
        assert!(Client::new("https://mlflow.example").is_err());
        assert!(Client::new("mlflow:5000").is_err());
        assert!(Client::new("http://127.0.0.1:5000/").is_ok());
        assert_eq!(encode("name='a b'"), "name%3D%27a%20b%27");
    }
}
