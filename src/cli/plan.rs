//! `kedge plan` (the next cron fires, or with `--at` a sizing decision) and
//! `kedge render` (the Kubernetes objects one run would create).

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;

use super::{
    one_job, open_store, parse_time, pretty_json, read_data, rfc3339, ClusterArgs, Failure,
};
use crate::config::{self, ExecutorKind, Sources};
use crate::dispatcher::preview;
use crate::dispatcher::sizing::{self, Decision};
use crate::executor::kubernetes::{self, objects};
use crate::lifecycle::TriggerKind;
use crate::triggers::rules::{self, Planned};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Only this job
    #[arg(long)]
    pub job: Option<String>,
    /// Start from this time instead of now (RFC 3339, e.g. 2026-03-27T00:00:00Z)
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// Fires per job
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    /// Forecast: every fire of --job from --from (default now) up to this
    /// time (RFC 3339, exclusive), with the rule that placed it
    #[arg(long, value_name = "RFC3339", requires = "job", conflicts_with_all = ["at", "count"])]
    pub to: Option<String>,
    /// Print JSON: an array of {"job", "timezone", "fires": [...]} (and
    /// "rules", the rule of each fire, for a job with calendar rules); with
    /// --to the forecast {"job", "timezone", "from", "to", "fires": [{"at",
    /// "local", "outcome", "cron_time", "rule"}]}; with --at the decision
    #[arg(long)]
    pub json: bool,
    /// Size a run of --job starting at this time (RFC 3339); its load guards are measured now
    #[arg(long, value_name = "RFC3339", requires = "job")]
    pub at: Option<String>,
    /// With --at: the work, instead of running the job's probe
    #[arg(long, requires = "at")]
    pub work: Option<f64>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The job
    #[arg(long)]
    pub job: String,
    /// The run's time (RFC 3339) [default: now]
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// A queue job's message: JSON text, or @FILE [default: {}]
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `kedge plan`: with `--at`, the sizing decision; else the next fires.
pub(super) async fn plan(src: &Sources, args: PlanArgs) -> Result<(), Failure> {
    match (&args.job, &args.at, &args.to) {
        (Some(job), Some(at), _) => plan_sizing(src, job, at, args.work, args.json).await,
        (Some(job), None, Some(to)) => forecast(src, job, args.from.as_deref(), to, args.json),
        _ => plan_fires(src, args),
    }
}

/// `kedge plan --at`: how a run of `name` at `at` would be sized, and
/// what its load guards, measured now, would do to it.
async fn plan_sizing(
    src: &Sources,
    name: &str,
    at: &str,
    work: Option<f64>,
    json: bool,
) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let at = parse_time("--at", at)?;
    let job = one_job(&loaded, name)?;
    let sizing = job.sizing.as_ref().zip(job.deadline_after(at));
    if sizing.is_none() && job.guards.is_empty() {
        return Err(Failure::Input(format!(
            "job {name} has no `sizing` and `window` and no `guards`: there is nothing to plan"
        )));
    }
    if let Some(w) = work {
        if !(w.is_finite() && w >= 0.0) {
            return Err(Failure::Input(format!(
                "--work: {w} must be a number of 0 or more"
            )));
        }
    }
    let store = open_store(&loaded.store_url).await?;
    let verdicts = guard_verdicts(&job, &store).await;
    let d = match sizing {
        None => Ok(None),
        Some((cfg, deadline)) => {
            let throttle = verdicts.iter().filter_map(|v| v.cap).min();
            let mut cfg = cfg.clone();
            if let Some(cap) = throttle {
                cfg.max = cfg.max.min(cap);
            }
            sizing::preview(&store, &job, &cfg, at, deadline, work)
                .await
                .map(|mut d| {
                    if let Some(cap) = throttle {
                        d.guards = Some(format!("throttled to at most {cap} pod(s)"));
                    }
                    Some(d)
                })
        }
    }
    .context("sizing the run");
    store.close().await;
    let d = d?;
    if json {
        let mut v = match &d {
            Some(d) => serde_json::to_value(d).map_err(anyhow::Error::from)?,
            None => serde_json::json!({ "job": job.name }),
        };
        if !verdicts.is_empty() {
            v["guard_verdicts"] = serde_json::to_value(&verdicts).map_err(anyhow::Error::from)?;
        }
        println!("{}", pretty_json(&v)?);
    } else {
        if let Some(d) = &d {
            print_decision(d);
        }
        for v in &verdicts {
            println!("{}", v.line);
        }
    }
    Ok(())
}

