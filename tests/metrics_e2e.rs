//! `/metrics` and the JSON log through the built binary: runs that succeed,
//! fail into a dead letter and fire from cron show up as the counters,
//! histograms and gauges the README's metrics table promises, with their
//! labels; every log line about a run names its job, run and attempt; and
//! every metric the Grafana dashboard and the alerting rules in
//! `deploy/monitoring/` use is one kedge exports (on Kubernetes, against
//! kube-sim, so the API and Lease metrics are there too).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::kube::Cluster;
use support::{http_get, wait_until, Daemon, Workspace};

/// The sample lines of an exposition text: (name, labels) → value.
fn samples(text: &str) -> BTreeMap<(String, String), f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let v = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {l:?}"));
            ((name.to_string(), labels.to_string()), v)
        })
        .collect()
}

/// The sample names a scrape exports, with the names each family's type
/// implies even while it has no series yet (`# TYPE x counter` exports
/// `x_total`).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = samples(text).into_keys().map(|(n, _)| n).collect();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{family}{s}"));
        }
    }
    names
}

struct Scrape(BTreeMap<(String, String), f64>);

impl Scrape {
    fn get(&self, name: &str, labels: &str) -> Option<f64> {
        self.0.get(&(name.to_string(), labels.to_string())).copied()
    }

    /// The value, which must be there.
    fn at(&self, name: &str, labels: &str) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {:#?}", self.0))
    }
}

/// `/metrics` of `d`, which must still run.
fn scrape(d: &mut Daemon, addr: &str) -> Scrape {
    if let Some(status) = d.child.try_wait().expect("try_wait") {
        panic!("the daemon exited ({status}):\n{}", d.log());
    }
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    Scrape(samples(&body))
}

fn with_http(ws: &Workspace) {
    let config = std::fs::read_to_string(ws.path().join("config/kedge.yaml")).unwrap();
    ws.write_config(&format!("{config}http:\n  listen: 127.0.0.1:0\n"));
}

fn local_job(ws: &Workspace, name: &str, trigger: &str, extra: &str, command: &str) {
    ws.write_job(
        name,
        &format!(
            "name: {name}\ntrigger:\n{trigger}{extra}template:\n  backoffLimit: 0\n  template:\n    spec:\n      \
             restartPolicy: Never\n      containers:\n        - name: main\n          command: {command}\n"
        ),
    );
}

