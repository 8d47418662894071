"""Running the real `txsuite` command line from tests."""
import os
import subprocess
import sys


def txsuite(*args, cwd, env=None, report=False):
    """`txsuite ARGS...` in a fresh process, as a user would run it; returns the CompletedProcess.
    A `run` renders no report unless `report` (rendering costs ~5 s per run on 2 cores, and the
    tests that read a run's report ask for it)."""
    if args and args[0] == "run" and not report and "--dry-run" not in args:
        args = (*args, "--no-report")
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)
