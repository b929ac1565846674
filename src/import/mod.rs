//! Importers: Kubernetes CronJobs ([`cronjob`]), KEDA ScaledJobs
//! ([`keda`]) and AutoSys JIL command jobs ([`autosys`], its own parser)
//! become kedge job files (`kedge import cronjob|keda|autosys FILE…`).
//!
//! # Expected flow
//!
//! 1. [`import`] reads one input file's YAML documents (`---` separated) with
//!    serde-saphyr; a syntax error names the file, line and column.
//! 2. Each document of the importer's kind is read into its type
//!    (k8s-openapi's `CronJob`, or [`keda::ScaledJob`]); a shape error names
//!    the file, the document's number and the field path. Documents of other
//!    kinds are skipped with a report line.
//! 3. The kind's mapping builds a kedge job definition as a JSON value in
//!    the field order of a hand-written job file and records, field by
//!    field, what it mapped and what it could not map and why.
//! 4. [`Outcome::job`] is the job file's text (schema modeline first);
//!    the CLI writes it and prints [`Outcome`]'s report.
//!
//! # Guarantees
//!
//! Pure: no file is written here and nothing but the input is read. Every
//! field of the input that kedge does not carry over appears in the report
//! with its reason; nothing is dropped silently.

pub mod autosys;
pub mod cronjob;
pub mod keda;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::names::is_dns1123_label;
use crate::lifecycle::JOB_NAME_MAX;

/// What is imported: the kind of object and the importer that maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Kubernetes `batch/v1` CronJob.
    CronJob,
    /// KEDA `keda.sh/v1alpha1` ScaledJob.
    Keda,
    /// AutoSys JIL job definitions (not YAML: [`autosys`]).
    Autosys,
}

impl Format {
    /// The `kind` of the documents this importer reads.
    pub fn kind(self) -> &'static str {
        match self {
            Format::CronJob => "CronJob",
            Format::Keda => "ScaledJob",
            Format::Autosys => "JIL job",
        }
    }

    /// The `kedge import` subcommand that reads `kind`, if any.
    fn command_for(kind: &str) -> Option<&'static str> {
        match kind {
            "CronJob" => Some("kedge import cronjob"),
            "ScaledJob" => Some("kedge import keda"),
            _ => None,
        }
    }
}

/// Settings of one import.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `$schema=` of the modeline that opens every written file.
    pub schema: String,
    /// AutoSys: the image a command runs in (`--image`).
    pub image: Option<String>,
}

/// Why an input file cannot be imported. Nothing is written when any input
/// has one of these: the user fixes the input and runs the import again.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not valid YAML.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A document of the importer's kind does not have that kind's shape.
    #[error("{}: document {document} ({kind} {name}): {path}: {message}", file.display())]
    Shape {
        file: PathBuf,
        /// 1-based, in the order of the file.
        document: usize,
        kind: &'static str,
        name: String,
        /// The field path, `.` for the whole document.
        path: String,
        message: String,
    },
}

/// A field of the input kedge does not carry over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// The input's field path, as `spec.pollingInterval`.
    pub field: String,
    /// What kedge does instead, or why it cannot.
    pub why: String,
}

/// A written job file: its name (the file is `NAME.yaml`) and text.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub name: String,
    pub text: String,
}

/// What became of one input document.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `FILE#N KIND NAME`.
    pub origin: String,
    /// The job file, when the document was imported.
    pub job: Option<JobFile>,
    /// `input field → kedge field` lines.
    pub mapped: Vec<String>,
    /// Input fields not carried over.
    pub unmapped: Vec<Unmapped>,
    /// What the user must do once the file is loaded (pause the job, set
    /// an environment variable, change the image).
    pub todo: Vec<String>,
    /// Why no job file was written, when none was.
    pub skipped: Option<String>,
}

impl Outcome {
    fn new(origin: String) -> Outcome {
        Outcome {
            origin,
            job: None,
            mapped: Vec::new(),
            unmapped: Vec::new(),
            todo: Vec::new(),
            skipped: None,
        }
    }

    /// Records `from → to`.
    pub(crate) fn mapped(&mut self, from: &str, to: impl fmt::Display) {
        self.mapped.push(format!("{from} → {to}"));
    }

