//! The recommendation server: routing by `config.json`, hot reload, the
//! request log and the HTTP API.
//!
//! The core of it is synchronous: loading a deployment ([`deploy`]), the
//! request-log writer ([`log`]) and the config watcher run on their own
//! threads with their own SQLite connections. Only the HTTP edge
//! ([`listener`], [`app`]) is async, and a handler never touches SQLite,
//! git or the filesystem: it reads the current deployment, computes, and
//! queues a log event without waiting.
//!
//! This module does not read the environment or print; it reports through
//! `tracing` and `/metrics`, and the CLI decides where those go.

pub mod app;
pub mod config;
pub mod deploy;
pub mod kafka;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod request_id;
pub mod unlogged;
mod warn;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

pub use app::{AppState, ReloadStatus, app};
pub use config::{ConfigProblem, RouterConfig, parse as parse_config};
pub use deploy::{DEFAULT_MAX_CONFIG_BYTES, DeployError, Deployment};
pub use kafka::KafkaLogOptions;
pub use listener::Limits;
pub use log::{LogOptions, RequestLog};
pub use metrics::Metrics;

use crate::workspace::{Settings, Workspace, WorkspaceError};

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
    /// Largest config file read (a larger one is refused, not read).
    pub max_config_bytes: u64,
    /// Connection limits and timeouts of the HTTP edge.
    pub limits: Limits,
}

/// How long stopping waits for the config watcher (which may be in the
/// middle of loading models) before leaving it behind.
const WATCHER_STOP_WAIT: Duration = Duration::from_secs(2);

impl ServeOptions {
    /// Defaults for a project at `root`: `config.json`, poll every second,
    /// logging to `log/requests/` on `host`.
    pub fn new(root: PathBuf, host: String) -> ServeOptions {
        let log = LogOptions::new(
            root.join(crate::workspace::LOG_DIR),
            root.join(crate::workspace::LINEAGE_DB),
            root.join(crate::workspace::STORE_DIR),
            host,
        );
        ServeOptions {
            config: root.join("config.json"),
            root,
            poll: Duration::from_secs(1),
            log: Some(log),
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            limits: Limits::default(),
        }
    }
}

/// A started server: deployment loaded, log writer and watcher running.
pub struct Server {
    state: Arc<AppState>,
    limits: Limits,
    stop: Sender<()>,
    watcher: Option<JoinHandle<()>>,
    /// Disconnects when the watcher thread ends.
    watcher_done: Receiver<()>,
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
            deploy::load(&ws, &config, opts.max_config_bytes, &[], &metrics).map_err(|source| {
                ServeError::Deploy {
                    config: config.clone(),
                    source: Box::new(source),
                }
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
        // Durably named in the log before its first answer.
        if let Some(log) = &log {
            log.announce(&dep);
        }
        let state = Arc::new(AppState::new(Some(dep), metrics, log));
        state.watching(&config);
        let (stop, stop_rx) = channel();
        let (done_tx, watcher_done) = channel::<()>();
        let w = Watcher {
            ws,
            config,
            poll: opts.poll,
            max_bytes: opts.max_config_bytes,
            state: state.clone(),
        };
        let watcher = std::thread::Builder::new()
            .name("recsys-config-watcher".into())
            .spawn(move || {
                let _done = done_tx;
                w.run(initial, stop_rx)
            })
            .map_err(ServeError::Thread)?;
        Ok(Server {
            state,
            limits: opts.limits,
            stop,
            watcher: Some(watcher),
            watcher_done,
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves (with the limits of
    /// [`ServeOptions::limits`]), finish requests in flight within the
    /// grace period, then stop the watcher and flush and close the request
    /// log.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let res = listener::serve(
            listener,
            app(self.state.clone()),
            self.limits.clone(),
            self.state.metrics.clone(),
            self.state.ids.clone(),
            shutdown,
        )
        .await;
        // Joining threads and fsyncing block: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || self.stop()).await;
        res
    }

    /// Stop the watcher and close the request log (blocking). A watcher
    /// that does not stop within 2 s (stuck in a load) is left behind: it
    /// holds nothing the log needs, and shutdown must finish.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        match self.watcher_done.recv_timeout(WATCHER_STOP_WAIT) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "the config watcher did not stop within {WATCHER_STOP_WAIT:?}: left behind"
                );
                self.watcher.take();
            }
            _ => {
                if let Some(w) = self.watcher.take() {
                    let _ = w.join();
                }
            }
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

/// The config watcher: polls for changes, loads and verifies off the
/// request path, swaps on success, keeps the last good deployment (logged,
/// counted, shown by `/health`) on failure.
struct Watcher {
    ws: Workspace,
    config: PathBuf,
    poll: Duration,
    max_bytes: u64,
    state: Arc<AppState>,
}

impl Watcher {
    /// Each poll stats the config file and the serving models' files and
    /// reads nothing unless a stamp changed or the last load failed: a
    /// failed load (unreadable file, a FIFO, a model not yet registered,
    /// the file-descriptor limit) is retried every poll, so fixing the
    /// cause is enough, whether or not it changes the file's stamp. The
    /// stamps are taken before loading: a change made during a load is
    /// seen at the next poll.
    fn run(self, mut last: Fingerprint, stop: Receiver<()>) {
        let mut failing: Option<String> = None;
        loop {
            match stop.recv_timeout(self.poll) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let serving: Vec<String> = self
                .state
                .deployment
                .load_full()
                .map(|d| d.model_names())
                .unwrap_or_default();
            let now = Fingerprint::of(&self.ws, &self.config, &serving);
            if failing.is_none() && !now.changed_since(&last) {
                continue;
            }
            let current = self.state.deployment.load_full();
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
            match deploy::load(
                &self.ws,
                &self.config,
                self.max_bytes,
                &reuse,
                &self.state.metrics,
            ) {
                Ok(d) => {
                    for n in &d.notes {
                        tracing::warn!("{n}");
                    }
                    tracing::info!(
                        "reloaded {} ({}): {}",
                        self.config.display(),
                        d.config_digest.short(),
                        d.model_names().join(", ")
                    );
                    // Durably named in the log before its first answer.
                    if let Some(log) = &self.state.log {
                        log.announce(&d);
                    }
                    self.state.swap(d);
                    // After the swap: a `/health` that says `ok` names
                    // what is now served, never the deployment before it.
                    self.state.record_reload(Ok(()));
                    failing = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    // Retried every poll: say it once, and again when it changes.
                    if failing.as_deref() != Some(msg.as_str()) {
                        tracing::error!(
                            "reload failed, still serving the last good config (retrying every {:?}): {msg}",
                            self.poll
                        );
                    }
                    self.state.record_reload(Err(&e));
                    failing = Some(msg);
                }
            }
            last = now;
        }
    }
}
