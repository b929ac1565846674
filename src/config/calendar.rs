//! Business calendars (`calendars/*.yaml`): which dates are working days.
//!
//! One file per calendar. A file is read into [`RawCalendar`] (the shape),
//! checked on its own (name, dates), then all files are checked together
//! (duplicate names, `include`/`exclude` naming an unknown calendar or
//! forming a cycle) and resolved into [`Calendar`]s, which hold the
//! calendars they include and exclude. Every problem is a diagnostic with
//! file, line and column; a bad calendar (and any calendar built on it) is
//! left out, and a job that names it is refused with the reason.
//!
//! # A working day
//!
//! A date is a working day of a calendar when
//! `((its weekday is in working_days or it is in dates) and it is not in
//! holidays) or it is a working day of an included calendar`, and it is not
//! a working day of an excluded calendar. Exclusion wins.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, Weekday};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::{Diagnostic, Diagnostics, FieldPath, Position, Problem};
use super::yaml::{string_enum, Located};

/// A business calendar file (`calendars/*.yaml`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(expecting = "a mapping with name, working_days, holidays, include or exclude")]
#[schemars(deny_unknown_fields, rename = "Calendar")]
pub struct RawCalendar {
    /// The calendar's name, which jobs use in `trigger.calendar`: lower-case
    /// letters, digits and '-', unique across the calendars directory.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The weekdays that are working days [default: mon to fri]. `[]` for a
    /// calendar made of `dates` only.
    pub working_days: Option<Vec<DayName>>,
    /// Extra working dates (YYYY-MM-DD), whatever their weekday: a Saturday
    /// that is worked, or the days of a calendar used as a list of dates.
    #[serde(default)]
    pub dates: Vec<String>,
    /// Dates (YYYY-MM-DD) that are not working days, whatever their weekday.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Calendars whose working days are also working days of this one (a union).
    #[serde(default)]
    pub include: Vec<String>,
    /// Calendars whose working days are never working days of this one (wins over everything else).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A day of the week, as written in calendars and blackout windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DayName {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

string_enum!(DayName {
    Mon => "mon",
    Tue => "tue",
    Wed => "wed",
    Thu => "thu",
    Fri => "fri",
    Sat => "sat",
    Sun => "sun",
});

impl DayName {
    pub fn weekday(self) -> Weekday {
        match self {
            DayName::Mon => Weekday::Mon,
            DayName::Tue => Weekday::Tue,
            DayName::Wed => Weekday::Wed,
            DayName::Thu => Weekday::Thu,
            DayName::Fri => Weekday::Fri,
            DayName::Sat => Weekday::Sat,
            DayName::Sun => Weekday::Sun,
        }
    }
}

/// A set of weekdays (bit `n` = `n` days from Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Weekdays(u8);

impl Weekdays {
    /// Monday to Friday.
    pub const MON_FRI: Weekdays = Weekdays(0b0001_1111);
    pub const ALL: Weekdays = Weekdays(0b0111_1111);

