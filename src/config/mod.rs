//! Configuration: the daemon config file and the job definitions.
//!
//! Parse, validate everything, then hand out validated types
//! ([`DaemonConfig`], [`Job`]). Problems come back as [`Diagnostics`], all of
//! them at once, each as `path:line:column: field: message`.

pub mod after;
pub mod calendar;
pub mod daemon;
pub mod diagnostic;
pub mod guard;
pub mod job;
pub mod names;
pub mod probe;
pub mod queue;
pub mod reload;
pub mod rules;
pub mod schema;
pub mod sizing;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use daemon::{
    DaemonConfig, ExecutorConfig, ExecutorKind, KubernetesConfig, LocalConfig, LogFormat,
};
pub use diagnostic::{Diagnostic, Diagnostics, FieldPath, Position};
pub use job::{Job, Trigger};
pub(crate) use reload::yaml_file;

/// The loaded jobs by name, shared by the daemon's tasks.
pub type JobsByName = std::collections::HashMap<String, std::sync::Arc<Job>>;

use yaml::Located;

/// Where the configuration comes from; command-line flags win over the file.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The daemon config file. `None`: `config/kedge.yaml` if it exists,
    /// else the embedded default.
    pub config: Option<PathBuf>,
    /// Overrides `jobs_dir`.
    pub jobs: Option<PathBuf>,
    /// Overrides the store URL.
    pub store: Option<String>,
    /// Overrides `calendars_dir`.
    pub calendars: Option<PathBuf>,
}

/// The default config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/kedge.yaml";

/// Reads and validates the daemon config (no job files).
pub fn load_daemon(sources: &Sources) -> Result<DaemonConfig, Diagnostics> {
    let (name, text) = match &sources.config {
        Some(p) => (p.clone(), read(p)?),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            (p.clone(), read(&p)?)
        }
        None => (
            PathBuf::from("<embedded config/kedge.yaml>"),
            daemon::EMBEDDED_DEFAULT.to_string(),
        ),
    };
    let doc = Located::parse(&text).map_err(|d| Diagnostics(vec![d.in_file(&name)]))?;
    let (raw, diags) = doc.deserialize::<daemon::RawDaemon>(&FieldPath::root());
    let mut out = Diagnostics::default();
    out.extend(diags.into_iter().map(|d| d.in_file(&name)));
    let Some(raw) = raw else {
        out.sort_by_position();
        return Err(out);
    };
    let result = match daemon::validate(raw, &env_var) {
        Ok(mut cfg) if out.is_empty() => {
            if let Some(j) = &sources.jobs {
                cfg.jobs_dir = j.clone();
            }
            if let Some(s) = &sources.store {
                cfg.store_url = s.clone();
            }
            if let Some(c) = &sources.calendars {
                cfg.calendars_dir = c.clone();
            }
            cfg.calendars = std::sync::Arc::new(calendar::load_dir(&cfg.calendars_dir));
            Ok(cfg)
        }
        Ok(_) => Err(out),
        Err(problems) => {
            out.extend(
                problems
                    .into_iter()
                    .map(|(p, m)| Diagnostic::new(p.clone(), doc.locate(&p), m).in_file(&name)),
            );
            Err(out)
        }
    };
    result.map_err(|mut ds| {
        ds.sort_by_position();
        ds
    })
}

fn read(path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::new(
            FieldPath::root(),
            Position::start(),
            format!("cannot read: {e}"),
        )
        .in_file(path)])
    })
}

