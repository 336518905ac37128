//! `.recsys/config.json`: project settings committed to git (remotes), and
//! `.recsys/config.local.json`: this clone's secrets (S3 credentials), never
//! committed (`init` git-ignores it) and never printed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DOT_DIR, IoCtx, Result, WorkspaceError, write_atomic};
use crate::store::remote::{parse_url, redact};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_remote: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEntry {
    pub url: String,
    /// S3-compatible servers other than AWS: `http://127.0.0.1:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `.recsys/config.local.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub remotes: BTreeMap<String, LocalRemote>,
}

/// A remote's credentials for this clone.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRemote {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for LocalRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalRemote({}, ***)", self.access_key_id)
    }
}

pub(crate) const LOCAL_CONFIG: &str = "config.local.json";

impl LocalConfig {
    pub fn load(root: &Path) -> Result<LocalConfig> {
        let p = root.join(DOT_DIR).join(LOCAL_CONFIG);
        match std::fs::read(&p) {
            // The serde message could quote a secret: only its position.
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                WorkspaceError::Invalid(format!(
                    "{}: not a valid local config (line {}, column {}): expected                      {{\"remotes\": {{\"NAME\": {{\"access_key_id\": .., \"secret_access_key\": ..}}}}}}",
                    p.display(),
                    e.line(),
                    e.column()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LocalConfig::default()),
            Err(e) => Err(e).ctx("read", &p),
        }
    }
}

fn valid_remote_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ProjectConfig {
    pub fn load(root: &Path) -> Result<ProjectConfig> {
        let p = root.join(DOT_DIR).join("config.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| WorkspaceError::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProjectConfig::default()),
            Err(e) => Err(e).ctx("read", &p),
        }
    }

    pub fn save(&self, root: &Path) -> Result<()> {
        let p = root.join(DOT_DIR).join("config.json");
        let mut s = serde_json::to_string_pretty(self)
            .map_err(|e| WorkspaceError::Invalid(e.to_string()))?;
        s.push('\n');
        write_atomic(&p, s.as_bytes())
    }

    pub(crate) fn add_remote(
        &mut self,
        root: &Path,
        name: &str,
        url: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        default: bool,
    ) -> Result<()> {
        if !valid_remote_name(name) {
            return Err(WorkspaceError::Invalid(format!(
                "bad remote name {name:?}: use letters, digits, `-` and `_`"
            )));
        }
        if self.remotes.contains_key(name) {
            return Err(WorkspaceError::Invalid(format!(
                "remote {name} exists already (remove it first)"
            )));
        }
        let parsed = parse_url(url, root)?;
        let is_s3 = matches!(parsed, crate::store::remote::RemoteUrl::S3 { .. });
        if !is_s3 && (endpoint.is_some() || region.is_some()) {
            return Err(WorkspaceError::Invalid(format!(
                "{}: --endpoint and --region are for s3:// remotes",
                redact(url)
            )));
        }
        if let Some(e) = endpoint {
            let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
            let host = e.split_once("://").map(|(_, h)| h).unwrap_or("");
            if !scheme_ok || host.is_empty() || host.starts_with('/') {
                return Err(WorkspaceError::Invalid(format!(
                    "--endpoint {}: expected http(s)://host[:port]",
                    redact(e)
                )));
            }
            if host.split('/').next().unwrap_or("").contains('@') {
                return Err(WorkspaceError::Invalid(format!(
                    "--endpoint {}: credentials do not belong in the URL (it is committed): \
                     use .recsys/config.local.json or AWS_* variables",
                    redact(e)
                )));
            }
        }
        self.remotes.insert(
            name.into(),
            RemoteEntry {
                url: url.into(),
                endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
                region: region.map(str::to_string),
            },
        );
        if default || self.default_remote.is_none() {
            self.default_remote = Some(name.into());
        }
        Ok(())
    }

    pub(crate) fn remove_remote(&mut self, name: &str) -> Result<()> {
        if self.remotes.remove(name).is_none() {
            return Err(WorkspaceError::Remote(format!("no remote named {name}")));
        }
        if self.default_remote.as_deref() == Some(name) {
            self.default_remote = None;
        }
        Ok(())
    }

    /// The remote to use: `name`, else the default. `Ok(None)` when no
    /// name was given and there is no default.
    pub(crate) fn pick(&self, name: Option<&str>) -> Result<Option<(String, RemoteEntry)>> {
        let n = match name.or(self.default_remote.as_deref()) {
            Some(n) => n,
            None => return Ok(None),
        };
        match self.remotes.get(n) {
            Some(r) => Ok(Some((n.to_string(), r.clone()))),
            None => Err(WorkspaceError::Remote(format!(
                "no remote named {n} (see `recsys remote list`)"
            ))),
        }
    }

    /// (name, redacted url, is default), for display.
    pub fn list(&self) -> Vec<(String, String, bool)> {
        self.remotes
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    match &r.endpoint {
                        Some(e) => format!("{} (endpoint {})", redact(&r.url), redact(e)),
                        None => redact(&r.url),
                    },
                    self.default_remote.as_deref() == Some(n),
                )
            })
            .collect()
    }
}