#[test]
fn runs_fires_and_dead_letters_show_in_metrics_and_the_json_log() {
    let ws = Workspace::new();
    with_http(&ws);
    local_job(
        &ws,
        "tick",
        "  cron: \"* * * * * *\"\n  overlap: forbid\n",
        "window:\n  within: 1h\n",
        "[\"true\"]",
    );
    local_job(&ws, "ok", "  queue:\n    builtin: {}\n", "", "[\"true\"]");
    local_job(
        &ws,
        "fragile",
        "  queue:\n    builtin: {}\n",
        "retry:\n  max_attempts: 2\n  backoff: 100ms\n",
        "[\"sh\", \"-c\", \"exit 3\"]",
    );
    let mut d = ws.start_daemon();
    let addr = d.http_addr();
    for i in 0..2 {
        ws.ok(&["enqueue", "ok", "--id", &format!("ok-{i}"), "--data", "{}"]);
    }
    ws.ok(&["enqueue", "fragile", "--id", "bad", "--data", "{}"]);
    wait_until(
        Duration::from_secs(60),
        "2 ok runs, 2 ticks and a dead letter",
        || {
            let runs = ws.runs();
            let ended = |job: &str, state: &str| {
                runs.iter()
                    .filter(|r| r["job"] == job && r["state"] == state)
                    .count()
            };
            ended("ok", "succeeded") == 2
                && ended("tick", "succeeded") >= 2
                && ended("fragile", "dead") == 1
        },
    );
    // The store's gauges are read on an interval: wait for the dead letter.
    wait_until(Duration::from_secs(30), "kedge_dead_letters 1", || {
        scrape(&mut d, &addr).get("kedge_dead_letters", "job=\"fragile\"") == Some(1.0)
    });
    let m = scrape(&mut d, &addr);

    for (name, labels, want) in [
        // Runs, by outcome; the failed attempt counted as a retry.
        ("kedge_runs_total", "job=\"ok\",outcome=\"succeeded\"", 2.0),
        ("kedge_runs_total", "job=\"ok\",outcome=\"failed\"", 0.0),
        (
            "kedge_runs_total",
            "job=\"fragile\",outcome=\"failed\"",
            1.0,
        ),
        ("kedge_runs_total", "job=\"fragile\",outcome=\"dead\"", 1.0),
        ("kedge_run_retries_total", "job=\"fragile\"", 1.0),
        ("kedge_run_retries_total", "job=\"ok\"", 0.0),
        ("kedge_launches_total", "job=\"ok\"", 2.0),
        ("kedge_launches_total", "job=\"fragile\"", 2.0),
        ("kedge_run_duration_seconds_count", "job=\"ok\"", 2.0),
        (
            "kedge_run_duration_seconds_bucket",
            "le=\"+Inf\",job=\"ok\"",
            2.0,
        ),
        // Messages waited from arrival; the retry of "bad" did not count again.
        ("kedge_message_to_launch_seconds_count", "job=\"ok\"", 2.0),
        (
            "kedge_message_to_launch_seconds_count",
            "job=\"fragile\"",
            1.0,
        ),
        // A tick finishes inside its hour; gauges from the store.
        ("kedge_deadline_missed_total", "job=\"tick\"", 0.0),
        ("kedge_dead_letters", "job=\"ok\"", 0.0),
        ("kedge_runs_pending", "job=\"ok\"", 0.0),
        ("kedge_runs_active", "job=\"fragile\"", 0.0),
        ("kedge_leader", "", 0.0), // the local executor leads no Lease
    ] {
        assert_eq!(m.at(name, labels), want, "{name}{{{labels}}}");
    }
    // Every tick launch is a first attempt of a fire: one lateness each.
    let tick_launches = m.at("kedge_launches_total", "job=\"tick\"");
    assert!(tick_launches >= 2.0);
    assert_eq!(
        m.at("kedge_schedule_lateness_seconds_count", "job=\"tick\""),
        tick_launches
    );
    assert!(m
        .get("kedge_schedule_lateness_seconds_count", "job=\"ok\"")
        .is_none());
    // A tick finishes well inside its hour.
    let slack = m.at("kedge_deadline_slack_seconds", "job=\"tick\"");
    assert!(slack > 3000.0 && slack <= 3600.0, "slack {slack}");
    // The store's operations are timed.
    assert!(
        m.at(
            "kedge_store_query_duration_seconds_count",
            "op=\"claim_runs\""
        ) >= 5.0
    );
    assert!(m.at("kedge_store_query_duration_seconds_count", "op=\"settle\"") >= 5.0);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(m.at("kedge_build_info", &version), 1.0);
    // No run id in any label.
    for (name, labels) in m.0.keys() {
        assert!(
            !labels.contains("ok-0") && !labels.contains("run="),
            "{name}{{{labels}}}"
        );
    }
    assert!(d.stop().success());

    // Every JSON log line has the same top-level shape; every line about a
    // run names its job, run and attempt.
    let log = ws.daemon_logs();
    let mut about_runs = BTreeMap::<String, usize>::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["timestamp", "level", "fields", "target"]),
            "{line}"
        );
        let fields = &v["fields"];
        assert!(fields["message"].is_string(), "{line}");
        if fields.get("run").is_some() {
            assert!(fields["job"].is_string(), "no job: {line}");
            assert!(fields["attempt"].is_i64(), "no attempt: {line}");
            let message = fields["message"].as_str().unwrap().to_string();
            *about_runs.entry(message).or_default() += 1;
        }
    }
    for message in [
        "run launched",
        "run succeeded",
        "run failed; will retry",
        "run failed for the last time; dead-lettered",
    ] {
        assert!(
            about_runs.contains_key(message),
            "no {message:?} in {about_runs:?}"
        );
    }
    let dead = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "run failed for the last time; dead-lettered")
        .unwrap();
    assert_eq!(dead["fields"]["job"], "fragile");
    assert_eq!(dead["fields"]["attempt"], 2);
    assert_eq!(dead["level"], "ERROR");
}

