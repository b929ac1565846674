//! Load guards (`guards:`): never scale a job into a downstream that is
//! already drowning. Parsed and validated here; the pure decision is
//! [`crate::planner::guards`], the polling [`crate::guards`].
//!
//! ```yaml
//! guards:
//!   - name: primary-db-cpu
//!     probe: { sql: { url_env: SHOP_DB_URL, query: "select cpu_pct from db_load" } }
//!     max: 80            # holds while the value is above this
//!     resume_below: 70   # hysteresis [default: max]
//!     interval: 15s      # [default: 15s]
//!     timeout: 10s       # one measurement at most [default: the interval]
//!     on_probe_failure: hold   # hold | ignore [default: hold]
//!     action: hold             # hold | throttle [default: hold]
//! ```
//!
//! A guard is defined in the daemon config (shared: a job names it,
//! `guards: [primary-db-cpu]`) or in a job file (a full definition in the
//! job's `guards:` list). Names are unique: a job cannot define a guard
//! under a name the daemon config shares, and two job files cannot define
//! the same name (the daemon polls each guard once, whoever uses it).
//!
//! The probe is a work probe ([`crate::config::probe`]) of one of
//! [`GUARD_PROBE_KINDS`]: `static` and `queue_length` measure no load. The
//! list grows with the probe kinds (a `prometheus` probe comes with metric
//! triggers).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{de, Deserialize};

use super::diagnostic::{parse_duration, FieldPath, Problem};
use super::probe::{RawWorkProbe, WorkProbe};
use super::yaml::DurationText;
use super::yaml::{duration_text, string_enum};

/// The work-probe kinds a guard may measure with. Extend it when a new
/// probe kind can measure load (e.g. `prometheus`).
pub const GUARD_PROBE_KINDS: &[&str] = &["sql", "http", "command"];

/// How often a guard measures, when `interval` is not set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// A guard's definition, as written in the daemon config or a job file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with name, probe and max")]
#[schemars(deny_unknown_fields, rename = "Guard")]
pub struct RawGuard {
    /// The guard's name: lower-case letters, digits and '-' (it labels the
    /// `kedge_guard_*` metrics).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// How the load is measured: one work probe, `sql`, `http` or `command`.
    pub probe: RawWorkProbe,
    /// The guard holds while the measured value is above this.
    pub max: f64,
    /// Once holding, the guard clears only when the value is below this
    /// (hysteresis); at most `max` [default: `max`].
    pub resume_below: Option<f64>,
    /// How often the probe runs [default: 15s].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<String>,
    /// How long one measurement may take; a slower one counts as a failure
    /// [default: the interval].
    #[serde(default, deserialize_with = "duration_text")]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<String>,
    /// What a failed or timed-out measurement means [default: hold].
    pub on_probe_failure: Option<GuardProbeFailure>,
    /// What the guard does to its jobs while the load is high [default: hold].
    pub action: Option<GuardAction>,
}

/// What a failed or timed-out guard measurement means. Either way the
/// failure is logged and shown in `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardProbeFailure {
    /// The guard holds (launches nothing new) until a measurement succeeds
    /// (the default): a load that cannot be seen is not taken as fine.
    Hold,
    /// The guard keeps the state it had (not holding at start).
    Ignore,
}
string_enum!(GuardProbeFailure {
    Hold => "hold",
    Ignore => "ignore",
});

/// What a guard does to its jobs while the load is high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// No new run launches while the guard holds (the default).
    Hold,
    /// New runs get less parallelism, scaled linearly from the full
    /// `sizing.parallelism.max` at `resume_below` down to
    /// `sizing.parallelism.min` at `max`; running Indexed runs are
    /// re-planned down. Needs `sizing`.
    Throttle,
}
string_enum!(GuardAction {
    Hold => "hold",
    Throttle => "throttle",
});

