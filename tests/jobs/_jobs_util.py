"""Helpers for the job tests: real worker processes and polling."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

WORKER_ARGS = ["--poll", "0.2", "--lease", "4", "--heartbeat", "1"]


def start_worker(storage: str, cwd: Path, log: Path, *extra: str, max_jobs: int = 1) -> subprocess.Popen:
    """A real ``fitplan worker`` process (its own session, so kill -9 hits it alone)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fitplan", "worker", "--storage", storage, "--max-jobs", str(max_jobs),
           *WORKER_ARGS, *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(pred, timeout: float, what: str, every: float = 0.1):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
