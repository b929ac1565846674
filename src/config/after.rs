//! `trigger.after`: a boolean expression over other jobs' runs, AutoSys
//! style — `success(load-orders) and (done(x, 12h) or not failure(y))`.
//!
//! Pure: [`parse`] turns the text into an [`Expr`] (an error names the
//! character where it went wrong), [`Expr::eval`] evaluates it over a
//! snapshot of the upstream jobs' run facts ([`Facts`]), and
//! [`find_cycle`] finds a cycle in the jobs' dependency graph. The daemon
//! gathers the facts from the store; this module never reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// A condition on one upstream job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Its latest finished run in scope succeeded.
    Success,
    /// Its latest finished run in scope failed or is dead.
    Failure,
    /// It has a finished run in scope (succeeded, failed or dead).
    Done,
    /// It has no run pending or running.
    NotRunning,
}

impl Cond {
    pub fn as_str(self) -> &'static str {
        match self {
            Cond::Success => "success",
            Cond::Failure => "failure",
            Cond::Done => "done",
            Cond::NotRunning => "notrunning",
        }
    }
}

/// A parsed `after` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `cond(job)` or `cond(job, look_back)`; `at` is the job name's
    /// character offset in the text (for errors).
    Cond {
        cond: Cond,
        job: String,
        look_back: Option<Duration>,
        at: usize,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A parse error: what, and the 0-based character offset in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at + 1, self.message)
    }
}

/// The 0-based offset a [`ParseError`]'s text names (`at character N: …`).
pub fn character_of(message: &str) -> Option<usize> {
    let rest = message.strip_prefix("at character ")?;
    let n: usize = rest.split(':').next()?.parse().ok()?;
    n.checked_sub(1)
}

/// Parses an `after` expression. Grammar (`not` binds tightest, then
/// `and`, then `or`; keywords are lower-case):
///
/// ```text
/// expr := and ("or" and)*      and := unary ("and" unary)*
/// unary := "not" unary | "(" expr ")" | COND "(" JOB ["," DURATION] ")"
/// ```
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    let e = p.or()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.error(format!(
            "unexpected \"{}\"; expected `and`, `or` or the end",
            p.word_here()
        )));
    }
    Ok(e)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            at: self.pos,
            message: message.into(),
        }
    }
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }
    fn word_here(&self) -> String {
        let w: String = self.chars[self.pos..]
            .iter()
            .take_while(|c| is_word(**c))
            .collect();
        if w.is_empty() {
            self.chars
                .get(self.pos)
                .map(|c| c.to_string())
                .unwrap_or_default()
        } else {
            w
        }
    }
    /// The next word (without consuming it), after spaces.
    fn peek_word(&mut self) -> String {
        self.skip_ws();
        self.chars[self.pos..]
            .iter()
            .take_while(|c| is_word(**c))
            .collect()
    }
    fn take_word(&mut self) -> String {
        let w = self.peek_word();
        self.pos += w.chars().count();
        w
    }
    fn expect(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else if self.pos >= self.chars.len() {
            Err(self.error(format!("the expression ends; expected {what}")))
        } else {
            Err(self.error(format!(
                "unexpected \"{}\"; expected {what}",
                self.word_here()
            )))
        }
    }
    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.and()?;
        while self.peek_word() == "or" {
            self.take_word();
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.unary()?;
        while self.peek_word() == "and" {
            self.take_word();
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&'(') {
            self.pos += 1;
            let e = self.or()?;
            self.expect(')', "`)`")?;
            return Ok(e);
        }
        if self.pos >= self.chars.len() {
            return Err(self.error(
                "the expression ends; expected a condition such as success(JOB), or `not`, or `(`",
            ));
        }
        let start = self.pos;
        let word = self.take_word();
        let cond = match word.as_str() {
            "not" => return Ok(Expr::Not(Box::new(self.unary()?))),
            "success" => Cond::Success,
            "failure" => Cond::Failure,
            "done" => Cond::Done,
            "notrunning" => Cond::NotRunning,
            _ => {
                self.pos = start;
                return Err(self.error(format!(
                    "unexpected \"{}\"; expected success(JOB), failure(JOB), done(JOB), notrunning(JOB), `not` or `(`",
                    self.word_here()
                )));
            }
        };
        self.expect('(', &format!("`(` after {word}"))?;
        self.skip_ws();
        let at = self.pos;
        let job = self.take_word();
        if job.is_empty() {
            return Err(self.error(format!("expected a job name in {word}(…)")));
        }
        self.skip_ws();
        let mut look_back = None;
        if self.chars.get(self.pos) == Some(&',') {
            self.pos += 1;
            self.skip_ws();
            let d_at = self.pos;
            let text: String = self.chars[self.pos..]
                .iter()
                .take_while(|c| **c != ')')
                .collect();
            let d = super::diagnostic::parse_duration(&text).map_err(|m| ParseError {
                at: d_at,
                message: format!("look-back: {m}"),
            })?;
            if d.is_zero() {
                return Err(ParseError {
                    at: d_at,
                    message: "look-back: must be more than 0".into(),
                });
            }
            self.pos += text.chars().count();
            look_back = Some(d);
        }
        self.expect(')', &format!("`)` or `, LOOK-BACK` after {word}({job}"))?;
        Ok(Expr::Cond {
            cond,
            job,
            look_back,
            at,
        })
    }
}

