"""Convergence you can trust (issue 16): seeds, quality verdicts with their noise, time and tokens
to a target, the gradient noise scale, and how the report and exports show them."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from cli_helpers import txsuite
from txsuite.config.matrix import load_matrix
from txsuite.config.spec import CellConfig, DataSpec, MeasureSpec, ModelSpec, TrainSpec
from txsuite.data import build_dataset
from txsuite.report import quality
from txsuite.report.frame import build_cell_table
from txsuite.report.summary import best_loss_finding
from txsuite.results import RunFolder
from txsuite.run.runner import seed_for
from txsuite.run.worker import as_repetition
from txsuite.verdict import seeds
from txsuite.train import build_training, train_steps

TINY = ModelSpec(preset="tiny", n_layer=1, d_model=64, n_head=2)
MARKOV = DataSpec(dataset="markov", seq_len=32)

# Four cells x three seeds on the markov task (~1 min): measure.threads cannot change what is
# trained; a learning rate 10x too small can.
MATRIX = """
name: conv
fixed:
  model: {preset: tiny, n_layer: 1, d_model: 64, n_head: 2}
  data: {dataset: markov, seq_len: 32}
  train: {steps: 60, warmup_steps: 1, micro_batch: 8, lr_warmup_steps: 5, eval_every: 10, eval_batches: 4,
          target_loss: auto, target_tolerance: 0.05}
axes:
  train.lr: [3.0e-3, 3.0e-4]
  measure.threads: [1, 2]
