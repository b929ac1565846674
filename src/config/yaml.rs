//! Located YAML: parse a file once into a tree that remembers where every
//! node stood, then deserialize typed config from it with errors that carry
//! a field path, a line and a column.
//!
//! Why not deserialize straight from the YAML text? A YAML deserializer can
//! say *where* it stopped but not *which field* it was in, and it stops at the
//! first problem. Going through a located tree gives us both: the typed pass
//! ([`Located::deserialize`]) reports the first hard error (wrong type,
//! missing field) with its path, collects *every* unknown field (not only the
//! first, which `deny_unknown_fields` would give), and later semantic checks
//! can point at any path with [`Located::locate`].

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostic, FieldPath, Position};

/// A parsed YAML document: its JSON-shaped value plus where each path is.
#[derive(Debug, Clone)]
pub struct Located {
    /// The document as a plain value (what typed deserialization reads).
    pub value: serde_json::Value,
    /// `field path → position of the key (or the item) in the file`.
    positions: HashMap<String, Position>,
}

impl Located {
    /// Parses `text`. A syntax error becomes one diagnostic with its position.
    pub fn parse(text: &str) -> Result<Located, Diagnostic> {
        if text.trim().is_empty() {
            return Err(Diagnostic::new(
                FieldPath::root(),
                Position::start(),
                "the file is empty; expected a YAML mapping",
            ));
        }
        let root: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| {
            let position = e
                .location()
                .map(|l| Position::new(l.line(), l.column()))
                .unwrap_or_else(Position::start);
            Diagnostic::new(FieldPath::syntax(), position, syntax_message(&e))
        })?;
        let mut positions = HashMap::new();
        let value = root.value.into_json(&FieldPath::root(), &mut positions);
        positions.entry(String::new()).or_insert(Position::new(
            root.referenced.line(),
            root.referenced.column(),
        ));
        Ok(Located { value, positions })
    }

    /// The position of `path`, or of its nearest ancestor that exists in
    /// the file (a missing field is reported where its parent is).
    pub fn locate(&self, path: &FieldPath) -> Position {
        let mut path = path.clone();
        loop {
            if let Some(p) = self.positions.get(&path.to_string()) {
                return *p;
            }
            if !path.pop() {
                return Position::start();
            }
        }
    }

    /// Deserializes the whole document (or the part at `prefix`) into `T`.
    ///
    /// Returns the value when it has the right shape, plus one diagnostic per
    /// unknown field; or, when it does not, the first shape error (serde
    /// cannot go on after one) together with any unknown fields seen before it.
    pub fn deserialize<T: DeserializeOwned>(
        &self,
        prefix: &FieldPath,
    ) -> (Option<T>, Vec<Diagnostic>) {
        let mut unknown: Vec<FieldPath> = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let result = {
            let de = serde_path_to_error::Deserializer::new(&self.value, &mut track);
            serde_ignored::deserialize(de, |path| unknown.push(ignored_path(prefix, &path)))
        };
        let mut diags: Vec<Diagnostic> = unknown
            .into_iter()
            .map(|p| {
                let field = p.last_key().unwrap_or_default().to_string();
                Diagnostic::new(
                    p.clone(),
                    self.locate(&p),
                    format!("unknown field `{field}`"),
                )
            })
            .collect();
        match result {
            Ok(v) => (Some(v), diags),
            Err(e) => {
                let mut path = prefix.join_serde(&track.path());
                let mut message = plain_expectation(e.to_string());
                // serde names an unknown or a missing field in the message, not
                // the path: move it to the path (a missing one is then located
                // at its parent, see `locate`).
                if let Some(name) = message
                    .strip_prefix("unknown field `")
                    .and_then(|m| m.split('`').next())
                {
                    path.push_key(name);
                } else if let Some(name) = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.strip_suffix('`'))
                {
                    path.push_key(name);
                    message = "is required".to_string();
                }
                diags.push(Diagnostic::new(path.clone(), self.locate(&path), message));
                (None, diags)
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_string()
}

/// The text of a YAML parse error, for a user: serde-saphyr's user-facing
/// wording (no advice aimed at the programmer, such as "set DuplicateKeyPolicy
/// in Options"), without a snippet and without the "at line L, column C" it
/// normally appends, since the diagnostic carries the position already.
fn syntax_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::localizer::Localizer;
    use serde_saphyr::{Location, RenderOptions, SnippetMode};
    use std::borrow::Cow;

    if let serde_saphyr::Error::MultipleDocuments { .. } = e.without_snippet() {
        return "found a second YAML document after `---`; a file must hold only one".to_string();
    }
    struct NoLocationSuffix;
    impl Localizer for NoLocationSuffix {
        fn attach_location<'a>(&self, base: Cow<'a, str>, _loc: Location) -> Cow<'a, str> {
            base
        }
    }
    let formatter = serde_saphyr::UserMessageFormatter.with_localizer(&NoLocationSuffix);
    let mut options = RenderOptions::new(&formatter);
    options.snippets = SnippetMode::Off;
    first_line(&e.render_with_options(options))
}

