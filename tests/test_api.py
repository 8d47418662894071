"""txsuite from a notebook: run a matrix with overrides, load a run and a history as pandas."""
import subprocess
import sys

import pytest

import txsuite
from txsuite.config.matrix import MatrixError
from txsuite.api import override_texts

MATRIX = """\
name: api
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 32, symbols: 16}
  train: {steps: 6, warmup_steps: 1, micro_batch: 4, lr: 3.0e-3}
axes:
  precision: [fp32]
repeats: 1
"""


def test_importing_txsuite_stays_light():
    code = "import sys, txsuite; print('pandas' in sys.modules or 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_overrides_as_a_mapping_read_as_on_the_command_line():
    assert override_texts({"train.steps": 3, "precision": ["fp32", "bf16"], "model": "tiny"}) == [
        "train.steps=3", 'precision=["fp32", "bf16"]', "model=tiny"]
    assert override_texts(["repeats=2"]) == ["repeats=2"]


def test_run_then_load_and_history_with_provenance(tmp_path):
    (tmp_path / "m.yaml").write_text(MATRIX)
    results = tmp_path / "results"
    first = txsuite.run(tmp_path / "m.yaml", {"train.steps": 3}, results_dir=results, reports_dir=None, run_id="a")
    second = txsuite.run(tmp_path / "m.yaml", ["repeats=2"], results_dir=results, reports_dir=tmp_path / "reports",
                         run_id="b")
    assert [r.config["train"]["steps"] for r in first.records] == [3] and len(second.records) == 2
    assert (tmp_path / "reports" / "api" / "b.html").exists()

    cells = txsuite.load(first.dir)
    assert list(cells.columns[:5]) == ["matrix", "run_id", "txsuite_commit", "host", "started_at"]
    assert cells["run_id"].tolist() == ["a"] and cells["status"].tolist() == ["ok"]
    history = txsuite.load_history(results)
    assert history["run_id"].tolist() == ["a", "b", "b"]  # oldest run first
    assert history["started_at"].is_monotonic_increasing

    with pytest.raises(MatrixError, match="did you mean 'steps'"):
        txsuite.run(tmp_path / "m.yaml", {"train.stepz": 3}, results_dir=results)