/// What the evaluation needs to know about one upstream job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamFacts {
    /// The finished runs (end time in ms, succeeded?), newest first; only
    /// the newest few are needed.
    pub finished: Vec<(i64, bool)>,
    /// It has a run pending or running.
    pub active: bool,
    /// How its operator state looks to dependents (the daemon fills it
    /// from `operator::as_upstream`).
    pub seen_as: Seen,
}

/// How an upstream job's operator state looks to its dependents (config
/// stays below the operator room: the daemon maps `operator::Upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seen {
    /// Its recorded runs decide.
    #[default]
    Runs,
    /// Held: every condition on it waits.
    Wait,
    /// Iced: it counts as succeeded.
    Succeeded,
}

/// A snapshot of the upstream jobs' facts, by job name.
pub type Facts = BTreeMap<String, UpstreamFacts>;

/// Where a condition without look-back starts: the dependent's last run
/// (ms); `None`: it never ran (any finished run counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub since_ms: Option<i64>,
    pub now_ms: i64,
}

impl Expr {
    /// True when the expression holds over `facts` in `scope`.
    pub fn eval(&self, facts: &Facts, scope: Scope) -> bool {
        match self {
            Expr::Not(e) => !e.eval(facts, scope),
            Expr::And(a, b) => a.eval(facts, scope) && b.eval(facts, scope),
            Expr::Or(a, b) => a.eval(facts, scope) || b.eval(facts, scope),
            Expr::Cond {
                cond,
                job,
                look_back,
                ..
            } => {
                let none = UpstreamFacts::default();
                let f = facts.get(job).unwrap_or(&none);
                match f.seen_as {
                    // Held: every condition on it waits (not counts as false).
                    Seen::Wait => false,
                    // Iced: as if it had just succeeded.
                    Seen::Succeeded => {
                        matches!(cond, Cond::Success | Cond::Done | Cond::NotRunning)
                    }
                    Seen::Runs => {
                        let from = match look_back {
                            Some(d) => Some(scope.now_ms - d.as_millis() as i64),
                            None => scope.since_ms,
                        };
                        // The upstream's latest finished run, if in scope.
                        let latest = f
                            .finished
                            .first()
                            .filter(|(end, _)| from.is_none_or(|from| *end > from));
                        match cond {
                            Cond::Success => latest.is_some_and(|(_, ok)| *ok),
                            Cond::Failure => latest.is_some_and(|(_, ok)| !*ok),
                            Cond::Done => latest.is_some(),
                            Cond::NotRunning => !f.active,
                        }
                    }
                }
            }
        }
    }