/// serde says what it expected in Rust terms (`expected u32`, `expected
/// JobSpec`); say it in words a user of the file understands. A wrong type
/// (`max_attempts: three`) only needs "a whole number"; a number out of the
/// type's range (`-1`) also gets the range.
fn plain_expectation(message: String) -> String {
    const WORDS: &[(&str, &str, &str)] = &[
        ("u8", "a whole number", " from 0 to 255"),
        ("u16", "a whole number", " from 0 to 65535"),
        ("u32", "a whole number", " from 0 to 4294967295"),
        ("u64", "a whole number", " from 0 to 18446744073709551615"),
        ("i32", "a whole number", " from -2147483648 to 2147483647"),
        (
            "i64",
            "a whole number",
            " from -9223372036854775808 to 9223372036854775807",
        ),
        ("f32", "a number", ""),
        ("f64", "a number", ""),
        ("JobSpec", "a batch/v1 JobSpec (a mapping)", ""),
    ];
    for (ty, words, range) in WORDS {
        if let Some(head) = message.strip_suffix(&format!("expected {ty}")) {
            let range = if head.starts_with("invalid value") {
                range
            } else {
                ""
            };
            return format!("{head}expected {words}{range}");
        }
    }
    message
}

/// `deserialize_with` for an optional duration (`starting_deadline: 15m`):
/// a bare number (`900`) is a common slip, and "expected a string" would not
/// say what is missing, so the error asks for a unit instead.
pub(crate) fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a duration with a unit, such as 30s, 15m or 1h30m")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                    Ok(Text(v.to_string()))
                }
            }
            d.deserialize_str(V)
        }
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

/// Writes ``one of `a`, `b`, `c` `` (or `` `a` or `b` ``) as serde does for an
/// unknown variant, so a wrong type and a wrong name read the same.
pub(crate) fn write_one_of(f: &mut fmt::Formatter<'_>, names: &[&str]) -> fmt::Result {
    match names {
        [] => f.write_str("nothing"),
        [one] => write!(f, "`{one}`"),
        [a, b] => write!(f, "`{a}` or `{b}`"),
        _ => {
            f.write_str("one of ")?;
            for (i, n) in names.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{n}`")?;
            }
            Ok(())
        }
    }
}

/// Implements `Deserialize` for a unit-only enum from the names given, so
/// that any wrong value, not only a wrong string, lists the accepted ones:
/// `catchup: yes` (a boolean in YAML) gives "invalid type: boolean `true`,
/// expected one of `none`, `latest`, `all`", where a derived impl says
/// "expected string or map".
///
/// ```text
/// string_enum!(Catchup { None => "none", Latest => "latest", All => "all" });
/// ```
macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($name),+];
                struct OneOf;
                impl serde::de::Visitor<'_> for OneOf {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        $crate::config::yaml::write_one_of(f, NAMES)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        match v {
                            $($name => Ok($ty::$variant),)+
                            _ => Err(E::unknown_variant(v, NAMES)),
                        }
                    }
                }
                d.deserialize_str(OneOf)
            }
        }
    };
}
pub(crate) use string_enum;

fn ignored_path(prefix: &FieldPath, path: &serde_ignored::Path<'_>) -> FieldPath {
    fn walk(p: &serde_ignored::Path<'_>, out: &mut FieldPath) {
        use serde_ignored::Path as P;
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push_index(*index);
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push_key(key);
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }
    let mut out = prefix.clone();
    walk(path, &mut out);
    out
}

/// A YAML node with the position of each child, built by serde-saphyr.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    fn into_json(
        self,
        path: &FieldPath,
        positions: &mut HashMap<String, Position>,
    ) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::from(i),
            Node::UInt(u) => Value::from(u),
            // Never null: parsing already refused NaN and the infinities
            // (see `non_finite_numbers_are_refused`).
            Node::Float(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Node::Str(s) => Value::String(s),
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let mut p = path.clone();
                        p.push_index(i);
                        positions.entry(p.to_string()).or_insert(Position::new(
                            item.referenced.line(),
                            item.referenced.column(),
                        ));
                        item.value.into_json(&p, positions)
                    })
                    .collect(),
            ),
            Node::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (key, value) in entries {
                    let mut p = path.clone();
                    p.push_key(&key.value);
                    positions.entry(p.to_string()).or_insert(Position::new(
                        key.referenced.line(),
                        key.referenced.column(),
                    ));
                    let v = value.value.into_json(&p, positions);
                    map.insert(key.value, v);
                }
                Value::Object(map)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(Spanned<String>, Spanned<Node>)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// The schema of a duration field (`deserialize_with = "duration_text"`):
/// a string such as `30s`, `15m` or `1h30m`, as `humantime` reads it.
pub(crate) struct DurationText;

