"""Fuzzing what users and disks hand txsuite besides matrices (those: test_matrix_fuzz.py):
records files, run ids and command-line flags. Whatever the input, txsuite answers with a
result, a warning naming the file and line, or a one-paragraph error with exit code 2; never
a traceback."""
from __future__ import annotations

import json
import string
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
run_ids = st.one_of(st.sampled_from(["../x", ".", "a/b", "ok-id", "x" * 200]), st.text(max_size=10))


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
