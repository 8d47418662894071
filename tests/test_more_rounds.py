"""`repeats: {min, max, detect}`: the runner adds rounds while the run's own noise cannot detect
the asked tokens/s gap against the reference (txsuite/verdict/detectable.py,
txsuite/run/more_rounds.py). The rate at which this separates real gaps, and how often it calls
equal cells apart, is measured on real runs in docs/verdicts.md; here the arithmetic, the
matrix key and the runner's loop, through a stand-in worker whose noise is set by the cell."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from txsuite.config.matrix import MatrixError, load_matrix
from txsuite.results import RunFolder
from txsuite.run.runner import run_matrix
from txsuite.verdict.detectable import detectability, smallest_detectable_log_gap

MATRIX = """\
name: rounds
fixed:
  model: {{preset: tiny, n_layer: 1}}
  data: {{dataset: markov, seq_len: 32, symbols: 16}}
  train: {{steps: 4, warmup_steps: 1, micro_batch: 4}}
  measure: {{threads: 1}}
axes:
  train.lr: [1.0e-3, 2.0e-3, 3.0e-3]
repeats: {repeats}
reference: {{train.lr: 1.0e-3}}
"""


def table(noise: float, rounds: int, cells: int = 6, seed: int = 0, ratios=None) -> dict:
    """cell -> round -> tokens/s: a shared round effect, each repetition's own log noise `noise`."""
    rng = np.random.default_rng(seed)
    round_effect = rng.normal(0, 0.05, rounds)
    ratios = ratios or [1.0] * cells
    return {f"c{i}": {r: 1000.0 * ratios[i] * math.exp(round_effect[r] + rng.normal(0, noise)) for r in range(rounds)}
            for i in range(cells)}


# ------------------------------------------------------------------------- the arithmetic ----

def test_the_smallest_detectable_gap_is_the_interval_plus_the_powers_margin():
    # a known variance: 1.96 + 1.28 standard errors
    assert smallest_detectable_log_gap(0.01, math.inf) == pytest.approx(0.01 * (1.959964 + 1.281552), rel=1e-5)
    assert smallest_detectable_log_gap(0.01, 4) > smallest_detectable_log_gap(0.01, 40)  # fewer df: wider
    assert math.isinf(smallest_detectable_log_gap(math.inf, 0.0))


def test_quiet_rounds_are_enough_and_noisy_ones_ask_for_more():
    quiet = detectability(table(0.01, 2), "c0", 0.15)
    assert quiet.enough and quiet.detectable < 1.15
    noisy = detectability(table(0.10, 2), "c0", 0.15)
    assert not noisy.enough and noisy.detectable > 1.15 and noisy.worst_cell != "c0"
    assert "15% asked" in noisy.describe(0.15) and "detect only" in noisy.describe(0.15)


def test_more_rounds_of_the_same_noise_detect_a_smaller_gap():
    gaps = [detectability(table(0.05, n, seed=3), "c0", 0.15).detectable for n in (2, 4, 8)]
    assert gaps[0] > gaps[1] > gaps[2]


def test_the_decision_never_reads_the_ratios():
    """Stopping because a difference is nearly separated would call equal cells apart more often
    than the level says: cells made 30 % slower or faster change nothing of the decision."""
    equal = detectability(table(0.06, 3, seed=5), "c0", 0.15)
    apart = detectability(table(0.06, 3, seed=5, ratios=[1.0, 0.7, 1.3, 1.0, 0.9, 1.1]), "c0", 0.15)
    assert (equal.enough, equal.worst_cell) == (apart.enough, apart.worst_cell)
    assert equal.detectable == pytest.approx(apart.detectable, rel=1e-12)


def test_a_cell_with_one_round_in_common_asks_for_another():
    values = table(0.01, 2)
    values["c3"] = {1: values["c3"][1]}  # its first repetition left out (a slow state)
    judged = detectability(values, "c0", 0.15)
    assert not judged.enough and judged.worst_cell == "c3" and math.isinf(judged.detectable)
    assert "fewer than two rounds in common" in judged.describe(0.15)
    values["c0"] = {1: values["c0"][1]}  # the reference's own first repetition left out
    judged = detectability(values, "c0", 0.15)
    assert not judged.enough and judged.worst_cell == "c0"
    assert judged.describe(0.15, {"c0": "fp32"}).startswith("the reference (fp32) has fewer than two repetitions")


def test_cells_without_values_are_not_waited_for():
    values = table(0.01, 2)
    values["failed"] = {}
    assert detectability(values, "c0", 0.15).enough
    assert detectability({"c0": {}, "c1": values["c1"]}, "c0", 0.15).enough  # no reference: nothing to judge


# ------------------------------------------------------------------------- the matrix key ----

def test_the_mapping_form_of_repeats(write_matrix):
    m = load_matrix(write_matrix(MATRIX.format(repeats="{min: 2, max: 4, detect: 15%}")))
    assert (m.repeats, m.max_repeats, m.detect, m.repetitions, m.most_repetitions) == (2, 4, 0.15, 2, 4)
    assert m.to_json()["max_repeats"] == 4 and m.to_json()["detect"] == 0.15
    fixed = load_matrix(write_matrix(MATRIX.format(repeats=2), "f.yaml"))
    assert (fixed.max_repeats, fixed.detect, fixed.most_repetitions) == (None, None, 2)
    assert "detect" not in fixed.to_json()
    assert m.fingerprint() != fixed.fingerprint()  # an adaptive run never resumes a fixed one
    over = load_matrix(write_matrix(MATRIX.format(repeats=2), "o.yaml"),
                       overrides=["repeats={min: 3, max: 5, detect: 10%}"])
    assert (over.repeats, over.max_repeats, over.detect) == (3, 5, 0.10)


