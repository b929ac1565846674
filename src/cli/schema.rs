//! `kedge schema`: the JSON Schemas of kedge's files
//! ([`crate::config::schema`]).

use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::config::schema::SchemaKind;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which file's schema to print
    #[arg(value_enum, required_unless_present = "write")]
    kind: Option<SchemaKind>,
    /// Write every schema into DIR (as job.schema.json, config.schema.json,
    /// calendar.schema.json)
    /// instead of printing one
    #[arg(long, value_name = "DIR", conflicts_with = "kind")]
    write: Option<PathBuf>,
}

/// `kedge schema`.
pub(super) fn schema(args: SchemaArgs) -> Result<(), Failure> {
    match (args.kind, args.write) {
        (Some(kind), _) => print!("{}", kind.text()),
        (None, Some(dir)) => {
            for kind in SchemaKind::ALL {
                let path = dir.join(kind.file_name());
                std::fs::write(&path, kind.text()).map_err(|e| {
                    Failure::Runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
                })?;
                println!("wrote {}", path.display());
            }
        }
        (None, None) => unreachable!("clap requires KIND unless --write is given"),
    }
    Ok(())
}
