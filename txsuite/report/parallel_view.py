"""The report's parallelism section: every distributed cell beside its single-process control,
with what parallelism costs (throughput per device, per-rank memory, communication share,
pipeline bubble) and the proof that it trains the same model (the largest gap between its
loss curve and the control's)."""
from __future__ import annotations

from typing import Any

from txsuite.config.record import Record
from txsuite.report import formatting as fmt
from txsuite.report.tableview import Column, TableCell, TableView, sort_key

# Settings a data-parallel split may change while training on the same samples per step.
SPLIT_KEYS = (("train", "micro_batch"), ("train", "grad_accum"))


def parallel_section(records: list[Record]) -> dict[str, Any] | None:
    """None when no cell of the run is distributed."""
    cells: dict[str, Record] = {}
    for r in records:  # one record per cell: its first good repeat
        if r.status == "ok" and r.cell_id not in cells:
            cells[r.cell_id] = r
    distributed = [r for r in cells.values() if _world(r) > 1 or _parallel(r).get("engine", "none") != "none"]
    if not distributed:
        return None
    singles = [r for r in cells.values() if r not in distributed]
    view = TableView(_COLUMNS)
    controls_shown = set()
    missing = []
    for r in distributed:
        control = next((s for s in singles if _same_training(s, r)), None)
        if control is None:
            missing.append(r.label or r.cell_id)
        elif control.cell_id not in controls_shown:
            controls_shown.add(control.cell_id)
            view.rows.append(_row(control, None))
            view.row_classes.append("reference")
        view.rows.append(_row(r, control))
        view.row_classes.append("")
    return {"table": view, "missing_control": missing}


_COLUMNS = [
    Column("cell", hint="'control' marks the single-process cell on the same samples per step"),
    Column("layout", hint="engine, dp x tp x pp, and the schedule or ZeRO stage"),
    Column("tokens/s", True, "global: all ranks together"),
    Column("tokens/s per device", True, "global tokens/s ÷ world size"),
    Column("step p50", True, "median optimizer step time"),
    Column("peak mem per rank", True, "the largest rank's peak (host RSS on CPU, reserved bytes on CUDA)"),
    Column("comm share", True, "share of profiled warm-up steps with a collective or transfer in flight "
                               "(includes overlapped communication and pipeline waits)"),
    Column("bubble", True, "pipeline idle share from the schedule: (pp-1)/(v·m+pp-1)"),
    Column("max |Δ loss|", True, "largest gap between this cell's training loss curve and the control's, "
                                 "over every step: fp32 reduction-order noise when the engine is right"),
    Column("Δ val loss", True, "validation loss minus the control's"),
]


def _row(r: Record, control: Record | None) -> list[TableCell]:
    m, p = r.metrics, _parallel(r)
    layout = f"{p['engine']} · {p['dp']}×{p['tp']}×{p['pp']}"
    if p["pp"] > 1:
        layout += f" · {p['pp_schedule']}, {m.get('pp_microbatches')} chunks"
    if p["engine"] == "deepspeed":
        layout += f" · ZeRO-{p['zero_stage']}" + (f", offload {p['offload']}" if p["offload"] != "none" else "")
    label = r.label or r.cell_id
    gap = _curve_gap(r, control) if control is not None else None
    dval = m["val_loss"] - control.metrics["val_loss"] if control is not None else None
    per_rank = m.get("per_rank_peak_mem_bytes") or [m.get("peak_mem_bytes")]
    return [
        TableCell(label, label, "label", sub=r.cell_id + (" · control" if control is None and _world(r) == 1 else "")),
        TableCell(layout, layout),
        TableCell(fmt.si(m.get("tokens_per_s")), sort_key(m.get("tokens_per_s")), "num"),
        TableCell(fmt.si(m.get("tokens_per_s_per_device", m.get("tokens_per_s"))),
             sort_key(m.get("tokens_per_s_per_device", m.get("tokens_per_s"))), "num"),
        TableCell(fmt.seconds(m.get("step_time_p50_s")), sort_key(m.get("step_time_p50_s")), "num"),
        TableCell(fmt.bytes_(max(per_rank)), sort_key(max(per_rank)), "num"),
        TableCell(fmt.percent(m.get("comm_share")), sort_key(m.get("comm_share")), "num"),
        TableCell(fmt.percent(m.get("pp_bubble_fraction")), sort_key(m.get("pp_bubble_fraction")), "num"),
        TableCell(fmt.plain(gap, 3) if gap is None else f"{gap:.1e}", sort_key(gap), "num"),
        TableCell(fmt.plain(dval, 3) if dval is None else f"{dval:+.1e}", sort_key(dval), "num"),
    ]


def _parallel(r: Record) -> dict[str, Any]:
    return r.config.get("parallel") or {}


def _world(r: Record) -> int:
    p = _parallel(r)
    return p.get("dp", 1) * p.get("tp", 1) * p.get("pp", 1)


def _same_training(single: Record, distributed: Record) -> bool:
    """The single-process cell trains on the same samples with the same settings: configs equal
    apart from the parallel block and how a step's samples are split into micro-batches."""
    a, b = single.config, distributed.config
    if single.metrics.get("samples_per_step") != distributed.metrics.get("samples_per_step"):
        return False
    for family in set(a) | set(b):
        if family == "parallel":
            continue
        mine, theirs = a.get(family), b.get(family)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            keys = set(mine) | set(theirs)
            if any(mine.get(k) != theirs.get(k) for k in keys if (family, k) not in SPLIT_KEYS):
                return False
        elif mine != theirs:
            return False
    return True


def _curve_gap(r: Record, control: Record) -> float | None:
    ours, theirs = r.metrics.get("loss_curve") or [], control.metrics.get("loss_curve") or []
    if not ours or len(ours) != len(theirs):
        return None
    return max(abs(a[2] - b[2]) for a, b in zip(ours, theirs))
