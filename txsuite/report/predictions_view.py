"""The report's "predicted vs measured" section: what the plan predicted for every cell
(txsuite/measure/predict.py, carried in each record) beside what the cell measured, the error
of each, and where the model was worst, so every run checks the model."""
from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from txsuite.report import formatting as fmt
from txsuite.report.tableview import Column, TableCell, TableView, sort_key

PARTS = (("params_bytes", "parameters"), ("grads_bytes", "gradients"), ("optimizer_bytes", "optimizer state"),
         ("activations_bytes", "activations and logits"), ("other_bytes", "other"))
# each predicted part beside the role measured at the step's peak (txsuite/measure/memory_roles.py)
SHOWN_PARTS = PARTS + (("heap_bytes", "heap beyond the tensors"),)  # heap: predicted only (measure/predict.py)
MEASURED_PART = {"params_bytes": "params_at_peak_bytes", "grads_bytes": "grads_at_peak_bytes",
                 "optimizer_bytes": "optimizer_at_peak_bytes", "activations_bytes": "activations_at_peak_bytes",
                 "other_bytes": "other_at_peak_bytes"}


def predictions_section(table) -> dict[str, Any] | None:
    """The table and its summary sentences; None when no record of the run carries a prediction."""
    reps = table.repeats
    if "predicted_train_mem_bytes" not in reps or reps["predicted_train_mem_bytes"].isna().all():
        return None
    rows, speed_errors, memory_errors = [], [], []
    for _, cell in table.cells.iterrows():
        mine = reps[reps["cell_id"] == cell["cell_id"]]
        ok = mine[mine["status"] == "ok"]
        if mine["predicted_train_mem_bytes"].isna().all():
            continue
        first = mine.dropna(subset=["predicted_train_mem_bytes"]).iloc[0]
        speed = _error(first.get("predicted_tokens_per_s"), _median(ok, "tokens_per_s"))
        memory = _error(first.get("predicted_train_mem_bytes"), _median(ok, "train_mem_bytes"))
        if speed is not None:
            speed_errors.append((abs(speed), cell["label"]))
        if memory is not None:
            memory_errors.append((abs(memory), cell["label"]))
        rows.append(_row(cell, first, ok, speed, memory))
    if not rows:
        return None
    return {"table": TableView(_COLUMNS, rows), "notes": _notes(speed_errors, memory_errors, reps),
            **_parts_by_role(table)}


def _parts_by_role(table) -> dict[str, Any]:
    """{"parts_table", "parts_notes"}: each predicted memory part beside the tensors of that role
    measured live at the step's peak, with the error per cell and the median per part; both
    empty when no record carries the measured roles."""
    none = {"parts_table": None, "parts_notes": []}
    reps = table.repeats
    if "tensors_at_peak_bytes" not in reps or reps["tensors_at_peak_bytes"].isna().all():
        return none
    rows, errors = [], {key: [] for key, _ in PARTS}
    for _, cell in table.cells.iterrows():
        mine = reps[(reps["cell_id"] == cell["cell_id"]) & (reps["status"] == "ok")]
        if mine.empty or mine["predicted_train_mem_bytes"].isna().all() or mine["tensors_at_peak_bytes"].isna().all():
            continue
        first = mine.dropna(subset=["predicted_train_mem_bytes"]).iloc[0]
        row = [TableCell(str(cell["label"] or cell["cell_id"]), sort_key(cell["label"]), "label", sub=cell["cell_id"])]
        for key, _ in PARTS:
            predicted, measured = first.get(f"predicted_{key}"), _median(mine, MEASURED_PART[key])
            error = _error(predicted, measured)
            if error is not None:
                errors[key].append((abs(error), str(cell["label"])))
            shown = f"predicted {fmt.bytes_(predicted)}" if fmt.is_number(predicted) else "not predicted"
            row.append(_number(measured, fmt.bytes_, sub=shown + (f", {error:+.0%}" if error is not None else "")))
        row.append(_number(_median(mine, "tensors_at_peak_bytes"), fmt.bytes_,
                           sub=f"train memory {fmt.bytes_(_median(mine, 'train_mem_bytes'))}"))
        rows.append(row)
    if not rows:
        return none
    medians = {key: statistics.median(e for e, _ in errs) for key, errs in errors.items() if errs}
    notes = [f"Median absolute error per part: " + ", ".join(f"{name} {medians[key]:.0%}" for key, name in PARTS
                                                            if key in medians) + "."]
    if medians:
        worst = max(medians, key=medians.get)
        notes.append(f"The model is worst on {dict(PARTS)[worst]} (median error {medians[worst]:.0%}; "
                     f"worst cell {max(errors[worst])[1]}).")
    columns = [Column("cell")] + [Column(f"{name} at the peak", True, f"measured; predicted {name} under it")
                                  for _, name in PARTS] + [
        Column("all tensors at the peak", True, "what the tensors held at the step's peak; train memory also "
                                                "counts what the allocator and the C library keep")]
    return {"parts_table": TableView(columns, rows), "parts_notes": notes}


