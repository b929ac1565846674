//! README.md's console examples, run through the built `kedge` binary: what
//! the README shows is what kedge prints.
//!
//! # How an example is marked
//!
//! - A ```` ```console ```` block holds commands and their output: a line
//!   `$ kedge …` is a command (quoted as in a shell: `'…'` and `"…"`), the
//!   lines after it up to the next command are its output (stdout, then
//!   stderr, as a terminal shows both), and a line starting with `# ` is a
//!   comment for the reader.
//! - `$ kedge run … &` starts the daemon in the background, as a shell
//!   would (`2>FILE` sends its log to FILE); it is stopped at the end of
//!   the block. Commands after it may show a state the daemon reaches
//!   later, so each is run again until its output matches, for up to
//!   [`SETTLE`].
//! - A ```` ```yaml file=PATH ```` block is a file the next console block
//!   needs (say, a broken job file for `kedge validate`): it is written at
//!   PATH before that block runs.
//!
//! Every console block runs in a fresh temporary copy of the repository's
//! `jobs/`, `config/` and `calendars/`, so nothing is written to the tree. The one change
//! to the copy: the daemon config's `http.listen` port becomes 0 (any free
//! port), so a daemon started here never collides with another on 9464.
//!
//! # What is normalised, and why
//!
//! Nothing, except the times kedge's store recorded from the wall clock
//! when the example ran: in the output of `kedge runs`, `kedge fires` and
//! `kedge dlq`, every RFC 3339 time (a run scheduled or finished, a letter
//! dead since) reads `<time>`, and runs of spaces read as one (a time's
//! width varies — `.000` milliseconds are left out — which moves the table
//! columns). Run ids are not normalised: the examples give their messages
//! an id (`--id`), and a run id is derived from it. Everything else — run
//! ids, attempts, states, errors, every figure of `kedge plan` — must match
//! exactly; JSON output is compared as JSON values, exactly.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a command run while the daemon works may take to show what the
/// README shows.
const SETTLE: Duration = Duration::from_secs(60);

/// The repository's README.
fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One command of a console block and the output shown under it.
#[derive(Debug)]
struct Step {
    /// The README line number of the command.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// One console block: the files it needs, then its steps.
#[derive(Debug, Default)]
struct Example {
    files: Vec<(PathBuf, String)>,
    steps: Vec<Step>,
}

/// Every console example of `text`, with the files each needs.
fn examples(text: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let body: Vec<(usize, &str)> = lines
            .by_ref()
            .take_while(|(_, l)| l.trim_start() != "```")
            .collect();
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        if let Some(path) = words.find_map(|w| w.strip_prefix("file=")) {
            let content = body.iter().map(|(_, l)| format!("{l}\n")).collect();
            files.push((PathBuf::from(path), content));
        } else if lang == "console" {
            out.push(console_block(std::mem::take(&mut files), &body));
        }
    }
    assert!(
        files.is_empty(),
        "a file= block is not followed by a console block"
    );
    out
}

/// A console block's steps (`body`: its lines with their 0-based numbers).
fn console_block(files: Vec<(PathBuf, String)>, body: &[(usize, &str)]) -> Example {
    let mut ex = Example {
        files,
        steps: Vec::new(),
    };
    for (n, l) in body {
        if let Some(command) = l.strip_prefix("$ ") {
            ex.steps.push(Step {
                line: n + 1,
                command: command.to_string(),
                expected: Vec::new(),
            });
        } else if l.starts_with("# ") {
            continue;
        } else {
            let step = ex
                .steps
                .last_mut()
                .unwrap_or_else(|| panic!("README.md:{}: output before any `$ ` command", n + 1));
            step.expected.push(l.to_string());
        }
    }
    for step in &mut ex.steps {
        trim_blank_tail(&mut step.expected);
    }
    ex
}

/// Blank lines at the end separate a step from the next, not output.
fn trim_blank_tail(lines: &mut Vec<String>) {
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
}

/// `s` split as a shell splits words (single and double quotes; no
/// expansion).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(quote.is_none(), "unclosed quote in {s:?}");
    words.extend(word);
    words
}

/// A temporary copy of the repository's `jobs/`, `config/` and `calendars/`.
struct Checkout {
    dir: tempfile::TempDir,
}

