use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::Ctx;
use super::monitor::{DbArg, open_sink};
use crate::experiment::define::Guardrail;
use crate::experiment::rollout::{self, Observer, RolloutOptions, StepRecord};

/// Roll a model out as a canary, step by step, while its guardrails hold;
/// roll back to the control on the first failure.
///
/// Each step rewrites config.json (checked by the server's own checker,
/// written atomically): rule `rollout-<model>` sends the step's percentage
/// of users (salted hash: a user on the canary stays on it) to the model,
/// rule `rollout-<model>-control` the rest to the control (--control, or
/// config.json's default). After --every, the guards are read from the
/// monitor's database (`recsys monitor` must be following this server's
/// request log) over that step's answers: `p95_latency<X` holds when the
/// canary's p95 is under X ms; `error_rate[<margin]` and
/// `fallback_share[<margin]` fail when the canary's rate is shown (one-sided
/// 95 % lower bound of the difference) to exceed the control's by more
/// than the margin. A step with fewer than --min-answers canary answers
/// fails. On the first failure config.json serves the control to everyone
/// and a Slack-format message is posted to --webhook; after the 100 % step
/// holds, the model becomes the default. Every step, the rollback and the
/// completion are `rollout` run records (`recsys lineage`).
///
/// Exit codes: 0 completed, 1 rolled back, 2 error (config.json unchanged).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  recsys rollout model_v4 --steps 5,25,50,100 --every 10m --guard 'p95_latency<400ms' --guard error_rate \\\n      --webhook https://hooks.slack.com/services/...\n  recsys rollout model_v4 --control model_v2 --steps 10,100 --every 30s --guard 'fallback_share<5%' --json"
)]
pub struct Args {
    /// The model to roll out (a registered model_vN).
    model: String,
    /// Canary percentages, increasing, ending at 100.
    #[arg(long, default_value = "5,25,50,100")]
    steps: String,
    /// How long each step runs before its guards are judged (10m, 30s, 500ms).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    every: Duration,
    /// A guardrail: p95_latency<400ms, error_rate[<0.01], fallback_share[<0.02]
    /// (repeat for more).
    #[arg(long = "guard", value_name = "GUARD", required = true)]
    guards: Vec<String>,
    /// The model to compare with and roll back to (default: config.json's
    /// default).
    #[arg(long)]
    control: Option<String>,
    /// Post Slack-format messages (rollback, completion) to this URL.
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// Fewest canary answers a step needs to be judged.
    #[arg(long, default_value_t = 20)]
    min_answers: u64,
    /// The serving config.
    #[arg(long, default_value = "config.json")]
    config: PathBuf,
    #[command(flatten)]
    db: DbArg,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 10m, 30s, 500ms)"))
}

struct Say<'a>(&'a Ctx, bool);

impl Observer for Say<'_> {
    fn started(&self, s: &StepRecord) {
        if !self.1 {
            self.0.say(format!(
                "step {}: {} % of users on the canary",
                s.step, s.percent
            ));
        }
    }
    fn judged(&self, s: &StepRecord) {
        if self.1 {
            return;
        }
        let n = s.canary.as_ref().map_or(0, |c| c.answers);
        for c in &s.checks {
            self.0.say(format!(
                "  {} {} ({n} canary answers)",
                if c.ok { "ok  " } else { "FAIL" },
                c.explain
            ));
        }
    }
}

pub fn run(a: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let ws = ctx.open()?;
    let guards = a
        .guards
        .iter()
        .map(|g| Guardrail::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let o = RolloutOptions {
        model: a.model,
        control: a.control,
        steps: rollout::parse_steps(&a.steps)?,
        every: a.every,
        guards,
        min_answers: a.min_answers,
        webhook: a.webhook,
    };
    let path = if a.config.is_absolute() {
        a.config.clone()
    } else {
        ws.root().join(&a.config)
    };
    let mut sink = open_sink(&a.db, ctx)?;
    // Answers are stamped with the wall clock: so are the step windows
    // (RECSYS_NOW only dates the run records).
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let r = rollout::run(
        &ws,
        &path,
        &o,
        sink.as_mut(),
        &wall,
        &Say(ctx, a.json),
        &ctx.progress(),
    )?;
    if a.json {
        super::print_json(&r)?;
    } else {
        match r.outcome {
            "completed" => ctx.say(format!(
                "rollout of {} completed: config.json serves it to everyone (run {})",
                r.model,
                &r.final_run[..r.final_run.len().min(12)]
            )),
            _ => ctx.say(format!(
                "rolled back to {}: {} (run {})",
                r.control,
                r.reason.as_deref().unwrap_or(""),
                &r.final_run[..r.final_run.len().min(12)]
            )),
        }
        if let Some(w) = &r.webhook {
            ctx.say(format!("webhook: {w}"));
        }
    }
    Ok(if r.outcome == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
