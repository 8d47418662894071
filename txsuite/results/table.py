"""Records as a pandas DataFrame, for users' own analysis and for the report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from txsuite.config.record import Record
from txsuite.results.folder import load_records


def to_dataframe(records: list[Record] | Path | str):
    """One row per record: identity columns, flattened config (`config.train.micro_batch`),
    and scalar metrics (`tokens_per_s`...). List-valued metrics (loss curve, step times) stay
    as Python lists in their column. `records` may be a list, or any results path (a run
    folder, a matrix folder or the whole results root)."""
    import pandas as pd  # imported here: the runner loads this package and must stay light

    if not isinstance(records, list):
        records = load_records(records)
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "matrix": r.matrix, "run_id": r.run_id, "cell_id": r.cell_id, "repeat": r.repeat,
            "label": r.label, "status": r.status, "reason": r.reason, "duration_s": r.duration_s,
            "seed": r.seed, "seed_index": r.seed_index,
        }
        row.update({f"config.{k}": v for k, v in flatten(r.config).items()})
        row.update(r.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