    /// Records a field not carried over.
    pub(crate) fn unmapped(&mut self, field: impl Into<String>, why: impl Into<String>) {
        self.unmapped.push(Unmapped {
            field: field.into(),
            why: why.into(),
        });
    }

    /// Records something to do after loading.
    pub(crate) fn todo(&mut self, what: impl Into<String>) {
        self.todo.push(what.into());
    }
}

impl fmt::Display for Outcome {
    /// The report of one document: a heading line, then indented lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.job, &self.skipped) {
            (Some(job), _) => writeln!(f, "{} → {}.yaml", self.origin, job.name)?,
            (None, Some(why)) => writeln!(f, "{}: skipped: {why}", self.origin)?,
            (None, None) => writeln!(f, "{}: skipped", self.origin)?,
        }
        for m in &self.mapped {
            writeln!(f, "  mapped: {m}")?;
        }
        for u in &self.unmapped {
            writeln!(f, "  not mapped: {}: {}", u.field, u.why)?;
        }
        for t in &self.todo {
            writeln!(f, "  to do: {t}")?;
        }
        Ok(())
    }
}

/// Imports every document of `text` (the contents of `file`) that is of
/// `format`'s kind; other kinds become skipped outcomes.
pub fn import(
    format: Format,
    file: &Path,
    text: &str,
    options: &Options,
) -> Result<Vec<Outcome>, ImportError> {
    match format {
        Format::CronJob => manifests(format, file, text, options, |doc, o| {
            cronjob::map(&read_as(doc)?, o)
        }),
        Format::Keda => manifests(format, file, text, options, |doc, o| {
            keda::map(&read_as(doc)?, o)
        }),
        Format::Autosys => autosys::import(file, text, options),
    }
}

/// A mapping of one document: the job's name and definition, `None` when
/// it cannot be imported (the outcome says why), or `(field path, message)`.
type Mapping = fn(Value, &mut Outcome) -> Result<Option<(String, Value)>, (String, String)>;

/// Imports the YAML documents of `text` of `format`'s kind with `map`.
fn manifests(
    format: Format,
    file: &Path,
    text: &str,
    options: &Options,
    map: Mapping,
) -> Result<Vec<Outcome>, ImportError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        ImportError::Syntax {
            file: file.to_path_buf(),
            line,
            column,
            message: e.without_snippet().to_string(),
        }
    })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let document = i + 1;
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = doc
            .pointer("/metadata/name")
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "(no name)".into());
        let origin = format!(
            "{}#{document} {} {name}",
            file.display(),
            kind_or_none(kind)
        );
        if kind != format.kind() {
            let mut o = Outcome::new(origin);
            o.skipped = Some(match Format::command_for(kind) {
                Some(cmd) => format!("not a {}; import it with `{cmd}`", format.kind()),
                None => format!("not a {}", format.kind()),
            });
            out.push(o);
            continue;
        }
        let mut o = Outcome::new(origin);
        let job = map(doc, &mut o).map_err(|(path, message)| ImportError::Shape {
            file: file.to_path_buf(),
            document,
            kind: format.kind(),
            name: name.clone(),
            path,
            message,
        })?;
        if let Some((name, value)) = job {
            o.job = Some(JobFile {
                text: render(&value, options, file, document, format)?,
                name,
            });
        }
        out.push(o);
    }
    Ok(out)
}

fn kind_or_none(kind: &str) -> &str {
    if kind.is_empty() {
        "(no kind)"
    } else {
        kind
    }
}

/// Reads a document into its type; an error is `(field path, message)`.
fn read_as<T: DeserializeOwned>(doc: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}

/// A job file's text: the schema modeline, where it came from, the job.
fn render(
    job: &Value,
    options: &Options,
    file: &Path,
    document: usize,
    format: Format,
) -> Result<String, ImportError> {
    let body = serde_saphyr::to_string(job).map_err(|e| ImportError::Shape {
        file: file.to_path_buf(),
        document,
        kind: format.kind(),
        name: String::new(),
        path: ".".into(),
        message: format!("cannot write the job as YAML: {e}"),
    })?;
    Ok(format!(
        "# yaml-language-server: $schema={}\n# Imported from {} (document {document}, a {}) by kedge import.\n{body}",
        options.schema,
        file.display(),
        format.kind(),
    ))
}