    /// Every job named, with the character offset of its first mention.
    pub fn jobs(&self) -> Vec<(&str, usize)> {
        let mut out: Vec<(&str, usize)> = Vec::new();
        self.each_cond(&mut |job, at| {
            if !out.iter().any(|(j, _)| *j == job) {
                out.push((job, at));
            }
        });
        out
    }

    /// Every condition, in text order: `(cond, job)` as written, e.g.
    /// `success(x, 12h)` for the edge labels of `kedge graph`.
    pub fn conditions(&self) -> Vec<(&str, String)> {
        let mut out = Vec::new();
        self.each(&mut |e| {
            if let Expr::Cond { job, .. } = e {
                out.push((job.as_str(), e.to_string()));
            }
        });
        out
    }

    fn each<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        match self {
            Expr::Cond { .. } => {}
            Expr::Not(e) => e.each(f),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.each(f);
                b.each(f);
            }
        }
    }

    fn each_cond<'a>(&'a self, f: &mut impl FnMut(&'a str, usize)) {
        match self {
            Expr::Cond { job, at, .. } => f(job, *at),
            Expr::Not(e) => e.each_cond(f),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.each_cond(f);
                b.each_cond(f);
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Cond {
                cond,
                job,
                look_back,
                ..
            } => match look_back {
                Some(d) => write!(
                    f,
                    "{}({job}, {})",
                    cond.as_str(),
                    humantime::format_duration(*d)
                ),
                None => write!(f, "{}({job})", cond.as_str()),
            },
            Expr::Not(e) => match **e {
                Expr::Cond { .. } | Expr::Not(_) => write!(f, "not {e}"),
                _ => write!(f, "not ({e})"),
            },
            Expr::And(a, b) => {
                let side = |e: &Expr| match e {
                    Expr::Or(..) => format!("({e})"),
                    _ => e.to_string(),
                };
                write!(f, "{} and {}", side(a), side(b))
            }
            Expr::Or(a, b) => write!(f, "{a} or {b}"),
        }
    }
}

