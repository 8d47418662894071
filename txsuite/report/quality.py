"""The quality half of a report, with its noise: how good each cell's model is, how sure that is,
and how fast it got there.

Per cell (columns added to the per-cell table; NaN where not measured):
    seeds                   distinct training seeds with an ok repetition
    val_loss_mean           final validation loss, mean over seeds (a seed's value: the median of
                            its repetitions, which differ only in timing)
    val_loss_ci_low/high    95 % interval of that mean: Student's t over seeds (none with one seed:
                            the validation set's noise is not the noise of training)
    val_loss_delta          mean of the differences to the reference cell, paired by seed index;
                            at the common token budget when the two cells saw different numbers
                            of tokens (from their evaluation curves)
    val_loss_delta_ci_low/high   its 95 % interval (txsuite/verdict/seeds.py: t over the paired seeds;
                            with one seed, the training noise of the run's cells with several seeds)
    quality_verdict         better / worse / within noise / untested (one seed and no training noise
                            in the run, or no evaluation at the common budget) / reference
    quality_noise           which noise the verdict used, and at what budget
    target_loss             the cell's target: train.target_loss, or for `auto` the reference's
                            final validation loss (median over its seeds) plus target_tolerance
    time_to_target_s, tokens_to_target (+ _ci_low/_ci_high)   interpolated on each seed's
                            evaluation curve (linearly between the evaluations around the first
                            crossing), mean and 95 % t interval over seeds
    steps_to_target         tokens_to_target / tokens per optimizer step (for the batch-size view)
    tokens_to_target_delta (+ _ci_low/_ci_high)   tokens to the target minus the reference's,
                            paired by seed (a pretrained start saves tokens: < 0)
    target_reached          "k of n seeds"
    grad_noise_scale        median over repetitions (measure.noise_scale)
    gap_to_optimum          val_loss_mean minus the task's known optimum (synthetic tasks)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from txsuite.report import formatting as fmt
from txsuite.verdict.distributions import t_quantile
from txsuite.verdict.seeds import LossDifference, TrainingNoise, loss_difference
from txsuite.verdict.words import UNTESTED, WORSE

EXPORT_COLUMNS = ("seeds", "val_loss_mean", "val_loss_ci_low", "val_loss_ci_high", "val_loss_delta",
                  "val_loss_delta_ci_low", "val_loss_delta_ci_high", "quality_verdict", "quality_noise",
                  "target_loss", "time_to_target_s", "time_to_target_ci_low", "time_to_target_ci_high",
                  "tokens_to_target", "tokens_to_target_ci_low", "tokens_to_target_ci_high", "steps_to_target",
                  "tokens_to_target_delta", "tokens_to_target_delta_ci_low", "tokens_to_target_delta_ci_high",
                  "target_reached",
                  "grad_noise_scale", "gap_to_optimum")


def seed_losses(group: pd.DataFrame) -> dict[int, float]:
    """seed index -> final validation loss of that seed (median of its ok repetitions)."""
    ok = group[(group["status"] == "ok") & group["val_loss"].notna()]
    if ok.empty:
        return {}
    index = ok["seed_index"].fillna(0).astype(int) if "seed_index" in ok else pd.Series(0, index=ok.index)
    return {int(k): float(v) for k, v in ok.groupby(index)["val_loss"].median().items()}


def train_tokens(group: pd.DataFrame) -> float | None:
    """Tokens a cell trained on: tokens per step x measured steps (None when not recorded)."""
    ok = group[group["status"] == "ok"]
    if ok.empty or "tokens_per_step" not in ok or "config.train.steps" not in ok:
        return None
    per_step, steps = ok["tokens_per_step"].iloc[0], ok["config.train.steps"].iloc[0]
    return float(per_step) * float(steps) if fmt.is_number(per_step) and fmt.is_number(steps) else None


@dataclass
class CellSeeds:
    """What comparing one cell's quality reads: its seeds' final losses (seed_losses), the
    tokens it trained on (train_tokens), and its repetitions, fetched only where a comparison
    at a common token budget reads their evaluation curves."""
    losses: dict[int, float]
    tokens: float | None
    rows: Callable[[], pd.DataFrame]

    @classmethod
    def of(cls, group: pd.DataFrame) -> "CellSeeds":
        return cls(seed_losses(group), train_tokens(group), lambda: group)


def cells_seeds(repeats: pd.DataFrame) -> dict[str, CellSeeds]:
    """cell id -> CellSeeds.of(the cell's repetitions), for every cell in first-seen order, read
    from the whole frame at once (a frame filtered per cell took minutes at 20,000 records);
    tests/test_report_scale.py holds it equal to the per-cell reading."""
    groups = repeats.groupby("cell_id", sort=False)
    out = {str(cid): CellSeeds({}, None, lambda cid=cid: groups.get_group(cid))
           for cid in repeats["cell_id"].drop_duplicates()}
    measured = repeats[(repeats["status"] == "ok") & repeats["val_loss"].notna()]
    index = measured["seed_index"].fillna(0).astype(int) if "seed_index" in measured \
        else pd.Series(0, index=measured.index)
    # by cell, then seed index ascending: seed_losses' order (the mean over seeds sums in it)
    for (cid, k), loss in measured.groupby([measured["cell_id"], index])["val_loss"].median().items():
        out[str(cid)].losses[int(k)] = float(loss)
    ok = repeats[repeats["status"] == "ok"]
    if "tokens_per_step" in ok and "config.train.steps" in ok:
        first = ok.drop_duplicates("cell_id")
        for cid, per_step, steps in zip(first["cell_id"], first["tokens_per_step"], first["config.train.steps"]):
            if fmt.is_number(per_step) and fmt.is_number(steps):
                out[str(cid)].tokens = float(per_step) * float(steps)
    return out


def same_budget(a: float | None, b: float | None) -> bool:
    """Two cells trained on the same number of tokens (or one of them did not record it)."""
    return a is None or b is None or math.isclose(a, b, rel_tol=1e-9)


def loss_at_tokens(curve, tokens_per_step: float, budget: float) -> float | None:
    """The evaluation loss at `budget` tokens, linearly interpolated between the two evaluations
    around it (exactly at an evaluation when one falls there); None when the curve does not
    span it."""
    if not tokens_per_step:
        return None
    points = [(tokens, loss) for tokens, _, loss in curve_points(curve, tokens_per_step)]
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if t0 <= budget <= t1:
            return l0 if t1 == t0 else l0 + (budget - t0) / (t1 - t0) * (l1 - l0)
    return next((loss for tokens, loss in points if math.isclose(tokens, budget, rel_tol=1e-9)), None)


def losses_at_budget(group: pd.DataFrame, budget: float) -> dict[int, float]:
    """seed index -> evaluation loss at `budget` tokens, for the seeds whose curve spans it."""
    out = {}
    for k, rec in seed_records(group).items():
        loss = loss_at_tokens(rec.get("eval_curve"), _tokens_per_step(rec), budget)
        if loss is not None:
            out[k] = loss
    return out


def compare_losses(a: pd.DataFrame, b: pd.DataFrame, noise: TrainingNoise | None) -> LossDifference | None:
    """Cell a's final validation loss against cell b's (their repetitions): compare_seeds."""
    return compare_seeds(CellSeeds.of(a), CellSeeds.of(b), noise)


def compare_seeds(a: CellSeeds, b: CellSeeds, noise: TrainingNoise | None) -> LossDifference | None:
    """Cell a's final validation loss against cell b's, paired by seed (txsuite/verdict/seeds.py).
    Cells that trained on different numbers of tokens are compared at the smaller budget, on
    their evaluation curves; where a curve does not reach there, the comparison is untested."""
    ta, tb = a.tokens, b.tokens
    la, lb = a.losses, b.losses
    if same_budget(ta, tb):
        return loss_difference(la, lb, noise)
    budget = min(ta, tb)
    at = f" at the common budget of {fmt.si(budget)} tokens (one cell saw {max(ta, tb) / budget:.2g}x as many)"
    common = sorted(set(la) & set(lb))
    if not common:
        return None
    ba, bb = losses_at_budget(a.rows(), budget), losses_at_budget(b.rows(), budget)
    if not set(common) <= set(ba) & set(bb):
        delta = float(np.mean([la[k] - lb[k] for k in common]))
        return LossDifference(delta, math.nan, math.nan,
                              f"not compared: the cells saw different numbers of tokens ({fmt.si(ta)} and "
                              f"{fmt.si(tb)}) and no evaluation falls at the common budget (set train.eval_every)",
                              UNTESTED)
    return loss_difference(ba, bb, noise, where=at)


def training_noise(seeds: dict[str, CellSeeds], anchor: str) -> TrainingNoise | None:
    """The run's training noise: the per-seed differences of every cell with two seeds or more
    to the `anchor` cell, on the same token budget, pooled (`seeds`: cells_seeds)."""
    mine = seeds[anchor].losses
    anchor_tokens = seeds[anchor].tokens
    differences = []
    for cid, cell in seeds.items():
        if cid == anchor or not same_budget(cell.tokens, anchor_tokens):
            continue
        theirs = cell.losses
        differences.append([theirs[k] - mine[k] for k in sorted(set(theirs) & set(mine))])
    return TrainingNoise.fit(differences)


def curve_points(curve, tokens_per_step: float) -> list[tuple[float, float, float]]:
    """An evaluation curve [[step, wall_s, loss], ...] as sorted (tokens, wall_s, loss) points,
    malformed entries left out; [] when it is no curve."""
    if not isinstance(curve, list):
        return []
    return sorted((float(p[0]) * tokens_per_step, float(p[1]), float(p[2])) for p in curve
                  if isinstance(p, (list, tuple)) and len(p) >= 3 and all(fmt.is_number(v) for v in p[:3]))


def crossing(curve, target: float, tokens_per_step: float) -> tuple[float, float] | None:
    """(tokens, training seconds) at which an evaluation curve [[step, wall_s, loss], ...] first
    reaches `target`, linearly interpolated between the two evaluations around the crossing (at
    the first evaluation if it is already below). None when it never gets there."""
    points = curve_points(curve, tokens_per_step)
    for i, (tokens, wall, loss) in enumerate(points):
        if loss <= target:
            if i == 0:
                return tokens, wall
            t0, w0, l0 = points[i - 1]
            frac = (l0 - target) / (l0 - loss) if l0 != loss else 1.0
            return t0 + frac * (tokens - t0), w0 + frac * (wall - w0)
    return None


def seed_records(group: pd.DataFrame) -> dict[int, pd.Series]:
    """seed index -> the first ok repetition of that seed (repetitions of one seed train the same
    model on the same data; they differ only in timing, so any one has the seed's curves)."""
    ok = group[group["status"] == "ok"]
    out: dict[int, pd.Series] = {}
    for _, rec in ok.sort_values("repeat").iterrows():
        k = int(rec["seed_index"]) if "seed_index" in rec and fmt.is_number(rec["seed_index"]) else 0
        out.setdefault(k, rec)
    return out


def _tokens_per_step(rec: pd.Series) -> float:
    tps = rec.get("tokens_per_step")
    return float(tps) if fmt.is_number(tps) else 0.0


@dataclass
class SeedBand:
    """A cell's validation curve over its seeds, at the evaluation steps: rows of `steps` with
    the tokens seen, the mean training wall time, and the mean / lowest / highest loss over the
    seeds that evaluated there."""
    steps: np.ndarray
    tokens: np.ndarray
    wall_s: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


def seed_band(group: pd.DataFrame) -> SeedBand | None:
    by_step: dict[float, list[tuple[float, float]]] = {}
    tokens_per_step = 0.0
    for rec in seed_records(group).values():
        curve = rec.get("eval_curve")
        if not isinstance(curve, list):
            continue
        tokens_per_step = tokens_per_step or _tokens_per_step(rec)
        for p in curve:
            if isinstance(p, (list, tuple)) and len(p) >= 3 and all(fmt.is_number(v) for v in p[:3]):
                by_step.setdefault(float(p[0]), []).append((float(p[1]), float(p[2])))
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    rows = [np.array(by_step[s]) for s in steps]  # each [n_seeds_at_step, (wall, loss)]
    return SeedBand(steps=steps, tokens=steps * tokens_per_step,
                    wall_s=np.array([r[:, 0].mean() for r in rows]), mean=np.array([r[:, 1].mean() for r in rows]),
                    low=np.array([r[:, 1].min() for r in rows]), high=np.array([r[:, 1].max() for r in rows]),
                    seeds=len(seed_records(group)))


def _interval(values: list[float]) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, np.nan, np.nan
    half = t_quantile(len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def cell_target(first: Mapping[str, Any], reference_median: float | None) -> float | None:
    """train.target_loss of the cell (`first`: its first repetition): a number, or auto (the
    reference's median final loss + tolerance)."""
    target = first.get("config.train.target_loss")
    if target == "auto":
        if reference_median is None:
            return None
        tolerance = first["config.train.target_tolerance"] if "config.train.target_tolerance" in first else 0.02
        return reference_median + float(tolerance)
    return float(target) if fmt.is_number(target) else None


def add_quality_columns(cells: pd.DataFrame, repeats: pd.DataFrame, reference: str | None) -> None:
    """Add the columns of the module docstring to `cells` (in place). What each cell's columns
    read is taken from the whole frame at once (cells_seeds, per_cell_medians, ...), never from
    a frame filtered per cell."""
    seeds = cells_seeds(repeats)
    ref = seeds.get(reference) if reference else None
    noise = training_noise(seeds, reference) if ref is not None else None
    ref_median = float(np.median(list(ref.losses.values()))) if ref is not None and ref.losses else None
    target_columns = [c for c in ("cell_id", "config.train.target_loss", "config.train.target_tolerance") if c in repeats]
    firsts = {str(row["cell_id"]): row for row in repeats.drop_duplicates("cell_id")[target_columns].to_dict("records")}
    targets = {cid: cell_target(firsts[cid], ref_median) for cid in firsts}
    curves = all_seed_records(repeats) if "eval_curve" in repeats and any(t is not None for t in targets.values()) \
        else {}
    noise_scale = _per_cell(repeats, "grad_noise_scale", "median")
    optimum = _per_cell(repeats, "optimal_loss", "first")
    rows = []
    crossings: dict[str, dict] = {}
    for cid in cells["cell_id"]:
        row: dict = {}
        losses = seeds[cid].losses
        row["seeds"] = len(losses)
        if losses:
            mean, lo, hi = _interval(list(losses.values()))  # no interval with one seed
            row.update(val_loss_mean=mean, val_loss_ci_low=lo, val_loss_ci_high=hi)
        if cid == reference and losses:
            row.update(val_loss_delta=0.0, quality_verdict="reference")
        elif ref is not None and losses:
            diff = compare_seeds(seeds[cid], ref, noise)
            if diff is not None:
                row.update(val_loss_delta=diff.delta, val_loss_delta_ci_low=diff.low, val_loss_delta_ci_high=diff.high,
                           quality_verdict=diff.verdict, quality_noise=diff.noise)
        target = targets[cid]
        records = curves.get(cid, {})
        crossings[cid] = crossings_of(records, target) if curves else {}
        row.update(_time_to_target(records, target, crossings[cid]))
        row["grad_noise_scale"] = noise_scale.get(cid, np.nan)
        if cid in optimum and "val_loss_mean" in row:
            row["gap_to_optimum"] = row["val_loss_mean"] - optimum[cid]
        rows.append(row)
    if reference in crossings:
        for cid, row in zip(cells["cell_id"], rows):
            if cid != reference:
                row.update(tokens_to_target_delta(crossings[cid], crossings[reference]))
    frame = pd.DataFrame(rows, index=cells.index)
    for column in EXPORT_COLUMNS:
        cells[column] = frame[column] if column in frame else np.nan


def _per_cell(repeats: pd.DataFrame, column: str, how: str) -> dict[str, float]:
    """cell id -> the median (how="median") or first (how="first") number of `column` over the
    cell's repetitions, whatever their status; cells without one left out."""
    if column not in repeats:
        return {}
    values = pd.to_numeric(repeats[column], errors="coerce")
    by_cell = getattr(values.groupby(repeats["cell_id"], sort=False), how)()
    return {str(cid): float(v) for cid, v in by_cell.items() if not math.isnan(v)}


def all_seed_records(repeats: pd.DataFrame) -> dict[str, dict[int, Mapping[str, Any]]]:
    """cell id -> seed_records of the cell (its rows as mappings), for every cell at once."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    ok = repeats[repeats["status"] == "ok"]
    for rec in ok.sort_values("repeat", kind="stable").to_dict("records"):
        k = int(rec["seed_index"]) if "seed_index" in rec and fmt.is_number(rec["seed_index"]) else 0
        out.setdefault(str(rec["cell_id"]), {}).setdefault(k, rec)
    return out


def seed_crossings(group: pd.DataFrame, target: float | None) -> dict[int, tuple[float, float] | None]:
    """seed index -> (tokens, training seconds) at the target on that seed's evaluation curve,
    None for a seed that never reached it; {} when there is no target or no curve."""
    if target is None or "eval_curve" not in group:
        return {}
    return crossings_of(seed_records(group), target)


def crossings_of(records: Mapping[int, Mapping[str, Any]], target: float | None
                 ) -> dict[int, tuple[float, float] | None]:
    """seed_crossings on the cell's seed_records."""
    if target is None:
        return {}
    return {k: crossing(rec["eval_curve"], target, _tokens_per_step(rec)) for k, rec in records.items()}


def _time_to_target(records: Mapping[int, Mapping[str, Any]], target: float | None, per_seed: dict) -> dict:
    """`records`: the cell's seed_records."""
    if target is None:
        return {}
    if not per_seed:
        return {"target_loss": target}
    reached = [v for v in per_seed.values() if v is not None]
    out = {"target_loss": target, "target_reached": f"{len(reached)} of {len(per_seed)} seeds"}
    if reached and len(reached) == len(per_seed):
        out["tokens_to_target"], out["tokens_to_target_ci_low"], out["tokens_to_target_ci_high"] = _interval(
            [tokens for tokens, _ in reached])
        out["time_to_target_s"], out["time_to_target_ci_low"], out["time_to_target_ci_high"] = _interval(
            [wall for _, wall in reached])
        tokens_per_step = _tokens_per_step(next(iter(records.values())))
        if tokens_per_step:  # fractional: interpolated between evaluations like the tokens
            out["steps_to_target"] = out["tokens_to_target"] / tokens_per_step
    return out


def tokens_to_target_delta(mine: dict, reference: dict) -> dict:
    """Tokens to target minus the reference's, paired by seed over the seeds where both reached
    it (t interval over the pairs; none with one pair): what a pretrained start, a larger batch
    or another optimizer saves (< 0) or costs on the way to the same loss."""
    pairs = [(mine[k][0], reference[k][0]) for k in sorted(set(mine) & set(reference))
             if mine[k] is not None and reference[k] is not None]
    if not pairs:
        return {}
    delta, lo, hi = _interval([a - b for a, b in pairs])
    return {"tokens_to_target_delta": delta, "tokens_to_target_delta_ci_low": lo, "tokens_to_target_delta_ci_high": hi}


def tied_with_best(cells: pd.DataFrame, repeats: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(cell id with the lowest mean validation loss, ids of the cells whose difference to it is
    within noise). A best whose lead is within noise is a tie, never a winner."""
    measured = cells[cells["val_loss_mean"].notna()] if "val_loss_mean" in cells else cells.iloc[0:0]
    if measured.empty:
        return None, []
    best = str(measured.loc[measured["val_loss_mean"].idxmin(), "cell_id"])
    seeds = cells_seeds(repeats)
    noise = training_noise(seeds, best)
    tied = []
    for cid in measured["cell_id"]:
        if cid == best:
            continue
        diff = compare_seeds(seeds[cid], seeds[best], noise)
        if diff is None or diff.verdict != WORSE:
            tied.append(str(cid))
    return best, tied
