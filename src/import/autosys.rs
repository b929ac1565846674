//! AutoSys JIL → kedge cron jobs (command jobs; boxes and file watchers are
//! reported).
//!
//! JIL is a list of subcommands (`insert_job: NAME job_type: CMD`) each
//! followed by `attribute: value` lines; `/* … */` are comments. Only
//! `insert_job` is imported (`update_job`, `delete_job` are reported).
//!
//! | JIL | kedge |
//! |---|---|
//! | `insert_job` | `name` |
//! | `command` | `template`: one container, `sh -c COMMAND`, the image of `--image` |
//! | `date_conditions: 1` + `start_times` / `start_mins` + `days_of_week` | `trigger.cron` |
//! | `run_calendar` / `exclude_calendar` | `trigger.calendar` / `exclude_calendar` (a calendars/ file of that name) |
//! | `timezone` | `trigger.timezone` |
//! | `n_retrys` | `retry.max_attempts` (n + 1) |
//! | `term_run_time` (minutes) | `template.activeDeadlineSeconds` |
//! | no `date_conditions` | a `builtin` queue job, started by `kedge trigger` |
//! | `condition`, `box_name`, `std_out_file`, `machine`, … | reported |

use std::path::Path;

use serde_json::{json, Value};

use super::{job_name, object, render, Format, ImportError, Options, Outcome};

/// One `insert_job` (or other subcommand) and its attributes, in order.
#[derive(Debug, Clone)]
struct Definition {
    /// `insert_job`, `update_job`, `delete_job`, …
    verb: String,
    name: String,
    /// The line of the subcommand (1-based).
    line: usize,
    attributes: Vec<(String, String)>,
}

impl Definition {
    fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Subcommands that open a definition.
const VERBS: [&str; 6] = [
    "insert_job",
    "update_job",
    "delete_job",
    "delete_box",
    "override_job",
    "insert_machine",
];

/// Attributes read by the mapping (all others are reported).
const MAPPED: [&str; 12] = [
    "job_type",
    "command",
    "date_conditions",
    "start_times",
    "start_mins",
    "days_of_week",
    "run_calendar",
    "exclude_calendar",
    "timezone",
    "n_retrys",
    "term_run_time",
    "description",
];

/// Imports every definition of a JIL file.
pub(crate) fn import(
    file: &Path,
    text: &str,
    options: &Options,
) -> Result<Vec<Outcome>, ImportError> {
    let defs = parse(text).map_err(|(line, message)| ImportError::Syntax {
        file: file.to_path_buf(),
        line,
        column: 1,
        message,
    })?;
    let mut out = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let document = i + 1;
        let origin = format!("{}:{} {} {}", file.display(), d.line, d.verb, d.name);
        let mut o = Outcome::new(origin);
        if d.verb != "insert_job" {
            o.skipped = Some(format!(
                "{}: only insert_job definitions are imported",
                d.verb
            ));
            out.push(o);
            continue;
        }
        let mapped = map(d, options, &mut o).map_err(|(path, message)| ImportError::Shape {
            file: file.to_path_buf(),
            document,
            kind: "JIL job",
            name: d.name.clone(),
            path,
            message,
        })?;
        if let Some((name, job)) = mapped {
            o.job = Some(super::JobFile {
                text: render(&job, options, file, document, Format::Autosys)?,
                name,
            });
        }
        out.push(o);
    }
    Ok(out)
}

/// JIL text into definitions. Errors are `(line, message)`.
fn parse(text: &str) -> Result<Vec<Definition>, (usize, String)> {
    let text = strip_comments(text);
    let mut defs: Vec<Definition> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((key, value)) = l.split_once(':') else {
            return Err((line, format!("expected `attribute: value`, found {l:?}")));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        if VERBS.contains(&key.as_str()) {
            // `insert_job: NAME job_type: CMD` on one line.
            let (name, rest) = match value.find(char::is_whitespace) {
                Some(at) => (&value[..at], value[at..].trim()),
                None => (value, ""),
            };
            let mut attributes = Vec::new();
            if let Some((k, v)) = rest.split_once(':') {
                attributes.push((k.trim().to_ascii_lowercase(), unquote(v)));
            } else if !rest.is_empty() {
                return Err((line, format!("unexpected {rest:?} after the job name")));
            }
            defs.push(Definition {
                verb: key,
                name: name.to_string(),
                line,
                attributes,
            });
            continue;
        }
        let Some(def) = defs.last_mut() else {
            return Err((line, format!("{key} before any insert_job")));
        };
        def.attributes.push((key, unquote(value)));
    }
    Ok(defs)
}

/// `/* … */` comments removed, keeping the line breaks (for line numbers).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("*/").map(|e| e + 2).unwrap_or(after.len());
        out.extend(after[..end].chars().filter(|c| *c == '\n'));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

/// JIL day names → cron's.
fn days(v: &str) -> Result<String, String> {
    if v.trim().eq_ignore_ascii_case("all") {
        return Ok("*".into());
    }
    let mut out = Vec::new();
    for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        out.push(match d.as_str() {
            "su" => "sun",
            "mo" => "mon",
            "tu" => "tue",
            "we" => "wed",
            "th" => "thu",
            "fr" => "fri",
            "sa" => "sat",
            _ => {
                return Err(format!(
                    "{d:?} is not one of su, mo, tu, we, th, fr, sa, all"
                ))
            }
        });
    }
    Ok(out.join(","))
}