impl schemars::JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with a unit, such as 500ms, 30s, 15m, 1h30m or 2d.",
            "pattern": r"^\s*(0|([0-9]+\s*[a-zA-Zµ]+\s*)+)\s*$",
            "examples": ["30s", "15m", "1h30m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_refused() {
        for v in [".nan", "-.inf", ".inf"] {
            let err = Located::parse(&format!("a: {v}\n")).unwrap_err();
            assert!(err.to_string().contains("is not a finite number"), "{err}");
        }
    }

    #[test]
    fn positions_point_at_keys_and_items() {
        let doc = Located::parse("name: a\ntrigger:\n  cron: \"* * * * *\"\nlist:\n  - x\n  - y\n")
            .expect("parses");
        let p = |s: &str| doc.locate(&FieldPath::parse(s));
        assert_eq!(p("name"), Position::new(1, 1));
        assert_eq!(p("trigger.cron"), Position::new(3, 3));
        assert_eq!(p("list[1]"), Position::new(6, 5));
        // A missing field is reported where its parent is.
        assert_eq!(p("trigger.timezone"), Position::new(2, 1));
    }

    #[test]
    fn syntax_error_has_a_position() {
        let err = Located::parse("name: a\n  bad: [\n").expect_err("bad yaml");
        assert_eq!(err.path.to_string(), "syntax");
        assert!(err.position.line >= 2, "{err:?}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Small {
        #[allow(dead_code)]
        a: u32,
        #[allow(dead_code)]
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        b: String,
    }

    #[test]
    fn every_unknown_field_is_reported() {
        let doc = Located::parse("a: 1\nzz: 2\ninner:\n  b: x\n  cc: 3\n").expect("parses");
        let (v, diags) = doc.deserialize::<Small>(&FieldPath::root());
        assert!(v.is_some());
        let got: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "2:1: zz: unknown field `zz`",
                "5:3: inner.cc: unknown field `cc`"
            ]
        );
    }

    #[test]
    fn type_error_names_the_field() {
        let doc = Located::parse("a: 1\ninner:\n  b: [1]\n").expect("parses");
        let (v, diags) = doc.deserialize::<Small>(&FieldPath::root());
        assert!(v.is_none());
        assert_eq!(diags.len(), 1);
        assert!(
            diags[0]
                .to_string()
                .starts_with("3:3: inner.b: invalid type"),
            "{:?}",
            diags
        );
    }

    /// One shape error for `yaml` read as `T`, printed.
    fn shape_error<T: DeserializeOwned>(yaml: &str) -> String {
        let doc = Located::parse(yaml).expect("parses");
        let (v, diags) = doc.deserialize::<T>(&FieldPath::root());
        assert!(v.is_none(), "{yaml:?} should not deserialize");
        assert_eq!(diags.len(), 1, "{diags:?}");
        diags[0].to_string()
    }

    #[test]
    fn shape_errors_read_in_plain_words() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Numbers {
            #[serde(default)]
            n: Option<u32>,
            #[serde(default)]
            i: Option<i32>,
            #[serde(default, deserialize_with = "duration_text")]
            d: Option<String>,
            #[serde(default)]
            mode: Option<Mode>,
        }
        #[derive(Debug)]
        enum Mode {
            Fast,
            Slow,
        }
        string_enum!(Mode {
            Fast => "fast",
            Slow => "slow",
        });
        // A missing field is named in the path and located at its parent.
        assert_eq!(shape_error::<Small>("a: 1\n"), "1:1: inner: is required");
        for (yaml, want) in [
            ("n: three\n", "1:1: n: invalid type: string \"three\", expected a whole number"),
            (
                "n: -1\n",
                "1:1: n: invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
            ),
            (
                "i: 10000000000\n",
                "1:1: i: invalid value: integer `10000000000`, expected a whole number from -2147483648 to 2147483647",
            ),
            (
                "d: 90\n",
                "1:1: d: invalid type: integer `90`, expected a duration with a unit, such as 30s, 15m or 1h30m",
            ),
            (
                "mode: yes\n",
                "1:1: mode: invalid type: boolean `true`, expected `fast` or `slow`",
            ),
            (
                "mode: medium\n",
                "1:1: mode: unknown variant `medium`, expected `fast` or `slow`",
            ),
        ] {
            assert_eq!(shape_error::<Numbers>(yaml), want);
        }
        let doc = Located::parse("d: 1m\nmode: slow\n").expect("parses");
        let (v, diags) = doc.deserialize::<Numbers>(&FieldPath::root());
        assert!(diags.is_empty(), "{diags:?}");
        let v = v.expect("valid");
        assert_eq!(v.d.as_deref(), Some("1m"));
        assert!(matches!(v.mode, Some(Mode::Slow)));
    }

    #[test]
    fn syntax_errors_carry_no_second_location_nor_library_advice() {
        for (yaml, want) in [
            ("a: [1, 2\n", "syntax: unclosed bracket '['"),
            (
                "a: 1\na: 2\n",
                "syntax: duplicate mapping key `a` is not allowed here",
            ),
            (
                "a: 1\n---\na: 2\n",
                "syntax: found a second YAML document after `---`; a file must hold only one",
            ),
        ] {
            let err = Located::parse(yaml).expect_err(yaml).to_string();
            // "L:C: syntax: message" — the position only once, in front.
            let rest = err.splitn(3, ':').nth(2).unwrap_or_default().trim();
            assert_eq!(rest, want, "{err}");
        }
    }
}