impl Checkout {
    fn new() -> Checkout {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["jobs", "config", "calendars"] {
            copy_dir(&repo.join(sub), &dir.path().join(sub));
        }
        let config = dir.path().join("config/kedge.yaml");
        let text = std::fs::read_to_string(&config).expect("config/kedge.yaml");
        let anchor = "listen: 127.0.0.1:9464";
        assert!(
            text.contains(anchor),
            "config/kedge.yaml no longer has {anchor:?}: update this test"
        );
        std::fs::write(&config, text.replace(anchor, "listen: 127.0.0.1:0")).expect("config");
        Checkout { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `kedge ARGS` in the copy, as a user's shell would start it.
    fn kedge(&self, args: &[String]) -> Command {
        let mut c = Command::new(support::kedge_bin());
        c.args(args)
            .current_dir(self.path())
            .env_remove("KEDGE_CONFIG")
            .env_remove("KEDGE_JOBS")
            .env_remove("KEDGE_STORE")
            .env_remove("KEDGE_CALENDARS")
            .env_remove("KEDGE_LOG");
        c
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// A daemon started by `$ kedge run … &`, stopped (SIGTERM) when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill(); // stuck: SIGKILL, and the test reports nothing more
        let _ = self.0.wait();
    }
}

/// Starts `args` (a `kedge run … &`) in the background.
fn background(at: &Checkout, mut args: Vec<String>) -> Background {
    let mut log = Stdio::null();
    if let Some(i) = args.iter().position(|a| a.starts_with("2>")) {
        let file = at.path().join(&args.remove(i)[2..]);
        log = std::fs::File::create(file).expect("log file").into();
    }
    let child = at
        .kedge(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start kedge run");
    Background(child)
}

/// What a command printed, stdout then stderr, normalised for `args`.
fn output(at: &Checkout, args: &[String]) -> Vec<String> {
    let out = at.kedge(args).output().expect("run kedge");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut lines = normalise(args, text.lines());
    trim_blank_tail(&mut lines);
    lines
}

/// Whether `args`' output shows times the store recorded from the wall
/// clock (see the module doc).
fn shows_record_times(args: &[String]) -> bool {
    matches!(
        args.first().map(String::as_str),
        Some("runs" | "fires" | "dlq")
    )
}

/// Lines as compared: trailing spaces dropped; for commands that show
/// record times, those times as `<time>` and runs of spaces as one.
fn normalise<'a>(args: &[String], lines: impl Iterator<Item = &'a str>) -> Vec<String> {
    lines
        .map(|l| {
            let l = l.trim_end();
            if !shows_record_times(args) {
                return l.to_string();
            }
            l.split_whitespace()
                .map(|w| {
                    if chrono::DateTime::parse_from_rfc3339(w).is_ok() {
                        "<time>"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Whether `actual` is what `expected` shows: equal lines, or equal JSON
/// values when the README shows JSON.
fn matches(expected: &[String], actual: &[String]) -> bool {
    let json = |lines: &[String]| serde_json::from_str::<serde_json::Value>(&lines.join("\n")).ok();
    let starts_json = expected
        .first()
        .is_some_and(|l| l.starts_with('{') || l.starts_with('['));
    if starts_json {
        return json(expected).is_some() && json(expected) == json(actual);
    }
    expected == actual
}

/// Runs one example; `Err` says which step printed what instead.
fn run_example(ex: &Example) -> Result<(), String> {
    let at = Checkout::new();
    for (path, content) in &ex.files {
        std::fs::write(at.path().join(path), content).expect("write file= block");
    }
    let mut daemon: Option<Background> = None;
    for step in &ex.steps {
        let mut args = shell_words(&step.command);
        assert_eq!(
            args.first().map(String::as_str),
            Some("kedge"),
            "README.md:{}: only kedge commands are examples",
            step.line
        );
        args.remove(0);
        if args.last().map(String::as_str) == Some("&") {
            args.pop();
            daemon = Some(background(&at, args));
            continue;
        }
        let expected = normalise(&args, step.expected.iter().map(String::as_str));
        let deadline = Instant::now()
            + if daemon.is_some() {
                SETTLE
            } else {
                Duration::ZERO
            };
        loop {
            let actual = output(&at, &args);
            if matches(&expected, &actual) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "README.md:{}: `{}` shows\n{}\nbut kedge printed\n{}",
                    step.line,
                    step.command,
                    expected.join("\n"),
                    actual.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

#[test]
fn readme_console_examples_show_what_kedge_prints() {
    let examples = examples(&readme());
    // The README's examples as of this test; a new one is picked up by
    // itself, one lost (a fence changed to `sh`) fails here.
    let commands: Vec<&str> = examples
        .iter()
        .flat_map(|e| e.steps.iter().map(|s| s.command.as_str()))
        .collect();
    for must in [
        "kedge validate",
        "kedge plan --job nightly-export --from 2026-03-07T00:00:00Z --count 3",
        "kedge runs --job flaky-report",
        "kedge plan --job db-backup --at 2026-06-01T23:00:00Z --json",
    ] {
        assert!(
            commands.contains(&must),
            "no README example runs `{must}`: {commands:#?}"
        );
    }
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|ex| run_example(ex).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn examples_are_read_as_marked() {
    let text = "intro\n\
        ```yaml file=jobs/x.yaml\nname: x\n```\n\
        ```console\n$ kedge validate\n# a comment\nline one\n\n$ kedge plan --data '{\"a\": 1}' \"two words\"\n```\n\
        ```sh\n$ kedge not-an-example\n```\n";
    let ex = examples(text);
    assert_eq!(ex.len(), 1);
    assert_eq!(
        ex[0].files,
        [(PathBuf::from("jobs/x.yaml"), "name: x\n".to_string())]
    );
    assert_eq!(ex[0].steps.len(), 2);
    assert_eq!(ex[0].steps[0].expected, ["line one"]);
    assert_eq!(
        shell_words(&ex[0].steps[1].command),
        ["kedge", "plan", "--data", "{\"a\": 1}", "two words"]
    );
    // Times in record tables are normalised; elsewhere they are figures.
    let runs = ["runs".to_string()];
    let plan = ["plan".to_string()];
    let line = "r-1  2   dead   2026-11-23T11:47:20.799Z  2026-11-23T11:47:21Z   boom ";
    assert_eq!(
        normalise(&runs, [line].into_iter()),
        ["r-1 2 dead <time> <time> boom"]
    );
    assert_eq!(normalise(&plan, [line].into_iter()), [line.trim_end()]);
    // JSON is compared as values; text exactly.
    let lines = |s: &str| s.lines().map(String::from).collect::<Vec<_>>();
    assert!(matches(
        &lines("{ \"a\": 1,\n \"b\": [2] }"),
        &lines("{\"b\":[2],\"a\":1}")
    ));
    assert!(!matches(&lines("{ \"a\": 1 }"), &lines("{\"a\":2}")));
    assert!(!matches(&lines("x  y"), &lines("x y")));
}