/// `start_times` ("02:00, 14:30") → (minute, hours) when every time has
/// the same minute; otherwise the first time and the rest reported.
fn times(v: &str, o: &mut Outcome) -> Result<(String, String), String> {
    let mut parsed = Vec::new();
    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (h, m) = t
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .ok_or_else(|| format!("{t:?} is not a time HH:MM"))?;
        parsed.push((h, m));
    }
    let Some(&(_, minute)) = parsed.first() else {
        return Err("no time given".into());
    };
    let (same, other): (Vec<_>, Vec<_>) = parsed.iter().partition(|(_, m)| *m == minute);
    if !other.is_empty() {
        o.unmapped(
            "start_times",
            format!(
                "{}: a kedge job has one cron expression and these times differ in their minute; only the times at :{minute:02} are imported, import the others as a copy of the job",
                other
                    .iter()
                    .map(|(h, m)| format!("{h:02}:{m:02}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let hours: Vec<String> = same.iter().map(|(h, _)| h.to_string()).collect();
    Ok((minute.to_string(), hours.join(",")))
}

fn map(
    d: &Definition,
    options: &Options,
    o: &mut Outcome,
) -> Result<Option<(String, Value)>, (String, String)> {
    let job_type = d.get("job_type").unwrap_or("CMD").to_ascii_uppercase();
    match job_type.as_str() {
        "CMD" | "C" => {}
        "BOX" | "B" => {
            o.skipped = Some("a box job: its jobs are imported one by one (box_name reported on each); dependency groups are not built yet".into());
            return Ok(None);
        }
        other => {
            o.skipped = Some(format!(
                "job_type {other}: only command jobs (CMD) are imported"
            ));
            return Ok(None);
        }
    }
    let name = job_name(&d.name, "insert_job", o)?;
    let Some(command) = d.get("command") else {
        return Err(("command".into(), "a CMD job needs a command".into()));
    };
    let image = options.image.clone().unwrap_or_else(|| {
        o.todo("no --image given: the template's image is `REPLACE-ME`; set the image that has the command's programs");
        "REPLACE-ME".into()
    });
    o.mapped("command", format!("template: sh -c in image {image}"));
    if command.contains("$$") {
        o.todo("the command uses AutoSys global variables ($$NAME), which the shell reads as its process id: pass them as env in the template instead");
    }
    let mut template = json!({
        "backoffLimit": 0,
        "template": { "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": image, "command": ["sh", "-c", command] }],
        }},
    });
    if let Some(t) = d.get("term_run_time") {
        let minutes: i64 = t.parse().ok().filter(|m| *m > 0).ok_or_else(|| {
            (
                "term_run_time".to_string(),
                format!("{t:?} is not a number of minutes"),
            )
        })?;
        template["activeDeadlineSeconds"] = json!(minutes * 60);
        o.mapped(
            "term_run_time",
            format!("template.activeDeadlineSeconds: {}", minutes * 60),
        );
    }

    let scheduled = d
        .get("date_conditions")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("y"));
    let trigger = if scheduled {
        let dow = match (d.get("days_of_week"), d.get("run_calendar")) {
            (Some(v), _) => {
                let cron_days = days(v).map_err(|m| ("days_of_week".to_string(), m))?;
                o.mapped(
                    "days_of_week",
                    format!("the cron's day of week {cron_days}"),
                );
                cron_days
            }
            (None, Some(_)) => "*".into(),
            (None, None) => {
                return Err((
                    "date_conditions".into(),
                    "needs days_of_week or run_calendar".into(),
                ))
            }
        };
        let (minute, hour) = match (d.get("start_times"), d.get("start_mins")) {
            (Some(t), _) => times(t, o).map_err(|m| ("start_times".to_string(), m))?,
            (None, Some(m)) => (m.replace(' ', ""), "*".to_string()),
            (None, None) => {
                return Err((
                    "date_conditions".into(),
                    "needs start_times or start_mins".into(),
                ))
            }
        };
        let cron = format!("{minute} {hour} * * {dow}");
        o.mapped("start_times/start_mins", format!("trigger.cron: {cron:?}"));
        for (k, to) in [
            ("run_calendar", "calendar"),
            ("exclude_calendar", "exclude_calendar"),
        ] {
            if let Some(c) = d.get(k) {
                o.mapped(k, format!("trigger.{to}: {c}"));
                o.todo(format!("create calendars/{c}.yaml with AutoSys calendar {c}'s dates (autocal_asc exports them)"));
            }
        }
        if let Some(tz) = d.get("timezone") {
            o.mapped("timezone", format!("trigger.timezone: {tz}"));
        }
        object([
            ("cron", json!(cron)),
            ("timezone", json!(d.get("timezone").unwrap_or("UTC"))),
            ("calendar", json!(d.get("run_calendar"))),
            ("exclude_calendar", json!(d.get("exclude_calendar"))),
            ("overlap", json!("forbid")),
        ])
    } else {
        o.mapped(
            "(no date_conditions)",
            "trigger.queue.builtin: started by `kedge trigger` or its condition",
        );
        json!({ "queue": { "builtin": {} } })
    };

    let retry = match d.get("n_retrys") {
        Some(n) => {
            let n: u32 = n
                .parse()
                .map_err(|_| ("n_retrys".to_string(), format!("{n:?} is not a number")))?;
            o.mapped("n_retrys", format!("retry.max_attempts: {}", n + 1));
            json!({ "max_attempts": n + 1 })
        }
        None => json!({ "max_attempts": 1 }),
    };
    if let Some(c) = d.get("condition") {
        o.unmapped(
            "condition",
            format!("{c}: job dependencies (`after:`) are being built; add them when they land. Until then the job runs on its schedule alone"),
        );
    }
    if let Some(b) = d.get("box_name") {
        o.unmapped(
            "box_name",
            format!("{b}: dependency groups are not built yet; the job is imported on its own"),
        );
    }
    for (k, v) in &d.attributes {
        if MAPPED.contains(&k.as_str()) || k == "condition" || k == "box_name" {
            continue;
        }
        let why = match k.as_str() {
            "std_out_file" | "std_err_file" | "std_in_file" => {
                "the container's output is the pod's log (kubectl logs); write files from the command if you need them"
            }
            "machine" | "owner" | "permission" | "profile" => {
                "the run is a Kubernetes pod: its node, user and environment come from the template"
            }
            "alarm_if_fail" | "max_run_alarm" | "min_run_alarm" => {
                "alert on kedge's metrics (kedge_runs_finished_total, dead letters) instead"
            }
            _ => "not read by kedge",
        };
        o.unmapped(k.clone(), format!("{v}: {why}"));
    }

    let job = object([
        ("name", json!(name)),
        (
            "description",
            json!(d
                .get("description")
                .map(str::to_string)
                .unwrap_or_else(|| format!("Imported from the AutoSys job {}.", d.name))),
        ),
        ("trigger", trigger),
        ("retry", retry),
        ("template", template),
    ]);
    Ok(Some((name, job)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JIL: &str = r#"
/* ----------------- daily_report ----------------- */
insert_job: daily_report   job_type: CMD
box_name: nightly_box
command: /opt/app/bin/report.sh --day today
machine: prodhost
owner: batch@prodhost
date_conditions: 1
days_of_week: mo,tu,we,th,fr
start_times: "02:00, 14:00, 15:30"
condition: s(extract_job) & s(load_job)
std_out_file: /tmp/daily_report.out
n_retrys: 2
term_run_time: 60
timezone: US/Eastern

insert_job: nightly_box   job_type: BOX
"#;

    fn opts() -> Options {
        Options {
            schema: "s".into(),
            image: Some("busybox:1.36".into()),
        }
    }

    #[test]
    fn a_command_job_becomes_a_cron_job() {
        let out = import(Path::new("j.jil"), JIL, &opts()).unwrap();
        assert_eq!(out.len(), 2);
        let o = &out[0];
        let job = o.job.as_ref().unwrap();
        assert_eq!(job.name, "daily-report");
        for line in [
            "cron: 0 2,14 * * mon,tue,wed,thu,fri",
            "timezone: US/Eastern",
            "max_attempts: 3",
            "activeDeadlineSeconds: 3600",
            "image: busybox:1.36",
        ] {
            assert!(job.text.contains(line), "{line:?} in {}", job.text);
        }
        for field in [
            "condition",
            "box_name",
            "start_times",
            "std_out_file",
            "machine",
        ] {
            assert!(o.unmapped.iter().any(|u| u.field == field), "{field}: {o}");
        }
        assert!(out[1].skipped.as_deref().unwrap().starts_with("a box job"));
    }

    #[test]
    fn calendars_and_start_mins() {
        let jil = "insert_job: settle job_type: CMD\ncommand: settle\ndate_conditions: 1\nrun_calendar: bank\nexclude_calendar: freeze\nstart_mins: 0, 30\n";
        let out = import(Path::new("j.jil"), jil, &opts()).unwrap();
        let text = &out[0].job.as_ref().unwrap().text;
        for line in [
            "cron: 0,30 * * * *",
            "calendar: bank",
            "exclude_calendar: freeze",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        assert!(out[0]
            .todo
            .iter()
            .any(|t| t.contains("calendars/bank.yaml")));
    }

    #[test]
    fn without_date_conditions_it_is_started_by_hand() {
        let jil = "insert_job: adhoc job_type: c\ncommand: echo hi\n";
        let out = import(Path::new("j.jil"), jil, &opts()).unwrap();
        assert!(out[0].job.as_ref().unwrap().text.contains("builtin: {}"));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = import(Path::new("j.jil"), "command: x\n", &opts()).unwrap_err();
        assert_eq!(e.to_string(), "j.jil:1:1: command before any insert_job");
        assert_eq!(
            days("mo,xx").unwrap_err(),
            "\"xx\" is not one of su, mo, tu, we, th, fr, sa, all"
        );
    }
}