/// A validated guard.
#[derive(Debug, Clone)]
pub struct Guard {
    pub name: String,
    pub probe: WorkProbe,
    pub max: f64,
    /// At most `max`; equal to it when unset.
    pub resume_below: f64,
    pub interval: Duration,
    pub timeout: Duration,
    pub on_probe_failure: GuardProbeFailure,
    pub action: GuardAction,
    /// Where it is defined: `None` for the daemon config, else the job file.
    pub defined_in: Option<PathBuf>,
    /// Where its `name` is in that job file (set when the file is loaded).
    pub position: Option<super::diagnostic::Position>,
}

/// The guards a daemon config shares, by name.
pub type SharedGuards = std::collections::BTreeMap<String, Arc<Guard>>;

/// Validates one guard at `p` (`guards[i]`); `defined_in` as in [`Guard`].
pub fn validate_guard(
    raw: &RawGuard,
    p: &FieldPath,
    defined_in: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Guard> {
    let before = problems.len();
    if !is_name(&raw.name) {
        problems.push((
            p.key("name"),
            format!(
                "\"{}\" is not a valid guard name: use lower-case letters, digits and '-', starting and ending with a letter or digit",
                raw.name
            ),
        ));
    }
    let probe = match super::probe::resolve(&raw.probe, env) {
        Ok(w) if GUARD_PROBE_KINDS.contains(&w.kind()) => Some(w),
        Ok(w) => {
            problems.push((
                p.key("probe"),
                format!(
                    "a `{}` probe measures no load; a guard measures with one of: {}",
                    w.kind(),
                    GUARD_PROBE_KINDS.join(", ")
                ),
            ));
            None
        }
        Err(ps) => {
            problems.extend(ps.into_iter().map(|(q, m)| (p.key("probe").join(&q), m)));
            None
        }
    };
    if !raw.max.is_finite() {
        problems.push((p.key("max"), format!("{} must be a finite number", raw.max)));
    }
    let resume_below = raw.resume_below.unwrap_or(raw.max);
    if let Some(r) = raw.resume_below {
        if !r.is_finite() {
            problems.push((
                p.key("resume_below"),
                format!("{r} must be a finite number"),
            ));
        } else if r > raw.max {
            problems.push((
                p.key("resume_below"),
                format!(
                    "{r} is above max {}: the guard would clear while still over its limit",
                    raw.max
                ),
            ));
        }
    }
    let mut duration = |field: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                problems.push((p.key(field), "must be longer than 0s".into()));
                default
            }
            Ok(d) => d,
            Err(e) => {
                problems.push((p.key(field), e));
                default
            }
        },
    };
    let interval = duration("interval", &raw.interval, DEFAULT_INTERVAL);
    let timeout = duration("timeout", &raw.timeout, interval);
    if problems.len() > before {
        return None;
    }
    Some(Guard {
        name: raw.name.clone(),
        probe: probe?,
        max: raw.max,
        resume_below,
        interval,
        timeout,
        on_probe_failure: raw.on_probe_failure.unwrap_or(GuardProbeFailure::Hold),
        action: raw.action.unwrap_or(GuardAction::Hold),
        defined_in,
        position: None,
    })
}

/// The daemon config's `guards:` (full definitions, shared by name).
pub fn validate_shared(
    raw: &[RawGuard],
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> SharedGuards {
    let gp = FieldPath::root().key("guards");
    let mut out = SharedGuards::new();
    for (i, g) in raw.iter().enumerate() {
        let p = gp.index(i);
        if out.contains_key(&g.name) {
            problems.push((
                p.key("name"),
                format!("guard \"{}\" is defined twice", g.name),
            ));
            continue;
        }
        if let Some(guard) = validate_guard(g, &p, None, env, problems) {
            out.insert(guard.name.clone(), Arc::new(guard));
        }
    }
    out
}

/// One item of a job's `guards:` list: the name of a guard the daemon
/// config shares, or a full definition of the job's own.
#[derive(Debug, Clone)]
pub enum RawGuardRef {
    Named(String),
    Defined(RawGuard),
}

// The schema of `RawGuardRef`, whose `Deserialize` is written by hand (a
// derived untagged enum would say only "data did not match any variant").
/// The name of a guard from the daemon config, or a full guard definition.
#[derive(JsonSchema)]
#[schemars(rename = "GuardRef")]
#[serde(untagged)]
#[allow(dead_code)] // only its schema is used
enum GuardRefSchema {
    /// The name of a guard the daemon config defines.
    Named(String),
    /// A guard of this job's own.
    Defined(RawGuard),
}

impl JsonSchema for RawGuardRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        GuardRefSchema::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        GuardRefSchema::json_schema(generator)
    }
}