/// A cycle in `graph` (job → the jobs it depends on), as the path
/// `a → b → … → a` (a list whose first and last names are equal), the
/// first found in name order; `None` when there is none.
pub fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = graph.keys().map(|k| (k.as_str(), Mark::New)).collect();
    for start in graph.keys() {
        if marks[start.as_str()] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, its upstreams left to visit).
        let mut path: Vec<&str> = vec![start];
        let mut stack: Vec<std::collections::btree_set::Iter<'_, String>> =
            vec![graph[start].iter()];
        marks.insert(start, Mark::OnPath);
        while let Some(next) = stack.last_mut().map(|it| it.next()) {
            match next {
                None => {
                    stack.pop();
                    if let Some(done) = path.pop() {
                        marks.insert(done, Mark::Done);
                    }
                }
                Some(up) => match marks.get(up.as_str()).copied() {
                    // Not a job (an unknown name, reported elsewhere).
                    None | Some(Mark::Done) => {}
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|n| *n == up).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|s| s.to_string()).collect();
                        cycle.push(up.clone());
                        return Some(cycle);
                    }
                    Some(Mark::New) => {
                        marks.insert(up, Mark::OnPath);
                        path.push(up);
                        stack.push(graph[up.as_str()].iter());
                    }
                },
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(list: &[(&str, UpstreamFacts)]) -> Facts {
        list.iter()
            .map(|(n, f)| (n.to_string(), f.clone()))
            .collect()
    }

    fn ran(end: i64, ok: bool) -> UpstreamFacts {
        UpstreamFacts {
            finished: vec![(end, ok)],
            ..Default::default()
        }
    }

    #[test]
    fn parses_precedence_and_prints_back() {
        let e = parse("success(a) or not done(b, 12h) and (failure(c) or notrunning(d))").unwrap();
        assert_eq!(
            e.to_string(),
            "success(a) or not done(b, 12h) and (failure(c) or notrunning(d))"
        );
        assert!(matches!(e, Expr::Or(..)));
        assert_eq!(e.jobs(), vec![("a", 8), ("b", 23), ("c", 44), ("d", 61)]);
    }

    #[test]
    fn errors_name_the_character() {
        let cases = [
            ("success(a) an success(b)", 11, "unexpected \"an\""),
            ("succes(a)", 0, "unexpected \"succes\""),
            ("success(a", 9, "the expression ends; expected `)`"),
            ("success()", 8, "expected a job name"),
            (
                "success(a, 12 parsecs)",
                11,
                "look-back: \"12 parsecs\" is not a duration",
            ),
            (
                "success(a) and",
                14,
                "the expression ends; expected a condition",
            ),
            ("(success(a)", 11, "expected `)`"),
            ("", 0, "the expression ends"),
        ];
        for (text, at, msg) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.at, at, "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
        }
    }

    #[test]
    fn without_look_back_only_runs_since_the_last_run_count() {
        let e = parse("success(a)").unwrap();
        let f = facts(&[("a", ran(1_000, true))]);
        let at = |since| Scope {
            since_ms: since,
            now_ms: 5_000,
        };
        assert!(e.eval(&f, at(None)));
        assert!(e.eval(&f, at(Some(999))));
        assert!(
            !e.eval(&f, at(Some(1_000))),
            "a success before our last run is used up"
        );
        assert!(!parse("failure(a)").unwrap().eval(&f, at(None)));
        assert!(parse("done(a) and not failure(a)")
            .unwrap()
            .eval(&f, at(None)));
    }

    #[test]
    fn look_back_is_a_window_before_now() {
        let e = parse("success(a, 1h)").unwrap();
        let hour = 3_600_000;
        let f = facts(&[("a", ran(10 * hour, true))]);
        let now = |ms| Scope {
            since_ms: Some(20 * hour),
            now_ms: ms,
        };
        assert!(
            e.eval(&f, now(10 * hour + 1)),
            "look-back ignores the last run"
        );
        assert!(!e.eval(&f, now(11 * hour + 1)));
    }

    #[test]
    fn held_waits_and_iced_counts_as_succeeded() {
        let scope = Scope {
            since_ms: None,
            now_ms: 0,
        };
        let mut a = ran(1, true);
        a.seen_as = Seen::Wait;
        let f = facts(&[("a", a)]);
        assert!(!parse("success(a)").unwrap().eval(&f, scope));
        assert!(!parse("done(a)").unwrap().eval(&f, scope));
        let iced = UpstreamFacts {
            seen_as: Seen::Succeeded,
            ..Default::default()
        };
        let f = facts(&[("a", iced)]);
        assert!(parse("success(a)").unwrap().eval(&f, scope));
        assert!(!parse("failure(a)").unwrap().eval(&f, scope));
        let running = UpstreamFacts {
            active: true,
            ..Default::default()
        };
        assert!(!parse("notrunning(a)")
            .unwrap()
            .eval(&facts(&[("a", running)]), scope));
    }

    #[test]
    fn finds_the_cycle_path() {
        let g = |edges: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
            edges
                .iter()
                .map(|(j, ups)| (j.to_string(), ups.iter().map(|u| u.to_string()).collect()))
                .collect()
        };
        let diamond = g(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        assert_eq!(find_cycle(&diamond), None);
        let cyc = g(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("x", &["a"])]);
        assert_eq!(find_cycle(&cyc).unwrap(), vec!["a", "c", "b", "a"]);
        let own = g(&[("a", &["a"])]);
        assert_eq!(find_cycle(&own).unwrap(), vec!["a", "a"]);
    }
}
