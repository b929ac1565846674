//! `kedge graph`: the jobs' dependency graph (`trigger.after`), as text or
//! Graphviz dot.

use std::collections::{BTreeMap, BTreeSet};

use super::Failure;
use crate::config::{self, Job, Sources};

/// The output format of `kedge graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// One line per job, upstreams first: `job ← its after expression`.
    Text,
    /// Graphviz dot (`kedge graph --format dot | dot -Tsvg > graph.svg`):
    /// an edge from each upstream to its dependent, labelled with the conditions.
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// Only this job, the jobs it waits for and the jobs that wait for it
    /// (directly or through others).
    #[arg(long)]
    pub job: Option<String>,
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub format: GraphFormat,
}

/// `kedge graph`.
pub(super) fn graph(src: &Sources, args: GraphArgs) -> Result<(), Failure> {
    let loaded = config::load(src)?;
    if !loaded.job_problems.is_empty() {
        return Err(loaded.job_problems.into());
    }
    if let Some(j) = &args.job {
        super::one_job(&loaded.daemon, j)?;
    }
    print!("{}", render(&loaded.jobs, args.job.as_deref(), args.format));
    Ok(())
}

/// The graph of `jobs` (only `focus`'s part when given) in `format`.
pub fn render(jobs: &[Job], focus: Option<&str>, format: GraphFormat) -> String {
    let ups: BTreeMap<&str, BTreeSet<String>> = jobs
        .iter()
        .map(|j| (j.name.as_str(), config::reload::upstreams(j)))
        .collect();
    let shown: BTreeSet<&str> = match focus {
        None => jobs
            .iter()
            .filter(|j| j.after.is_some() || ups.values().any(|u| u.contains(&j.name)))
            .map(|j| j.name.as_str())
            .collect(),
        Some(f) => {
            let mut set = reach(f, |n| ups.get(n).into_iter().flatten().cloned().collect());
            set.extend(reach(f, |n| {
                ups.iter()
                    .filter(|(_, u)| u.contains(n))
                    .map(|(d, _)| d.to_string())
                    .collect()
            }));
            jobs.iter()
                .map(|j| j.name.as_str())
                .filter(|n| set.contains(*n))
                .collect()
        }
    };
    let by_name: BTreeMap<&str, &Job> = jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let order = upstreams_first(&shown, &ups);
    let mut out = String::new();
    match format {
        GraphFormat::Text => {
            if order.is_empty() {
                out.push_str("no job has `trigger.after`\n");
            }
            for name in order {
                match by_name[name].after.as_ref() {
                    Some(a) => out.push_str(&format!("{name} ← {}\n", a.expr)),
                    None => out.push_str(&format!("{name}\n")),
                }
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph kedge {\n  rankdir=LR;\n");
            for name in &order {
                out.push_str(&format!("  \"{name}\";\n"));
            }
            for name in &order {
                let Some(a) = by_name[name].after.as_ref() else {
                    continue;
                };
                let mut edges: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for (up, cond) in a.expr.conditions() {
                    if !shown.contains(up) {
                        continue;
                    }
                    edges.entry(up).or_default().push(cond);
                }
                for (up, conds) in edges {
                    out.push_str(&format!(
                        "  \"{up}\" -> \"{name}\" [label=\"{}\"];\n",
                        conds.join(", ").replace('"', "\\\"")
                    ));
                }
            }
            out.push_str("}\n");
        }
    }
    out
}

/// Every name reachable from `start` through `next` (with `start`).
fn reach(start: &str, next: impl Fn(&str) -> Vec<String>) -> BTreeSet<String> {
    let mut seen = BTreeSet::from([start.to_string()]);
    let mut todo = vec![start.to_string()];
    while let Some(n) = todo.pop() {
        for m in next(&n) {
            if seen.insert(m.clone()) {
                todo.push(m);
            }
        }
    }
    seen
}

/// `shown` with every job after the jobs it waits for (name order among
/// equals). The graph has no cycle: loading refuses them.
fn upstreams_first<'a>(
    shown: &BTreeSet<&'a str>,
    ups: &BTreeMap<&str, BTreeSet<String>>,
) -> Vec<&'a str> {
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < shown.len() {
        let ready: Vec<&str> = shown
            .iter()
            .copied()
            .filter(|n| !placed.contains(n))
            .filter(|n| {
                ups.get(n)
                    .into_iter()
                    .flatten()
                    .all(|u| !shown.contains(u.as_str()) || placed.contains(u.as_str()))
            })
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in ready {
            placed.insert(n);
            order.push(n);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Vec<Job> {
        let mut out = Vec::new();
        for (name, after) in [
            ("d", Some("success(b) and success(c)")),
            ("c", Some("success(a, 12h)")),
            ("b", Some("success(a)")),
            ("a", None),
            ("lonely", None),
        ] {
            let mut j = crate::testing::job_with_trigger(name, &["  cron: '0 1 * * *'"]);
            j.after = after.map(|t| config::job::After {
                expr: config::after::parse(t).unwrap(),
                wait_timeout: config::job::DEFAULT_WAIT_TIMEOUT,
                position: config::Position::start(),
            });
            out.push(j);
        }
        out
    }

    #[test]
    fn text_lists_upstreams_first_and_leaves_unrelated_jobs_out() {
        assert_eq!(
            render(&jobs(), None, GraphFormat::Text),
            "a\nb ← success(a)\nc ← success(a, 12h)\nd ← success(b) and success(c)\n"
        );
    }

    #[test]
    fn dot_of_one_job_shows_its_chain_only() {
        assert_eq!(
            render(&jobs(), Some("b"), GraphFormat::Dot),
            "digraph kedge {\n  rankdir=LR;\n  \"a\";\n  \"b\";\n  \"d\";\n  \"a\" -> \"b\" [label=\"success(a)\"];\n  \"b\" -> \"d\" [label=\"success(b)\"];\n}\n"
        );
    }
}