_COLUMNS = [Column("cell"), Column("predicted tokens/s", True, "with the band the fit claims"),
            Column("measured tokens/s", True, "median over the ok repetitions"),
            Column("error", True, "predicted / measured - 1"),
            Column("predicted train memory", True, "the tensors training holds, and the heap beyond them as "
                                                     "fitted on this host"),
            Column("measured train memory", True), Column("error", True, "predicted / measured - 1"),
            Column("predicted memory parts", hint="what the predicted train memory is made of")]


def _row(cell: pd.Series, first: pd.Series, ok: pd.DataFrame, speed: float | None, memory: float | None
         ) -> list[TableCell]:
    low, high = first.get("predicted_tokens_per_s_low"), first.get("predicted_tokens_per_s_high")
    band = f"{fmt.si(low)}–{fmt.si(high)}" if fmt.is_number(low) and fmt.is_number(high) else ""
    parts = ", ".join(f"{name} {fmt.bytes_(first.get(f'predicted_{key}'))}" for key, name in SHOWN_PARTS
                      if fmt.is_number(first.get(f"predicted_{key}")) and first.get(f"predicted_{key}") != 0)
    return [TableCell(str(cell["label"] or cell["cell_id"]), sort_key(cell["label"]), "label", sub=cell["cell_id"]),
            _number(first.get("predicted_tokens_per_s"), fmt.si, sub=band or str(first.get("predicted_speed_source") or "")),
            _number(_median(ok, "tokens_per_s"), fmt.si), _percent(speed),
            _number(first.get("predicted_train_mem_bytes"), fmt.bytes_),
            _number(_median(ok, "train_mem_bytes"), fmt.bytes_), _percent(memory),
            TableCell(parts, parts)]


def _notes(speed_errors, memory_errors, reps: pd.DataFrame) -> list[str]:
    sources = {str(s) for s in reps.get("predicted_speed_source", pd.Series(dtype=object)).dropna()}
    notes = [f"Speed: {'; '.join(sorted(sources))}." if sources else ""]
    for what, errors in (("tokens/s", speed_errors), ("train memory", memory_errors)):
        if errors:
            worst = max(errors)
            notes.append(f"Median absolute error of {what}: {statistics.median(e for e, _ in errors):.0%} over "
                         f"{len(errors)} cells; worst {worst[0]:.0%} ({worst[1]}).")
    return [n for n in notes if n]


def _median(ok: pd.DataFrame, column: str) -> float | None:
    if column not in ok:
        return None
    values = [v for v in ok[column] if fmt.is_number(v) and v > 0]
    return statistics.median(values) if values else None


def _error(predicted: Any, measured: float | None) -> float | None:
    if not (fmt.is_number(predicted) and predicted > 0 and measured):
        return None
    return predicted / measured - 1


def _number(value: Any, show, sub: str = "") -> TableCell:
    return TableCell(show(value) if fmt.is_number(value) else "—", sort_key(value), "num", sub=sub)


def _percent(value: float | None) -> TableCell:
    return TableCell(f"{value:+.0%}" if value is not None else "—", sort_key(value), "num")
