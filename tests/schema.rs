//! The JSON Schemas in deploy/schema/ (`kedge schema`) against the files
//! they describe: every example in jobs/ and config/ names its schema on
//! its first line and matches it, checked by an independent validator
//! (Python's `jsonschema`), and definitions whose mistakes are of shape
//! (tests/bad_definitions) do not match.
//!
//! None of the examples in jobs/ is broken on purpose (`kedge validate`
//! accepts them all, see `every_example_passes_kedge_validate`); the
//! deliberately bad files live in tests/bad_definitions.

mod support;

use std::path::{Path, PathBuf};

use kedge::config::yaml::Located;
use support::tools::{repo, tools};

/// The example files and the schema each must match.
fn examples() -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    for (dir, schema) in [
        ("jobs", "job.schema.json"),
        ("config", "config.schema.json"),
        ("calendars", "calendar.schema.json"),
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no examples in {dir}/");
        out.extend(files.into_iter().map(|f| (f, schema)));
    }
    out
}

/// The file as kedge reads it (YAML 1.2), as JSON.
fn as_json(file: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(file).unwrap();
    Located::parse(&text)
        .unwrap_or_else(|d| panic!("{}: {d}", file.display()))
        .value
}

/// `[{"file", "errors"}]` for `files` against deploy/schema/`schema`.
fn schema_errors(
    tools: &support::tools::Tools,
    schema: &str,
    files: &[PathBuf],
) -> Vec<(String, Vec<String>)> {
    let docs: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_json::json!({ "file": f.display().to_string(), "doc": as_json(f) }))
        .collect();
    let path = repo().join("deploy/schema").join(schema);
    let answer = tools.run(&["json-schema", path.to_str().unwrap()], Some(&docs.into()));
    let answer = answer.as_array().unwrap();
    assert_eq!(answer.len(), files.len());
    answer
        .iter()
        .map(|r| {
            let errors = r["errors"].as_array().unwrap();
            (
                r["file"].as_str().unwrap().to_string(),
                errors
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn every_example_names_its_schema_on_its_first_line() {
    for (file, schema) in examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text.lines().next().unwrap_or("");
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{}: first line is {first:?}", file.display()));
        let resolved = file.parent().unwrap().join(target);
        assert_eq!(
            resolved.canonicalize().ok(),
            repo()
                .join("deploy/schema")
                .join(schema)
                .canonicalize()
                .ok(),
            "{}: $schema={target} is not deploy/schema/{schema}",
            file.display()
        );
    }
}

#[test]
fn every_example_passes_kedge_validate() {
    for config in ["config/kedge.yaml", "config/kubernetes.yaml"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kedge"))
            .args(["--config", config, "--jobs", "jobs", "validate"])
            .env("KEDGE_STORE_URL", "postgres://kedge@db.example/kedge")
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_example_matches_its_schema() {
    let Some(tools) = tools("every_example_matches_its_schema", false) else {
        return;
    };
    for schema in ["job.schema.json", "config.schema.json"] {
        let files: Vec<PathBuf> = examples()
            .into_iter()
            .filter(|(_, s)| *s == schema)
            .map(|(f, _)| f)
            .collect();
        for (file, errors) in schema_errors(&tools, schema, &files) {
            assert!(
                errors.is_empty(),
                "{file} does not match {schema}:\n{errors:#?}"
            );
        }
    }
}

/// Bad definitions whose mistake is one of shape, which the schema alone
/// sees (the rest, a bad cron expression or time zone, need `kedge validate`).
const SHAPE_MISTAKES: &[&str] = &[
    "bad_catchup_bool.yaml",
    "bad_overlap.yaml",
    "duration_as_number.yaml",
    "max_attempts_negative.yaml",
    "max_attempts_wrong_type.yaml",
    "max_attempts_zero.yaml",
    "missing_name.yaml",
    "missing_template.yaml",
    "missing_trigger.yaml",
    "name_too_long.yaml",
    "name_underscore.yaml",
    "name_uppercase.yaml",
    "several_unknown_fields.yaml",
    "top_level_list.yaml",
    "trigger_as_string.yaml",
    "unknown_top_level_field.yaml",
    "unknown_trigger_field.yaml",
];

#[test]
fn definitions_with_mistakes_of_shape_do_not_match_the_schema() {
    let Some(tools) = tools(
        "definitions_with_mistakes_of_shape_do_not_match_the_schema",
        false,
    ) else {
        return;
    };
    let dir = repo().join("tests/bad_definitions");
    let files: Vec<PathBuf> = SHAPE_MISTAKES.iter().map(|f| dir.join(f)).collect();
    for (file, errors) in schema_errors(&tools, "job.schema.json", &files) {
        assert!(!errors.is_empty(), "{file} matches job.schema.json");
    }
}
