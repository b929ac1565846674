//! JSON Schemas of kedge's files, derived from the very types their parser
//! reads ([`RawJob`](super::job::RawJob),
//! [`RawDaemon`](super::daemon::RawDaemon),
//! [`RawCalendar`](super::calendar::RawCalendar)), so a schema cannot drift from
//! the parser. Doc comments on those types are the schema's descriptions.
//!
//! The schemas are checked in under `deploy/schema/` (a test fails when they
//! are stale), printed by `kedge schema`, and named on the first line of
//! every example file (`# yaml-language-server: $schema=…`) so editors
//! complete and check while you type.
//!
//! A schema checks the shape: field names, types, enum values, name
//! patterns. What needs more than the shape (a cron expression, a time
//! zone, `url` and `url_env` both set, a variable named by `*_env` being
//! set) is left to `kedge validate`, which reports it with file and line.

use schemars::generate::SchemaSettings;
use schemars::Schema;

use super::calendar::RawCalendar;
use super::daemon::RawDaemon;
use super::job::RawJob;

/// A file kedge reads that has a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// A job definition, `jobs/*.yaml`.
    Job,
    /// The daemon config, `config/kedge.yaml` (`--config`).
    Config,
    /// A business calendar, `calendars/*.yaml`.
    Calendar,
}

impl SchemaKind {
    /// Every kind, in the order `kedge schema --write` writes them.
    pub const ALL: [SchemaKind; 3] = [SchemaKind::Job, SchemaKind::Config, SchemaKind::Calendar];

    /// The file name under `deploy/schema/`.
    pub fn file_name(self) -> &'static str {
        match self {
            SchemaKind::Job => "job.schema.json",
            SchemaKind::Config => "config.schema.json",
            SchemaKind::Calendar => "calendar.schema.json",
        }
    }

    /// The schema (JSON Schema draft-07, which editors' YAML support reads).
    pub fn schema(self) -> Schema {
        let mut generator = SchemaSettings::draft07().into_generator();
        let (mut schema, title) = match self {
            SchemaKind::Job => (
                generator.root_schema_for::<RawJob>(),
                "kedge job definition",
            ),
            SchemaKind::Config => (
                generator.root_schema_for::<RawDaemon>(),
                "kedge daemon configuration",
            ),
            SchemaKind::Calendar => (
                generator.root_schema_for::<RawCalendar>(),
                "kedge business calendar",
            ),
        };
        schema.insert("title".into(), title.into());
        schema
    }

    /// The schema as it is checked in: pretty JSON ending in a newline.
    pub fn text(self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema())
            .expect("a schema is plain JSON and always serializes");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::daemon::{ExecutorKind, LogFormat};
    use crate::config::job::{Catchup, Overlap, PayloadFormat};
    use crate::config::queue::{OnClaim, OnExpired};
    use crate::config::sizing::{AtRiskAction, ProbeFallback};
    use schemars::JsonSchema;

    /// The values a unit-only enum's schema allows (`enum`, or `oneOf` of
    /// documented `const`s).
    fn allowed<T: JsonSchema>() -> Vec<String> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        if let Some(e) = schema.get("enum") {
            return strings(e);
        }
        schema["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("neither enum nor oneOf: {schema}"))
            .iter()
            .flat_map(|alt| match alt.get("enum") {
                Some(e) => strings(e),
                None => vec![alt["const"].as_str().unwrap().to_string()],
            })
            .collect()
    }

    /// The schema's names for `T` are exactly the parser's: each is read,
    /// and the parser names no other (its error lists what it accepts).
    fn names_agree<T: JsonSchema + serde::de::DeserializeOwned + std::fmt::Debug>() {
        let names = allowed::<T>();
        for n in &names {
            serde_json::from_value::<T>(n.as_str().into())
                .unwrap_or_else(|e| panic!("{}: the parser refuses {n:?}: {e}", T::schema_name()));
        }
        let err = serde_json::from_value::<T>("no-such-value".into()).unwrap_err();
        let listed = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>();
        for n in &listed {
            assert!(err.to_string().contains(n.as_str()), "{err} lacks {n}");
        }
        assert_eq!(
            err.to_string().matches('`').count(),
            2 * listed.len() + 2,
            "{}: the parser accepts names the schema lacks: {err}",
            T::schema_name()
        );
    }

    #[test]
    fn enum_names_in_the_schema_are_the_parsers() {
        names_agree::<Overlap>();
        names_agree::<Catchup>();
        names_agree::<PayloadFormat>();
        names_agree::<OnClaim>();
        names_agree::<OnExpired>();
        names_agree::<AtRiskAction>();
        names_agree::<ProbeFallback>();
        names_agree::<ExecutorKind>();
        names_agree::<LogFormat>();
        names_agree::<crate::config::calendar::DayName>();
        names_agree::<crate::config::rules::Shift>();
        names_agree::<crate::config::rules::OnBlackout>();
    }

    #[test]
    fn the_schemas_are_closed_and_described() {
        for kind in SchemaKind::ALL {
            let s = serde_json::to_value(kind.schema()).unwrap();
            assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
            assert_eq!(s["additionalProperties"], false, "{kind:?}");
            assert!(s["description"].as_str().is_some_and(|d| d.len() > 20));
            // Every field of kedge's own types has a description (they
            // come from doc comments); the JobSpec's come from Kubernetes.
            for (name, def) in s["definitions"].as_object().unwrap() {
                if name.starts_with("io.k8s.") {
                    continue;
                }
                for (field, f) in def["properties"].as_object().into_iter().flatten() {
                    let described = f.get("description").is_some()
                        || f.get("$ref").is_some_and(|r| r == "#/definitions/Duration");
                    assert!(described, "{kind:?}: {name}.{field} has no doc comment");
                }
            }
        }
    }

    #[test]
    fn checked_in_schemas_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/schema");
        for kind in SchemaKind::ALL {
            let path = dir.join(kind.file_name());
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == kind.text(),
                "{} is stale or missing; regenerate the schemas with\n\n    cargo run -- schema --write deploy/schema\n",
                path.display()
            );
        }
    }
}
