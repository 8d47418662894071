"""The report's tables of a large run are computed over the whole frame at once (issue 28: a
20,000-record report had taken minutes, filtering the frame once per cell and asking the verdict
engine once per pair). These tests hold every figure of the bulk computation equal to the
straightforward reading it replaced: one cell at a time, one pair at a time, written out here
as the reference, on a small synthetic run with several cells, seeds, failures and a skipped
cell. A speed-up can then never silently change a number, a verdict word or an order.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from scipy.special import stdtr

from txsuite.config.record import Record
from txsuite.report import quality
from txsuite.report.compression import add_compression_columns
from txsuite.report.frame import (METRICS, SPREAD_METRICS, _tidy_axis_column, build_cell_table, choose_reference,
                                  memory_metric, repeats_frame, short_labels, varying_keys)
from txsuite.report.pareto import DOMINATED, FRONT, NEAR_FRONT, UNTESTED_OFF_FRONT, pareto_optimal
from txsuite.report import formatting as fmt
from txsuite.report.summary import summarize
from txsuite.report.values import comparable
from txsuite.report.verdicts import RunVerdicts
from txsuite.verdict import BETTER, UNTESTED, WORSE, RoundNoise
from txsuite.verdict.comparison import Comparison
from txsuite.verdict.rounds import _medians_of_others
from txsuite.verdict.seeds import TrainingNoise

GiB = 2**30


def synthetic_records() -> list[Record]:
    """12 cells (micro_batch x lr), 3 repetitions each over 2 seeds, with evaluation curves and a
    target loss; a cell that trained twice as long (another token budget); a cell whose every
    repetition failed, one with an OOM repetition, one with a single repetition, and a skipped
    `include` cell."""
    rng = random.Random(7)
    records = []
    cells = [(mb, lr) for mb in (1, 2, 4, 8) for lr in (1e-4, 2e-4, 3e-4)]
    for n, (mb, lr) in enumerate(cells):
        cid, steps = f"c{n:02d}", 40 if n == 9 else 20
        repeats = 1 if n == 11 else 3
        for repeat in range(repeats):
            seed = repeat % 2
            cfg = {"train": {"steps": steps, "micro_batch": mb, "lr": lr, "target_loss": 2.6},
                   "precision": "fp32", "device": "cpu"}
            status, reason = "ok", None
            if n == 3:
                status, reason = "failed", "RuntimeError: boom\ntraceback line"
            elif n == 5 and repeat == 2:
                status, reason = "oom", "CUDA out of memory"
            loss = 2.0 + 0.3 * lr * 1e4 / mb + 0.01 * seed + rng.uniform(-0.005, 0.005)
            curve = [[s, s * 0.01 * mb, round(4.0 - (4.0 - loss) * s / steps, 6)] for s in range(0, steps + 1, 5)]
            metrics = {"tokens_per_s": 1000.0 * mb ** 0.5 * rng.uniform(0.97, 1.03),
                       "samples_per_s": 10.0 * mb, "step_time_p50_s": 0.05 / mb, "step_time_p90_s": 0.06 / mb,
                       "peak_mem_bytes": GiB * (1 + mb / 8), "train_mem_bytes": GiB * mb / 8 * rng.uniform(0.99, 1.01),
                       "mfu": 0.1 * rng.uniform(0.9, 1.1), "val_loss": loss, "tokens_per_step": 64.0 * mb,
                       "eval_curve": curve, "probe_before_s": 1.0, "probe_after_s": rng.choice([1.0, 1.02]),
                       "probe_best_s": 1.0}
            if n % 4 == 0:
                metrics["grad_noise_scale"] = 100.0 + n + repeat
            if n % 5 == 0:
                metrics["optimal_loss"] = 1.5
            if status != "ok":
                metrics = {"tokens_per_s": 5.0}  # a partial result: must not count
            records.append(Record(matrix="m", run_id="r", cell_id=cid, repeat=repeat, status=status, reason=reason,
                                  label=f"train.micro_batch={mb} train.lr={lr}", config=cfg, env={"host": "box"},
                                  metrics=metrics, seed=seed, seed_index=seed))
    records.append(Record(matrix="m", run_id="r", cell_id="cuda", repeat=0, status="skipped",
                          reason="needs a CUDA device", label="+device=cuda",
                          config={"train": {"steps": 20, "micro_batch": 1, "lr": 1e-4, "target_loss": 2.6},
                                  "precision": "fp32", "device": "cuda"}, env={"host": "box"}, metrics={}))
    return records


# ---------------------------------------------------------------- the per-cell reference

def reference_cell_row(cell_id: str, group: pd.DataFrame, axes: list[str]) -> dict:
    ok, bad = group[group["status"] == "ok"], group[group["status"] != "ok"]
    texts = [v for v in group["label"] if isinstance(v, str) and v]
    reasons = [v for v in bad["reason"] if isinstance(v, str) and v]
    row = {"cell_id": cell_id, "label": texts[0] if texts else "",
           "status": "ok" if len(ok) else str(bad["status"].iloc[0]),
           "reason": reasons[0] if reasons else None, "repeats": len(group), "repeats_ok": len(ok)}
    for key in axes:
        row[key] = group.iloc[0].get("config." + key)
    for name, _, _ in METRICS:
        values = ok[name].dropna()
        row[name] = float(values.median()) if len(values) else np.nan
        if name in SPREAD_METRICS:
            row[f"{name}_min"] = float(values.min()) if len(values) else np.nan
            row[f"{name}_max"] = float(values.max()) if len(values) else np.nan
    med = row["tokens_per_s"]
    row["tokens_per_s_spread_pct"] = (
        (row["tokens_per_s_max"] - row["tokens_per_s_min"]) / med * 100 if med and not math.isnan(med) else np.nan)
    return row


def reference_target(group: pd.DataFrame, reference_median: float | None) -> float | None:
    target = group["config.train.target_loss"].iloc[0] if "config.train.target_loss" in group else None
    if target == "auto":
        return None if reference_median is None else reference_median + 0.02
    return float(target) if fmt.is_number(target) else None


def reference_training_noise(groups: dict[str, pd.DataFrame], anchor: str) -> TrainingNoise | None:
    mine, anchor_tokens = quality.seed_losses(groups[anchor]), quality.train_tokens(groups[anchor])
    differences = []
    for cid, group in groups.items():
        if cid == anchor or not quality.same_budget(quality.train_tokens(group), anchor_tokens):
            continue
        theirs = quality.seed_losses(group)
        differences.append([theirs[k] - mine[k] for k in sorted(set(theirs) & set(mine))])
    return TrainingNoise.fit(differences)


def reference_quality(cells: pd.DataFrame, repeats: pd.DataFrame, reference: str) -> None:
    groups = {cid: g for cid, g in repeats.groupby("cell_id", sort=False)}
    ref_group = groups[reference]
    noise = reference_training_noise(groups, reference)
    ref_losses = quality.seed_losses(ref_group)
    ref_median = float(np.median(list(ref_losses.values())))
    rows, crossings = [], {}
    for cid in cells["cell_id"]:
        group, row = groups[cid], {}
        losses = quality.seed_losses(group)
        row["seeds"] = len(losses)
        if losses:
            row["val_loss_mean"], row["val_loss_ci_low"], row["val_loss_ci_high"] = quality._interval(list(losses.values()))
        if cid == reference and losses:
            row.update(val_loss_delta=0.0, quality_verdict="reference")
        elif losses:
            diff = quality.compare_losses(group, ref_group, noise)
            if diff is not None:
                row.update(val_loss_delta=diff.delta, val_loss_delta_ci_low=diff.low, val_loss_delta_ci_high=diff.high,
                           quality_verdict=diff.verdict, quality_noise=diff.noise)
        target = reference_target(group, ref_median)
        crossings[cid] = quality.seed_crossings(group, target)
        row.update(quality._time_to_target(quality.seed_records(group), target, crossings[cid]))
        ns = pd.to_numeric(group["grad_noise_scale"], errors="coerce")
        row["grad_noise_scale"] = float(ns.median()) if ns.notna().any() else np.nan
        optimum = pd.to_numeric(group["optimal_loss"], errors="coerce")
        if optimum.notna().any() and "val_loss_mean" in row:
            row["gap_to_optimum"] = row["val_loss_mean"] - float(optimum.dropna().iloc[0])
        rows.append(row)
    for cid, row in zip(cells["cell_id"], rows):
        if cid != reference:
            row.update(quality.tokens_to_target_delta(crossings[cid], crossings[reference]))
    frame = pd.DataFrame(rows, index=cells.index)
    for column in quality.EXPORT_COLUMNS:
        cells[column] = frame[column] if column in frame else np.nan


def reference_front(cells: pd.DataFrame, verdicts: RunVerdicts, memory: str) -> list:
    """The front as it was judged: one verdict per dominating cell, objective and cell."""
    objectives, ids = ("tokens_per_s", memory), cells["cell_id"].tolist()
    points = [(a, -b) if not (math.isnan(a) or math.isnan(b)) else None
              for a, b in zip(cells["tokens_per_s"], cells[memory])]
    optimal = pareto_optimal(list(zip(cells["tokens_per_s"], cells[memory])), ("max", "min"))
    out = []
    for j, mine in enumerate(points):
        if mine is None or optimal[j]:
            out.append(None if mine is None else FRONT)
            continue
        dominators = [i for i, theirs in enumerate(points) if theirs is not None and i != j
                      and theirs[0] >= mine[0] and theirs[1] >= mine[1] and theirs != mine]
        tests = 2 * len(dominators)
        pairs = [tuple(verdicts.verdict(ids[i], ids[j], objectives[k], level=1 - 0.05 / tests) for k in (0, 1))
                 for i in dominators]
        if any(BETTER in p and WORSE not in p and UNTESTED not in p for p in pairs):
            out.append(DOMINATED)
        elif all(p == (UNTESTED, UNTESTED) for p in pairs):
            out.append(UNTESTED_OFF_FRONT)
        else:
            out.append(NEAR_FRONT)
    return out


def reference_table(records: list[Record]) -> pd.DataFrame:
    repeats = repeats_frame(records)
    axes, _ = varying_keys(repeats)
    cells = pd.DataFrame([reference_cell_row(cid, g, axes) for cid, g in repeats.groupby("cell_id", sort=False)])
    for key in axes:
        cells[key] = _tidy_axis_column(cells[key])
    measured = cells[cells["repeats_ok"] > 0]
    measured_axes = [k for k in axes if measured[k].map(comparable).nunique(dropna=False) > 1]
    cells["short_label"] = short_labels(cells, measured_axes)
    base_id, _ = choose_reference(cells, None)
    verdicts, memory = RunVerdicts(repeats), memory_metric(measured)
    for col, verdict_col, metric in (("speedup", "speed_verdict", "tokens_per_s"),
                                     ("mem_ratio", "memory_verdict", memory)):
        base = float(cells.loc[cells["cell_id"] == base_id, metric].iloc[0])
        cells[col] = cells[metric] / base
        cells[f"{col}_lo"], cells[f"{col}_hi"] = cells[f"{metric}_min"] / base, cells[f"{metric}_max"] / base
        cells[verdict_col] = [None if cid == base_id or pd.isna(v) else verdicts.worded(cid, base_id, metric)
                              for cid, v in zip(cells["cell_id"], cells[col])]
        for i in cells.index:  # the engine's ratio and interval where it paired rounds
            cid = cells.at[i, "cell_id"]
            if cid == base_id:
                cells.at[i, col] = cells.at[i, f"{col}_lo"] = cells.at[i, f"{col}_hi"] = 1.0
                continue
            if pd.isna(cells.at[i, col]):
                continue
            engine = verdicts.compare(cid, base_id, metric)
            if engine.low is not None and engine.high is not None:
                cells.at[i, col], cells.at[i, f"{col}_lo"], cells.at[i, f"{col}_hi"] = (
                    engine.ratio, engine.low, engine.high)
    add_compression_columns(cells, repeats)
    reference_quality(cells, repeats, base_id)
    cells["front"] = reference_front(cells, verdicts, memory)
    cells["pareto"] = cells["front"] == FRONT
    cells["is_reference"] = cells["cell_id"] == base_id
    return cells


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("pairs_at_once", [1_000_000, 1])
def test_the_bulk_cell_table_equals_the_per_cell_reference(monkeypatch, pairs_at_once):
    """Every column, dtype and row order; the front's pairs asked all at once or point by point."""
    from txsuite.report import pareto

    monkeypatch.setattr(pareto, "PAIRS_AT_ONCE", pairs_at_once)
    records = synthetic_records()
    table = build_cell_table(records)
    expected = reference_table(records)
    pd.testing.assert_frame_equal(table.cells, expected, check_exact=True)
    # the run exercises what it claims to: failures, a skip, a second budget, every front place
    assert set(table.cells["status"]) == {"ok", "failed", "skipped"}
    assert table.cells.set_index("cell_id").loc["c05", "reason"] == "CUDA out of memory"
    assert table.cells["quality_noise"].str.contains("common budget", na=False).any()
    assert table.cells["target_reached"].notna().any() and table.cells["tokens_to_target_delta"].notna().any()
    assert {FRONT, NEAR_FRONT} <= set(table.cells["front"].dropna())
    assert {"faster", "slower"} & set(table.cells["speed_verdict"].dropna())