/// What one guard, measured now, would do to a run.
#[derive(Debug, serde::Serialize)]
struct GuardVerdict {
    guard: String,
    /// `hold`, `throttle` or `clear`.
    would: &'static str,
    value: Option<f64>,
    error: Option<String>,
    /// Under a throttle: the most pods a run would get.
    cap: Option<u32>,
    /// `would hold: primary-db-cpu 91 > 80`.
    #[serde(skip)]
    line: String,
}

/// Measures each of `job`'s guards once and says what it would do.
async fn guard_verdicts(job: &config::Job, store: &crate::store::Store) -> Vec<GuardVerdict> {
    use crate::planner::guards::{self as g, Effect, GuardState};
    let mut out = Vec::new();
    for guard in &job.guards {
        let spec = crate::planner::guards::GuardSpec::of(guard);
        let reading = crate::guards::measure(guard, store).await;
        let state = g::observe(&spec, &GuardState::initial(), reading);
        let described = g::describe(&guard.name, &spec, &state);
        let (would, cap, line) = match g::effect(&spec, &state) {
            Effect::Hold => ("hold", None, format!("would hold: {described}")),
            Effect::Throttle(f) => {
                let cap = job
                    .sizing
                    .as_ref()
                    .map(|s| g::throttled_max(s.min, s.max, f));
                let pods = cap
                    .map(|c| format!(" (at most {c} pod(s))"))
                    .unwrap_or_default();
                (
                    "throttle",
                    cap,
                    format!("would throttle: {described}{pods}"),
                )
            }
            Effect::Clear => {
                let why = match &state.error {
                    Some(e) => format!("{}: probe failed ({e}), ignored", guard.name),
                    None => described,
                };
                ("clear", None, format!("guard clear: {why}"))
            }
        };
        out.push(GuardVerdict {
            guard: guard.name.clone(),
            would,
            value: state.value,
            error: state.error.clone(),
            cap,
            line,
        });
    }
    out
}

fn print_decision(d: &Decision) {
    println!("job              {}", d.job);
    println!("work             {} {}", d.work, d.unit);
    println!(
        "rate per pod     {:.3} {}/h ({})",
        d.rate_per_pod, d.unit, d.model
    );
    println!("overhead         {:.1}s", d.overhead_s);
    println!(
        "parallelism      {} (completions {})",
        d.parallelism, d.completions
    );
    println!("deadline         {}", d.deadline);
    println!("projected finish {}", d.projected_finish);
    println!("at risk          {}", d.at_risk);
    println!("why              {}", d.reason);
    if let Some(n) = &d.probe_note {
        println!("note             {n}");
    }
    if let Some(g) = &d.guards {
        println!("guards           {g}");
    }
}