impl<'de> Deserialize<'de> for RawGuardRef {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawGuardRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the name of a guard from the daemon config, or a guard (a mapping with name, probe and max)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawGuardRef, E> {
                Ok(RawGuardRef::Named(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawGuardRef, A::Error> {
                RawGuard::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawGuardRef::Defined)
            }
        }
        d.deserialize_any(V)
    }
}

/// A job's `guards:` resolved against the daemon's shared guards; `sized`
/// says whether the job has `sizing` (a throttle needs it). Problem paths
/// are relative to the job file's root.
pub fn resolve_job_guards(
    raw: &[RawGuardRef],
    shared: &SharedGuards,
    file: &std::path::Path,
    sized: bool,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Vec<Arc<Guard>> {
    let gp = FieldPath::root().key("guards");
    let mut out: Vec<Arc<Guard>> = Vec::new();
    for (i, item) in raw.iter().enumerate() {
        let p = gp.index(i);
        let (guard, at) = match item {
            RawGuardRef::Named(name) => match shared.get(name) {
                Some(g) => (g.clone(), p.clone()),
                None => {
                    let known: Vec<&str> = shared.keys().map(String::as_str).collect();
                    problems.push((
                        p,
                        format!(
                            "unknown guard \"{name}\" (the daemon config defines: {}); define it there or write the guard here in full",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    ));
                    continue;
                }
            },
            RawGuardRef::Defined(g) => {
                if shared.contains_key(&g.name) {
                    problems.push((
                        p.key("name"),
                        format!(
                            "guard \"{}\" is already defined in the daemon config; name it (`- {}`) or choose another name",
                            g.name, g.name
                        ),
                    ));
                    continue;
                }
                match validate_guard(g, &p, Some(file.to_path_buf()), env, problems) {
                    Some(g) => (Arc::new(g), p.key("action")),
                    None => continue,
                }
            }
        };
        if out.iter().any(|g| g.name == guard.name) {
            problems.push((p, format!("guard \"{}\" is listed twice", guard.name)));
            continue;
        }
        if guard.action == GuardAction::Throttle && !sized {
            problems.push((
                at,
                format!(
                    "guard \"{}\" throttles, which needs the job's `sizing` (it scales between parallelism.min and max); use `action: hold` or add `sizing`",
                    guard.name
                ),
            ));
            continue;
        }
        out.push(guard);
    }
    out
}

/// A guard's name: a DNS-1123 label (as job names), at most 63 characters.
fn is_name(s: &str) -> bool {
    super::names::has_dns1123_characters(s) && s.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawGuard {
        let doc = crate::config::yaml::Located::parse(yaml).expect("yaml");
        let (v, diags) = doc.deserialize::<RawGuard>(&FieldPath::root());
        assert!(diags.is_empty(), "{diags:?}");
        v.expect("parses")
    }

    fn check(yaml: &str) -> Result<Guard, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let g = validate_guard(
            &raw(yaml),
            &FieldPath::root().key("guards").index(0),
            None,
            &|_| Some("postgres://u@db/x".into()),
            &mut problems,
        );
        match g {
            Some(g) if problems.is_empty() => Ok(g),
            _ => Err(problems
                .into_iter()
                .map(|(p, m)| (p.to_string(), m))
                .collect()),
        }
    }

    #[test]
    fn defaults_are_hold_hold_fifteen_seconds_and_no_hysteresis() {
        let g = check("name: cpu\nprobe: { command: [echo, '1'] }\nmax: 80").unwrap();
        assert_eq!(g.resume_below, 80.0);
        assert_eq!(g.interval, DEFAULT_INTERVAL);
        assert_eq!(g.timeout, DEFAULT_INTERVAL);
        assert_eq!(g.on_probe_failure, GuardProbeFailure::Hold);
        assert_eq!(g.action, GuardAction::Hold);
        let g = check(
            "name: cpu\nprobe: { sql: { url_env: DB, query: select 1 } }\nmax: 80\nresume_below: 70\ninterval: 2s\non_probe_failure: ignore\naction: throttle",
        )
        .unwrap();
        assert_eq!((g.resume_below, g.timeout), (70.0, Duration::from_secs(2)));
    }

    #[test]
    fn bad_bounds_intervals_names_and_probe_kinds_are_reported_with_their_field() {
        let e = check(
            "name: CPU\nprobe: { static: 3 }\nmax: 80\nresume_below: 90\ninterval: 0s\ntimeout: soon",
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            fields,
            [
                "guards[0].name",
                "guards[0].probe",
                "guards[0].resume_below",
                "guards[0].interval",
                "guards[0].timeout"
            ],
            "{e:?}"
        );
        assert!(e[1].1.contains("one of: sql, http, command"), "{e:?}");
        assert!(e[2].1.contains("90 is above max 80"), "{e:?}");
    }

    #[test]
    fn a_job_names_shared_guards_or_defines_its_own() {
        let shared: SharedGuards = [(
            "db".to_string(),
            Arc::new(
                check("name: db\nprobe: { command: [echo, '1'] }\nmax: 80\naction: throttle")
                    .unwrap(),
            ),
        )]
        .into();
        let doc = crate::config::yaml::Located::parse(
            "- db\n- { name: own, probe: { command: [echo, '2'] }, max: 5 }\n- nope\n- { name: db, probe: { command: [x] }, max: 1 }",
        )
        .unwrap();
        let (items, diags) = doc.deserialize::<Vec<RawGuardRef>>(&FieldPath::root());
        assert!(diags.is_empty(), "{diags:?}");
        let mut problems = Vec::new();
        let env = |_: &str| None;
        let got = resolve_job_guards(
            &items.unwrap(),
            &shared,
            std::path::Path::new("jobs/a.yaml"),
            true,
            &env,
            &mut problems,
        );
        let names: Vec<&str> = got.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["db", "own"]);
        let ps: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        assert_eq!(ps.len(), 2, "{ps:?}");
        assert!(
            ps[0].starts_with("guards[2]: unknown guard \"nope\" (the daemon config defines: db)"),
            "{ps:?}"
        );
        assert!(
            ps[1].starts_with("guards[3].name: guard \"db\" is already defined"),
            "{ps:?}"
        );

        // A throttle needs sizing.
        let mut problems = Vec::new();
        resolve_job_guards(
            &[RawGuardRef::Named("db".into())],
            &shared,
            std::path::Path::new("jobs/a.yaml"),
            false,
            &env,
            &mut problems,
        );
        assert!(
            problems[0].1.contains("needs the job's `sizing`"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_unknown_field_in_a_job_defined_guard_is_reported_at_its_path() {
        let doc = crate::config::yaml::Located::parse(
            "- { name: own, probe: { command: [echo, '2'] }, max: 5, maxx: 3 }",
        )
        .unwrap();
        let (_, diags) = doc.deserialize::<Vec<RawGuardRef>>(&FieldPath::root());
        let d: Vec<String> = diags
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect();
        assert_eq!(d, ["[0].maxx: unknown field `maxx`"]);
    }
}
