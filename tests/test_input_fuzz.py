"""Fuzzing what users and disks hand txsuite besides matrices (those: test_matrix_fuzz.py):
records files, run ids and command-line flags. Whatever the input, txsuite answers with a
result, a warning naming the file and line, or a one-paragraph error with exit code 2; never
a traceback."""
from __future__ import annotations

import errno
import io
import json
import string
import sys
import warnings
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsuite.cli import main
from txsuite.config.matrix import name_problem
from txsuite.config.record import STATUSES, Record
from txsuite.report.frame import build_cell_table
from txsuite.report.summary import summarize
from txsuite.results import RecordsWarning, RunFolder

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10)
metric_values = st.one_of(json_values, st.floats(min_value=0, max_value=1e6),
                          st.lists(st.lists(st.floats(0, 10), min_size=3, max_size=3), max_size=4))


@st.composite
def record_lines(draw) -> str:
    """A line of records.jsonl: a valid record with arbitrary metric values, a record with a field
    of the wrong type, or garbage (cut JSON, a list, text)."""
    kind = draw(st.sampled_from(["record", "wrong-field", "garbage"]))
    base = {"matrix": "m", "run_id": "r", "cell_id": draw(st.sampled_from(["a", "b", "c"])),
            "repeat": draw(st.integers(0, 2)), "config": {"precision": draw(st.sampled_from(["fp32", "bf16"]))},
            "status": draw(st.sampled_from(STATUSES)), "label": "cell",
            "metrics": draw(st.dictionaries(st.sampled_from(["tokens_per_s", "peak_mem_bytes", "val_loss",
                                                             "loss_curve", "mfu", "step_times_s", "train_mem_bytes"]),
                                            metric_values, max_size=5))}
    if kind == "wrong-field":
        base[draw(st.sampled_from(list(base)))] = draw(json_values)
    line = json.dumps(base)
    if kind == "garbage":
        line = draw(st.one_of(st.just(line[: draw(st.integers(0, len(line)))]), st.text(max_size=30),
                              st.just("[1, 2, 3]")))
    return line.replace("\n", " ")