/// `kedge plan` without `--at`: the next `count` fires of each cron job.
fn plan_fires(src: &Sources, args: PlanArgs) -> Result<(), Failure> {
    let loaded = config::load(src)?;
    let from = match &args.from {
        None => crate::clock::Clock::system().now(),
        Some(s) => parse_time("--from", s)?,
    };
    if let Some(name) = &args.job {
        if !loaded.jobs.iter().any(|j| &j.name == name) {
            one_job(&loaded.daemon, name)?;
        }
    }
    let mut out = Vec::new();
    for j in &loaded.jobs {
        if args.job.as_ref().is_some_and(|n| n != &j.name) {
            continue;
        }
        let Some(c) = j.cron() else { continue };
        // The fires that run (skipped ones are only in the forecast).
        let mut fires = Vec::new();
        let mut cursor = from;
        while fires.len() < args.count {
            let Some(f) = rules::next_fire(c, cursor) else {
                break;
            };
            cursor = f.at;
            if !matches!(f.outcome, Planned::Skipped { .. }) {
                fires.push(f);
            }
        }
        let placed: Vec<String> = fires.iter().map(|f| f.rule.clone()).collect();
        let fires: Vec<String> = fires.iter().map(|f| rfc3339(f.at)).collect();
        let mut entry = serde_json::json!({
            "job": j.name,
            "timezone": c.timezone.name(),
            "fires": fires,
        });
        if !c.rules.is_empty() {
            entry["rules"] = placed.into();
        }
        out.push(entry);
    }
    if args.json {
        println!("{}", pretty_json(&out)?);
        return Ok(());
    }
    for e in &out {
        println!(
            "{} ({})",
            e["job"].as_str().unwrap_or(""),
            e["timezone"].as_str().unwrap_or("")
        );
        let rules = e["rules"].as_array();
        for (i, f) in e["fires"].as_array().into_iter().flatten().enumerate() {
            match rules.and_then(|r| r[i].as_str()) {
                Some(rule) => println!("  {}  {rule}", f.as_str().unwrap_or("")),
                None => println!("  {}", f.as_str().unwrap_or("")),
            }
        }
    }
    if !loaded.job_problems.is_empty() {
        eprint!("{}", loaded.job_problems);
    }
    Ok(())
}

