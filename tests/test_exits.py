"""Every command's exits, signals and outputs (issue 28): an output that cannot be written exits
2 with one line, never a traceback's 1 (which `guard` and `ab` use for FAIL); Ctrl-C and SIGTERM
exit 130 and 143 with what finished, in every command; a report that was asked for and not
written is exit 2; names txsuite gives its own files are refused as run ids; a report never
replaces another run's; user text is printed as written; csv cells are never formulas.

Tests that signal a command wait for an event it produces (a record, a line, a marker file it
writes), never for a fixed time."""
from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from txsuite.cli import main
from txsuite.config.matrix import RESERVED_NAMES, name_problem
from txsuite.config.record import Record
from txsuite.results import RunFolder

REPO = Path(__file__).resolve().parents[1]
TINY = """\
name: ex
fixed:
  model: {preset: tiny, n_layer: 1, d_model: 32, n_head: 2}
  data: {dataset: markov, seq_len: 16}
  train: {steps: 3, warmup_steps: 1, micro_batch: 2, eval_batches: 1}
  measure: {threads: 1}
guard: {tokens_per_s: -50%}
"""
SEEDS = "axes:\n  train.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"  # a sweep still running when signalled
EXIT_CODES = {0, 1, 2, 3, 130, 143}


def cli(*args, cwd, stdout=subprocess.PIPE, preexec_fn=None, prefix=()):
    """`txsuite ARGS` in a fresh process with SIGINT at its default (a test session started in the
    background ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt)."""
    def child():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn:
            preexec_fn()
    return subprocess.Popen([sys.executable, *(prefix or ["-m", "txsuite.cli"]), *args], cwd=cwd, stdout=stdout,
                            stderr=subprocess.PIPE, text=True, preexec_fn=child)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out or "", err