/// A kedge job name from a Kubernetes object name: lower-case, every run
/// of other characters one '-', at most [`JOB_NAME_MAX`] characters.
/// Records the change when there is one.
pub(crate) fn job_name(
    k8s_name: &str,
    field: &str,
    o: &mut Outcome,
) -> Result<String, (String, String)> {
    let mut name = String::new();
    for c in k8s_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name: String = name.trim_matches('-').chars().take(JOB_NAME_MAX).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if !is_dns1123_label(&name) {
        return Err((
            field.into(),
            format!("{k8s_name:?} gives no valid job name (needs letters or digits)"),
        ));
    }
    if name == k8s_name {
        o.mapped(field, format!("name: {name}"));
    } else {
        o.mapped(
            field,
            format!("name: {name} (a kedge job name: DNS-1123, at most {JOB_NAME_MAX} characters)"),
        );
    }
    Ok(name)
}

/// A JSON object from `(key, value)` pairs, in order, leaving out nulls.
pub(crate) fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if !v.is_null() {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

/// Notes the containers that run their image's entrypoint (no `command`):
/// the local executor cannot run them, so `kedge validate` with it
/// refuses the file; the Kubernetes executor runs them as they are.
pub(crate) fn entrypoint_note(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    prefix: &str,
    o: &mut Outcome,
) {
    let containers = spec.template.spec.iter().flat_map(|p| &p.containers);
    for (i, c) in containers.enumerate() {
        if c.command.as_ref().is_none_or(|v| v.is_empty()) {
            o.todo(format!(
                "{prefix}.template.spec.containers[{i}] ({}) has no command: the Kubernetes executor runs the image's entrypoint, the local executor cannot (it needs an explicit command)",
                c.name
            ));
        }
    }
}

/// The report's words for a Job's history limits, which kedge keeps per
/// daemon, not per job.
pub(crate) fn history_limits(
    o: &mut Outcome,
    prefix: &str,
    successful: Option<i32>,
    failed: Option<i32>,
) {
    for (field, value, key) in [
        (
            "successfulJobsHistoryLimit",
            successful,
            "successful_jobs_history_limit",
        ),
        (
            "failedJobsHistoryLimit",
            failed,
            "failed_jobs_history_limit",
        ),
    ] {
        if let Some(v) = value {
            o.unmapped(
                format!("{prefix}.{field}"),
                format!(
                    "{v}: the Kubernetes executor keeps finished Jobs per daemon, not per job: set executor.kubernetes.{key} in the daemon config (run history stays in kedge's store for retention.history)"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_kedge_job_names() {
        let mut o = Outcome::new(String::new());
        assert_eq!(job_name("hello", "metadata.name", &mut o).unwrap(), "hello");
        assert_eq!(
            job_name("My_Job.v2", "metadata.name", &mut o).unwrap(),
            "my-job-v2"
        );
        let long = "a".repeat(70);
        assert_eq!(
            job_name(&long, "metadata.name", &mut o).unwrap().len(),
            JOB_NAME_MAX
        );
        assert!(job_name("__", "metadata.name", &mut o).is_err());
    }

    #[test]
    fn other_kinds_are_skipped_with_the_command_that_reads_them() {
        let text =
            "kind: ScaledJob\nmetadata: {name: a}\n---\nkind: ConfigMap\nmetadata: {name: b}\n";
        let opts = Options {
            schema: "s".into(),
            image: None,
        };
        let out = import(Format::CronJob, Path::new("f.yaml"), text, &opts).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].skipped.as_deref(),
            Some("not a CronJob; import it with `kedge import keda`")
        );
        assert_eq!(out[1].skipped.as_deref(), Some("not a CronJob"));
        assert!(out.iter().all(|o| o.job.is_none()));
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        let opts = Options {
            schema: "s".into(),
            image: None,
        };
        let e = import(
            Format::CronJob,
            Path::new("f.yaml"),
            "kind: CronJob\n---\nspec: [a, b\n",
            &opts,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("f.yaml:"), "{s}");
        assert!(
            matches!(e, ImportError::Syntax { line, .. } if line >= 3),
            "{s}"
        );
    }
}