@pytest.mark.parametrize("value, key, words", [
    ("{min: 1, max: 4, detect: 15%}", "repeats.min", "one round cannot measure the noise"),
    ("{min: 3, max: 2, detect: 15%}", "repeats.max", ">= 3"),
    ("{min: 2, max: 4, detect: 0.15}", "repeats.detect", "percentage"),
    ("{min: 2, max: 4, detect: 100%}", "repeats.detect", "below 100%"),
    ("{min: 2, max: 4}", "repeats", "'detect' is missing"),
    ("{min: 2, max: 4, detect: 15%, step: 1}", "repeats", "unknown key 'step'"),
])
def test_a_bad_mapping_names_its_key_and_what_is_allowed(write_matrix, value, key, words):
    with pytest.raises(MatrixError) as info:
        load_matrix(write_matrix(MATRIX.format(repeats=value)))
    text = str(info.value)
    assert f"key '{key}'" in text and words in text and "{min: 2, max: 4, detect: 15%}" in text
    assert "Traceback" not in text and "\n" not in text


# ------------------------------------------------------------------------ the runner's loop ----

# A stand-in worker: tokens/s of 1000 with a log noise per repetition of NOISE (the cells do the
# same work), seeded by cell and repetition.
FAKE_WORKER = """\
import json, math, random, sys
cell = json.load(open(sys.argv[1]))
rng = random.Random(f'{cell["cell_id"]} {cell["repeat"]}')
metrics = {"tokens_per_s": 1000.0 * math.exp(rng.gauss(0, NOISE)), "train_mem_bytes": 40 * 2**20,
           "peak_mem_bytes": 300 * 2**20, "val_loss": 3.0, "steps": 4, "loss_curve": [[4, 1.0, 3.0]],
           "train_wall_s": 0.1}
json.dump({"status": "ok", "metrics": metrics, "env": {}}, open(sys.argv[2], "w"))
"""


def sweep(tmp_path, write_matrix, noise: float, events: list | None = None):
    """An adaptive run (min 2, max 4, detect 15 %) of three cells through the stand-in worker."""
    (tmp_path / "fake.py").write_text(FAKE_WORKER.replace("NOISE", repr(noise)))
    matrix = load_matrix(write_matrix(MATRIX.format(repeats="{min: 2, max: 4, detect: 15%}")))
    on_event = None if events is None else (lambda kind, info: events.append((kind, info)))
    run_matrix(matrix, tmp_path / "run", worker_cmd=[sys.executable, str(tmp_path / "fake.py")], on_event=on_event)
    return matrix, RunFolder(tmp_path / "run")


def rounds_run(folder: RunFolder) -> list[int]:
    per_cell: dict[str, set] = {}
    for r in folder.records():
        per_cell.setdefault(r.cell_id, set()).add(r.repeat)
    return sorted(len(v) for v in per_cell.values())


def test_a_quiet_run_stops_at_its_first_rounds(tmp_path, write_matrix):
    matrix, folder = sweep(tmp_path, write_matrix, noise=0.002)
    assert rounds_run(folder) == [2, 2, 2]
    assert folder.meta.detect == 0.15 and folder.meta.max_repeats == 4 and folder.meta.complete
    assert "2 rounds detect" in folder.meta.detected


def test_a_noisy_run_adds_rounds_up_to_its_most_and_says_why(tmp_path, write_matrix):
    events: list = []
    matrix, folder = sweep(tmp_path, write_matrix, noise=0.3, events=events)
    assert rounds_run(folder) == [4, 4, 4]
    added = [info for kind, info in events if kind == "more_rounds"]
    assert [a["round"] for a in added] == [3, 4] and all("15% asked" in a["why"] for a in added)
    assert "4 rounds detect only" in folder.meta.detected
    # resumed: the same decisions from the same records, and nothing runs again
    kinds: list = []
    never = [sys.executable, "-c", "raise SystemExit('no repetition should run again')"]
    run_matrix(matrix, tmp_path / "run", worker_cmd=never, on_event=lambda kind, info: kinds.append(kind))
    assert "cell_start" not in kinds and "more_rounds" not in kinds and rounds_run(folder) == [4, 4, 4]


def test_the_report_says_how_many_rounds_ran_and_why(tmp_path, write_matrix):
    from txsuite.report.run_report import render_report
    sweep(tmp_path, write_matrix, noise=0.3)
    html = render_report(tmp_path / "run", tmp_path / "report.html").read_text()
    assert "Rounds: 2 and more, up to 4, while a 15% tokens/s gap to the reference was not detectable; " \
           "4 rounds detect only" in html


def test_several_nodes_need_a_fixed_count(tmp_path):
    from cli_helpers import txsuite
    (tmp_path / "m.yaml").write_text("name: x\nfixed: {parallel: {engine: ddp, dp: 2}}\n"
                                     "repeats: {min: 2, max: 4, detect: 15%}\n")
    out = txsuite("run", "m.yaml", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "127.0.0.1:29500",
                  "--run-id", "r", cwd=tmp_path)
    assert out.returncode == 2 and "decides its rounds on one node" in out.stderr + out.stdout
    assert "repeats=2" in out.stderr + out.stdout and not (tmp_path / "results").exists()


def test_resuming_with_other_repeats_is_refused_and_says_which(tmp_path, write_matrix):
    from txsuite.run.runner import RunMismatch
    sweep(tmp_path, write_matrix, noise=0.002)
    fixed = load_matrix(write_matrix(MATRIX.format(repeats=2), "fixed.yaml"))
    with pytest.raises(RunMismatch, match=r"repeats \{min: 2, max: 4, detect: 15%\} -> 2"):
        run_matrix(fixed, tmp_path / "run", worker_cmd=[sys.executable, str(tmp_path / "fake.py")])
