use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::monitor::{DbArg, open_sink};
use super::{Ctx, date};
use crate::experiment::define::{self, CreateOptions, Experiment, Guardrail, Split};
use crate::experiment::report::{self, Report, ReportOptions};
use crate::experiment::{ExperimentState, plot};

/// A/B experiments: define, run, stop and analyse them.
///
/// An experiment compares a control model with a treatment model on users
/// split by a salted hash of their id (randomised) or by an attribute. It
/// owns a routing rule at the front of config.json (`exp-<name>`), written
/// only after every check passed (the server's config checker, atomic
/// write); the definition — arms, salt, rule, metric, guardrails, planned
/// size, periods — is a run record in the store, so which arm a user was
/// in, and why, stays answerable (`recsys experiment show NAME --user U`).
/// `report` reads the monitor's database (`recsys monitor`): conversions
/// are the feedback join's answers with ≥ 1 of their first 10 items
/// watched within 1 h.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys experiment create ease-vs-als --control model_v1 --treatment model_v2 --split 50 \\\n      --guardrail 'p95_latency<400ms' --guardrail error_rate --guardrail fallback_share\n  recsys experiment list\n  recsys experiment show ease-vs-als --user 42\n  recsys experiment report ease-vs-als --sequential --plot report.svg\n  recsys experiment stop ease-vs-als"
)]
pub struct Args {
    #[command(subcommand)]
    sub: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    Create(CreateArgs),
    /// Restart a stopped experiment: its rule goes back into config.json
    /// (same salt and rule, so every user returns to the same arm).
    Start(NameArgs),
    /// Stop an experiment: its rule leaves config.json (its users go back
    /// to the other rules) and its running period closes.
    Stop(NameArgs),
    List(ListArgs),
    Show(ShowArgs),
    Report(ReportArgs),
}

/// Define an experiment, write its rule into config.json and start it.
///
/// Refused, with config.json unchanged, when a model is not registered in
/// this project, the name was used before, or a running experiment already
/// takes some of the same users (hash buckets that intersect, or any
/// attribute split).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys experiment create ab1 --control model_v1 --treatment model_v2\n  recsys experiment create ab2 --control model_v1 --treatment model_v3 --split 10 --buckets 50-100\n  recsys experiment create women --control model_v1 --treatment model_v4 --by gender=F"
)]
struct CreateArgs {
    /// 1-64 letters, digits, `_`, `-`, `.`; never reused.
    name: String,
    /// The model users get today (a registered model_vN).
    #[arg(long)]
    control: String,
    /// The model under test.
    #[arg(long)]
    treatment: String,
    /// Percent of the experiment's users given the treatment (hash splits).
    #[arg(long, default_value_t = 50.0)]
    split: f64,
    /// `hash` (randomised by a salted hash of the user id), or an attribute
    /// the treatment's users have: gender=F, age=18-25, occupation=student
    /// (not randomised: everyone else is the control).
    #[arg(long, default_value = "hash")]
    by: String,
    /// Hash buckets (of 100) the experiment takes, FROM-TO: two experiments
    /// on disjoint buckets run side by side.
    #[arg(long, default_value = "0-100", value_parser = parse_buckets)]
    buckets: [u32; 2],
    /// The success metric (ctr10_1h: answers with >= 1 of their first 10
    /// items watched within 1 h).
    #[arg(long, default_value = define::METRIC)]
    metric: String,
    /// A guardrail, repeatable: p95_latency<400ms (the treatment's p95 must
    /// be under the bound), error_rate[<0.01], fallback_share[<0.02]
    /// (non-inferiority margins, absolute).
    #[arg(long = "guardrail", value_name = "GUARDRAIL")]
    guardrails: Vec<String>,
    /// Users (both arms) to run for; default: what the power calculation asks.
    #[arg(long)]
    planned_users: Option<u64>,
    /// The relative lift to power the experiment for (0.05 = +5 %).
    #[arg(long, default_value_t = 0.05)]
    planned_lift: f64,
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// The serving config the experiment's rule lives in.
    #[arg(long, default_value = "config.json")]
    config: PathBuf,
}