def wait_for(condition, proc, what: str, timeout=300):
    """Poll CONDITION until true; fail (not hang) if the process ends first or TIMEOUT passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.1)


def records_in(run: Path) -> int:
    path = run / "records.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def one_error_line(err: str) -> None:
    assert "Traceback" not in err and "Aborted!" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("txsuite:")]) == 1, err


# ------------------------------------------------------------------ 1. output that cannot be written

def _plan_folder(tmp_path: Path) -> Path:
    (tmp_path / "m.yaml").write_text(TINY)
    return tmp_path


@pytest.mark.parametrize("args", [("plan", "m.yaml"), ("--help",), ("plan", "m.yaml", "--json")])
def test_output_to_a_full_device_exits_2_with_one_line(tmp_path, args):
    with open("/dev/full", "w") as full:
        code, _, err = finish(cli(*args, cwd=_plan_folder(tmp_path), stdout=full))
    assert code == 2, err
    one_error_line(err)
    assert "could not write to stdout (No space left on device)" in err


def test_output_to_a_closed_stdout_or_a_pipe_without_reader_exits_2(tmp_path):
    _plan_folder(tmp_path)
    code, _, err = finish(cli("plan", "m.yaml", cwd=tmp_path, stdout=None, preexec_fn=lambda: os.close(1)))
    assert code == 2 and "could not write to stdout (it is closed)" in err, err
    one_error_line(err)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write is EPIPE
    try:
        code, _, err = finish(cli("plan", "m.yaml", cwd=tmp_path, stdout=write))
    finally:
        os.close(write)
    assert code == 2 and "could not write to stdout" in err, err
    one_error_line(err)


def test_stdout_and_stderr_both_full_still_exit_2(tmp_path):
    _plan_folder(tmp_path)
    with open("/dev/full", "w") as out, open("/dev/full", "w") as err:
        proc = subprocess.run([sys.executable, "-m", "txsuite.cli", "plan", "m.yaml"], cwd=tmp_path, stdout=out,
                              stderr=err, timeout=300)
    assert proc.returncode == 2


@pytest.fixture(scope="module")
def closed_stdout_run(tmp_path_factory):
    """A real one-cell run whose stdout was closed from the start: (exit code, stderr, folder)."""
    root = tmp_path_factory.mktemp("exits")
    (root / "m.yaml").write_text(TINY)
    code, _, err = finish(cli("run", "m.yaml", "--run-id", "r", "--no-report", cwd=root, stdout=None,
                              preexec_fn=lambda: os.close(1)))
    return code, err, root


def test_a_run_whose_stdout_is_closed_records_its_cells_and_exits_2(closed_stdout_run):
    code, err, root = closed_stdout_run
    assert code == 2, err
    one_error_line(err)
    assert "its own exit code: 0" in err
    records = RunFolder(root / "results" / "ex" / "r").records()
    assert [r.status for r in records] == ["ok"]


def test_guard_and_baseline_that_cannot_write_exit_2_never_1(closed_stdout_run):
    _, _, root = closed_stdout_run
    run = "results/ex/r"
    with open("/dev/full", "w") as full:
        code, _, err = finish(cli("guard", run, "--baseline", run, cwd=root, stdout=full))
    assert code == 2 and "could not write to stdout" in err, err  # 1 would read as FAIL
    one_error_line(err)
    code, _, err = finish(cli("baseline", run, "-o", "/dev/full", cwd=root))
    assert code == 2 and "-o /dev/full" in err, err
    one_error_line(err)


# ------------------------------------------------------------------ 2. signals: 130 / 143 with what finished

HOLD = '''
import importlib, pathlib, sys, time
target = importlib.import_module("{module}")  # the module: txsuite.cli.plan the attribute is the command
marker = pathlib.Path(sys.argv[1])
def hold(*args, **kwargs):  # stands in for {name}: says it started, then waits for a signal
    marker.write_text("started")
    time.sleep(600)
    raise SystemExit("no signal came")
target.{name} = hold
from txsuite.cli import main
sys.argv = ["txsuite"] + sys.argv[2:]
main()
'''


def held(tmp_path: Path, module: str, name: str) -> tuple[list[str], Path]:
    """A `python` prefix running txsuite with MODULE.NAME replaced by a wait for a signal, and the
    marker file it writes when that point is reached."""
    script = tmp_path / "held.py"
    script.write_text(HOLD.format(module=module, name=name))
    return [str(script), str(tmp_path / "reached")], tmp_path / "reached"


def test_ctrl_c_twice_the_second_during_the_report_exits_130_with_the_summary(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY + SEEDS)
    prefix, reached = held(tmp_path, "txsuite.report.run_report", "render_run")
    proc = cli("run", "m.yaml", "--run-id", "r", cwd=tmp_path, prefix=prefix)
    run = tmp_path / "results" / "ex" / "r"
    wait_for(lambda: records_in(run) >= 1, proc, "a first record")
    proc.send_signal(signal.SIGINT)
    wait_for(reached.exists, proc, "the report rendering after the first Ctrl-C")
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "interrupted: repetitions finished and recorded:" in err and "ok" in err
    assert "not rendered (interrupted again; `txsuite report" in err and "resumes" in err
    assert "Aborted!" not in err and "Traceback" not in err
    assert records_in(run) >= 1


def test_ctrl_c_during_the_final_report_exits_130_with_every_cell_finished(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    prefix, reached = held(tmp_path, "txsuite.report.run_report", "render_run")
    proc = cli("run", "m.yaml", "--run-id", "r", cwd=tmp_path, prefix=prefix)
    wait_for(reached.exists, proc, "the report rendering at the end of the sweep")
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "repetitions finished and recorded: 1 ok" in err and "not rendered" in err
    assert "Aborted!" not in err and "Traceback" not in err


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted:"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM):")])
def test_a_signal_in_any_command_exits_with_its_code_and_one_line(tmp_path, signum, code, said):
    (tmp_path / "m.yaml").write_text(TINY)
    prefix, reached = held(tmp_path, "txsuite.cli.plan", "show_plan")
    proc = cli("plan", "m.yaml", cwd=tmp_path, prefix=prefix)
    wait_for(reached.exists, proc, "the plan's printing")
    proc.send_signal(signum)
    got, _, err = finish(proc)
    assert got == code, err
    assert f"{said} `txsuite plan` stopped before it finished." in err
    assert "Aborted!" not in err and "Traceback" not in err


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "list", "--porcelain"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted:"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM):")])
def test_ab_interrupted_exits_130_or_143_with_the_rounds_done(tmp_path, signum, code, said):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip(reason="not a git checkout")
    (tmp_path / "m.yaml").write_text(TINY)
    before = _worktrees()
    proc = cli("ab", str(tmp_path / "m.yaml"), "--base", "HEAD", "--min-rounds", "2", "--max-rounds", "8",
               "--results-dir", str(tmp_path / "results"), "--run-id", "t", "--json", str(tmp_path / "v.json"),
               cwd=REPO)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    while True:  # the first repetition measured: a line "  round 1 base ex: ok, ..."
        line = lines.get(timeout=300)
        assert line is not None, f"ab ended (exit {proc.wait()}) before a round: {proc.stderr.read()}"
        if line.startswith("  round 1 "):
            break
    proc.send_signal(signum)
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == code, err
    assert f"{said} " in err and "rounds finished on both sides" in err and "cell repetitions recorded" in err
    assert "No verdict" in err and "Aborted!" not in err and "Traceback" not in err
    assert not (tmp_path / "v.json").exists()  # an interrupted A/B decides nothing
    assert _worktrees() == before  # the temporary worktree is removed all the same


# ------------------------------------------------------------------ 3. a report asked for and not written

def test_a_report_that_cannot_be_written_exits_2_with_the_command_to_retry(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    (tmp_path / "reports" / "ex" / "r.html").mkdir(parents=True)  # root can write anywhere; not into a folder
    code, out, err = finish(cli("run", "m.yaml", "--run-id", "r", cwd=tmp_path))
    assert code == 2, out + err
    one_error_line(err)
    assert "could not be written to reports/ex/r.html" in err and "`txsuite report results/ex/r`" in err
    assert [r.status for r in RunFolder(tmp_path / "results" / "ex" / "r").records()] == ["ok"]


def test_a_reports_folder_that_cannot_be_written_is_refused_before_any_cell(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "ex").write_text("a file where the matrix's reports go")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "m.yaml"), "--run-id", "r",
                                       "--results-dir", str(tmp_path / "results"),
                                       "--reports-dir", str(tmp_path / "reports")])
    assert result.exit_code == 2, result.output
    assert "cannot write reports into" in result.output and "--no-report" in result.output
    assert not (tmp_path / "results" / "ex" / "r" / "records.jsonl").exists()


# ------------------------------------------------------------------ 4. reserved names

@pytest.mark.parametrize("name", sorted(RESERVED_NAMES) + ["Records.JSONL"])
def test_names_txsuite_gives_its_files_are_refused_as_run_ids(tmp_path, name):
    assert name_problem(name) and "names a folder" in name_problem(name)
    (tmp_path / "m.yaml").write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "m.yaml"), "--run-id", name,
                                       "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 2 and "gives its own files" in result.output, result.output
    assert not (tmp_path / "results").exists()


def test_a_reserved_matrix_name_is_refused(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY.replace("name: ex", "name: matrix.json"))
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2 and "key 'name'" in result.output, result.output


# ------------------------------------------------------------------ 5. a report never replaces another run's

def crafted_run(folder: Path, label: str = "cell") -> Path:
    run = RunFolder(folder)
    for repeat in range(2):
        run.append(Record(matrix="ex", run_id=folder.name, cell_id="c1", repeat=repeat, config={"precision": "fp32"},
                          status="ok", label=label, metrics={"tokens_per_s": 100.0 + repeat}))
    return folder


def test_two_runs_of_one_id_in_two_results_dirs_get_two_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = crafted_run(tmp_path / "a" / "ex" / "r"), crafted_run(tmp_path / "b" / "ex" / "r")
    runner = CliRunner()
    made = runner.invoke(main, ["report", str(first)])
    assert made.exit_code == 0 and "wrote reports/ex/r.html" in made.output, made.output
    kept = (tmp_path / "reports" / "ex" / "r.html").read_bytes()
    other = runner.invoke(main, ["report", str(second)])
    assert other.exit_code == 0, other.output
    assert "reports/ex/r.html is the report of another run" in other.output
    assert "wrote reports/ex/r-2.html" in other.output
    assert (tmp_path / "reports" / "ex" / "r.html").read_bytes() == kept
    again = runner.invoke(main, ["report", str(first)])  # each run keeps its own file
    assert "wrote reports/ex/r.html" in again.output and "another run" not in again.output


# ------------------------------------------------------------------ 6. --only that matches nothing

@pytest.mark.parametrize("args", [["plan"], ["plan", "--json"], ["run", "--dry-run"], ["run"]])
def test_only_matching_no_cell_is_exit_2_in_plan_and_run(tmp_path, args):
    (tmp_path / "m.yaml").write_text(TINY)
    result = CliRunner().invoke(main, [args[0], str(tmp_path / "m.yaml"), *args[1:], "--only", "nomatch",
                                       *(["--results-dir", str(tmp_path / "res")] if args[0] == "run" else [])])
    assert result.exit_code == 2 and "--only 'nomatch' matches no cell" in result.output, result.output
    assert not (tmp_path / "res").exists()


# ------------------------------------------------------------------ 7. user text printed as written

def test_labels_and_patterns_are_printed_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ":x:[b].txt").write_text("a small corpus of plain words to train on " * 40)
    (tmp_path / "m.yaml").write_text(TINY + 'axes:\n  data.dataset: [":x:[[]b].txt", markov]\n')
    planned = CliRunner().invoke(main, ["plan", "m.yaml", "--json"])
    labels = [c["label"] for c in json.loads(planned.output)["cells"]]
    assert ":x:" in labels[0]
    shown = CliRunner().invoke(main, ["plan", "m.yaml"])
    assert shown.exit_code == 0 and labels[0] in shown.output and "\u274c" not in shown.output, shown.output
    refused = CliRunner().invoke(main, ["plan", "m.yaml", "--only", ":x:[bold]"])
    assert refused.exit_code == 2 and "--only ':x:[bold]' matches no cell" in refused.output, refused.output


# ------------------------------------------------------------------ 8. csv cells are never formulas

def test_csv_text_cells_are_never_spreadsheet_formulas(tmp_path):
    from txsuite.report.export import export_table
    run = crafted_run(tmp_path / "res" / "ex" / "r", label='=HYPERLINK("http://x","y")')
    rows = list(csv.DictReader(export_table(run, tmp_path / "t.csv", "csv").open()))
    assert rows[0]["label"] == '\'=HYPERLINK("http://x","y")' and rows[0]["tokens_per_s"] == "100.5"
    raw = json.loads(export_table(run, tmp_path / "t.json", "json").read_text())
    assert raw[0]["label"] == '=HYPERLINK("http://x","y")'  # values, not a spreadsheet: kept as they are


def test_a_signal_whose_exception_was_lost_still_decides_the_exit(monkeypatch):
    """A SIGTERM that lands where Python ignores exceptions (logging's fork hooks: "Exception
    ignored in _releaseLock") must not let `ab` run on to PASS and exit 0."""
    from txsuite.cli import common
    common.signalled[:] = [signal.SIGTERM]
    with pytest.raises(common.Terminated):
        common.raise_if_signalled()  # the next progress event stops the command
    common.signalled.clear()
    real_help = type(main).get_help

    def help_then_signal(self, ctx):  # the signal arrives during the command; its exception is lost
        common.signalled.append(signal.SIGTERM)
        return real_help(self, ctx)
    monkeypatch.setattr(type(main), "get_help", help_then_signal)
    with pytest.raises(SystemExit) as exit_:
        main.main(["--help"])  # a command that ran to its end after the signal
    common.signalled.clear()  # recorded for this process: the next test in it must not inherit the signal
    assert exit_.value.code == 143


LOST_EXCEPTIONS = """
import gc, signal
from txsuite.cli.common import OutputGuard, Terminated

class RaisesWhenCollected:  # Python ignores (and prints) what a finaliser raises
    def __init__(self, exc):
        self.exc = exc
    def __del__(self):
        raise self.exc

with OutputGuard():
    RaisesWhenCollected(Terminated(signal.SIGTERM))
    RaisesWhenCollected(KeyboardInterrupt())
    RaisesWhenCollected(ValueError("a real defect"))
    gc.collect()
"""


def test_a_lost_signal_prints_no_traceback_but_a_lost_defect_does():
    """A SIGTERM raised in logging's fork hook while `ab` started a child printed "Exception
    ignored in: <function _acquireLock>" with a traceback above the summary."""
    done = subprocess.run([sys.executable, "-c", LOST_EXCEPTIONS], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Terminated" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert "ValueError: a real defect" in done.stderr
