//! The command line: clap derive, one file per subcommand, doc comments as
//! help text. This is the only layer that prints, reads the environment or
//! decides exit codes.
//!
//! Exit codes: 0 success; 1 the command ran and found differences or
//! problems (`status --exit-code`, `audit`, conflicts on `pull`); 2 an error.

/// `println!` that returns the write's result instead of panicking on a
/// closed pipe: `outln!("...")?`. Goes through the locked stdout (one line
/// at a time, flushed at the newline); [`main`] turns a broken pipe into a
/// quiet exit 0.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use outln;

mod add;
mod audit;
mod aws_env;
mod checkout;
mod config;
mod diff;
mod evaluate;
mod experiment;
mod forget;
mod gc;
mod import;
mod ingest;
mod init;
mod lineage;
mod ls;
mod monitor;
mod openlineage;
mod pipeline;
mod registry;
mod remote;
mod replay;
mod reproduce;
mod rollout;
mod serve;
mod simulate;
mod status;
mod sync;
mod train;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::progress::Progress;
use crate::workspace::{Settings, Workspace, WorkspaceError};

/// recsys: versioned datasets and models, lineage for every answer.
///
/// A content-addressed (BLAKE3) store for datasets and models, tracked in
/// git by small pointer files, with remotes, an integrity audit and a
/// lineage database that answers "which data and code made this?".
#[derive(Parser, Debug)]
#[command(name = "recsys", version, propagate_version = true)]
#[command(
    after_help = "Start with:\n  recsys init\n  recsys add data/ratings.csv --kind dataset\n  recsys remote add origin /mnt/backup/recsys --default\n  recsys push\n\nEnvironment: RECSYS_NOW (fixed clock, RFC 3339 or Unix ms; for tests),\nRECSYS_JOBS (parallel transfers, default 8), AWS_ACCESS_KEY_ID /\nAWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN / AWS_PROFILE / AWS_REGION (S3 remotes),\nRECSYS_OPENLINEAGE_URL (as --openlineage-url)."
)]
pub struct Cli {
    /// Run as if recsys was started in this directory.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print nothing but errors (and requested JSON).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Send OpenLineage 2-0-2 run events (START, then COMPLETE or FAIL) of
    /// import, ingest, train, evaluate and pipeline here: http://host:port
    /// (POST <URL>/api/v1/lineage, as Marquez expects; 5 s timeout) or
    /// file:///path/events.jsonl (one event appended per line). Delivery
    /// problems are warnings on stderr: they never fail the command.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "RECSYS_OPENLINEAGE_URL",
        hide_env_values = true
    )]
    openlineage_url: Option<String>,
    /// The OpenLineage namespace of recsys's jobs [default: the project
    /// directory's name]; datasets and models are named in the default
    /// remote's URL, else recsys://<namespace>.
    #[arg(long, global = true, value_name = "NAME")]
    openlineage_namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Init(init::Args),
    Add(add::Args),
    Status(status::Args),
    Checkout(checkout::Args),
    Remote(remote::Args),
    Push(sync::PushArgs),
    Fetch(sync::FetchArgs),
    Pull(sync::PullArgs),
    Gc(gc::Args),
    Forget(forget::Args),
    Audit(audit::Args),
    Ls(ls::Args),
    Diff(diff::Args),
    Lineage(lineage::Args),
    Import(import::Args),
    Train(train::Args),
    Evaluate(evaluate::Args),
    Reproduce(reproduce::Args),
    Ingest(ingest::Args),
    Replay(replay::Args),
    Pipeline(pipeline::Args),
    Serve(serve::Args),
    Config(config::Args),
    Monitor(monitor::Args),
    Experiment(experiment::Args),
    Registry(registry::Args),
    Simulate(simulate::Args),
    Rollout(rollout::Args),
}

/// What every subcommand gets.
pub(crate) struct Ctx {
    pub dir: PathBuf,
    pub quiet: bool,
    pub settings: Settings,
    /// `--openlineage-url` (or RECSYS_OPENLINEAGE_URL).
    pub openlineage_url: Option<String>,
    pub openlineage_namespace: Option<String>,
}

impl Ctx {
    pub fn open(&self) -> anyhow::Result<Workspace> {
        Ok(Workspace::discover(&self.dir, self.settings.clone())?)
    }

