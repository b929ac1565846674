//! The Python tools the deploy and schema tests shell out to
//! (`tests/deploy/tools.py`): Helm's engine (helm-python-sdk), the
//! Kubernetes schemas (kubernetes-validate) and a JSON Schema validator
//! (jsonschema), in the venv `.ci/run` makes from `.ci/python-tools.txt`.
//!
//! Where the venv is missing the test fails when `CI` is set and is
//! skipped, loudly, otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The venv: `KEDGE_CI_VENV`, else `~/.cache/kedge-ci/venv` (where `.ci/run` makes it).
pub fn venv() -> PathBuf {
    match std::env::var_os("KEDGE_CI_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kedge-ci/venv")
        }
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tools, when the venv has them (and `kubectl` is on PATH, if `kubectl`).
/// Otherwise panics under `CI`, or prints a loud SKIPPED line for `test`
/// and returns `None`.
pub fn tools(test: &str, kubectl: bool) -> Option<Tools> {
    let python = venv().join("bin/python");
    let imports = Command::new(&python)
        .args([
            "-c",
            "import helm_python, kubernetes_validate, jsonschema, yaml",
        ])
        .output();
    let mut missing = match imports {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{} cannot import the tools: {}",
            python.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Some(format!("no {} ({e})", python.display())),
    };
    if kubectl
        && missing.is_none()
        && Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_err()
    {
        missing = Some("kubectl is not on PATH (apt-get install kubernetes-client)".into());
    }
    let Some(why) = missing else {
        return Some(Tools { python });
    };
    let fix = "bash .ci/run installs them; or: python3 -m venv ~/.cache/kedge-ci/venv && ~/.cache/kedge-ci/venv/bin/pip install -r .ci/python-tools.txt";
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}, and CI is set. {fix}");
    }
    eprintln!("\n!!!!! SKIPPED {test}: {why}. {fix} !!!!!\n");
    None
}

pub struct Tools {
    python: PathBuf,
}

impl Tools {
    /// Runs `tools.py ARGS` with `stdin` as JSON; returns its JSON answer,
    /// or panics with its stderr.
    pub fn run(&self, args: &[&str], stdin: Option<&serde_json::Value>) -> serde_json::Value {
        let mut child = Command::new(&self.python)
            .arg(repo().join("tests/deploy/tools.py"))
            .args(args)
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tools.py");
        let input = stdin.map(|v| v.to_string()).unwrap_or_default();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .expect("write to tools.py");
        let out = child.wait_with_output().expect("tools.py output");
        assert!(
            out.status.success(),
            "tools.py {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tools.py prints JSON")
    }
}
