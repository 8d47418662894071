"""What a result record becomes in an experiment tracker (L2): the one mapping MLflow and
TensorBoard exports share, so both show the same names and numbers.

- params: the resolved config flattened with dots (`train.micro_batch`), each value a string
  (strings as they are, everything else as JSON: `4`, `0.001`, `null`, `true`);
- scalars: every top-level metric that is a finite number (booleans as 1/0); None, NaN and inf
  are left out (not measured is not zero);
- series: every `*_curve` of `[step, wall_s, value]` rows by its step (`loss_curve`,
  `eval_curve`), the loss curve again by tokens seen (`loss_curve_by_token`: step x
  tokens_per_step), and any other list of numbers by its position in the list (`step_times_s`,
  `val_seq_losses`, `finetune_loss_curve`);
- texts: metrics that are strings (`attention`, `peak_flops_key`...), for tags.
Dicts (`phase_s`, `data`...) are neither: the whole record goes along as a JSON artifact.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from txsuite.config.record import Record
from txsuite.results import flatten

BY_TOKEN = "_by_token"
# what a per-cell row shows of its repetitions, as the report does: ok repetitions only
OK = "ok"


class TrackerUnavailable(Exception):
    """An optional tracker package is not installed; the message names the extra to install."""


def param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def config_params(config: dict[str, Any]) -> dict[str, str]:
    """The resolved config, flattened with dots, as strings."""
    return {key: param_value(value) for key, value in flatten(config).items()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Every top-level metric that is a finite number."""
    out = {}
    for name, value in metrics.items():
        number = _number(value)
        if number is not None:
            out[name] = number
    return out


def texts(metrics: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in metrics.items() if isinstance(value, str)}


def _is_curve(rows: list) -> bool:
    return bool(rows) and all(isinstance(row, (list, tuple)) and len(row) == 3 and isinstance(row[0], int)
                              and not isinstance(row[0], bool) for row in rows)


def series(metrics: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value)], non-finite values left out."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, value in metrics.items():
        if not isinstance(value, list) or not value:
            continue
        if name.endswith("_curve") and _is_curve(value):
            out[name] = [(row[0], v) for row in value if (v := _number(row[2])) is not None]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in value):
            out[name] = [(i, v) for i, raw in enumerate(value) if (v := _number(raw)) is not None]
    tokens = metrics.get("tokens_per_step")
    if "loss_curve" in out and isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
        out["loss_curve" + BY_TOKEN] = [(step * tokens, v) for step, v in out["loss_curve"]]
    return {name: points for name, points in out.items() if points}


def cell_status(records: list[Record]) -> tuple[str, str | None]:
    """(status, reason) of a cell as the report's table gives them: `ok` when any repetition is,
    else the first repetition's status; the reason of the first repetition that is not ok."""
    ordered = sorted(records, key=lambda r: r.repeat)
    bad = [r for r in ordered if r.status != OK]
    status = OK if len(bad) < len(ordered) else ordered[0].status
    reason = next((r.reason for r in bad if r.reason), None)
    return status, reason


def cell_scalars(records: list[Record]) -> dict[str, tuple[float, int]]:
    """metric -> (median over the cell's ok repetitions, how many repetitions it is over): the
    per-cell value of the report's table."""
    import statistics

    values: dict[str, list[float]] = {}
    for record in records:
        if record.status == OK:
            for name, value in scalars(record.metrics).items():
                values.setdefault(name, []).append(value)
    return {name: (float(statistics.median(vs)), len(vs)) for name, vs in values.items()}


def safe_name(text: str, limit: int = 80) -> str:
    """A folder-safe form of a label (`precision=bf16 train.micro_batch=4` ->
    `precision=bf16_train.micro_batch=4`)."""
    name = re.sub(r"[^A-Za-z0-9=._+-]+", "_", text).strip("._")
    return name[:limit] or "cell"
