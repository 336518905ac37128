//! `.recsys/config.json`: project settings committed to git (remotes).

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
        parse_url(url, root)?;
        self.remotes
            .insert(name.into(), RemoteEntry { url: url.into() });
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
    pub(crate) fn pick(&self, name: Option<&str>) -> Result<Option<(String, String)>> {
        let n = match name.or(self.default_remote.as_deref()) {
            Some(n) => n,
            None => return Ok(None),
        };
        match self.remotes.get(n) {
            Some(r) => Ok(Some((n.to_string(), r.url.clone()))),
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
                    redact(&r.url),
                    self.default_remote.as_deref() == Some(n),
                )
            })
            .collect()
    }
}
