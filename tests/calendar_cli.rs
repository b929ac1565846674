//! Calendars through the built binary: `kedge calendar show`, the forecast
//! (`kedge plan --job --from --to --json`), validation errors with
//! file:line:column, `--calendars` / `KEDGE_CALENDARS`, and a daemon whose
//! blackout skips show in `kedge fires`.

mod support;

use std::time::Duration;

use support::{wait_until, Workspace};

const BANK: &str = "name: bank\nworking_days: [mon, tue, wed, thu, fri]\nholidays: [2026-12-24, 2026-12-25, 2026-12-26]\ninclude: [saturdays]\n";
const SATURDAYS: &str = "name: saturdays\nworking_days: []\ndates: [2026-12-19]\n";

fn job(name: &str, trigger: &str) -> String {
    format!(
        "name: {name}\ntrigger:\n{trigger}template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n"
    )
}

fn bank_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write_calendar("bank", BANK);
    ws.write_calendar("saturdays", SATURDAYS);
    ws
}

#[test]
fn calendar_show_prints_the_year_month_by_month() {
    let ws = bank_workspace();
    let out = ws.ok(&["calendar", "show", "bank", "--year", "2026"]);
    assert!(
        out.starts_with(
            "calendar bank (calendars/bank.yaml), 2026: working days mon,tue,wed,thu,fri\n"
        ),
        "{out}"
    );
    let december = out.split("December 2026\n").nth(1).expect("December");
    let lines: Vec<&str> = december.lines().take(8).collect();
    assert_eq!(
        lines,
        [
            " Mo  Tu  We  Th  Fr  Sa  Su",
            "      1   2   3   4   5-  6-",
            "  7   8   9  10  11  12- 13-",
            " 14  15  16  17  18  19  20-",
            " 21  22  23  24* 25* 26* 27-",
            " 28  29  30  31",
            "  22 working days; holidays: 24 Thu, 25 Fri, 26 Sat",
            "",
        ]
    );
    // 2026: 261 weekdays, minus 2 holidays on weekdays, plus one Saturday.
    assert!(out.ends_with("\n260 working days in 2026\n"), "{out}");

    let bad = ws.run(&["calendar", "show", "nope"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim_end(),
        "unknown calendar \"nope\" in calendars (defined: bank, saturdays)"
    );
}

#[test]
fn the_forecast_lists_every_fire_with_its_rule() {
    let ws = bank_workspace();
    ws.write_job(
        "weekly",
        &job(
            "weekly",
            "  cron: \"30 2 * * 5\"\n  timezone: Europe/Berlin\n  calendar: bank\n  shift: previous\n  blackout: [{dates: [2026-12-11]}, {from: \"02:00\", to: \"03:00\", dates: [2026-12-18]}]\n  on_blackout: defer\n",
        ),
    );
    ws.write_job(
        "month-end",
        &job(
            "month-end",
            "  cron: \"0 22 * * *\"\n  timezone: Pacific/Auckland\n  calendar: bank\n  business_days: [-1]\n  blackout: [{from: \"21:00\", to: \"23:00\", days: [thu]}]\n",
        ),
    );
    let out = ws.ok(&[
        "plan",
        "--job",
        "weekly",
        "--from",
        "2026-12-01T00:00:00Z",
        "--to",
        "2027-01-01T00:00:00Z",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["job"], "weekly");
    assert_eq!(v["timezone"], "Europe/Berlin");
    let fires: Vec<(String, String, String)> = v["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["at"].as_str().unwrap().to_string(),
                f["outcome"].as_str().unwrap().to_string(),
                f["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |at: &str, outcome: &str, rule: &str| {
        (at.to_string(), outcome.to_string(), rule.to_string())
    };
    assert_eq!(
        fires,
        [
            row("2026-12-04T01:30:00Z", "run", "cron 30 2 * * 5 on bank working day"),
            row("2026-12-11T23:00:00Z", "deferred", "cron 30 2 * * 5 on bank working day; deferred from 2026-12-11 02:30 by blackout (all day on 2026-12-11)"),
            row("2026-12-18T02:00:00Z", "deferred", "cron 30 2 * * 5 on bank working day; deferred from 2026-12-18 02:30 by blackout (02:00-03:00 on 2026-12-18)"),
            row("2026-12-23T01:30:00Z", "run", "shifted previous from 2026-12-25 (holiday) (cron 30 2 * * 5)"),
        ]
    );

    // The last business day of December 2026 is the 31st; in Auckland
    // (a day ahead of UTC) its 22:00 is 09:00 UTC; a Thursday, so inside
    // the blackout, and skipped.
    let out = ws.ok(&[
        "plan",
        "--job",
        "month-end",
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2027-01-01T00:00:00Z",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fires = v["fires"].as_array().unwrap();
    assert_eq!(fires.len(), 2, "{v:#}");
    assert_eq!(fires[0]["at"], "2026-11-30T09:00:00Z");
    assert_eq!(fires[0]["local"], "2026-11-30 22:00:00 NZDT");
    assert_eq!(fires[0]["outcome"], "run");
    assert_eq!(
        fires[0]["rule"],
        "business day -1 of 2026-11 (cron 0 22 * * *)"
    );
    assert_eq!(fires[1]["at"], "2026-12-31T09:00:00Z");
    assert_eq!(fires[1]["outcome"], "skipped");
    assert_eq!(fires[1]["reason"], "blackout (21:00-23:00 thu)");

    // `kedge plan` (the next fires) goes through the same rules.
    let out = ws.ok(&[
        "plan",
        "--job",
        "weekly",
        "--from",
        "2026-12-19T00:00:00Z",
        "--count",
        "1",
    ]);
    assert_eq!(
        out,
        "weekly (Europe/Berlin)\n  2026-12-23T01:30:00Z  shifted previous from 2026-12-25 (holiday) (cron 30 2 * * 5)\n"
    );
}

#[test]
fn validation_names_file_line_and_column() {
    let ws = Workspace::new();
    ws.write_calendar("a", "name: a\ninclude: [b]\n");
    ws.write_calendar("b", "name: b\nexclude: [a]\nholidays: [2026-12-25]\n");
    ws.write_calendar("c", "name: c\nholidays: [2026-13-01]\n");
    ws.write_job(
        "uses",
        &job(
            "uses",
            "  cron: \"0 1 * * *\"\n  calendar: nope\n  shift: sideways\n",
        ),
    );
    ws.write_job(
        "blackouts",
        &job(
            "blackouts",
            "  cron: \"0 1 * * *\"\n  calendar: a\n  business_days: [0]\n  blackout: [{from: \"25:00\", to: \"02:00\"}]\n",
        ),
    );
    let out = ws.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "calendars/a.yaml:2:11: include[0]: calendar \"b\" is invalid (see the problems reported for calendars/b.yaml)",
            "calendars/b.yaml:2:11: exclude[0]: calendars include or exclude each other in a cycle: a → b → a",
            "calendars/c.yaml:2:12: holidays[0]: \"2026-13-01\" is not a date; write YYYY-MM-DD, such as 2026-12-25",
            "jobs/blackouts.yaml:4:3: trigger.calendar: calendar \"a\" is invalid (see the problems reported for calendars/a.yaml)",
            "jobs/blackouts.yaml:5:19: trigger.business_days[0]: 0 is not a business day of a month: use 1 to 31 (the n-th), or -1 to -31 (-1 = the last)",
            "jobs/blackouts.yaml:6:15: trigger.blackout[0].from: \"25:00\" is not a time of day; write HH:MM, such as 08:00",
            "jobs/uses.yaml:5:3: trigger.shift: unknown variant `sideways`, expected one of `none`, `next`, `previous`, `skip`",
        ],
        "{stderr}"
    );
    ws.write_job(
        "uses",
        &job("uses", "  cron: \"0 1 * * *\"\n  calendar: nope\n"),
    );
    let out = ws.run(&["validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jobs/uses.yaml:4:3: trigger.calendar: unknown calendar \"nope\" in calendars (defined: none)"),
        "{stderr}"
    );
}

#[test]
fn the_calendars_directory_comes_from_the_flag_the_variable_or_the_config() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("elsewhere")).unwrap();
    std::fs::write(ws.path().join("elsewhere/ops.yaml"), "name: ops\n").unwrap();
    ws.write_job("j", &job("j", "  cron: \"0 1 * * *\"\n  calendar: ops\n"));
    let out = ws.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "trigger.calendar: unknown calendar \"ops\": the calendars directory calendars does not exist (set calendars_dir in the config, --calendars or KEDGE_CALENDARS)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ws.ok(&["validate", "--calendars", "elsewhere"]);
    let out = ws
        .kedge()
        .arg("validate")
        .env("KEDGE_CALENDARS", "elsewhere")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(ws.path().join("config/kedge.yaml")).unwrap();
    ws.write_config(&format!("{config}calendars_dir: elsewhere\n"));
    ws.ok(&["validate"]);
    ws.ok(&["calendar", "show", "ops", "--year", "2027"]);
}

/// A daemon with a job firing every second inside a blackout window around
/// now: each fire is recorded as skipped (blackout), and none runs.
#[test]
fn a_blackout_skip_shows_in_kedge_fires() {
    let ws = Workspace::new();
    let now = chrono::Utc::now();
    let hhmm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    let (from, to) = (
        hhmm(now - chrono::Duration::hours(1)),
        hhmm(now + chrono::Duration::hours(1)),
    );
    ws.write_job(
        "quiet",
        &job(
            "quiet",
            &format!("  cron: \"* * * * * *\"\n  overlap: allow\n  blackout: [{{from: \"{from}\", to: \"{to}\"}}]\n"),
        ),
    );
    let daemon = ws.start_daemon();
    let mut fires: Vec<serde_json::Value> = Vec::new();
    wait_until(Duration::from_secs(30), "skipped fires of quiet", || {
        let out = ws.ok(&["fires", "quiet", "--json"]);
        fires = serde_json::from_str(&out).unwrap();
        fires.len() >= 2
    });
    for f in &fires {
        assert_eq!(f["outcome"], "skipped", "{f}");
        assert_eq!(f["detail"], format!("blackout ({from}-{to})"), "{f}");
    }
    let table = ws.ok(&["fires", "quiet"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(" skipped ") && l.contains("blackout (")),
        "{table}"
    );
    daemon.stop();
    assert!(
        ws.runs().is_empty(),
        "no run inside the blackout: {:?}",
        ws.runs()
    );
}
