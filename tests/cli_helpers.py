"""Running the real `txsuite` command line from tests."""
import os
import subprocess
import sys


def txsuite(*args, cwd, env=None):
    """`txsuite ARGS...` in a fresh process, as a user would run it; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "suite.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)
