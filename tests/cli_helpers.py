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
    return subprocess.run([sys.executable, "-m", "txsuite.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def run_records(tmp_path, matrix_text: str, env=None) -> list:
    """Write MATRIX_TEXT to tmp_path/m.yaml, `txsuite run` it (run id `r`), check it exited 0,
    and return the run's records."""
    import yaml
    from txsuite.results import RunFolder
    (tmp_path / "m.yaml").write_text(matrix_text)
    out = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return RunFolder(tmp_path / "results" / yaml.safe_load(matrix_text)["name"] / "r").records()

