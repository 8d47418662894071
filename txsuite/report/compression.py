"""Compressed cells against their dense control: quality, size and inference speed deltas.

The control of a compressed cell is the cell of the same run whose configuration is equal in
everything but the `compress` block, and which compresses nothing (quantization and pruning
`none`); among several, the one whose compress block is entirely at its defaults. Its loss is
the dense, full-precision reference: a cell that also changes precision, lr or the model
compares with the dense cell of that precision, lr or model.

Columns added to the per-cell table (NaN where a cell has no control or no such metric):
    compressed_val_loss, model_size_bytes, prefill_tokens_per_s, decode_tokens_per_s,
    sparsity_achieved                       medians over the ok repeats
    compress_control                        the control's cell id
    control_loss_delta, control_ppl_delta           compressed loss / perplexity minus the control's
                                            (a cell without compressed_val_loss uses val_loss)
    control_loss_delta_se                       standard error of control_loss_delta from the paired
                                            per-sequence differences on the same validation
                                            windows (first ok repeat of each); |delta| under two
                                            of them is within the noise of the validation set
    size_ratio, decode_speedup, prefill_speedup   the cell's ÷ the control's
    decode_speedup_verdict, prefill_speedup_verdict   better / worse than the control beyond noise,
                                            within noise, or untested (one repetition), paired
                                            by round (txsuite/verdict/rounds.py)
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from txsuite.report import formatting as fmt
from txsuite.report.verdicts import RunVerdicts
from txsuite.report.values import comparable
from txsuite.config.spec import CompressSpec

COMPRESS = "config.compress."
MEDIANS = ("compressed_val_loss", "model_size_bytes", "prefill_tokens_per_s", "decode_tokens_per_s",
           "sparsity_achieved")
DERIVED = ("compress_control", "control_loss_delta", "control_loss_delta_se", "control_ppl_delta", "size_ratio",
           "decode_speedup", "prefill_speedup", "decode_speedup_verdict", "prefill_speedup_verdict")
EXPORT_COLUMNS = MEDIANS + DERIVED


def is_compressed(quantization: Any, pruning: Any) -> bool:
    return _named(quantization) or _named(pruning)


def _named(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", "none")


def add_compression_columns(cells: pd.DataFrame, repeats: pd.DataFrame) -> None:
    """Add the columns above to `cells` (in place). Nothing is added for a run whose records
    carry no compress block (records from before compression existed)."""
    if COMPRESS + "quantization" not in repeats.columns:
        return
    ok = repeats[repeats["status"] == "ok"]
    for name in MEDIANS:
        values = pd.to_numeric(ok[name], errors="coerce") if name in ok else pd.Series(np.nan, index=ok.index)
        medians = values.groupby(ok["cell_id"]).median()
        cells[name] = cells["cell_id"].map(medians).astype(float)
    controls = find_controls(repeats)
    cells["compress_control"] = cells["cell_id"].map(controls)
    loss = cells["compressed_val_loss"].fillna(cells["val_loss"])
    by_id = dict(zip(cells["cell_id"], range(len(cells))))

    def of_control(column: pd.Series) -> pd.Series:
        values = column.to_numpy(dtype=float)
        return cells["compress_control"].map(
            lambda c: values[by_id[c]] if isinstance(c, str) and c in by_id else np.nan).astype(float)
    control_loss = of_control(loss)
    cells["control_loss_delta"] = loss - control_loss
    sequences = _first_sequences(ok)
    cells["control_loss_delta_se"] = [
        paired_se(sequences.get(cid), sequences.get(ctl)) if isinstance(ctl, str) and ctl != cid else np.nan
        for cid, ctl in zip(cells["cell_id"], cells["compress_control"])]
    cells["control_ppl_delta"] = _exp(loss) - _exp(control_loss)
    cells["size_ratio"] = cells["model_size_bytes"] / of_control(cells["model_size_bytes"])
    cells["decode_speedup"] = cells["decode_tokens_per_s"] / of_control(cells["decode_tokens_per_s"])
    cells["prefill_speedup"] = cells["prefill_tokens_per_s"] / of_control(cells["prefill_tokens_per_s"])
    verdicts = RunVerdicts(repeats)
    for column, metric in (("decode_speedup", "decode_tokens_per_s"), ("prefill_speedup", "prefill_tokens_per_s")):
        cells[f"{column}_verdict"] = [
            verdicts.verdict(cid, ctl, metric)
            if isinstance(ctl, str) and ctl != cid and fmt.is_number(value) else None
            for cid, ctl, value in zip(cells["cell_id"], cells["compress_control"], cells[column])]


def paired_se(cell: Any, control: Any) -> float:
    """Standard error of the mean per-sequence loss difference (cell - control) over the same
    validation sequences; NaN when either side has none or they differ in length."""
    if not isinstance(cell, list) or not isinstance(control, list) or len(cell) != len(control) or len(cell) < 2:
        return np.nan
    diff = np.asarray(cell, dtype=float) - np.asarray(control, dtype=float)
    return float(diff.std(ddof=1) / math.sqrt(len(diff)))


def _first_sequences(ok: pd.DataFrame) -> dict[str, Any]:
    if "val_seq_losses" not in ok:
        return {}
    return {cid: group["val_seq_losses"].iloc[0] for cid, group in ok.sort_values("repeat").groupby("cell_id")}


def find_controls(repeats: pd.DataFrame) -> dict[str, str | None]:
    """cell id -> the cell id of its dense control (itself for a dense cell), None if none."""
    config_cols = [c for c in repeats.columns if c.startswith("config.")]
    rest = [c for c in config_cols if not c.startswith(COMPRESS)]
    compress_cols = [c for c in config_cols if c.startswith(COMPRESS)]
    per_cell = repeats.drop_duplicates("cell_id")
    measured = set(repeats.loc[repeats["status"] == "ok", "cell_id"])
    key_of: dict[str, str] = {}
    candidates: dict[str, list[tuple[tuple, str]]] = {}
    for _, row in per_cell.iterrows():
        cid = str(row["cell_id"])
        key = json.dumps({c: comparable(row[c]) for c in rest}, sort_keys=True, default=str)
        key_of[cid] = key
        if not is_compressed(row.get(COMPRESS + "quantization"), row.get(COMPRESS + "pruning")):
            # prefer a control with measurements, then one whose compress block is all defaults
            at_defaults = all(_is_default(c, row[c]) for c in compress_cols)
            candidates.setdefault(key, []).append(((cid not in measured, not at_defaults), cid))
    return {cid: (min(candidates[key])[1] if key in candidates else None) for cid, key in key_of.items()}


def _is_default(column: str, value: Any) -> bool:
    default = getattr(CompressSpec(), column[len(COMPRESS):], None)
    return comparable(value) == comparable(default)


def _exp(loss: pd.Series) -> pd.Series:
    return loss.map(lambda v: math.exp(v) if fmt.is_number(v) and v < 700 else np.nan).astype(float)
