//! The recommendation server: routing by `config.json`, hot reload, the
//! request log and the HTTP API.
//!
//! The core of it is synchronous: loading a deployment ([`deploy`]), the
//! request-log writer ([`log`]) and the config watcher run on their own
//! threads with their own SQLite connections. Only the HTTP edge
//! ([`app`]) is async, and a handler never touches SQLite, git or the
//! filesystem: it reads the current deployment, computes, and queues a log
//! event without waiting.
//!
//! This module does not read the environment or print; it reports through
//! `tracing` and `/metrics`, and the CLI decides where those go.

pub mod app;
pub mod config;
pub mod deploy;
pub mod kafka;
pub mod log;
pub mod metrics;
mod users;
mod warn;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

pub use app::{AppState, app};
pub use config::{ConfigProblem, RouterConfig, parse as parse_config};
pub use deploy::{DeployError, Deployment};
pub use kafka::KafkaLogOptions;
pub use log::{LogOptions, RequestLog};
pub use metrics::Metrics;

use crate::workspace::{Settings, Workspace, WorkspaceError};

/// Where the request log lives, relative to the project root.
pub const LOG_DIR: &str = "log/requests";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve {config}: {source}")]
    Deploy {
        config: PathBuf,
        #[source]
        source: Box<DeployError>,
    },
    #[error("request log: {0}")]
    Log(#[from] log::LogError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("start the config watcher: {0}")]
    Thread(std::io::Error),
}

/// What `recsys serve` (or a test) asks for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The project root.
    pub root: PathBuf,
    /// The router config (absolute, or relative to the root).
    pub config: PathBuf,
    /// How often the watcher looks for changes (well under 5 s).
    pub poll: Duration,
    /// `None` turns request logging off.
    pub log: Option<LogOptions>,
}

impl ServeOptions {
    /// Defaults for a project at `root`: `config.json`, poll every second,
    /// logging to `log/requests/` on `host`.
    pub fn new(root: PathBuf, host: String) -> ServeOptions {
        let log = LogOptions::new(
            root.join(LOG_DIR),
            root.join(crate::workspace::LINEAGE_DB),
            root.join(crate::workspace::STORE_DIR),
            host,
        );
        ServeOptions {
            config: root.join("config.json"),
            root,
            poll: Duration::from_secs(1),
            log: Some(log),
        }
    }
}

/// A started server: deployment loaded, log writer and watcher running.
pub struct Server {
    state: Arc<AppState>,
    stop: Sender<()>,
    watcher: Option<JoinHandle<()>>,
}

impl Server {
    /// Load the config (an error when it cannot be served: there is no last
    /// good config yet), start the request log and the watcher.
    pub fn start(opts: ServeOptions, settings: Settings) -> Result<Server, ServeError> {
        let ws = Workspace::discover(&opts.root, settings)?;
        let config = if opts.config.is_absolute() {
            opts.config.clone()
        } else {
            ws.root().join(&opts.config)
        };
        let metrics = Arc::new(Metrics::new());
        // Stamped before loading: a change made from here on is a change
        // the watcher must see (taking it later, in the watcher thread,
        // raced with a config edited right after start).
        let config_stamp = deploy::stamp(&config);
        let dep =
            deploy::load(&ws, &config, &[], &metrics).map_err(|source| ServeError::Deploy {
                config: config.clone(),
                source: Box::new(source),
            })?;
        for n in &dep.notes {
            tracing::warn!("{n}");
        }
        let log = match &opts.log {
            Some(lo) => {
                if let Some(parent) = lo.dir.parent()
                    && parent.starts_with(ws.root())
                {
                    // Keep the log out of git and out of work-tree scans.
                    let _ = std::fs::create_dir_all(parent);
                    let _ = std::fs::write(
                        parent.join("CACHEDIR.TAG"),
                        "Signature: 8a477f597d28d172789f06886806bc55\n# recsys request log\n",
                    );
                    if let Ok(rel) = parent.strip_prefix(ws.root())
                        && let Some(first) = rel.components().next()
                    {
                        let entry = format!("/{}/", first.as_os_str().to_string_lossy());
                        let _ = ws.ensure_ignored(ws.root(), &[&entry]);
                    }
                }
                Some(RequestLog::start(lo.clone(), metrics.clone())?)
            }
            None => None,
        };
        tracing::info!(
            "serving config {} ({}): {}",
            config.display(),
            dep.config_digest.short(),
            dep.model_names().join(", ")
        );
        let initial = Fingerprint {
            config: config_stamp,
            models: deploy::model_fingerprint(&ws, &dep.model_names())
                .into_iter()
                .collect(),
        };
        let state = Arc::new(AppState::new(Some(dep), metrics, log));
        let (stop, stop_rx) = channel();
        let w_state = state.clone();
        let poll = opts.poll;
        let watcher = std::thread::Builder::new()
            .name("recsys-config-watcher".into())
            .spawn(move || watch(ws, config, poll, initial, w_state, stop_rx))
            .map_err(ServeError::Thread)?;
        Ok(Server {
            state,
            stop,
            watcher: Some(watcher),
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, finish requests in flight, then stop
    /// the watcher and flush and close the request log.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let res = axum::serve(listener, app(self.state.clone()))
            .with_graceful_shutdown(shutdown)
            .await;
        // Joining threads and fsyncing block: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || self.stop()).await;
        res
    }

    /// Stop the watcher and close the request log (blocking).
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Some(log) = &self.state.log {
            log.close();
        }
    }
}

/// What the watcher compares: the config file's stamp and, per model name,
/// its registered digest and the stamp of the file its bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fingerprint {
    config: String,
    models: HashMap<String, String>,
}