    /// [`Ctx::open`] with `--jobs` (when given) for the transfers.
    pub fn open_jobs(&self, jobs: Option<usize>) -> anyhow::Result<Workspace> {
        let mut settings = self.settings.clone();
        if let Some(j) = jobs {
            anyhow::ensure!(j >= 1, "--jobs must be at least 1");
            settings.jobs = j.min(256);
        }
        Ok(Workspace::discover(&self.dir, settings)?)
    }

    /// A progress bar on stderr when it is a terminal; nothing otherwise.
    pub fn progress(&self) -> Bar {
        let show = !self.quiet && std::io::stderr().is_terminal();
        Bar(show.then(|| {
            let b = indicatif::ProgressBar::hidden();
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b
        }))
    }

    /// Print a status line unless --quiet. A failed write (a closed pipe,
    /// a full disk) is remembered rather than returned: the command's own
    /// work is not undone by a reader that went away; [`main`] reports it
    /// (a broken pipe quietly) when the command ends.
    pub fn say(&self, s: impl AsRef<str>) {
        if !self.quiet {
            say_line(s.as_ref());
        }
    }
}

/// The first error writing a status line to stdout, if any.
static STDOUT_ERROR: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// Write one line through the locked stdout; after a failure, write
/// nothing more (the error is kept for [`main`]).
fn say_line(s: &str) {
    let mut slot = match STDOUT_ERROR.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if slot.is_some() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}").and_then(|()| out.flush()) {
        *slot = Some(e);
    }
}

/// The error a status line met, to report once the command is done.
fn take_stdout_error() -> Option<std::io::Error> {
    match STDOUT_ERROR.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    }
}

pub(crate) struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn shown(&self) -> bool {
        self.0.is_some()
    }
    fn start(&self, label: &str, total: u64) {
        if let Some(b) = &self.0 {
            b.reset();
            b.set_length(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
        }
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// Human-readable byte count.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Unix milliseconds as an RFC 3339 UTC time (seconds precision).
pub(crate) fn date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn short(commit: &Option<String>) -> String {
    match commit {
        Some(c) => c.chars().take(12).collect(),
        None => "-".into(),
    }
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

pub(crate) fn parse_now(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

/// Entry point of the `recsys` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = Settings::default();
    if let Ok(v) = std::env::var("RECSYS_NOW") {
        match parse_now(&v) {
            Some(ms) => settings.now_ms = Some(ms),
            None => {
                eprintln!(
                    "error: RECSYS_NOW={v:?} is neither Unix milliseconds nor an RFC 3339 time"
                );
                return ExitCode::from(2);
            }
        }
    }
    // Test builds only (feature `failpoints`): die at a named crash point.
    if crate::failpoint::ENABLED
        && let Ok(v) = std::env::var("RECSYS_CRASH_AT")
    {
        crate::failpoint::arm(&v);
    }
    if let Ok(v) = std::env::var("RECSYS_JOBS")
        && let Ok(j) = v.parse::<usize>()
    {
        settings.jobs = j.clamp(1, 256);
    }
    settings.aws = aws_env::credentials();
    settings.aws_region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.is_empty());
    // Like `git -C`: relative paths in arguments are relative to DIR too.
    if let Some(d) = &cli.dir
        && let Err(e) = std::env::set_current_dir(d)
    {
        eprintln!("error: -C {}: {e}", d.display());
        return ExitCode::from(2);
    }
    let ctx = Ctx {
        dir: PathBuf::from("."),
        quiet: cli.quiet,
        settings,
        openlineage_url: cli.openlineage_url.clone(),
        openlineage_namespace: cli.openlineage_namespace.clone(),
    };
    let res = match cli.command {
        Command::Init(a) => init::run(a, &ctx),
        Command::Add(a) => add::run(a, &ctx),
        Command::Status(a) => status::run(a, &ctx),
        Command::Checkout(a) => checkout::run(a, &ctx),
        Command::Remote(a) => remote::run(a, &ctx),
        Command::Push(a) => sync::push(a, &ctx),
        Command::Fetch(a) => sync::fetch(a, &ctx),
        Command::Pull(a) => sync::pull(a, &ctx),
        Command::Gc(a) => gc::run(a, &ctx),
        Command::Forget(a) => forget::run(a, &ctx),
        Command::Audit(a) => audit::run(a, &ctx),
        Command::Ls(a) => ls::run(a, &ctx),
        Command::Diff(a) => diff::run(a, &ctx),
        Command::Lineage(a) => lineage::run(a, &ctx),
        Command::Import(a) => import::run(a, &ctx),
        Command::Train(a) => train::run(a, &ctx),
        Command::Evaluate(a) => evaluate::run(a, &ctx),
        Command::Reproduce(a) => reproduce::run(a, &ctx),
        Command::Ingest(a) => ingest::run(a, &ctx),
        Command::Replay(a) => replay::run(a, &ctx),
        Command::Simulate(a) => simulate::run(a, &ctx),
        Command::Rollout(a) => rollout::run(a, &ctx),
        Command::Pipeline(a) => pipeline::run(a, &ctx),
        Command::Serve(a) => serve::run(a, &ctx),
        Command::Config(a) => config::run(a, &ctx),
        Command::Monitor(a) => monitor::run(a, &ctx),
        Command::Experiment(a) => experiment::run(a, &ctx),
        Command::Registry(a) => registry::run(a, &ctx),
    };
    // A status line that could not be written fails the command too.
    let res = match (res, take_stdout_error()) {
        (Ok(_), Some(e)) => Err(anyhow::Error::new(e).context("write to standard output")),
        (res, _) => res,
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`recsys ls | head`) is not an error.
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {}", render_error(&e));
            if let Some(hint) = hint(&e) {
                let _ = writeln!(err, "hint: {hint}");
            }
            ExitCode::from(2)
        }
    }
}