pub(crate) fn env_var(name: &str) -> Option<String> {
    // A value that is not UTF-8 is kept (lossily) rather than read as
    // unset: the field's own check then says what is wrong with it,
    // instead of "missing".
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Loads every `*.yaml` / `*.yml` in `dir` (sorted by file name). Returns the
/// valid jobs and the diagnostics of the invalid ones: a bad file never
/// stops the good ones from loading. (A running daemon re-reads through
/// [`reload::read_jobs`], which also keeps last good versions.)
pub fn load_jobs(daemon: &DaemonConfig) -> (Vec<Job>, Diagnostics) {
    let read = reload::read_jobs(daemon, [], &env_var);
    (read.jobs, read.problems)
}

/// Loads one job file; on success also returns where its `name` is.
pub fn load_job_file(
    file: &Path,
    daemon: &DaemonConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Job, Position), Diagnostics> {
    let text = read(file)?;
    let doc = Located::parse(&text).map_err(|d| Diagnostics(vec![d.in_file(file)]))?;
    let mut out = Diagnostics::default();
    if !doc.value.is_object() {
        // Point at where the value starts (a list's first item); a file of
        // nothing but comments has no value, and its end is no help.
        let position = if doc.value.is_null() {
            Position::start()
        } else {
            doc.locate(&FieldPath::root())
        };
        out.push(
            Diagnostic::new(
                FieldPath::root(),
                position,
                "expected a mapping with name, trigger and template",
            )
            .in_file(file),
        );
        return Err(out);
    }
    let (raw, diags) = doc.deserialize::<job::RawJob>(&FieldPath::root());
    out.extend(diags.into_iter().map(|d| d.in_file(file)));
    let Some(raw) = raw else {
        out.sort_by_position();
        return Err(out);
    };
    let name_pos = doc.locate(&FieldPath::root().key("name"));
    let result = match job::validate(raw, file.to_path_buf(), daemon, env) {
        Ok(mut job) if out.is_empty() => {
            // Where the job's own guards are named, for the check across
            // job files (`load_jobs`).
            for (i, g) in job.guards.iter_mut().enumerate() {
                if let Some(g) = std::sync::Arc::get_mut(g) {
                    g.position =
                        Some(doc.locate(&FieldPath::root().key("guards").index(i).key("name")));
                }
            }
            if let Some(after) = &mut job.after {
                after.position = value_start(
                    &text,
                    doc.locate(&FieldPath::root().key("trigger").key("after")),
                );
            }
            Ok((job, name_pos))
        }
        Ok(_) => Err(out),
        Err(problems) => {
            out.extend(problems.into_iter().map(|(p, m)| {
                let at = match after::character_of(&m) {
                    // An `after` expression's error: at its character.
                    Some(n) if p == FieldPath::root().key("trigger").key("after") => {
                        let v = value_start(&text, doc.locate(&p));
                        Position::new(v.line, v.column + n as u64)
                    }
                    _ => doc.locate(&p),
                };
                Diagnostic::new(p.clone(), at, m).in_file(file)
            }));
            Err(out)
        }
    };
    result.map_err(|mut ds| {
        ds.sort_by_position();
        ds
    })
}

/// Where the text of the scalar whose key is at `key` starts (inside its
/// quote, when quoted), when it is on the key's line: expression errors
/// add their offset to it. Otherwise the key's position.
fn value_start(text: &str, key: Position) -> Position {
    let line: Vec<char> = text
        .lines()
        .nth(key.line as usize - 1)
        .unwrap_or("")
        .chars()
        .collect();
    let mut i = key.column as usize - 1;
    while line
        .get(i)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        i += 1;
    }
    while line.get(i).is_some_and(|c| c.is_whitespace() || *c == ':') {
        i += 1;
    }
    match line.get(i) {
        None => key,
        Some('"' | '\'') => Position::new(key.line, i as u64 + 2),
        Some(_) => Position::new(key.line, i as u64 + 1),
    }
}

/// The daemon config and the job definitions, loaded together.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub daemon: DaemonConfig,
    /// The valid jobs, sorted by name.
    pub jobs: Vec<Job>,
    /// Problems in job files (those jobs are left out of `jobs`).
    pub job_problems: Diagnostics,
}

/// Loads the daemon config (fatal when invalid) and the jobs (bad files are
/// reported in `job_problems`, the rest load).
pub fn load(sources: &Sources) -> Result<Loaded, Diagnostics> {
    let daemon = load_daemon(sources)?;
    let (jobs, job_problems) = load_jobs(&daemon);
    Ok(Loaded {
        daemon,
        jobs,
        job_problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: good\ntrigger:\n  queue:\n    builtin: {}\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: m, command: [\"true\"] }]\n";

    #[test]
    fn a_job_file_that_cannot_be_read_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), GOOD).unwrap();
        // Names that look like job files but cannot be read: a dangling
        // symlink and a symlink to itself.
        std::os::unix::fs::symlink("missing.yaml", dir.path().join("dangling.yaml")).unwrap();
        std::os::unix::fs::symlink("loop.yml", dir.path().join("loop.yml")).unwrap();
        // Not job files: skipped without a word.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::create_dir(dir.path().join("folder.yaml")).unwrap();
        let mut daemon = daemon::validate(Default::default(), &|_| None).unwrap();
        daemon.jobs_dir = dir.path().to_path_buf();

        let (jobs, diags) = load_jobs(&daemon);
        assert_eq!(jobs.len(), 1, "the readable file still loads");
        let mut lines: Vec<String> = diags.0.iter().map(|d| d.to_string()).collect();
        lines.sort();
        let at = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with(&format!(
                "{}:1:1: (document): cannot read: ",
                at("dangling.yaml")
            )) && lines[0].contains("No such file or directory"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{}:1:1: (document): cannot read: ",
                at("loop.yml")
            )) && lines[1].contains("symbolic links"),
            "{lines:#?}"
        );
    }
}