/// `kedge plan --job J --from A --to B`: every fire of J in [A, B), with
/// the rule that placed it (a Control-M forecast).
fn forecast(
    src: &Sources,
    name: &str,
    from: Option<&str>,
    to: &str,
    json: bool,
) -> Result<(), Failure> {
    let daemon = config::load_daemon(src)?;
    let job = one_job(&daemon, name)?;
    let from = match from {
        None => crate::clock::Clock::system().now(),
        Some(s) => parse_time("--from", s)?,
    };
    let to = parse_time("--to", to)?;
    if to <= from {
        return Err(Failure::Input(format!(
            "--to: {} is not after --from {}",
            rfc3339(to),
            rfc3339(from)
        )));
    }
    let Some(c) = job.cron() else {
        let by = match job.trigger {
            config::Trigger::After => {
                "only by `after` (its upstreams' runs; `kedge graph --job` shows them)"
            }
            _ => "by a queue",
        };
        return Err(Failure::Input(format!(
            "job {name} is triggered {by}: it has no fires to forecast"
        )));
    };
    let tick = chrono::Duration::nanoseconds(1);
    let fires = rules::fires_between(c, from - tick, to - tick);
    let tz = c.timezone;
    let rows: Vec<serde_json::Value> = fires
        .iter()
        .map(|f| {
            let (outcome, reason) = match &f.outcome {
                Planned::Run => ("run", None),
                Planned::Deferred { .. } => ("deferred", None),
                Planned::Skipped { reason } => ("skipped", Some(reason.clone())),
            };
            serde_json::json!({
                "at": rfc3339(f.at),
                "local": f.at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string(),
                "outcome": outcome,
                "reason": reason,
                "cron_time": rfc3339(f.cron_time),
                "rule": f.rule,
            })
        })
        .collect();
    if json {
        let out = serde_json::json!({
            "job": job.name,
            "timezone": tz.name(),
            "from": rfc3339(from),
            "to": rfc3339(to),
            "fires": rows,
        });
        println!("{}", pretty_json(&out)?);
        return Ok(());
    }
    let runs = fires
        .iter()
        .filter(|f| !matches!(f.outcome, Planned::Skipped { .. }))
        .count();
    println!(
        "{} ({}) from {} to {}: {runs} fires, {} skipped",
        job.name,
        tz.name(),
        rfc3339(from),
        rfc3339(to),
        fires.len() - runs
    );
    for r in &rows {
        let outcome = match r["reason"].as_str() {
            Some(reason) => format!("skipped: {reason}"),
            None => r["outcome"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "  {}  {}  {outcome:<8}  {}",
            r["at"].as_str().unwrap_or(""),
            r["local"].as_str().unwrap_or(""),
            r["rule"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `kedge render`: the objects one run of the job would create.
pub(super) async fn render(src: &Sources, args: RenderArgs) -> Result<(), Failure> {
    let mut loaded = config::load_daemon(src)?;
    args.cluster
        .apply(Some(ExecutorKind::Kubernetes), &mut loaded.executor)?;
    let config::ExecutorConfig::Kubernetes(k) = &loaded.executor else {
        unreachable!("apply() made it kubernetes");
    };
    let at = args
        .at
        .as_deref()
        .map(|t| parse_time("--at", t))
        .transpose()?;
    let job = one_job(&loaded, &args.job)?;
    let store = open_store(&loaded.store_url).await?;
    let at = at.unwrap_or_else(|| store.clock().now());
    let message = message(&job, at, args.payload)?;
    let launch = preview::launch(&store, &job, message, at).await;
    let instance = store.instance_id().await;
    store.close().await;
    let launch = launch.context("sizing the run")?;
    let instance = instance.context("reading the store's instance id")?;
    let namespace = k.namespace.clone().unwrap_or_else(|| "default".into());
    let placement = objects::Placement::new(k, namespace, instance, kubernetes::identity(k));
    let objs = objects::objects(&launch, &placement);
    let mut out = String::new();
    if let Some(cm) = &objs.config_map {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(cm).map_err(anyhow::Error::from)?);
    }
    out.push_str("---\n");
    out.push_str(&serde_saphyr::to_string(&objs.job).map_err(anyhow::Error::from)?);
    print!("{out}");
    Ok(())
}

/// The rendered run's message: a cron job's fire at `at`; a queue job's
/// `--payload` (checked against its payload policy), `{}` by default.
fn message(
    job: &config::Job,
    at: DateTime<Utc>,
    payload: Option<String>,
) -> Result<preview::Message, Failure> {
    match &job.trigger {
        config::Trigger::Cron(_) | config::Trigger::After => match payload {
            Some(_) => Err(Failure::Input(format!(
                "--payload: job {} is triggered by cron or `after` and takes no messages",
                job.name
            ))),
            None => Ok(preview::Message {
                trigger: TriggerKind::Cron,
                message_id: at.timestamp_millis().to_string(),
                body: None,
            }),
        },
        config::Trigger::Queue(_) => {
            let bytes = read_data(Some(payload.unwrap_or_else(|| "{}".into())))?;
            let body = crate::intake::check_payload(&job.name, &job.payload, &bytes)
                .map_err(|e| Failure::Input(format!("--payload: {e}")))?;
            Ok(preview::Message {
                trigger: TriggerKind::Queue,
                message_id: "rendered".to_string(),
                body: Some(body),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};
    use super::*;
    use clap::error::ErrorKind;

    fn plan_args(args: &[&str]) -> PlanArgs {
        match parse(args).unwrap().command {
            Command::Plan(a) => a,
            other => panic!("not plan: {other:?}"),
        }
    }

    #[test]
    fn plan_defaults_to_five_fires_of_every_job() {
        let a = plan_args(&["plan"]);
        assert_eq!((a.job, a.from, a.count, a.json), (None, None, 5, false));
        assert_eq!((a.at, a.work), (None, None));
        let a = plan_args(&["plan", "--job", "j", "--count", "2", "--json"]);
        assert_eq!((a.job.as_deref(), a.count, a.json), (Some("j"), 2, true));
    }

    #[test]
    fn plan_at_needs_a_job_and_work_needs_at() {
        let a = plan_args(&[
            "plan",
            "--job",
            "j",
            "--at",
            "2026-01-01T00:00:00Z",
            "--work",
            "12.5",
        ]);
        assert_eq!(a.at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(a.work, Some(12.5));
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["plan", "--at", "2026-01-01T00:00:00Z"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["plan", "--job", "j", "--work", "1"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["plan", "--count", "many"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn render_needs_a_job() {
        let kind = parse(&["render"]).unwrap_err().kind();
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        let Command::Render(a) = parse(&[
            "render",
            "--job",
            "j",
            "--payload",
            "@m.json",
            "--namespace",
            "ns",
        ])
        .unwrap()
        .command
        else {
            panic!("not render")
        };
        assert_eq!(a.job, "j");
        assert_eq!(a.payload.as_deref(), Some("@m.json"));
        assert_eq!(a.cluster.namespace.as_deref(), Some("ns"));
    }
}