/// Whether a broken pipe is anywhere in the error's chain: directly, or
/// wrapped by serde_json (`--json` output), by a module's error enum, or by
/// context.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::BrokenPipe;
        }
        if let Some(j) = c.downcast_ref::<serde_json::Error>() {
            return j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe);
        }
        false
    })
}

/// The error and its causes on one line, each said once: many errors
/// format their source into their own message (`write x: No space left on
/// device`) and also return it as `source()`, so a cause already in the
/// text is not repeated. Each part is cut to a sane length: messages quote
/// input, and no input may turn into a megabyte of terminal output.
pub(crate) fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let s = c.to_string();
        let s = crate::text::clip_to(s.trim(), 20 * crate::text::CLIP);
        if s.is_empty() || out.contains(s.as_ref()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// Log lines (`tracing`, used by the long-running commands) go to stderr,
/// coloured only when stderr is a terminal and `NO_COLOR` is unset.
pub(crate) fn init_logging() {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let ws_err = match e.downcast_ref::<crate::pipeline::PipelineError>() {
        Some(crate::pipeline::PipelineError::Workspace(w)) => Some(w),
        Some(crate::pipeline::PipelineError::ModifiedFile { .. }) => {
            return Some("`recsys checkout <path> --force` restores the registered bytes");
        }
        Some(_) => None,
        None => e.downcast_ref::<WorkspaceError>(),
    };
    match ws_err? {
        WorkspaceError::NotAProject(_) => Some("run `recsys init` in the project's root directory"),
        WorkspaceError::Store(crate::store::StoreError::Corrupt { .. }) => Some(
            "the local copy of that object is damaged: `recsys audit` lists all damage; \
             delete the object file and `recsys fetch` it again from a remote",
        ),
        WorkspaceError::Store(crate::store::StoreError::Missing(_)) => {
            Some("`recsys fetch` downloads missing objects from the default remote")
        }
        WorkspaceError::Pointer(_) => Some(
            "pointer files are written by `recsys add`; restore it with `git checkout -- <file>`",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("write {path}: {source}")]
    struct Wrapped {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let text = io.to_string();
        let e = anyhow::Error::new(Wrapped {
            path: "store/ab/cd",
            source: io,
        })
        .context("add data/x.csv");
        let r = render_error(&e);
        assert_eq!(r.matches(&text).count(), 1, "{r}");
        assert!(r.starts_with("add data/x.csv: write store/ab/cd: "), "{r}");
    }

    #[test]
    fn a_broken_pipe_is_found_anywhere_in_the_chain() {
        let pipe = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(pipe())));
        assert!(is_broken_pipe(
            &anyhow::Error::new(Wrapped {
                path: "stdout",
                source: pipe()
            })
            .context("ls")
        ));
        let json = serde_json::Error::io(pipe());
        assert!(is_broken_pipe(&anyhow::Error::new(json)));
        assert!(!is_broken_pipe(&anyhow::anyhow!("broken pipe, in words")));
    }

    #[test]
    fn huge_messages_are_cut() {
        let e = anyhow::anyhow!("bad value {:?}", "x".repeat(1 << 20));
        assert!(render_error(&e).len() < 5000);
    }
}
