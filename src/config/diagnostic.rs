//! Diagnostics: one problem in one file, as `path:line:column: field: message`.
//!
//! Validation collects every diagnostic before reporting (nothing stops at
//! the first problem), so a user fixes a whole directory of job files in one
//! pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    pub fn new(line: u64, column: u64) -> Position {
        Position {
            line: line.max(1),
            column: column.max(1),
        }
    }
    pub fn start() -> Position {
        Position::new(1, 1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A path to a field, written `trigger.cron` or `template.template.spec.containers[0].command`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath {
    segments: Vec<Segment>,
    /// Set for problems that are not about a field (YAML syntax).
    label: Option<&'static str>,
}

impl FieldPath {
    /// The document itself.
    pub fn root() -> FieldPath {
        FieldPath::default()
    }
    /// Not a field: the YAML text could not be parsed.
    pub fn syntax() -> FieldPath {
        FieldPath {
            segments: Vec::new(),
            label: Some("syntax"),
        }
    }
    /// Parses `a.b[2].c` (used by tests and callers that build paths by hand).
    pub fn parse(s: &str) -> FieldPath {
        let mut p = FieldPath::root();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(i) = rest.find('[') {
                p.push_key(&rest[..i]);
                rest = &rest[i..];
                while let Some(end) = rest.find(']') {
                    if let Ok(n) = rest[1..end].parse() {
                        p.push_index(n);
                    }
                    rest = &rest[end + 1..];
                }
            } else {
                p.push_key(rest);
            }
        }
        p
    }
    /// This path with one more key.
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.push_key(k);
        p
    }
    /// This path with one more index.
    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.push_index(i);
        p
    }
    /// This path followed by `other`.
    pub fn join(&self, other: &FieldPath) -> FieldPath {
        let mut p = self.clone();
        p.segments.extend(other.segments.iter().cloned());
        p
    }
    pub fn push_key(&mut self, k: &str) {
        self.segments.push(Segment::Key(k.to_string()));
    }
    pub fn push_index(&mut self, i: usize) {
        self.segments.push(Segment::Index(i));
    }
    /// Drops the last segment; false when there was none.
    pub fn pop(&mut self) -> bool {
        self.segments.pop().is_some()
    }
    /// The last key, if the path ends in one.
    pub fn last_key(&self) -> Option<&str> {
        match self.segments.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }
    /// Appends a path recorded by `serde_path_to_error`.
    pub fn join_serde(&self, path: &serde_path_to_error::Path) -> FieldPath {
        use serde_path_to_error::Segment as S;
        let mut p = self.clone();
        for seg in path.iter() {
            match seg {
                S::Seq { index } => p.push_index(*index),
                S::Map { key } => p.push_key(key),
                S::Enum { variant } => p.push_key(variant),
                S::Unknown => {}
            }
        }
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(label) = self.label {
            return f.write_str(label);
        }
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, once known (set by the loader).
    pub file: Option<PathBuf>,
    pub path: FieldPath,
    pub position: Position,
    pub message: String,
}

impl Diagnostic {
    pub fn new(path: FieldPath, position: Position, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: None,
            path,
            position,
            message: message.into(),
        }
    }
    /// The same diagnostic, attributed to `file`.
    pub fn in_file(mut self, file: &Path) -> Diagnostic {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        let field = self.path.to_string();
        let field = if field.is_empty() {
            "(document)"
        } else {
            &field
        };
        write!(
            f,
            "{}:{}: {}: {}",
            self.position.line, self.position.column, field, self.message
        )
    }
}

/// Every problem found while loading, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(ds);
    }
    /// Orders the problems of one file from its top to its bottom, so they
    /// read in the order a user fixes them (shape and semantic checks run in
    /// separate passes). Stable: problems at one position keep their order.
    pub fn sort_by_position(&mut self) {
        self.0.sort_by_key(|d| d.position);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// One problem found by a `validate`: the field and what is wrong.
pub type Problem = (FieldPath, String);

/// Parses a duration written like `30s`, `15m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("\"{s}\" is not a duration (examples: 500ms, 30s, 15m, 1h30m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_print_like_they_are_written() {
        let p = FieldPath::root()
            .key("template")
            .key("containers")
            .index(0)
            .key("env");
        assert_eq!(p.to_string(), "template.containers[0].env");
        assert_eq!(FieldPath::parse("template.containers[0].env"), p);
    }
}
