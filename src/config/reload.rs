//! Reading the jobs directory, at start and again while the daemon runs.
//!
//! One path for both: [`read_jobs`] loads every job file, and given the
//! jobs in force it keeps **the last good version** of every job whose
//! file is now broken (half-written, a typo, unreadable), so a bad edit
//! never takes a running job away. A file that is gone takes its jobs with
//! it. When two files define one name, the file that defined it before
//! keeps it (at start: the first by file name), and the other is reported.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::oneshot;

use super::{load_job_file, DaemonConfig, Diagnostic, Diagnostics, FieldPath, Job, Position};

/// What one reload did; also the answer to `POST /-/reload`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// The generation in force after the reload.
    pub generation: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Jobs left at their last good version because their file is broken.
    pub kept: Vec<String>,
    /// Every problem, `file:line:column: field: message`.
    pub problems: Vec<String>,
    /// Config fields whose new value applies only at the next restart.
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A request to reload now, answered with the report.
pub type ReloadRequest = oneshot::Sender<ReloadReport>;

/// What reading the jobs directory found.
#[derive(Debug, Default)]
pub struct JobFiles {
    /// The jobs in force, sorted by name.
    pub jobs: Vec<Job>,
    /// Every problem found, as `file:line:column: field: message`.
    pub problems: Diagnostics,
    /// Jobs kept at their last good version because their file is broken now.
    pub kept: Vec<String>,
}