@settings(max_examples=150, **SETTINGS)
@given(lines=st.lists(record_lines(), max_size=8), torn=st.booleans())
def test_any_records_file_reads_as_records_and_warnings(tmp_path_factory, lines, torn):
    run = tmp_path_factory.mktemp("run", numbered=True)
    (run / "records.jsonl").write_text("\n".join(lines) + ("" if torn else "\n"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = RunFolder(run).records()
    assert all(isinstance(r, Record) for r in records)
    for w in caught:
        assert issubclass(w.category, RecordsWarning) and "records.jsonl, line" in str(w.message)
    table = build_cell_table(records)  # the report's one source of numbers copes with any of them
    summarize(table)


@settings(max_examples=8, **SETTINGS)
@given(lines=st.lists(record_lines(), min_size=1, max_size=6))
def test_any_records_file_renders_a_report(tmp_path_factory, lines):
    from txsuite.report import render_report
    run = tmp_path_factory.mktemp("run", numbered=True)
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordsWarning)
        assert render_report(run, run / "report.html").stat().st_size > 0


@settings(max_examples=2000, deadline=None)
@given(name=st.text(alphabet=string.printable + "é/\\\x00", max_size=120))
def test_a_run_id_is_valid_and_stays_inside_or_is_refused(name):
    problem = name_problem(name)
    if problem is None:
        root = Path("/results/m")
        assert (root / name).resolve().parent == root and len(name) <= 100
    else:
        assert "names a folder" in problem


timeouts = st.one_of(st.sampled_from(["0", "-5", "nan", "inf", "1e309", "", "abc", "3"]), st.floats().map(str))
sizes = st.one_of(st.sampled_from(["4GiB", "0", "-1GiB", "12 parsecs", "1e3", "", "nanGiB"]), st.text(max_size=6))
run_ids = st.one_of(st.sampled_from(["../x", ".", "a/b", "ok-id", "x" * 200, "records.jsonl", "Matrix.json", "cells",
                                     "env.json", "ab"]), st.text(max_size=10))


@settings(max_examples=200, **SETTINGS)
@given(timeout=timeouts, memory=sizes, run_id=run_ids)
def test_any_run_flags_dry_run_or_exit_2(tmp_path_factory, timeout, memory, run_id):
    folder = tmp_path_factory.mktemp("flags", numbered=True)
    (folder / "m.yaml").write_text("name: m\nfixed: {model: tiny, data: {dataset: markov}}\n")
    result = CliRunner().invoke(main, ["run", str(folder / "m.yaml"), "--dry-run", "--timeout", timeout,
                                       "--memory-limit", memory, "--run-id", run_id,
                                       "--results-dir", str(folder / "res")])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert not (folder / "res").exists()  # a dry run writes nothing


# --- every command's output, whatever happens to stdout (issue 28) -----------------------------

EXIT_CODES = {0, 1, 2, 3, 130, 143}
user_text = st.lists(st.sampled_from(list(":x[]/\\=+-@ab") + ["\u274c", ":x:", "[/]", "[bold]", " red"]),
                     max_size=8).map("".join)


class FailingStdout(io.StringIO):
    """A stdout that fails after LIMIT characters as a full disk (ENOSPC), a pipe without reader
    (EPIPE) or a closed file (ValueError) fails."""

    def __init__(self, limit: int, how: str) -> None:
        super().__init__()
        self.limit, self.how, self.failed = limit, how, False

    def write(self, text):
        if self.tell() + len(text) > self.limit:
            self.failed = True
            if self.how == "full":
                raise OSError(errno.ENOSPC, "No space left on device")
            if self.how == "pipe":
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            raise ValueError("I/O operation on closed file.")
        return super().write(text)


@settings(max_examples=150, **SETTINGS)
@given(command=st.sampled_from(["help", "plan", "plan-json", "dry-run", "only", "run-id", "ab-help", "guard-help"]),
       limit=st.one_of(st.just(0), st.integers(1, 4000)), how=st.sampled_from(["full", "pipe", "closed", "none"]),
       text=user_text)
def test_any_command_with_a_failing_stdout_exits_with_a_documented_code(tmp_path_factory, command, limit, how,
                                                                        text):
    """Closed, full or piped-to-nobody stdout, odd run ids, emoji and markup in user text: the
    exit code is one the README documents, never a traceback, and 2 whenever output failed."""
    folder = tmp_path_factory.mktemp("out", numbered=True)
    (folder / "m.yaml").write_text("name: m\nfixed: {model: tiny, data: {dataset: markov}}\n")
    matrix = str(folder / "m.yaml")
    args = {"help": ["--help"], "plan": ["plan", matrix], "plan-json": ["plan", matrix, "--json"],
            "dry-run": ["run", matrix, "--dry-run", "--results-dir", str(folder / "res")],
            "only": ["plan", matrix, "--only", text],
            "run-id": ["run", matrix, "--dry-run", "--run-id", text or "x", "--results-dir", str(folder / "res")],
            "ab-help": ["ab", "--help"], "guard-help": ["guard", "--help"]}[command]
    stream = None if how == "closed" else FailingStdout(limit if how != "none" else 10**9, how)
    saved, err = (sys.stdout, sys.stderr), io.StringIO()
    sys.stdout, sys.stderr = stream, err
    try:
        main.main(args=args, prog_name="txsuite", standalone_mode=True)
        code = 0
    except SystemExit as exc:  # anything else (a traceback) fails the test
        code = exc.code or 0
    finally:
        sys.stdout, sys.stderr = saved
    assert code in EXIT_CODES, err.getvalue()
    if how == "closed" or (stream is not None and stream.failed):
        assert code == 2 and "could not write to stdout" in err.getvalue(), err.getvalue()
    else:
        shown = stream.getvalue() + err.getvalue()
        assert "\u274c" not in shown or "\u274c" in text  # ':x:' is never drawn as an emoji
        if command == "only" and code == 2:  # the refusal quotes the pattern as typed, markup and all
            assert f"--only {text!r} matches no cell" in err.getvalue(), err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert not (folder / "res").exists()
