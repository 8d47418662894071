"""What a newcomer types and gets back: overrides on the command line, the run's answers in the
terminal, the plan's time estimate, compare's summary and its refusal of two experiments."""
import json
import shutil

import pytest

from txsuite.config.matrix import MatrixError, load_matrix
from txsuite.results import RunFolder
from cli_helpers import txsuite

TINY = """\
name: tiny
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 32, symbols: 16}
  train: {steps: 6, warmup_steps: 1, micro_batch: 4, lr: 3.0e-3}
axes:
  memory.activation_checkpointing: [none, full]
repeats: 1
"""


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    return tmp_path / "m.yaml"


def test_overrides_set_a_cell_setting_an_axis_and_a_top_level_key(tiny):
    matrix = load_matrix(tiny, overrides=["train.steps=3", "precision=[fp32,bf16]", "repeats=2"])
    assert {c.config.train.steps for c in matrix.cells} == {3}
    assert sorted(c.config.precision for c in matrix.cells) == ["bf16", "bf16", "fp32", "fp32"]
    assert matrix.repeats == 2 and matrix.overrides == ["train.steps=3", "precision=[fp32,bf16]", "repeats=2"]
    # an axis the command line fixes is no axis any more: its labels would name a value no cell has
    fixed = load_matrix(tiny, overrides=["memory.activation_checkpointing=full"])
    assert [c.config.memory.activation_checkpointing for c in fixed.cells] == ["full"]
    assert "memory.activation_checkpointing" not in fixed.axes


@pytest.mark.parametrize("override, words", [
    ("train.stepz=3", ["the command line", "train.stepz", "did you mean 'steps'"]),
    ("precision=fp12", ["the command line", "'fp12' is not allowed", "bf16"]),
    ("train.steps=-1", ["the command line", "expected an integer >= 1"]),
    ("axes.precision=x", ["the command line", "'axes' shapes the matrix", "edit the matrix file"]),
    ("steps", ["expected KEY=VALUE"]),
])
def test_a_bad_override_is_named_as_typed(tiny, override, words):
    with pytest.raises(MatrixError) as caught:
        load_matrix(tiny, overrides=[override])
    for word in words:
        assert word in str(caught.value)


def test_run_with_an_override_records_it_and_prints_the_reports_answers(tiny):
    out = txsuite("run", "m.yaml", "train.steps=3", "--run-id", "r", cwd=tiny.parent, report=True)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tiny.parent / "results" / "tiny" / "r"
    assert {r.config["train"]["steps"] for r in RunFolder(run_dir).records()} == {3}
    assert json.loads((run_dir / "matrix.json").read_text())["overrides"] == ["train.steps=3"]
    # the terminal answers before it says where the page is
    answers = out.stdout[out.stdout.index("2 cells varying"):out.stdout.index("done:")]
    assert "Fastest — " in answers and "Least memory — " in answers and "Pareto front" in answers

    misspelt = txsuite("run", "m.yaml", "train.stepz=3", cwd=tiny.parent)
    assert misspelt.returncode == 2 and "did you mean 'steps'" in misspelt.stderr
    assert "Traceback" not in misspelt.stderr


def test_plan_estimates_the_sweep_from_what_this_host_ran(tiny, tmp_path):
    cache = {"TXSUITE_CACHE": str(tmp_path / "fresh-cache")}
    before = txsuite("plan", "m.yaml", cwd=tiny.parent, env=cache)
    assert before.returncode == 0 and "no estimate yet" in before.stdout
    assert txsuite("run", "m.yaml", "--only", "none", cwd=tiny.parent, env=cache).returncode == 0
    after = txsuite("plan", "m.yaml", cwd=tiny.parent, env=cache).stdout
    # one cell ran here; the other is predicted from what it measured, and the plan says which is which
    assert "estimated time: about" in after and "1 of 2 cells ran here before" in after
    assert "1 predicted from what this host measured" in after
    assert "speed fitted on 1 repetitions measured here" in " ".join(after.split())
    # and the run's records carry what was predicted beside what was measured
    record = RunFolder(next((tiny.parent / "results" / "tiny").iterdir())).records()[0]
    assert record.metrics["predicted_train_mem_bytes"] > 0 and "predicted_speed_source" in record.metrics


def test_compare_prints_its_summary_writes_under_reports_dir_and_refuses_two_matrices(tiny):
    folder = tiny.parent
    for run_id in ("a", "b"):
        assert txsuite("run", "m.yaml", "--run-id", run_id, cwd=folder).returncode == 0
    runs = folder / "results" / "tiny"
    out = txsuite("compare", str(runs / "a"), str(runs / "b"), "--reports-dir", "pages", cwd=folder)
    assert out.returncode == 0, out.stderr
    assert "cells in both runs" in out.stdout and (folder / "pages" / "compare" / "a_vs_b.html").exists()

    other = folder / "results" / "other" / "c"
    shutil.copytree(runs / "b", other)
    meta = json.loads((other / "matrix.json").read_text())
    (other / "matrix.json").write_text(json.dumps({**meta, "name": "other"}))
    refused = txsuite("compare", str(runs / "a"), str(other), cwd=folder)
    assert refused.returncode == 2 and "different matrices" in refused.stderr and "--force" in refused.stderr
    forced = txsuite("compare", str(runs / "a"), str(other), "--force", cwd=folder)
    assert forced.returncode == 0 and "different matrices" in forced.stdout
