#!/usr/bin/env python3
"""Time from `kedge run` to ready, and idle peak RSS, with N job definitions.

Usage: python3 tests/bench/startup.py [--jobs 100] [--reps 7] [--bin target/release/kedge]

Baselines measured in the same run, on the same definitions:
  - `kedge --version`   (process start: the floor for any command)
  - `kedge validate`    (read, parse and validate every definition)
Ready is the moment the daemon logs "kedge ready": store opened and migrated,
interrupted runs recovered, every cron loop started. Idle RSS is VmHWM/VmRSS
from /proc after 3 s of idling.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--jobs", type=int, default=100)
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--bin", default="target/release/kedge")
a = ap.parse_args()
BIN = os.path.abspath(a.bin)

ws = tempfile.mkdtemp(prefix="kedge-bench-")
os.makedirs(f"{ws}/jobs"); os.makedirs(f"{ws}/config")
open(f"{ws}/config/kedge.yaml", "w").write(
    "jobs_dir: jobs\nstore:\n  url: sqlite://state/kedge.db\nexecutor:\n  kind: local\n  local:\n    work_dir: runs\n")
zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Lord_Howe"]
for i in range(a.jobs):
    if i % 2 == 0:
        trig = f'  cron: "{i % 60} {i % 24} * * *"\n  timezone: {zones[i % len(zones)]}\n'
    else:
        trig = "  queue:\n    builtin: {}\n"
    open(f"{ws}/jobs/job-{i:03}.yaml", "w").write(f"""name: job-{i:03}
trigger:
{trig}retry:
  max_attempts: 3
  backoff: 30s
template:
  completionMode: Indexed
  completions: 4
  parallelism: 2
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: registry.example/app:1.0
          command: ["sh", "-c", "echo $JOB_COMPLETION_INDEX"]
          env:
            - {{name: MODE, value: batch}}
""")

def timed(args):
    t = time.perf_counter()
    subprocess.run([BIN] + args, cwd=ws, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) / 1024.0
    return out

def start_to_ready(fresh):
    if fresh:
        subprocess.run(["rm", "-rf", f"{ws}/state"])
    env = dict(os.environ, KEDGE_LOG="info")
    t = time.perf_counter()
    p = subprocess.Popen([BIN, "run", "--log-format", "json"], cwd=ws, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "kedge ready" in line:
            ready = time.perf_counter() - t
            break
    else:
        sys.exit("daemon exited before ready")
    time.sleep(3)
    mem = status(p.pid)
    p.terminate(); p.wait(timeout=30)
    return ready, mem

version = [timed(["--version"]) for _ in range(a.reps)]
validate = [timed(["validate"]) for _ in range(a.reps)]
cold = [start_to_ready(True) for _ in range(a.reps)]
warm = [start_to_ready(False) for _ in range(a.reps)]

med = statistics.median
v, val = med(version), med(validate)
c, w = med(r for r, _ in cold), med(r for r, _ in warm)
hwm = max(m["VmHWM"] for _, m in cold + warm)
rss = med(m["VmRSS"] for _, m in cold + warm)
print(f"jobs={a.jobs} reps={a.reps} (medians)")
print(f"  kedge --version          {v*1000:8.1f} ms   (baseline 1)")
print(f"  kedge validate           {val*1000:8.1f} ms   {val/v:5.1f}x --version")
print(f"  run → ready, new store   {c*1000:8.1f} ms   {c/v:5.1f}x --version, {c/val:4.1f}x validate")
print(f"  run → ready, warm store  {w*1000:8.1f} ms   {w/v:5.1f}x --version, {w/val:4.1f}x validate")
print(f"  idle RSS after 3 s       {rss:8.1f} MiB  (peak VmHWM {hwm:.1f} MiB)")
subprocess.run(["rm", "-rf", ws])