/// Every PromQL expression in the alerting rules and the dashboard, with
/// where it came from. Grafana's variables are replaced by values PromQL
/// accepts.
fn monitoring_expressions() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let mut out = Vec::new();
    let rules: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("alerts.yaml")).unwrap())
            .expect("alerts.yaml is YAML");
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            out.push((
                format!("alerts.yaml {name}"),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("dashboard {:?}", panel["title"]),
                t["expr"].as_str().expect("a target's expr").to_string(),
            ));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's, not PromQL: its metric.
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .unwrap_or(q);
            out.push((
                format!("dashboard variable {}", v["name"]),
                metric.to_string(),
            ));
        }
    }
    assert!(out.len() > 20, "too few expressions found: {out:?}");
    out.into_iter()
        .map(|(w, e)| {
            let e = e.replace("$__rate_interval", "5m").replace("$job", ".*");
            (w, e)
        })
        .collect()
}

/// The metric names an expression selects.
fn selected(expr: &promql_parser::parser::Expr, names: &mut BTreeSet<String>) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::Aggregate(a) => {
            selected(&a.expr, names);
            if let Some(p) = &a.param {
                selected(p, names);
            }
        }
        Expr::Unary(u) => selected(&u.expr, names),
        Expr::Binary(b) => {
            selected(&b.lhs, names);
            selected(&b.rhs, names);
        }
        Expr::Paren(p) => selected(&p.expr, names),
        Expr::Subquery(s) => selected(&s.expr, names),
        Expr::VectorSelector(v) => names.extend(v.name.clone()),
        Expr::MatrixSelector(m) => names.extend(m.vs.name.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selected(a, names)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[test]
fn the_dashboard_and_alerts_use_only_metrics_kedge_exports() {
    // Parse first: a syntax error fails here, before any daemon starts.
    let mut used = BTreeMap::<String, String>::new();
    for (whence, expr) in monitoring_expressions() {
        let ast = promql_parser::parser::parse(&expr)
            .unwrap_or_else(|e| panic!("{whence}: not PromQL: {e}\n{expr}"));
        let mut names = BTreeSet::new();
        selected(&ast, &mut names);
        assert!(!names.is_empty(), "{whence}: selects no metric: {expr}");
        for n in names {
            assert!(n.starts_with("kedge_"), "{whence}: {n} is not kedge's");
            used.entry(n).or_insert(whence.clone());
        }
    }

    // The daemon on Kubernetes (kube-sim) with a Redis list source, a cron
    // job with a window, and a job whose pods cannot be scheduled: every
    // family gets a series.
    let redis_url = "redis://127.0.0.1:6379/";
    let mut redis = match redis::Client::open(redis_url).and_then(|c| c.get_connection()) {
        Ok(c) => c,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("Redis at {redis_url} is unreachable and CI is set: {e}");
            }
            eprintln!("\n!!! SKIPPING: Redis at {redis_url} is unreachable ({e})\n");
            return;
        }
    };
    let list = format!("kedge-metrics-{}", uuid::Uuid::new_v4().simple());
    let c = Cluster::start(0.01);
    let ws = Workspace::new();
    std::fs::write(ws.path().join("kubeconfig"), c.sim.kubeconfig_yaml()).unwrap();
    ws.write_config(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: kubernetes\n  kubernetes:\n    kubeconfig: kubeconfig\n    namespace: default\n    \
         request_timeout: 10s\n    lease:\n      duration: 15s\n\
         shutdown_timeout: 10s\nhttp:\n  listen: 127.0.0.1:0\n",
    );
    let job = |name: &str, trigger: &str, extra: &str, outcome: &str| {
        ws.write_job(
            name,
            &format!(
                "name: {name}\ntrigger:\n{trigger}{extra}\
                 template:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations:\n        kube-sim/outcome: \"{outcome}\"\n    \
                 spec:\n      restartPolicy: Never\n      containers:\n        - name: main\n          image: busybox\n"
            ),
        )
    };
    job("work", "  queue:\n    builtin: {}\n", "", "succeed");
    job(
        "listq",
        &format!("  queue:\n    redis_list: {{ url: \"{redis_url}\", list: {list} }}\n"),
        "",
        "succeed",
    );
    job(
        "tick",
        "  cron: \"* * * * * *\"\n  overlap: forbid\n",
        "window:\n  within: 1h\n",
        "succeed",
    );
    job("stuck", "  queue:\n    builtin: {}\n", "", "unschedulable");
    let d = ws.start_daemon();
    let addr = d.http_addr();
    ws.ok(&["enqueue", "work", "--id", "m1", "--data", "{}"]);
    ws.ok(&["enqueue", "stuck", "--id", "s1", "--data", "{}"]);
    let _: i64 = redis::cmd("RPUSH")
        .arg(&list)
        .arg("{\"n\":1}")
        .query(&mut redis)
        .unwrap();
    // Names seen in any scrape while the runs go on (a stuck run's gauge
    // lasts only while it is stuck).
    let mut exported = BTreeSet::new();
    wait_until(
        Duration::from_secs(60),
        "runs of work, listq and tick, and a stuck run",
        || {
            let (_, text) = http_get(&addr, "/metrics");
            exported.extend(exported_names(&text));
            let m = Scrape(samples(&text));
            let ok = |job: &str| {
                m.get(
                    "kedge_runs_total",
                    &format!("job=\"{job}\",outcome=\"succeeded\""),
                )
                .unwrap_or(0.0)
                    >= 1.0
            };
            ok("work")
                && ok("listq")
                && ok("tick")
                && m.get("kedge_runs_stuck", "job=\"stuck\",reason=\"Unschedulable\"") == Some(1.0)
                && m.get("kedge_source_backlog", "job=\"listq\"").is_some()
        },
    );
    let (_, text) = http_get(&addr, "/metrics");
    exported.extend(exported_names(&text));
    let m = Scrape(samples(&text));
    assert_eq!(
        m.at("kedge_leader", ""),
        1.0,
        "this replica holds the Lease"
    );
    assert!(
        m.at(
            "kedge_kubernetes_requests_total",
            "verb=\"create\",code=\"201\""
        ) >= 3.0
    );
    assert!(
        m.at(
            "kedge_kubernetes_requests_total",
            "verb=\"watch\",code=\"200\""
        ) >= 1.0
    );
    assert!(
        m.at(
            "kedge_kubernetes_requests_total",
            "verb=\"get\",code=\"404\""
        ) >= 1.0,
        "the Lease looked up before it existed"
    );
    assert!(
        m.at(
            "kedge_kubernetes_request_duration_seconds_count",
            "verb=\"create\""
        ) >= 3.0
    );
    assert_eq!(m.at("kedge_launches_total", "job=\"work\""), 1.0);
    assert_eq!(
        m.at(
            "kedge_source_up",
            &format!("job=\"listq\",source=\"redis_list:{list}\"")
        ),
        1.0
    );
    assert_eq!(
        m.at(
            "kedge_messages_stored_total",
            &format!("job=\"listq\",source=\"redis_list:{list}\"")
        ),
        1.0
    );
    assert!(d.stop().success());
    let _: i64 = redis::cmd("DEL").arg(&list).query(&mut redis).unwrap();

    let missing: Vec<String> = used
        .iter()
        .filter(|(n, _)| !exported.contains(*n))
        .map(|(n, whence)| format!("{n} (in {whence})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the monitoring files use metrics kedge does not export: {missing:#?}\nexported: {exported:#?}"
    );
}