/// Reads every `*.yaml` / `*.yml` in `daemon.jobs_dir` (sorted by file
/// name). `previous` is the jobs in force (empty at start): a job whose
/// file is broken keeps its version from there.
pub fn read_jobs<'a>(
    daemon: &DaemonConfig,
    previous: impl IntoIterator<Item = &'a Job>,
    env: &dyn Fn(&str) -> Option<String>,
) -> JobFiles {
    let previous: Vec<&Job> = previous.into_iter().collect();
    let mut out = JobFiles::default();
    // The calendars' problems come first: a job that names a bad calendar
    // is refused, and the calendar's file says why.
    out.problems
        .extend(daemon.calendars.problems.0.iter().cloned());
    let calendar_problems = out.problems.0.len();
    let listed = match list_job_files(&daemon.jobs_dir) {
        Ok(listed) => listed,
        Err(d) => {
            // The directory itself cannot be read (being replaced, a
            // permission change): nothing can be told, so all stays.
            out.problems.push(d);
            out.kept = previous.iter().map(|j| j.name.clone()).collect();
            out.jobs = previous.into_iter().cloned().collect();
            out.jobs.sort_by(|a, b| a.name.cmp(&b.name));
            return out;
        }
    };
    out.problems
        .extend(listed.unreadable.iter().map(|(_, d)| d.clone()));

    // Every job a file offers now, in file order; a broken file offers
    // its jobs' last good versions.
    let mut broken: BTreeSet<&Path> = listed.unreadable.iter().map(|(p, _)| p.as_path()).collect();
    let mut offered: Vec<(Job, Position)> = Vec::new();
    for file in &listed.files {
        match load_job_file(file, daemon, env) {
            Ok(found) => offered.push(found),
            Err(ds) => {
                out.problems.extend(ds.0);
                broken.insert(file);
            }
        }
    }
    for job in previous
        .iter()
        .filter(|j| broken.contains(j.file.as_path()))
    {
        out.kept.push(job.name.clone());
        offered.push(((*job).clone(), Position::start()));
    }

    // A name's previous file keeps it; otherwise the first file does.
    let owner: HashMap<&str, &Path> = previous
        .iter()
        .map(|j| (j.name.as_str(), j.file.as_path()))
        .collect();
    offered.sort_by_key(|(job, _)| {
        let owns = owner.get(job.name.as_str()) == Some(&job.file.as_path());
        (!owns, job.file.clone())
    });
    let mut seen: HashMap<String, (PathBuf, Position)> = HashMap::new();
    // guard name → where a job file defined it (one name, one guard).
    let mut guards_seen: HashMap<String, (PathBuf, Position)> = HashMap::new();
    for (job, name_pos) in offered {
        if let Some((first, pos)) = seen.get(&job.name) {
            out.problems.push(
                Diagnostic::new(
                    FieldPath::root().key("name"),
                    name_pos,
                    format!(
                        "\"{}\" is already defined in {}:{}:{}",
                        job.name,
                        first.display(),
                        pos.line,
                        pos.column
                    ),
                )
                .in_file(&job.file),
            );
            continue;
        }
        if let Some(d) = guard_defined_twice(&job, &job.file.clone(), &mut guards_seen) {
            out.problems.push(d);
            continue;
        }
        seen.insert(job.name.clone(), (job.file.clone(), name_pos));
        out.jobs.push(job);
    }
    out.jobs.sort_by(|a, b| a.name.cmp(&b.name));
    out.kept.sort();
    refuse_bad_dependencies(&mut out);
    // The job files' problems read file by file (stable: a file's own
    // order is kept), after the calendars'.
    out.problems.0[calendar_problems..].sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// `trigger.after` across the jobs: a name that is no job, the job itself,
/// or a cycle is an error at the name's place in the expression, and the
/// job is refused (a cycle refuses every job on it). Repeats until no
/// refusal leaves a new unknown name behind.
fn refuse_bad_dependencies(out: &mut JobFiles) {
    use std::collections::BTreeMap;
    let at = |job: &Job, offset: usize| {
        let p = job
            .after
            .as_ref()
            .map(|a| a.position)
            .unwrap_or_else(Position::start);
        Position::new(p.line, p.column + offset as u64)
    };
    let field = || FieldPath::root().key("trigger").key("after");
    loop {
        let names: BTreeSet<String> = out.jobs.iter().map(|j| j.name.clone()).collect();
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for job in &out.jobs {
            let Some(after) = &job.after else { continue };
            for (up, offset) in after.expr.jobs() {
                let message = if up == job.name {
                    format!("\"{up}\" is the job itself; a job cannot wait for its own runs")
                } else if !names.contains(up) {
                    format!("\"{up}\" is not a job (or its file is invalid); check the name")
                } else {
                    continue;
                };
                out.problems
                    .push(Diagnostic::new(field(), at(job, offset), message).in_file(&job.file));
                refused.insert(job.name.clone());
            }
        }
        if refused.is_empty() {
            let graph: BTreeMap<String, BTreeSet<String>> = out
                .jobs
                .iter()
                .map(|j| (j.name.clone(), upstreams(j)))
                .collect();
            let Some(cycle) = super::after::find_cycle(&graph) else {
                return;
            };
            let path = cycle.join(" → ");
            for pair in cycle.windows(2) {
                let Some(job) = out.jobs.iter().find(|j| j.name == pair[0]) else {
                    continue;
                };
                let offset = job
                    .after
                    .as_ref()
                    .and_then(|a| a.expr.jobs().into_iter().find(|(n, _)| *n == pair[1]))
                    .map_or(0, |(_, o)| o);
                out.problems.push(
                    Diagnostic::new(
                        field(),
                        at(job, offset),
                        format!("dependency cycle (each waits for the next): {path}; remove one of these conditions"),
                    )
                    .in_file(&job.file),
                );
                refused.insert(job.name.clone());
            }
        }
        out.jobs.retain(|j| !refused.contains(&j.name));
    }
}

/// The jobs `job`'s `trigger.after` names.
pub fn upstreams(job: &Job) -> BTreeSet<String> {
    job.after
        .as_ref()
        .map(|a| {
            a.expr
                .jobs()
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A guard `job` (from `file`) defines that another job file already
/// defined: the daemon polls each guard once, by name, so a name means one
/// guard. Records `job`'s own guards in `seen` otherwise.
fn guard_defined_twice(
    job: &Job,
    file: &Path,
    seen: &mut std::collections::HashMap<String, (PathBuf, Position)>,
) -> Option<Diagnostic> {
    let own = || {
        job.guards
            .iter()
            .enumerate()
            .filter(|(_, g)| g.defined_in.is_some())
    };
    for (i, g) in own() {
        if let Some((first, pos)) = seen.get(&g.name) {
            return Some(
                Diagnostic::new(
                    FieldPath::root().key("guards").index(i).key("name"),
                    g.position.unwrap_or_else(Position::start),
                    format!(
                        "guard \"{}\" is already defined in {}:{}:{}; define it once in the daemon config's `guards:` and name it in both jobs",
                        g.name,
                        first.display(),
                        pos.line,
                        pos.column
                    ),
                )
                .in_file(file),
            );
        }
    }
    for (_, g) in own() {
        seen.insert(
            g.name.clone(),
            (
                file.to_path_buf(),
                g.position.unwrap_or_else(Position::start),
            ),
        );
    }
    None
}

/// The job files of a directory, and the entries that look like job files
/// but cannot be looked at.
struct Listed {
    files: Vec<PathBuf>,
    unreadable: Vec<(PathBuf, Diagnostic)>,
}

fn list_job_files(dir: &Path) -> Result<Listed, Diagnostic> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::new(
            FieldPath::root(),
            Position::start(),
            format!("cannot read the jobs directory: {e}"),
        )
        .in_file(dir)
    })?;
    let mut listed = Listed {
        files: Vec::new(),
        unreadable: Vec::new(),
    };
    for entry in entries {
        // An entry the listing could not read, or a `*.yaml` whose metadata
        // cannot be read (a dangling symlink, a symlink loop), is reported
        // like a bad file, never skipped in silence.
        match entry {
            Ok(e) => match yaml_file(&e.path()) {
                Ok(true) => listed.files.push(e.path()),
                Ok(false) => {}
                Err(d) => listed.unreadable.push((e.path(), d)),
            },
            Err(e) => listed.unreadable.push((
                dir.to_path_buf(),
                Diagnostic::new(
                    FieldPath::root(),
                    Position::start(),
                    format!("cannot read an entry of the jobs directory: {e}"),
                )
                .in_file(dir),
            )),
        }
    }
    listed.files.sort();
    Ok(listed)
}

/// Whether `path` is a definition (a job, a calendar) to load: a `*.yaml`
/// / `*.yml` file (following symlinks). `Err` when it has that name but
/// cannot be looked at: the diagnostic names the file and the error.
pub(crate) fn yaml_file(path: &Path) -> Result<bool, Diagnostic> {
    if !matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    ) {
        return Ok(false);
    }
    match std::fs::metadata(path) {
        // A directory named `*.yaml` is not a definition.
        Ok(m) => Ok(m.is_file()),
        Err(e) => Err(Diagnostic::new(
            FieldPath::root(),
            Position::start(),
            format!("cannot read: {e}"),
        )
        .in_file(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::daemon;

    fn job(name: &str, command: &str) -> String {
        format!(
            "name: {name}\ntrigger:\n  queue:\n    builtin: {{}}\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"{command}\"] }}]\n"
        )
    }

    fn config(dir: &Path) -> DaemonConfig {
        let mut c = daemon::validate(Default::default(), &|_| None).unwrap();
        c.jobs_dir = dir.to_path_buf();
        c
    }

    fn command(j: &Job) -> String {
        j.spec.template.spec.as_ref().unwrap().containers[0]
            .command
            .as_ref()
            .unwrap()[0]
            .clone()
    }

    fn read(c: &DaemonConfig, previous: &[Job]) -> JobFiles {
        read_jobs(c, previous, &|_| None)
    }

    #[test]
    fn a_broken_file_keeps_the_last_good_version_of_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(dir.path().join("a.yaml"), job("a", "one")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), job("b", "one")).unwrap();
        let first = read(&c, &[]);
        assert!(first.problems.is_empty(), "{}", first.problems);

        std::fs::write(dir.path().join("a.yaml"), job("a", "two")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "name: b\ntrigger: [").unwrap();
        let second = read(&c, &first.jobs);
        let names: Vec<_> = second.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(command(&second.jobs[0]), "two", "a good edit applies");
        assert_eq!(
            command(&second.jobs[1]),
            "one",
            "b stays at its last good version"
        );
        assert_eq!(second.kept, ["b"]);
        assert!(
            second.problems.to_string().contains("b.yaml:"),
            "{}",
            second.problems
        );

        // Without a previous version (at start) the broken job is out.
        let fresh = read(&c, &[]);
        assert_eq!(fresh.jobs.len(), 1);
        assert!(fresh.kept.is_empty());
    }

    #[test]
    fn a_removed_file_takes_its_job_and_a_renamed_job_replaces_the_old_name() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(dir.path().join("a.yaml"), job("a", "x")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), job("b", "x")).unwrap();
        let first = read(&c, &[]);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), job("c", "x")).unwrap();
        let second = read(&c, &first.jobs);
        let names: Vec<_> = second.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["c"]);
        assert!(second.problems.is_empty(), "{}", second.problems);
    }

    #[test]
    fn a_new_file_that_takes_a_name_in_use_is_refused_and_the_owner_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(dir.path().join("m.yaml"), job("a", "owner")).unwrap();
        let first = read(&c, &[]);
        // Sorted before the owner's file: at start it would win.
        std::fs::write(dir.path().join("0-copy.yaml"), job("a", "copy")).unwrap();
        let second = read(&c, &first.jobs);
        assert_eq!(second.jobs.len(), 1);
        assert_eq!(command(&second.jobs[0]), "owner");
        let problems = second.problems.to_string();
        assert!(
            problems.contains("0-copy.yaml:1:1: name: \"a\" is already defined in"),
            "{problems}"
        );
    }

    #[test]
    fn an_unreadable_directory_keeps_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        std::fs::write(dir.path().join("a.yaml"), job("a", "x")).unwrap();
        let first = read(&c, &[]);
        c.jobs_dir = dir.path().join("gone");
        let second = read(&c, &first.jobs);
        assert_eq!(second.jobs.len(), 1);
        assert_eq!(second.kept, ["a"]);
        assert!(
            second
                .problems
                .to_string()
                .contains("cannot read the jobs directory"),
            "{}",
            second.problems
        );
    }

    fn dependent(name: &str, after: &str) -> String {
        format!(
            "name: {name}\ntrigger:\n  after: \"{after}\"\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n"
        )
    }

    #[test]
    fn a_job_waiting_for_a_refused_job_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(dir.path().join("up.yaml"), job("up", "true")).unwrap();
        // typo waits for a name that is no job; after-typo waits for typo.
        std::fs::write(
            dir.path().join("typo.yaml"),
            dependent("typo", "success(upp)"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("later.yaml"),
            dependent("later", "done(typo) or success(up)"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("fine.yaml"),
            dependent("fine", "success(up)"),
        )
        .unwrap();
        let out = read(&c, &[]);
        let names: Vec<&str> = out.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["fine", "up"]);
        let problems: Vec<String> = out.problems.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].ends_with("later.yaml:3:16: trigger.after: \"typo\" is not a job (or its file is invalid); check the name"), "{problems:#?}");
        assert!(problems[1].ends_with("typo.yaml:3:19: trigger.after: \"upp\" is not a job (or its file is invalid); check the name"), "{problems:#?}");
    }
}