#[derive(clap::Args, Debug)]
struct NameArgs {
    name: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// List experiments with their state, arms and split.
#[derive(clap::Args, Debug)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Show an experiment's definition, and with --user which arm that user
/// gets and why (with --at: whether the experiment was running then).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys experiment show ab1\n  recsys experiment show ab1 --user 42 --at 2026-01-02T10:05:00 --json"
)]
struct ShowArgs {
    name: String,
    #[arg(long)]
    user: Option<u64>,
    /// RFC 3339 / ISO-8601 UTC time or Unix ms (with --user).
    #[arg(long, requires = "user")]
    at: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The A/B report of an experiment, and its decision.
///
/// Per arm: users, answers, converted, rate and 95 % CI (user-level ratio,
/// delta method); the effect (absolute and relative
/// lift, CIs, p-value; Welch t on users); sample-ratio mismatch (χ²: warn
/// at p < 0.01, alert at p < 0.001); minimum detectable effect and the
/// users still needed; guardrails (p95 latency bound, non-inferiority of
/// error rate and fallback share); and the decision: ship only if the
/// metric improves significantly and no guardrail is inferior.
///
/// Only answers whose 1 h window has closed count (`pending`: the rest).
/// --sequential gives always-valid intervals and p-values (peeking every
/// hour keeps the false-positive rate at 5 %); --cuped adds the effect on
/// converted answers per user adjusted by each user's watch events in the
/// 7 days before the start.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys experiment report ab1\n  recsys experiment report ab1 --json --plot report.svg --since 24h\n  recsys experiment report ab1 --sequential --cuped --db postgres://postgres@127.0.0.1/test"
)]
struct ReportArgs {
    name: String,
    /// Only answers from this time on: RFC 3339 / ISO-8601 UTC, Unix ms, or
    /// a duration (2h, 7d) back from the newest minute in the database.
    #[arg(long)]
    since: Option<String>,
    /// Always-valid intervals and p-values (safe to look every hour).
    #[arg(long)]
    sequential: bool,
    /// Add the CUPED-adjusted effect (pre-experiment watch activity).
    #[arg(long)]
    cuped: bool,
    /// Write the cumulative-conversion plot (SVG) here.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    db: DbArg,
    /// Print one JSON object (`arms`, `effect`, `srm`, `power`,
    /// `guardrails`, `decision`, ...).
    #[arg(long)]
    json: bool,
}

fn parse_buckets(s: &str) -> Result<[u32; 2], String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: want FROM-TO, e.g. 0-50"))?;
    let p = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?}: want FROM-TO, e.g. 0-50"))
    };
    Ok([p(a)?, p(b)?])
}

fn time_arg(s: &str) -> anyhow::Result<i64> {
    super::parse_now(s).with_context(|| format!("{s:?} is neither Unix ms nor an RFC 3339 time"))
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match a.sub {
        Sub::Create(c) => create(c, ctx),
        Sub::Start(n) => change(n, ctx, true),
        Sub::Stop(n) => change(n, ctx, false),
        Sub::List(l) => list(l, ctx),
        Sub::Show(s) => show(s, ctx),
        Sub::Report(r) => report_cmd(r, ctx),
    }
}

fn config_path(ctx: &Ctx, p: &PathBuf) -> anyhow::Result<PathBuf> {
    let ws = ctx.open()?;
    Ok(if p.is_absolute() || p.exists() {
        p.clone()
    } else {
        ws.root().join(p)
    })
}