seeds: 3
reference: {train.lr: 3.0e-3, measure.threads: 1}
"""


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    """The records and cell table of MATRIX, run once through the real command line."""
    where = tmp_path_factory.mktemp("conv")
    (where / "m.yaml").write_text(MATRIX)
    done = txsuite("run", "m.yaml", "--run-id", "r", cwd=where)
    assert done.returncode == 0, done.stdout + done.stderr
    run = RunFolder(where / "results" / "conv" / "r").load()
    table = build_cell_table(run.records, run.meta.axes, run.meta.reference)
    return where, run, table


def _cell(table, lr: float, threads: int) -> pd.Series:
    cells = table.cells
    pick = cells[(cells["train.lr"] == lr) & (cells["measure.threads"] == threads)]
    assert len(pick) == 1
    return pick.iloc[0]


# ---------------------------------------------------------------- seeds

def test_each_seed_changes_both_initialisation_and_data_order():
    cell = CellConfig(model=TINY, data=MARKOV, train=TrainSpec(steps=2, warmup_steps=0, micro_batch=4), device="cpu")
    seeds = [seed_for(0, k) for k in range(3)]
    assert seeds[0] == 0 and len(set(seeds)) == 3  # index 0 keeps train.seed; the others differ
    builds = [build_training(as_repetition(cell, {"seed": s})) for s in seeds]
    again = build_training(as_repetition(cell, {"seed": seeds[1]}))
    first = [next(b.batches)[0] for b in builds]
    weights = [next(b.setup.model.parameters()).detach() for b in builds]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.equal(first[a], first[b]), "a seed must change the data order"
            assert not torch.equal(weights[a], weights[b]), "a seed must change the initialisation"
    assert torch.equal(next(again.batches)[0], first[1])  # and a seed is reproducible
    assert torch.equal(next(again.setup.model.parameters()).detach(), weights[1])


def test_seeds_are_repetitions_that_also_time_the_cell(write_matrix):
    matrix = load_matrix(write_matrix("name: m\nfixed: {model: tiny}\nseeds: 3\nrepeats: 2\n"))
    assert (matrix.seeds, matrix.repeats, matrix.repetitions) == (3, 2, 3)  # max, not the product
    other = load_matrix(write_matrix("name: m\nfixed: {model: tiny}\nseeds: 1\nrepeats: 2\n", "o.yaml"))
    assert other.fingerprint() != matrix.fingerprint()


def test_records_carry_their_seed(seeded_run):
    _, run, _ = seeded_run
    for cell_id in {r.cell_id for r in run.records}:
        records = [r for r in run.records if r.cell_id == cell_id]
        assert sorted(r.seed_index for r in records) == [0, 1, 2]
        assert len({r.seed for r in records}) == 3
        assert all(r.metrics["seed"] == r.seed for r in records)
        # a cell's seeds train different models: their final losses differ
        assert len({r.metrics["val_loss"] for r in records}) == 3


# ---------------------------------------------------------------- verdicts on real runs

def test_a_setting_that_cannot_change_training_is_within_noise(seeded_run):
    _, _, table = seeded_run
    other = _cell(table, 3.0e-3, 2)
    assert other["seeds"] == 3
    assert other["quality_verdict"] == "within noise"
    assert other["val_loss_delta_ci_low"] <= 0 <= other["val_loss_delta_ci_high"]
    assert "3 seeds" in other["quality_noise"]


def test_a_learning_rate_ten_times_too_small_is_worse_beyond_noise(seeded_run):
    _, _, table = seeded_run
    for threads in (1, 2):
        slow = _cell(table, 3.0e-4, threads)
        assert slow["quality_verdict"] == "worse"
        assert slow["val_loss_delta_ci_low"] > 0
        assert slow["val_loss_delta"] == pytest.approx(slow["val_loss_mean"] - _cell(table, 3.0e-3, 1)["val_loss_mean"])


def test_the_best_loss_card_shows_a_tie_instead_of_a_winner_inside_noise(seeded_run):
    _, _, table = seeded_run
    finding = best_loss_finding(table)
    assert finding.what == "Best validation loss: a tie"
    assert "threads=1" in finding.cell and "threads=2" in finding.cell  # the two lr 3e-3 cells
    assert "0.0003" not in finding.cell  # the worse ones are not in the tie


def test_mean_and_interval_over_seeds_are_students_t(seeded_run):
    _, run, table = seeded_run
    ref = _cell(table, 3.0e-3, 1)
    losses = sorted(r.metrics["val_loss"] for r in run.records if r.cell_id == ref["cell_id"])
    half = 4.302652729911275 * np.std(losses, ddof=1) / math.sqrt(3)  # t(0.975, df=2)
    assert ref["val_loss_mean"] == pytest.approx(np.mean(losses))
    assert ref["val_loss_ci_low"] == pytest.approx(np.mean(losses) - half)
    assert ref["val_loss_ci_high"] == pytest.approx(np.mean(losses) + half)


# ---------------------------------------------------------------- time to target

def test_time_and_tokens_to_target_agree_with_the_evaluation_curves(seeded_run):
    _, run, table = seeded_run
    ref = _cell(table, 3.0e-3, 1)
    reference_losses = [r.metrics["val_loss"] for r in run.records if r.cell_id == ref["cell_id"]]
    target = float(np.median(reference_losses)) + 0.05
    for threads in (1, 2):
        row = _cell(table, 3.0e-3, threads)
        assert row["target_loss"] == pytest.approx(target)
        assert row["target_reached"] == "3 of 3 seeds"
        tokens, walls = [], []
        for rec in (r for r in run.records if r.cell_id == row["cell_id"]):
            curve = rec.metrics["eval_curve"]
            tokens_per_step = rec.metrics["tokens_per_step"]
            first = next(i for i, p in enumerate(curve) if p[2] <= target)
            # the crossing lies between the evaluation before the target and the first at or below it
            lo = curve[first - 1] if first else curve[first]
            cross_tokens, cross_wall = quality.crossing(curve, target, tokens_per_step)
            assert lo[0] * tokens_per_step <= cross_tokens <= curve[first][0] * tokens_per_step
            assert lo[1] <= cross_wall <= curve[first][1]
            tokens.append(cross_tokens)
            walls.append(cross_wall)
        assert row["tokens_to_target"] == pytest.approx(np.mean(tokens))
        assert row["time_to_target_s"] == pytest.approx(np.mean(walls))
        assert row["tokens_to_target_ci_low"] < row["tokens_to_target"] < row["tokens_to_target_ci_high"] \
            or np.std(tokens) == 0
    slow = _cell(table, 3.0e-4, 1)
    assert slow["target_reached"] == "0 of 3 seeds"  # it says so, and has no time to target
    assert math.isnan(slow["tokens_to_target"]) and math.isnan(slow["time_to_target_s"])


def test_crossing_interpolates_linearly_between_evaluations():
    curve = [[10, 1.0, 3.0], [20, 2.0, 2.0], [30, 4.0, 1.0]]
    assert quality.crossing(curve, 2.5, tokens_per_step=100) == pytest.approx((1500.0, 1.5))
    assert quality.crossing(curve, 1.5, tokens_per_step=100) == pytest.approx((2500.0, 3.0))
    assert quality.crossing(curve, 3.5, tokens_per_step=100) == pytest.approx((1000.0, 1.0))  # already below
    assert quality.crossing(curve, 0.5, tokens_per_step=100) is None


def test_stop_at_target_ends_training_once_the_target_is_reached():
    train = TrainSpec(steps=200, warmup_steps=1, micro_batch=8, lr=3e-3, eval_every=5, eval_batches=2,
                      target_loss=3.6, stop_at_target=True)
    training = build_training(CellConfig(model=TINY, data=MARKOV, train=train, device="cpu"))
    result = train_steps(training, sync=lambda: None, log=lambda line: None)
    assert result.stopped_at is not None and result.stopped_at < train.total_steps
    assert result.reached[0] == result.stopped_at  # it stopped at the evaluation that reached the target
    assert result.stopped_at % train.eval_every == 0
    assert len(result.loss_curve) == result.stopped_at  # no step ran after it


def test_auto_target_and_stop_at_target_name_what_they_need(write_matrix):
    from txsuite.config.matrix import MatrixError
    with pytest.raises(MatrixError, match="eval_every"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {target_loss: auto}}\n"))
    with pytest.raises(MatrixError, match="target_loss"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {stop_at_target: true}}\n"))


# ---------------------------------------------------------------- noise scale

def test_noise_scale_agrees_with_an_estimate_from_per_example_gradients():
    """B_simple from the step's two batch sizes (micro-batch 4, step 16), at fixed weights
    (lr 0), against tr(Sigma) / |G|^2 computed here from 512 per-sequence gradients."""
    from torch.func import functional_call, grad, vmap

    train = TrainSpec(steps=40, warmup_steps=0, micro_batch=4, grad_accum=4, lr=0.0, weight_decay=0.0, eval_batches=1)
    cell = CellConfig(model=TINY, data=MARKOV, train=train, measure=MeasureSpec(noise_scale=True), device="cpu")
    training = build_training(cell)
    train_steps(training, sync=lambda: None, log=lambda line: None)
    measured = training.trainer.noise_scale.metrics(MARKOV.seq_len)
    assert measured["grad_noise_scale_steps"] == 40
    suite_b = measured["grad_noise_scale"]

    model = training.setup.model
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def sequence_loss(p, x, y):  # mean loss over one sequence's tokens, as the batch loss averages them
        logits = functional_call(model, p, (x[None],))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    per_example = vmap(grad(sequence_loss), in_dims=(None, 0, 0))
    batches = build_dataset(MARKOV, seed=0).train_batches(64, 12345)  # other windows than training saw
    total, squares, n = None, 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's fallback for fused attention is slower, not wrong
        for _ in range(8):
            x, y = next(batches)
            g = per_example(params, x, y)
            flat = torch.cat([g[name].reshape(len(x), -1) for name in params], 1).double()  # [64, n_params]
            total = flat.sum(0) if total is None else total + flat.sum(0)
            squares += float(flat.square().sum())
            n += len(x)
    mean = total / n
    trace = (squares - n * float(mean.square().sum())) / (n - 1)  # tr(Sigma), unbiased
    true_sq = float(mean.square().sum()) - trace / n  # |G|^2, unbiased
    independent_b = trace / true_sq
    assert 0.5 < suite_b / independent_b < 2.0, (suite_b, independent_b)


def test_noise_scale_arithmetic_recovers_a_known_gradient_and_noise():
    """Gradients drawn as G + noise / sqrt(B) with known |G|^2 and tr(Sigma): the two-batch
    solution returns tr(Sigma) / |G|^2."""
    from txsuite.train.noise_scale import NoiseScale

    gen = torch.Generator().manual_seed(0)
    true = torch.full((100,), 0.1)  # |G|^2 = 1
    sigma = 2.0  # per-coordinate per-example std: tr(Sigma) = 100 * 4 = 400 -> B_simple = 400
    meter = NoiseScale(micro_batch=4, grad_accum=8)
    meter.active = True
    for _ in range(4000):
        small = true + sigma / 2 * torch.randn(100, generator=gen)  # mean of 4 examples
        rest = true + sigma / math.sqrt(28) * torch.randn(100, generator=gen)  # mean of the other 28
        big = (4 * small + 28 * rest) / 32
        p = torch.nn.Parameter(torch.zeros(100))
        p.grad = small / 8  # after the first micro-batch the gradient holds 1/k of its mean
        meter.after_first([p])
        p.grad = big
        meter.after_all([p])
    assert meter.metrics(seq_len=1)["grad_noise_scale"] == pytest.approx(400, rel=0.1)


# ---------------------------------------------------------------- one seed

def test_one_seed_cannot_tell_unless_the_run_measured_training_noise():
    """The per-sequence spread of one model is evaluation noise, not training noise: with one seed
    a difference gets no verdict unless other cells of the run have several seeds, whose paired
    spread then stands for it. bf16 at +0.0005 nats beside a seed noise of ~0.003 is not worse."""
    one = seeds.loss_difference({0: 2.0005}, {0: 2.0})
    assert one.verdict == "untested" and one.noise == seeds.ONE_SEED
    assert math.isnan(one.low) and one.delta == pytest.approx(0.0005)
    run_noise = seeds.TrainingNoise.fit([[0.004, -0.002, 0.001], [0.0, 0.005, -0.003]])
    assert run_noise.df == 4 and run_noise.pairs == 2
    assert seeds.loss_difference({0: 2.0005}, {0: 2.0}, run_noise).verdict == "within noise"
    clear = seeds.loss_difference({0: 2.1}, {0: 2.0}, run_noise)
    assert clear.verdict == "worse" and "training noise from the run's 2 pair(s)" in clear.noise
    assert seeds.loss_difference({0: 1.9}, {0: 2.0}, run_noise).verdict == "better"
    assert seeds.loss_difference({1: 1.9}, {0: 2.0}, run_noise) is None  # no common seed
    assert seeds.TrainingNoise.fit([[0.1], [0.2]]) is None  # one seed per pair measures nothing


def test_cells_that_saw_different_token_counts_are_compared_at_the_common_budget():
    """A micro-batch 4 cell saw half the tokens of the micro-batch 8 reference: its final loss is
    compared with the reference's evaluation curve at the same number of tokens; without an
    evaluation there, the comparison is untested, never "worse"."""
    def cell(cid: str, tokens_per_step: int, curves: list[list[list[float]]]) -> pd.DataFrame:
        return pd.DataFrame([{"cell_id": cid, "status": "ok", "repeat": k, "seed_index": k,
                              "val_loss": curve[-1][2], "eval_curve": curve, "tokens_per_step": tokens_per_step,
                              "config.train.steps": 10} for k, curve in enumerate(curves)])
    small = cell("mb4", 1024, [[[5, 1.0, 3.0], [10, 2.0, 2.50]], [[5, 1.0, 3.1], [10, 2.0, 2.52]]])
    big = cell("mb8", 2048, [[[5, 1.0, 2.5], [10, 2.0, 2.0]], [[5, 1.0, 2.49], [10, 2.0, 2.01]]])
    at = quality.compare_losses(small, big, None)
    assert at.delta == pytest.approx(0.015) and "common budget of" in at.noise  # 2.51 vs 2.495
    assert at.verdict == "within noise"
    final_only = cell("mb8", 2048, [[[10, 2.0, 2.0]], [[10, 2.0, 2.01]]])
    untested = quality.compare_losses(small, final_only, None)
    assert untested.verdict == "untested" and "no evaluation falls at the common budget" in untested.noise


# ---------------------------------------------------------------- report and exports

def test_the_report_has_a_convergence_section_with_verdicts_and_charts(seeded_run):
    where, _, _ = seeded_run
    done = txsuite("report", "results/conv/r", "-o", "r.html", cwd=where)
    assert done.returncode == 0, done.stderr
    html = (where / "r.html").read_text()
    section = html[html.index('<section id="convergence">'):]
    section = section[:section.index("</section>")]
    assert section.count('data-sort="within noise"') == 1 and section.count('data-sort="worse"') == 2
    for key in ("convergence", "to-target"):
        assert f'id="chart-{key}"' in section  # drawn, not listed as skipped
    assert 'data-chart-skipped="noise-scale"' in section  # no cell measured it, and it says why


def test_exports_carry_the_quality_columns(seeded_run):
    where, _, table = seeded_run
    assert txsuite("report", "results/conv/r", "--format", "csv", "-o", "r.csv", cwd=where).returncode == 0
    frame = pd.read_csv(where / "r.csv")
    for column in ("seeds", "val_loss_mean", "val_loss_ci_low", "val_loss_ci_high", "val_loss_delta",
                   "val_loss_delta_ci_low", "val_loss_delta_ci_high", "quality_verdict", "time_to_target_s",
                   "tokens_to_target", "grad_noise_scale"):
        assert column in frame.columns
    assert sorted(frame["quality_verdict"]) == ["reference", "within noise", "worse", "worse"]
    assert txsuite("report", "results/conv/r", "--format", "markdown", "-o", "r.md", cwd=where).returncode == 0
    markdown = (where / "r.md").read_text()
    assert "## Convergence" in markdown
    assert "| val_loss_delta_ci_low |" in markdown.split("## Convergence")[1]


def test_a_difference_below_the_resolution_is_within_noise_even_when_consistent():
    """Reduction-order noise can be consistent in sign over three seeds; a 1e-8 difference is
    never called worse."""
    base = {0: 2.0, 1: 2.1, 2: 1.95}
    tiny = seeds.loss_difference({k: v + d for (k, v), d in zip(base.items(), (1e-8, 2e-8, 1.5e-8))}, base)
    assert tiny.low > 0 and tiny.verdict == "within noise"
    real = seeds.loss_difference({k: v + d for (k, v), d in zip(base.items(), (0.01, 0.012, 0.011))}, base)
    assert real.verdict == "worse"


def test_soonest_to_target_card_names_cells_it_is_not_separated_from():
    from txsuite.report.summary import soonest_finding

    def cells(*rows):
        return pd.DataFrame([{"cell_id": c, "label": c, "short_label": c, "time_to_target_s": t,
                              "time_to_target_ci_low": lo, "time_to_target_ci_high": hi} for c, t, lo, hi in rows])
    apart = soonest_finding(cells(("a", 1.0, 0.8, 1.2), ("b", 2.0, 1.7, 2.3)))
    assert apart.what == "Soonest to the target loss" and apart.cell == "a"
    close = soonest_finding(cells(("a", 1.0, 0.8, 1.2), ("b", 1.1, 0.9, 1.3), ("c", 3.0, 2.8, 3.2)))
    assert close.what.endswith("not separated") and close.cell == "a, b"
    single = soonest_finding(cells(("a", 1.0, np.nan, np.nan), ("b", 2.0, np.nan, np.nan)))
    assert "one seed" in single.detail
