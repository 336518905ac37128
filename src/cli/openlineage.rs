//! Sending OpenLineage events (built by [`crate::openlineage`]) where
//! `--openlineage-url` says: `http://host:port` (POSTed to
//! `<url>/api/v1/lineage`, as Marquez expects) or `file:///path.jsonl`
//! (one event appended per line).
//!
//! Emission never fails a command: a receiver that is down, slow (5 s
//! timeout) or answers an error costs one warning on stderr per event, and
//! the command's own work and exit code are unchanged.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::Ctx;
use crate::openlineage::{self, Context, JobRef};
use crate::store::Digest;
use crate::workspace::Workspace;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Sink {
    Http {
        endpoint: String,
        agent: ureq::Agent,
    },
    File(PathBuf),
}

/// Where events go: the URL parsed, checked before the command starts.
#[derive(Debug)]
pub(crate) struct Target(Sink);

impl Target {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Target> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                anyhow::bail!(
                    "--openlineage-url {url}: a file:// URL needs an absolute path (file:///path/events.jsonl)"
                );
            }
            return Ok(Target(Sink::File(PathBuf::from(path))));
        }
        if url.starts_with("https://") {
            anyhow::bail!(
                "--openlineage-url {url}: https is not supported (this build has no TLS); \
                 use http:// on a trusted network or a file:// sink"
            );
        }
        if !url.starts_with("http://") {
            anyhow::bail!(
                "--openlineage-url {url}: expected http://host:port or file:///path/events.jsonl"
            );
        }
        let base = url.trim_end_matches('/');
        let endpoint = if base.ends_with("/api/v1/lineage") {
            base.to_string()
        } else {
            format!("{base}/api/v1/lineage")
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Ok(Target(Sink::Http { endpoint, agent }))
    }

    /// Deliver one event; the error says where it did not go.
    fn send(&self, event: &Value) -> Result<(), String> {
        let body = event.to_string();
        match &self.0 {
            Sink::Http { endpoint, agent } => agent
                .post(endpoint)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .map(|_| ())
                .map_err(|e| format!("POST {}: {e}", crate::store::remote::redact(endpoint))),
            Sink::File(path) => {
                let mut line = body.into_bytes();
                line.push(b'\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(&line))
                    .map_err(|e| format!("append to {}: {e}", path.display()))
            }
        }
    }

    /// Deliver one event, warning (never failing) when it cannot go.
    pub(crate) fn emit(&self, event: &Value) {
        if let Err(e) = self.send(event) {
            let kind = event["eventType"].as_str().unwrap_or("event");
            eprintln!("warning: OpenLineage {kind} event not delivered: {e} (the command goes on)");
        }
    }
}

/// One command's run as OpenLineage sees it.
pub(crate) struct Observed {
    target: Target,
    ctx: Context,
    job: JobRef,
    id: Uuid,
    commit: Option<String>,
}

/// An error and its causes on one line, each said once.
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = c.source();
    }
    crate::text::clip_to(&out, 4 * crate::text::CLIP).to_string()
}

impl Observed {
    /// Send the START of `job` if the command was asked to emit; a URL
    /// that cannot be used is an error before the command does anything.
    pub(crate) fn start(ctx: &Ctx, ws: &Workspace, job: &str) -> anyhow::Result<Option<Observed>> {
        let Some(url) = ctx
            .openlineage_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        let target = Target::parse(url)?;
        let olctx = Context::for_workspace(ws, ctx.openlineage_namespace.as_deref());
        let commit = ws.git().and_then(|g| g.head().ok().flatten());
        let o = Observed {
            target,
            ctx: olctx,
            job: JobRef::new(job),
            id: openlineage::new_run_id(),
            commit,
        };
        o.target.emit(&openlineage::start(
            &o.ctx,
            &o.job,
            o.id,
            ws.now_ms(),
            o.commit.as_deref(),
        ));
        Ok(Some(o))
    }

    /// The COMPLETE: with the datasets and digest of the run record the
    /// command wrote, if it wrote one (`None`: it recorded nothing new).
    pub(crate) fn complete(&self, ws: &Workspace, run: Option<Digest>) {
        let ev = match run.and_then(|d| read_record(ws, &d).map(|r| (d, r))) {
            Some((d, r)) => openlineage::complete(&self.ctx, &self.job, self.id, &d, &r),
            None => openlineage::complete_unrecorded(
                &self.ctx,
                &self.job,
                self.id,
                ws.now_ms(),
                self.commit.as_deref(),
            ),
        };
        self.target.emit(&ev);
    }

    /// The FAIL, with the error's text.
    pub(crate) fn fail(&self, ws: &Workspace, e: &(dyn std::error::Error + 'static)) {
        self.target.emit(&openlineage::fail(
            &self.ctx,
            &self.job,
            self.id,
            ws.now_ms(),
            self.commit.as_deref(),
            &message(e),
        ));
    }

    /// A step of this run (a pipeline's), described once its record exists.
    pub(crate) fn step(&self, ws: &Workspace, name: &str, run: Option<Digest>) {
        let Some(d) = run else { return };
        let Some(r) = read_record(ws, &d) else { return };
        let job = JobRef {
            name: name.to_string(),
            parent: Some(openlineage::Parent {
                run_id: self.id,
                job: self.job.name.clone(),
            }),
        };
        let id = openlineage::run_id_of(&d);
        self.target.emit(&openlineage::start(
            &self.ctx,
            &job,
            id,
            r.started,
            r.code.git_commit.as_deref(),
        ));
        self.target
            .emit(&openlineage::complete(&self.ctx, &job, id, &d, &r));
    }
}

fn read_record(ws: &Workspace, d: &Digest) -> Option<crate::lineage::RunRecord> {
    use crate::store::ObjectStore as _;
    let bytes = ws.store.get(d).ok().flatten()?;
    crate::lineage::RunRecord::parse(d, &bytes).ok()
}

/// Run `f` as an observed command: START before, COMPLETE or FAIL after.
pub(crate) fn observe<T, E>(
    ctx: &Ctx,
    ws: &Workspace,
    job: &str,
    f: impl FnOnce() -> Result<T, E>,
    run: impl FnOnce(&T) -> Option<Digest>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let Some(o) = Observed::start(ctx, ws, job)? else {
        return Ok(f()?);
    };
    let res = f();
    match &res {
        Ok(t) => o.complete(ws, run(t)),
        Err(e) => o.fail(ws, e),
    }
    Ok(res?)
}