    pub fn of(days: &[DayName]) -> Weekdays {
        Weekdays(
            days.iter()
                .fold(0, |b, d| b | 1 << d.weekday().num_days_from_monday()),
        )
    }
    pub fn has(self, d: Weekday) -> bool {
        self.0 & (1 << d.num_days_from_monday()) != 0
    }
}

impl fmt::Display for Weekdays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let names: Vec<&str> = (0..7)
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| NAMES[i])
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Parses a date written `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("\"{s}\" is not a date; write YYYY-MM-DD, such as 2026-12-25"))
}

/// A validated calendar, with the calendars it includes and excludes.
#[derive(Debug)]
pub struct Calendar {
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    pub working_days: Weekdays,
    pub dates: BTreeSet<NaiveDate>,
    pub holidays: BTreeSet<NaiveDate>,
    pub include: Vec<Arc<Calendar>>,
    pub exclude: Vec<Arc<Calendar>>,
}

/// Whether a date is a working day of a calendar, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayStatus {
    Working,
    /// Not a working day: `holiday`, `sat is not a working day`,
    /// `excluded by month-end-freeze`.
    Off(String),
}

impl Calendar {
    /// True when `d` is a working day (see the module docs).
    pub fn is_working(&self, d: NaiveDate) -> bool {
        self.status(d) == DayStatus::Working
    }

    /// Whether `d` is a working day, and if not, why.
    pub fn status(&self, d: NaiveDate) -> DayStatus {
        if let Some(x) = self.exclude.iter().find(|x| x.is_working(d)) {
            return DayStatus::Off(format!("excluded by {}", x.name));
        }
        let own = if self.holidays.contains(&d) {
            DayStatus::Off("holiday".into())
        } else if self.dates.contains(&d) || self.working_days.has(d.weekday()) {
            DayStatus::Working
        } else {
            DayStatus::Off(format!(
                "{} is not a working day",
                d.weekday().to_string().to_lowercase()
            ))
        };
        if own != DayStatus::Working && self.include.iter().any(|x| x.is_working(d)) {
            return DayStatus::Working;
        }
        own
    }

    /// True when `d` is one of this calendar's own holidays, or one of an
    /// included calendar's (what `kedge calendar show` marks as a holiday).
    pub fn is_holiday(&self, d: NaiveDate) -> bool {
        self.holidays.contains(&d) || self.include.iter().any(|x| x.is_holiday(d))
    }
}

/// Every calendar of the calendars directory, and the problems found.
#[derive(Debug, Clone, Default)]
pub struct Calendars {
    /// Where they were read from.
    pub dir: PathBuf,
    /// False when the directory does not exist (then there are none).
    pub dir_exists: bool,
    by_name: BTreeMap<String, Arc<Calendar>>,
    /// Calendars left out because of a problem: name → file.
    invalid: BTreeMap<String, PathBuf>,
    /// Every problem, in file order.
    pub problems: Diagnostics,
}

impl Calendars {
    /// The valid calendar `name`, or what to say about it.
    pub fn get(&self, name: &str) -> Result<Arc<Calendar>, String> {
        if let Some(c) = self.by_name.get(name) {
            return Ok(c.clone());
        }
        if let Some(file) = self.invalid.get(name) {
            return Err(format!(
                "calendar \"{name}\" is invalid (see the problems reported for {})",
                file.display()
            ));
        }
        if !self.dir_exists {
            return Err(format!(
                "unknown calendar \"{name}\": the calendars directory {} does not exist (set calendars_dir in the config, --calendars or KEDGE_CALENDARS)",
                self.dir.display()
            ));
        }
        let names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        Err(format!(
            "unknown calendar \"{name}\" in {} (defined: {})",
            self.dir.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    }

    /// The valid calendars, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Calendar>> {
        self.by_name.values()
    }

    /// Calendars from YAML texts, as if read from files named by the
    /// first element (for tests).
    pub fn from_texts(files: &[(&str, &str)]) -> Calendars {
        let parsed = files
            .iter()
            .map(|(f, t)| parse_file(Path::new(f), Ok(t.to_string())))
            .collect();
        resolve(PathBuf::from("calendars"), true, parsed)
    }
}

/// One calendar file as read, before the calendars are resolved together.
struct Parsed {
    file: PathBuf,
    doc: Option<Located>,
    /// `None` when the file has a problem of its own.
    ok: Option<Own>,
    /// The name, when it could be read (even from a bad file).
    name: Option<String>,
    problems: Vec<Diagnostic>,
}

/// A file's own content, checked.
struct Own {
    working_days: Weekdays,
    dates: BTreeSet<NaiveDate>,
    holidays: BTreeSet<NaiveDate>,
    include: Vec<String>,
    exclude: Vec<String>,
}

/// Reads every `*.yaml` / `*.yml` calendar in `dir` (sorted by file name).
/// A missing directory means no calendars.
pub fn load_dir(dir: &Path) -> Calendars {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return resolve(dir.to_path_buf(), false, Vec::new())
        }
        Err(e) => {
            let mut cals = resolve(dir.to_path_buf(), true, Vec::new());
            cals.problems.push(
                Diagnostic::new(
                    FieldPath::root(),
                    Position::start(),
                    format!("cannot read the calendars directory: {e}"),
                )
                .in_file(dir),
            );
            return cals;
        }
    };
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        match entry.map_err(|e| e.to_string()).and_then(|e| {
            super::yaml_file(&e.path())
                .map(|y| y.then(|| e.path()))
                .map_err(|d| d.message)
        }) {
            Ok(Some(p)) => files.push(p),
            Ok(None) => {}
            Err(e) => problems.push(
                Diagnostic::new(
                    FieldPath::root(),
                    Position::start(),
                    format!("cannot read an entry of the calendars directory: {e}"),
                )
                .in_file(dir),
            ),
        }
    }
    files.sort();
    let parsed = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("cannot read: {e}"));
            parse_file(&f, text)
        })
        .collect();
    let mut cals = resolve(dir.to_path_buf(), true, parsed);
    cals.problems.0.splice(0..0, problems);
    cals
}

/// Reads and checks one file on its own.
fn parse_file(file: &Path, text: Result<String, String>) -> Parsed {
    let mut p = Parsed {
        file: file.to_path_buf(),
        doc: None,
        ok: None,
        name: None,
        problems: Vec::new(),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            p.problems
                .push(Diagnostic::new(FieldPath::root(), Position::start(), e).in_file(file));
            return p;
        }
    };
    let doc = match Located::parse(&text) {
        Ok(d) => d,
        Err(d) => {
            p.problems.push(d.in_file(file));
            return p;
        }
    };
    if !doc.value.is_object() {
        p.problems.push(
            Diagnostic::new(
                FieldPath::root(),
                doc.locate(&FieldPath::root()),
                "expected a mapping with name, working_days and holidays",
            )
            .in_file(file),
        );
        return p;
    }
    p.name = doc.value["name"].as_str().map(str::to_string);
    let (raw, diags) = doc.deserialize::<RawCalendar>(&FieldPath::root());
    p.problems
        .extend(diags.into_iter().map(|d| d.in_file(file)));
    if let Some(raw) = raw {
        let mut problems: Vec<Problem> = Vec::new();
        let own = check(&raw, &mut problems);
        p.problems.extend(
            problems
                .into_iter()
                .map(|(path, m)| Diagnostic::new(path.clone(), doc.locate(&path), m).in_file(file)),
        );
        if p.problems.is_empty() {
            p.ok = Some(own);
        }
    }
    p.doc = Some(doc);
    p
}

/// The checks of one calendar that need no other file.
fn check(raw: &RawCalendar, problems: &mut Vec<Problem>) -> Own {
    let root = FieldPath::root();
    if !super::names::is_dns1123_label(&raw.name) {
        problems.push((
            root.key("name"),
            format!(
                "\"{}\" is not a valid calendar name: use lower-case letters, digits and '-', starting and ending with a letter or digit",
                raw.name
            ),
        ));
    }
    let mut dates_of = |field: &str, list: &[String]| -> BTreeSet<NaiveDate> {
        let mut out = BTreeSet::new();
        for (i, s) in list.iter().enumerate() {
            match parse_date(s) {
                Ok(d) => {
                    if !out.insert(d) {
                        problems.push((root.key(field).index(i), format!("{d} is listed twice")));
                    }
                }
                Err(e) => problems.push((root.key(field).index(i), e)),
            }
        }
        out
    };
    let dates = dates_of("dates", &raw.dates);
    let holidays = dates_of("holidays", &raw.holidays);
    for (i, s) in raw.dates.iter().enumerate() {
        if parse_date(s).is_ok_and(|d| holidays.contains(&d)) {
            problems.push((
                root.key("dates").index(i),
                format!("{s} is also a holiday; list it in one of dates or holidays"),
            ));
        }
    }
    for field in ["include", "exclude"] {
        let list = if field == "include" {
            &raw.include
        } else {
            &raw.exclude
        };
        for (i, n) in list.iter().enumerate() {
            if list[..i].contains(n) {
                problems.push((root.key(field).index(i), format!("\"{n}\" is listed twice")));
            }
        }
    }
    Own {
        working_days: raw
            .working_days
            .as_deref()
            .map(Weekdays::of)
            .unwrap_or(Weekdays::MON_FRI),
        dates,
        holidays,
        include: raw.include.clone(),
        exclude: raw.exclude.clone(),
    }
}

/// The calendars by name, before their references are checked.
struct Names {
    /// Name → index of the file that defines it first.
    by_name: HashMap<String, usize>,
    /// Names whose own file is invalid → that file.
    invalid: BTreeMap<String, PathBuf>,
    /// The files' own problems and each later duplicate name.
    problems: Vec<Diagnostic>,
}

fn index_names(parsed: &[Parsed]) -> Names {
    let mut problems: Vec<Diagnostic> = Vec::new();
    let mut invalid: BTreeMap<String, PathBuf> = BTreeMap::new();
    // name → index of the file that defines it first.
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        problems.extend(p.problems.iter().cloned());
        let Some(name) = &p.name else { continue };
        if let Some(&first) = by_name.get(name) {
            let at = |k: usize| {
                parsed[k]
                    .doc
                    .as_ref()
                    .map(|d| d.locate(&FieldPath::root().key("name")))
                    .unwrap_or_else(Position::start)
            };
            let pos = at(first);
            problems.push(
                Diagnostic::new(
                    FieldPath::root().key("name"),
                    at(i),
                    format!(
                        "calendar \"{name}\" is already defined in {}:{}:{}",
                        parsed[first].file.display(),
                        pos.line,
                        pos.column
                    ),
                )
                .in_file(&p.file),
            );
            continue;
        }
        by_name.insert(name.clone(), i);
        if p.ok.is_none() {
            invalid.insert(name.clone(), p.file.clone());
        }
    }

    Names {
        by_name,
        invalid,
        problems,
    }
}

/// Depth-first over include/exclude: `state` 1 = on the path, 2 = done;
/// `built` holds the calendars resolved so far (absent when invalid).
struct Walk<'a> {
    parsed: &'a [Parsed],
    by_name: &'a HashMap<String, usize>,
    state: Vec<u8>,
    built: Vec<Option<Arc<Calendar>>>,
    path: Vec<usize>,
    problems: Vec<Diagnostic>,
}
impl Walk<'_> {
    fn visit(&mut self, i: usize) -> Option<Arc<Calendar>> {
        if self.state[i] == 2 {
            return self.built[i].clone();
        }
        self.state[i] = 1;
        self.path.push(i);
        let p = &self.parsed[i];
        let own = p.ok.as_ref();
        let mut ok = own.is_some();
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for (field, names) in own
            .map(|o| [("include", &o.include), ("exclude", &o.exclude)])
            .into_iter()
            .flatten()
        {
            for (k, n) in names.iter().enumerate() {
                let path = FieldPath::root().key(field).index(k);
                let pos = p
                    .doc
                    .as_ref()
                    .map(|d| d.locate(&path))
                    .unwrap_or_else(Position::start);
                let problem = |m: String| Diagnostic::new(path.clone(), pos, m).in_file(&p.file);
                let Some(&j) = self.by_name.get(n) else {
                    let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
                    known.sort();
                    self.problems.push(problem(format!(
                        "unknown calendar \"{n}\" (defined: {})",
                        known.join(", ")
                    )));
                    ok = false;
                    continue;
                };
                if self.state[j] == 1 {
                    let from = self.path.iter().position(|x| *x == j).unwrap_or(0);
                    let mut cycle: Vec<&str> = self.path[from..]
                        .iter()
                        .map(|x| self.parsed[*x].name.as_deref().unwrap_or("?"))
                        .collect();
                    cycle.push(n);
                    self.problems.push(problem(format!(
                        "calendars include or exclude each other in a cycle: {}",
                        cycle.join(" → ")
                    )));
                    ok = false;
                    continue;
                }
                match self.visit(j) {
                    Some(c) if field == "include" => include.push(c),
                    Some(c) => exclude.push(c),
                    None => {
                        self.problems.push(problem(format!(
                            "calendar \"{n}\" is invalid (see the problems reported for {})",
                            self.parsed[j].file.display()
                        )));
                        ok = false;
                    }
                }
            }
        }
        self.path.pop();
        self.state[i] = 2;
        let built = match (ok, own, &p.name) {
            (true, Some(o), Some(name)) => Some(Arc::new(Calendar {
                name: name.clone(),
                file: p.file.clone(),
                working_days: o.working_days,
                dates: o.dates.clone(),
                holidays: o.holidays.clone(),
                include,
                exclude,
            })),
            _ => None,
        };
        self.built[i] = built.clone();
        built
    }
}

/// Checks the calendars together (duplicate names, references, cycles)
/// and builds the valid ones.
fn resolve(dir: PathBuf, dir_exists: bool, parsed: Vec<Parsed>) -> Calendars {
    let Names {
        by_name,
        mut invalid,
        mut problems,
    } = index_names(&parsed);
    let mut walk = Walk {
        parsed: &parsed,
        by_name: &by_name,
        state: vec![0; parsed.len()],
        built: vec![None; parsed.len()],
        path: Vec::new(),
        problems: Vec::new(),
    };
    let mut order: Vec<(&String, &usize)> = by_name.iter().collect();
    order.sort_by_key(|(_, i)| **i);
    let mut calendars = BTreeMap::new();
    for (name, &i) in order {
        match walk.visit(i) {
            Some(c) => {
                calendars.insert(name.clone(), c);
            }
            None => {
                invalid.insert(name.clone(), parsed[i].file.clone());
            }
        }
    }
    problems.extend(walk.problems);
    problems.sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
    Calendars {
        dir,
        dir_exists,
        by_name: calendars,
        invalid,
        problems: Diagnostics(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        parse_date(s).unwrap()
    }

    #[test]
    fn working_days_holidays_include_and_exclude() {
        let cals = Calendars::from_texts(&[
            (
                "calendars/bank.yaml",
                "name: bank\nworking_days: [mon, tue, wed, thu, fri]\nholidays: [2026-12-25]\ninclude: [extra]\nexclude: [freeze]\n",
            ),
            ("calendars/extra.yaml", "name: extra\nworking_days: []\ndates: [2026-12-26, 2026-12-25]\n"),
            ("calendars/freeze.yaml", "name: freeze\nworking_days: []\ndates: [2026-12-30]\n"),
        ]);
        assert!(cals.problems.is_empty(), "{}", cals.problems);
        let bank = cals.get("bank").unwrap();
        assert!(bank.is_working(d("2026-12-24")));
        // A holiday of its own, but a working day of an included calendar.
        assert!(bank.is_working(d("2026-12-25")));
        assert!(bank.is_working(d("2026-12-26")), "a Saturday from include");
        assert_eq!(
            bank.status(d("2026-12-27")),
            DayStatus::Off("sun is not a working day".into())
        );
        assert_eq!(
            bank.status(d("2026-12-30")),
            DayStatus::Off("excluded by freeze".into())
        );
    }

    #[test]
    fn problems_are_located_and_cycles_print_their_path() {
        let cals = Calendars::from_texts(&[
            ("a.yaml", "name: a\ninclude: [b]\n"),
            ("b.yaml", "name: b\nexclude: [c]\n"),
            ("c.yaml", "name: c\ninclude: [a, nope]\n"),
            ("d.yaml", "name: a\n"),
            ("e.yaml", "name: e\nholidays: [2026-02-30]\ndates: [2026-12-25]\nworking_days: [mon, funday]\n"),
            ("f.yaml", "name: f\ninclude: [e]\n"),
        ]);
        let lines: Vec<String> = cals.problems.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "a.yaml:2:11: include[0]: calendar \"b\" is invalid (see the problems reported for b.yaml)",
                "b.yaml:2:11: exclude[0]: calendar \"c\" is invalid (see the problems reported for c.yaml)",
                "c.yaml:2:11: include[0]: calendars include or exclude each other in a cycle: a → b → c → a",
                "c.yaml:2:14: include[1]: unknown calendar \"nope\" (defined: a, b, c, e, f)",
                "d.yaml:1:1: name: calendar \"a\" is already defined in a.yaml:1:1",
                "e.yaml:4:21: working_days[1]: unknown variant `funday`, expected one of `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`",
                "f.yaml:2:11: include[0]: calendar \"e\" is invalid (see the problems reported for e.yaml)",
            ],
            "{lines:#?}"
        );
        assert!(cals.get("a").is_err());
        let cals = Calendars::from_texts(&[(
            "e.yaml",
            "name: e\nholidays: [2026-02-30, 2026-12-25]\ndates: [2026-12-25]\n",
        )]);
        let lines: Vec<String> = cals.problems.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "e.yaml:2:12: holidays[0]: \"2026-02-30\" is not a date; write YYYY-MM-DD, such as 2026-12-25",
                "e.yaml:3:9: dates[0]: 2026-12-25 is also a holiday; list it in one of dates or holidays",
            ],
        );
        assert_eq!(
            cals.get("e").unwrap_err(),
            "calendar \"e\" is invalid (see the problems reported for e.yaml)"
        );
    }
}