def test_the_summary_reads_the_same_table_either_way():
    """Leader cards, the tie of the best loss and the problems: from the bulk table, the same
    words as from the per-cell one."""
    records = synthetic_records()
    table = build_cell_table(records)
    bulk = summarize(table)
    table.cells = reference_table(records)
    assert summarize(table) == bulk
    assert [p.cell_id for p in bulk.problems] == ["c03", "c05", "cuda"]


def test_the_median_of_the_other_cells_is_numpys_median():
    """RoundNoise.fit's round effect, from one sort per round, equals np.median over the other
    cells (ties, missing rounds and a round only one cell has included)."""
    rng = random.Random(3)
    for _ in range(200):
        centred = {}
        for c in range(rng.randint(1, 9)):
            by = {r: round(rng.gauss(0, 1), rng.choice([1, 6])) for r in range(rng.randint(1, 4)) if rng.random() < 0.8}
            if by:
                centred[f"c{c}"] = by
        naive = {c: {r: float(np.median([o[r] for k, o in centred.items() if k != c and r in o]))
                     if any(r in o for k, o in centred.items() if k != c) else 0.0 for r in by}
                 for c, by in centred.items()}
        assert _medians_of_others(centred) == naive


@pytest.mark.parametrize("higher, resolution", [(True, 0.0), (False, 0.01)])
def test_bulk_verdicts_are_compare_s_verdicts(higher, resolution):
    """RoundNoise.verdicts (arrays, a level per pair) says what compare says of every pair,
    including cells without values, missing rounds, and equal values (a memory that did not move)."""
    rng = random.Random(5)
    for _ in range(40):
        values = {}
        for c in range(rng.randint(2, 8)):
            base = rng.uniform(50, 150)
            by = {r: base * rng.uniform(0.95, 1.05) for r in range(rng.randint(1, 4)) if rng.random() < 0.9}
            values[f"c{c}"] = {r: 100.0 for r in by} if rng.random() < 0.2 else by
        noise = RoundNoise.fit(values)
        a, b = zip(*[(x, y) for x in [*values, "absent"] for y in values if x != y])
        levels = np.array([1 - 0.05 / rng.randint(1, 30) for _ in a])
        want = [noise.compare(x, y, higher, float(level), resolution).verdict for x, y, level in zip(a, b, levels)]
        assert noise.verdicts(list(a), list(b), higher, levels, resolution) == want


