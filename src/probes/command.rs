//! The `command` probe: a program that prints the number, in a process
//! group of its own that is killed when the probe ends.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{first_line, shorten, ProbeError};

/// The most of a command's stdout kept (a number needs far less).
const STDOUT_LIMIT: usize = 64 * 1024;
/// The most of a command's stderr kept (for the first line in errors).
const STDERR_LIMIT: usize = 64 * 1024;
/// How long a timed-out command's killed process is waited for.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// Kills a process group with SIGKILL, at the latest when dropped (so a
/// cancelled measurement leaves nothing running either).
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals that process group;
            // it has no memory-safety preconditions. ESRCH (group already
            // gone) is fine.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `r` to its end, keeping the first `limit` bytes (the rest is
/// drained, so the writer never blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(
    mut r: R,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = limit.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

pub(super) async fn measure(
    argv: &[String],
    job: &str,
    timeout: Duration,
) -> Result<f64, ProbeError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(argv.get(1..).unwrap_or_default())
        .env("KEDGE_JOB", job)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ProbeError::CommandSpawn {
        program: program.clone(),
        source,
    })?;
    // The child leads its own group: its pid is the group id.
    let mut group = GroupKill(child.id().map(|p| p as i32));
    let io_err = |source| ProbeError::CommandIo {
        program: program.clone(),
        source,
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let out = async {
            match stdout {
                Some(s) => read_capped(s, STDOUT_LIMIT).await,
                None => Ok((Vec::new(), false)),
            }
        };
        let err = async {
            match stderr {
                Some(s) => read_capped(s, STDERR_LIMIT).await,
                None => Ok((Vec::new(), false)),
            }
        };
        let (out, err) = tokio::join!(out, err);
        let status = child.wait().await;
        (out, err, status)
    };
    let finished = tokio::time::timeout(timeout, run).await;
    // On time or not, nothing of the probe keeps running.
    group.kill();
    let Ok((out, err, status)) = finished else {
        // Reap the killed leader so it does not linger as a zombie; one
        // stuck in the kernel (uninterruptible I/O) is left to tokio's
        // background reaper rather than stretching the timeout.
        let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
        return Err(ProbeError::Timeout {
            kind: "command",
            after: timeout,
        });
    };
    let status = status.map_err(io_err)?;
    let (out, out_truncated) = out.map_err(io_err)?;
    let (err, _) = err.map_err(io_err)?;
    if !status.success() {
        let stderr = first_line(&err);
        return Err(match status.code() {
            Some(code) => ProbeError::CommandExit {
                program,
                code,
                stderr,
            },
            None => {
                use std::os::unix::process::ExitStatusExt;
                ProbeError::CommandSignal {
                    program,
                    signal: status.signal().unwrap_or(0),
                    stderr,
                }
            }
        });
    }
    let text = String::from_utf8_lossy(&out);
    let trimmed = text.trim();
    match trimmed.parse::<f64>() {
        Ok(v) if !out_truncated => Ok(v),
        _ => Err(ProbeError::CommandNotNumber {
            program,
            output: shorten(trimmed),
        }),
    }
}