fn create(c: CreateArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let split = define::parse_split(&c.by, c.split, c.buckets)?;
    let guardrails = c
        .guardrails
        .iter()
        .map(|g| Guardrail::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let o = CreateOptions {
        name: c.name,
        control: c.control,
        treatment: c.treatment,
        split,
        metric: c.metric,
        guardrails,
        planned_users: c.planned_users,
        planned_lift: c.planned_lift,
    };
    let path = config_path(ctx, &c.config.config)?;
    let ch = define::create(&ws, &path, &o, &ctx.progress())?;
    if c.json {
        super::print_json(&ch)?;
    } else {
        ctx.say(format!(
            "created and started experiment {} ({}): rule {} written to {}",
            ch.experiment.name,
            split_text(&ch.experiment),
            ch.experiment.rule,
            ch.config
        ));
        ctx.say(format!("run record {}", &ch.run[..12.min(ch.run.len())]));
        ctx.say(format!(
            "next:  recsys experiment report {}",
            ch.experiment.name
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn change(n: NameArgs, ctx: &Ctx, start: bool) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let path = config_path(ctx, &n.config.config)?;
    let ch = if start {
        define::start(&ws, &path, &n.name, &ctx.progress())?
    } else {
        define::stop(&ws, &path, &n.name, &ctx.progress())?
    };
    if n.json {
        super::print_json(&ch)?;
    } else {
        ctx.say(format!(
            "{} experiment {}: rule {} {} {}",
            if start { "started" } else { "stopped" },
            ch.experiment.name,
            ch.experiment.rule,
            if start { "written to" } else { "removed from" },
            ch.config
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn split_text(e: &Experiment) -> String {
    match &e.split {
        Split::Hash {
            treatment_percent,
            buckets,
        } => format!(
            "{} {:.0} % / {} {:.0} % by hash{}",
            e.control,
            100.0 - treatment_percent,
            e.treatment,
            treatment_percent,
            if *buckets == [0, 100] {
                String::new()
            } else {
                format!(" of buckets {}-{}", buckets[0], buckets[1])
            }
        ),
        Split::Attribute { attribute, value } => format!(
            "{} for {attribute}={value}, {} for everyone else (not randomised)",
            e.treatment, e.control
        ),
    }
}

fn list(l: ListArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let all = define::list(&ws)?;
    if l.json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(e, run)| {
                serde_json::json!({
                    "name": e.name,
                    "state": e.state(),
                    "control": e.control,
                    "treatment": e.treatment,
                    "split": e.split,
                    "created_ms": e.created_ms,
                    "run": run,
                })
            })
            .collect();
        super::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        ctx.say(
            "no experiments (create one: recsys experiment create NAME --control M --treatment M)",
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<24} {:<8} {:<20} SPLIT", "NAME", "STATE", "CREATED")?;
    for (e, _) in &all {
        outln!(
            "{:<24} {:<8} {:<20} {}",
            e.name,
            e.state().as_str(),
            date(e.created_ms),
            split_text(e)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(s: ShowArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let (e, run) = define::list(&ws)?
        .into_iter()
        .find(|(e, _)| e.name == s.name)
        .ok_or_else(|| crate::experiment::ExperimentError::Unknown(s.name.clone()))?;
    let at = s.at.as_deref().map(time_arg).transpose()?;
    let user = s.user.map(|u| {
        let attrs = define::user_attrs(&ws, &e, u);
        let a = e.assign(u, attrs.as_ref());
        let running = at.map(|t| e.running_at(t));
        (u, a, running)
    });
    if s.json {
        let mut v = serde_json::json!({
            "experiment": e,
            "state": e.state(),
            "run": run,
        });
        if let Some((u, a, running)) = &user {
            v["user"] = serde_json::json!({
                "user": u,
                "arm": a.arm,
                "model": a.model,
                "why": a.why,
                "at_ms": at,
                "running_at": running,
            });
        }
        super::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("experiment {} ({})", e.name, e.state().as_str())?;
    outln!("  split:      {}", split_text(&e))?;
    outln!("  rule:       {} (salt {:?})", e.rule, e.salt)?;
    outln!("  metric:     {}", e.metric)?;
    for g in &e.guardrails {
        outln!("  guardrail:  {g}")?;
    }
    outln!(
        "  planned:    {} for a {:+.1} % lift (alpha {}, power {})",
        e.planned_users
            .map_or("users from the power calculation".to_string(), |n| format!(
                "{n} users"
            )),
        100.0 * e.planned_lift,
        e.alpha,
        e.power
    )?;
    for p in &e.periods {
        outln!(
            "  running:    {} .. {}",
            date(p.start_ms),
            p.stop_ms.map_or("now".to_string(), date)
        )?;
    }
    outln!("  run record: {run}")?;
    if let Some((u, a, running)) = user {
        let when = match (at, running) {
            (Some(t), Some(true)) => format!(" at {} (running)", date(t)),
            (Some(t), _) => format!(" at {} (not running then: the rule did not apply)", date(t)),
            _ => String::new(),
        };
        outln!(
            "user {u}{when}: {} ({}) because {}",
            a.arm,
            a.model.as_deref().unwrap_or("not in the experiment"),
            a.why
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn report_cmd(r: ReportArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let exp = define::get(&ws, &r.name)?;
    let mut sink = open_sink(&r.db, ctx)?;
    let since_ms = match r.since.as_deref() {
        None => None,
        // A duration counts back from the newest minute in the database,
        // as `recsys monitor report --since` does.
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => {
                let until = crate::monitor::report::until_ms(sink.as_mut())?;
                Some(until - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
            }
            Err(_) => Some(time_arg(s)?),
        },
    };
    let rep = report::report(
        sink.as_mut(),
        &exp,
        &ReportOptions {
            since_ms,
            sequential: r.sequential,
            cuped: r.cuped,
        },
    )?;
    if let Some(p) = &r.plot {
        crate::workspace::write_atomic(p, plot::svg(&rep).as_bytes())
            .with_context(|| format!("write the plot to {}", p.display()))?;
    }
    if r.json {
        super::print_json(&rep)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_report(&rep, exp.state())?;
    if let Some(p) = &r.plot {
        ctx.say(format!("plot written to {}", p.display()));
    }
    Ok(ExitCode::SUCCESS)
}

fn pp(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn print_report(r: &Report, state: ExperimentState) -> anyhow::Result<()> {
    outln!(
        "experiment {} ({}), metric {}{}",
        r.experiment,
        state.as_str(),
        r.metric,
        if r.randomised {
            ""
        } else {
            " — NOT randomised"
        }
    )?;
    outln!(
        "{:<10} {:<14} {:>8} {:>9} {:>9} {:>8}  {:<20} {:>8}",
        "ARM",
        "MODEL",
        "USERS",
        "ANSWERS",
        "CONVERTED",
        "RATE",
        "95 % CI",
        "PENDING"
    )?;
    for a in &r.arms {
        outln!(
            "{:<10} {:<14} {:>8} {:>9} {:>9} {:>8}  [{}, {}] {:>8}",
            a.arm,
            a.model,
            a.users,
            a.answers,
            a.converted,
            pp(a.rate),
            pp(a.ci[0]),
            pp(a.ci[1]),
            a.pending
        )?;
    }
    match &r.effect {
        Some(e) => outln!(
            "effect:    {:+.2} pp [{:+.2}, {:+.2}], relative {:+.2} % [{:+.2}, {:+.2}], {}{}",
            100.0 * e.absolute,
            100.0 * e.ci[0],
            100.0 * e.ci[1],
            100.0 * e.relative,
            100.0 * e.relative_ci[0],
            100.0 * e.relative_ci[1],
            report::p_text(e.p_value),
            if e.sequential { " (always-valid)" } else { "" }
        )?,
        None => outln!("effect:    not estimable yet")?,
    }
    match r.srm.p_value {
        Some(p) => outln!(
            "srm:       {} (χ² p = {:.3e}; users {} / {})",
            r.srm.flag,
            p,
            r.srm.observed[0],
            r.srm.observed[1]
        )?,
        None => outln!("srm:       not applicable (not randomised)")?,
    }
    let pw = &r.power;
    outln!(
        "power:     MDE now {} ({} relative); {} users needed for a {:+.1} % lift; {} to go",
        pw.mde_absolute
            .map_or("-".into(), |m| format!("{:.2} pp", 100.0 * m)),
        pw.mde_relative.map_or("-".into(), pp),
        pw.users_needed.map_or("-".into(), |n| n.to_string()),
        100.0 * pw.planned_lift,
        pw.users_remaining.map_or("-".into(), |n| n.to_string())
    )?;
    for g in &r.guardrails {
        outln!(
            "guardrail: {:<15} {} — {}",
            g.metric,
            if g.non_inferior {
                "ok"
            } else {
                "NOT SHOWN NON-INFERIOR"
            },
            g.explain
        )?;
    }
    if let Some(c) = &r.cuped {
        outln!(
            "cuped:     {} {:+.4} [{:+.4}, {:+.4}], {}, variance −{:.0} % (θ = {:.4})",
            c.metric,
            c.absolute,
            c.ci[0],
            c.ci[1],
            report::p_text(c.p_value),
            100.0 * c.variance_reduction,
            c.theta
        )?;
    }
    if r.crossover_users > 0 {
        outln!(
            "warning:   {} user(s) were answered by both arms",
            r.crossover_users
        )?;
    }
    outln!("decision:  {}", r.decision)?;
    Ok(())
}