def test_a_verdict_on_a_threshold_is_left_to_compare(monkeypatch):
    """A pair whose interval ends exactly at 0 is decided by compare, not by the arrays."""
    noise = RoundNoise.fit({"a": {0: 110.0, 1: 121.0}, "b": {0: 100.0, 1: 100.0}})
    asked = []
    real = RoundNoise.compare

    def spy(self, *args, **kwargs) -> Comparison:
        asked.append(args[:2])
        return real(self, *args, **kwargs)
    monkeypatch.setattr(RoundNoise, "compare", spy)
    d = np.log([1.1, 1.21])
    level = 1 - 2 * float(stdtr(1, -d.mean() / (d.std(ddof=1) / math.sqrt(2))))  # the interval's end at 0
    assert noise.verdicts(["a"], ["b"], True, level) == [real(noise, "a", "b", True, level).verdict]
    assert asked == [("a", "b")]


def test_charts_of_many_cells_draw_their_marks_as_one_image(monkeypatch):
    """Past RASTER_FROM cells a chart's dots and whiskers are one embedded image (thousands of
    SVG paths made each chart megabytes); below it they stay vector. A grid wider than
    MAX_HEATMAP_SIDE is not drawn, and says why."""
    from txsuite.report import charts

    # micro_batch x lr alone: without the cell of another budget, exactly two axes (a heatmap)
    table = build_cell_table([r for r in synthetic_records() if r.cell_id != "c09"])
    vector = {c.key: c for c in charts.build_charts(table)}
    assert "<image" not in str(vector["pareto"].svg) and vector["heatmap"].drawn
    monkeypatch.setattr(charts, "RASTER_FROM", 3)
    monkeypatch.setattr(charts, "MAX_HEATMAP_SIDE", 2)
    drawn = {c.key: c for c in charts.build_charts(table)}
    for key in ("pareto", "quality", "axes"):
        assert "<image" in str(drawn[key].svg), key
    assert not drawn["heatmap"].drawn and "cannot be read" in drawn["heatmap"].note
