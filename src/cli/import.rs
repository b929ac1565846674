//! `kedge import cronjob|keda|autosys FILE… --out DIR` ([`crate::import`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Failure;
use crate::import::{self, Format, Options};

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Convert Kubernetes CronJobs (batch/v1) into kedge cron jobs.
    ///
    /// schedule (a CRON_TZ= or TZ= prefix too) and timeZone → trigger.cron
    /// and timezone; concurrencyPolicy Allow/Forbid/Replace → overlap
    /// allow/forbid/replace; startingDeadlineSeconds → starting_deadline;
    /// jobTemplate.spec → template. suspend: true is reported with the
    /// `kedge pause` to run after loading; history limits are daemon-wide
    /// in kedge and reported.
    Cronjob(ImportArgs),
    /// Convert KEDA ScaledJobs (keda.sh/v1alpha1) into kedge queue jobs.
    ///
    /// jobTargetRef → template; a redis (list), redis-streams, rabbitmq or
    /// postgresql (a count of one table) trigger → the matching kedge
    /// queue source, which hands each message to its own Job (KEDGE_PAYLOAD)
    /// instead of counting messages for workers that pull them;
    /// maxReplicaCount → limits.max_active. Triggers kedge cannot read yet
    /// (prometheus, metrics-api, cron, …) and every other field left out
    /// are reported with the reason.
    Keda(ImportArgs),
    /// Convert AutoSys JIL command jobs into kedge jobs.
    ///
    /// command → a template running `sh -c COMMAND` in --image;
    /// date_conditions with start_times or start_mins and days_of_week →
    /// trigger.cron; run_calendar / exclude_calendar → trigger.calendar /
    /// exclude_calendar (create the calendars/ files); timezone; n_retrys →
    /// retry.max_attempts; term_run_time → activeDeadlineSeconds. A job
    /// without date_conditions becomes a builtin-queue job started by
    /// `kedge trigger`. condition, box_name (box jobs), std_out_file,
    /// machine and the rest are reported.
    Autosys(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input manifests (YAML, several documents separated by `---` allowed;
    /// documents of other kinds are skipped and reported)
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Directory the job files (NAME.yaml) are written into; created if missing
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Overwrite job files that already exist in --out
    #[arg(long)]
    force: bool,
    /// The JSON Schema named in each file's first line (the
    /// yaml-language-server modeline), relative to --out or a URL
    #[arg(
        long,
        value_name = "PATH",
        default_value = "../deploy/schema/job.schema.json"
    )]
    schema: String,
    /// AutoSys: the container image commands run in
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
}

/// `kedge import`: reads every input, refuses on any bad one or any file
/// that would be overwritten (writing nothing), then writes the job files
/// and prints the report.
pub(super) fn import(command: ImportCommand) -> Result<(), Failure> {
    let (format, args) = match command {
        ImportCommand::Cronjob(a) => (Format::CronJob, a),
        ImportCommand::Keda(a) => (Format::Keda, a),
        ImportCommand::Autosys(a) => (Format::Autosys, a),
    };
    if args.image.is_some() && format != Format::Autosys {
        return Err(Failure::Input(
            "--image is for `kedge import autosys` only: the other importers take the image from the template".into(),
        ));
    }
    let options = Options {
        schema: args.schema.clone(),
        image: args.image.clone(),
    };
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for file in &args.files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", file.display()));
                continue;
            }
        };
        match import::import(format, file, &text, &options) {
            Ok(o) => outcomes.extend(o),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(Failure::Input(format!(
            "{}\nnothing written: fix the input and run the import again",
            errors.join("\n")
        )));
    }
    let mut by_name: BTreeMap<&str, &str> = BTreeMap::new();
    for o in &outcomes {
        if let Some(job) = &o.job {
            if let Some(first) = by_name.insert(&job.name, &o.origin) {
                return Err(Failure::Input(format!(
                    "{} and {first} both become job {}: rename one (metadata.name); nothing written",
                    o.origin, job.name
                )));
            }
        }
    }
    let paths: Vec<(PathBuf, &str)> = outcomes
        .iter()
        .filter_map(|o| o.job.as_ref())
        .map(|j| (args.out.join(format!("{}.yaml", j.name)), j.text.as_str()))
        .collect();
    if !args.force {
        let existing: Vec<String> = paths
            .iter()
            .filter(|(p, _)| p.exists())
            .map(|(p, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Failure::Input(format!(
                "would overwrite {}: use --force to replace, or another --out; nothing written",
                existing.join(", ")
            )));
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| {
        Failure::Runtime(anyhow::anyhow!("cannot create {}: {e}", args.out.display()))
    })?;
    for (path, text) in &paths {
        std::fs::write(path, text).map_err(|e| {
            Failure::Runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
    }
    for o in &outcomes {
        print!("{o}");
    }
    println!(
        "{} job file(s) written to {}; check them with `kedge validate --jobs {}`",
        paths.len(),
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