impl Fingerprint {
    fn of(ws: &Workspace, config: &std::path::Path, names: &[String]) -> Fingerprint {
        Fingerprint {
            config: deploy::stamp(config),
            models: deploy::model_fingerprint(ws, names).into_iter().collect(),
        }
    }

    /// Whether anything in `self` differs from `before` (a name `before`
    /// did not watch counts as changed).
    fn changed_since(&self, before: &Fingerprint) -> bool {
        self.config != before.config
            || self
                .models
                .iter()
                .any(|(n, e)| before.models.get(n) != Some(e))
    }
}

/// Poll for changes; load and verify off the request path; swap on success,
/// keep the last good deployment (logged, counted) on failure.
///
/// Watched: the config file and every model named by the serving config or
/// by the config file as it is now (so registering a model the new config
/// was missing triggers another attempt). The fingerprint is taken before
/// loading: a change made during a load is seen at the next poll.
fn watch(
    ws: Workspace,
    config: PathBuf,
    poll: Duration,
    mut last: Fingerprint,
    state: Arc<AppState>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let serving = |state: &AppState| -> Vec<String> {
        state
            .deployment
            .load_full()
            .map(|d| d.model_names())
            .unwrap_or_default()
    };
    loop {
        match stop.recv_timeout(poll) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let mut names = serving(&state);
        if let Ok(bytes) = std::fs::read(&config)
            && let Ok(cfg) = config::parse(&bytes)
        {
            for m in cfg.models() {
                if !names.contains(&m) {
                    names.push(m);
                }
            }
        }
        let now = Fingerprint::of(&ws, &config, &names);
        if !now.changed_since(&last) {
            continue;
        }
        let current = state.deployment.load_full();
        // Models whose registration and file are unchanged are reused.
        let reuse: Vec<Arc<deploy::Served>> = current
            .as_ref()
            .map(|d| {
                d.models
                    .iter()
                    .filter(|m| {
                        now.models.contains_key(&m.name)
                            && now.models.get(&m.name) == last.models.get(&m.name)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        match deploy::load(&ws, &config, &reuse, &state.metrics) {
            Ok(d) => {
                for n in &d.notes {
                    tracing::warn!("{n}");
                }
                tracing::info!(
                    "reloaded {} ({}): {}",
                    config.display(),
                    d.config_digest.short(),
                    d.model_names().join(", ")
                );
                state.metrics.reload(true);
                state.swap(d);
            }
            Err(e) => {
                state.metrics.reload(false);
                tracing::error!("reload failed, still serving the last good config: {e}");
            }
        }
        last = now;
    }
}
