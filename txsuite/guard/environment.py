"""Do the two sides come from the same machine and the same libraries?

The environment fingerprint (txsuite.measure.env + the worker's device details) is compared key
by key. Differences in hardware (CPU model and ISA, core count, GPUs, device, torch threads) or
in library versions (torch, numpy, CUDA runtime, driver, Python...) are listed as
`env_differences`: they mean a throughput change may be the machine's, not the code's. The
txsuite commit and host name are expected to change and go to the notes. The measured matmul
peaks are compared too: the same CPU model can run at different speeds (another cloud host,
another clock, a busy neighbour while the peak was measured). And the kernels each cell ran
where an `auto` setting picks them per host (model.attention, model.linear): the same matrix can
run another kernel on another host, and its speed with it.
"""
from __future__ import annotations

import statistics
from typing import Any

from txsuite.guard.side import Side

HARDWARE = (
    ("cpu", "CPU"),
    ("cpu_flags", "CPU instruction sets"),
    ("cpu_count", "CPU count"),
    ("cpu_affinity", "usable CPU cores"),
    ("device", "device type"),
    ("device_name", "device"),
    ("torch_threads", "torch threads"),
    ("cuda_capability", "CUDA capability"),
    ("gpu_memory_bytes", "GPU memory"),
)
SOFTWARE = (
    ("python", "Python"),
    ("torch", "torch"),
    ("cuda_runtime", "CUDA runtime"),
    ("mkldnn", "oneDNN (mkldnn)"),
    ("os", "operating system"),
    ("host_allocator", "host memory allocator (measure.host_allocator)"),
)
# What a record written before a key existed ran with: records written before
# measure.host_allocator existed ran under glibc's malloc defaults.
ASSUMED_WHEN_ABSENT = {"host_allocator": "system"}
PEAK_TOLERANCE = 0.10  # measured peaks within 10 % are the same machine speed


def _show(v: Any) -> str:
    if isinstance(v, list):
        if v and all(isinstance(x, dict) for x in v):
            return "; ".join(str(x.get("name", x)) for x in v) or "none"
        return " ".join(str(x) for x in v) or "none"
    return "none" if v is None else repr(v) if isinstance(v, str) else str(v)


def _gpu_names(gpus: Any) -> Any:
    if isinstance(gpus, list):
        return [g.get("name") if isinstance(g, dict) else g for g in gpus]
    return gpus


def _gpu_drivers(gpus: Any) -> Any:
    if isinstance(gpus, list):
        return sorted({g.get("driver") for g in gpus if isinstance(g, dict) and g.get("driver")})
    return None


def _diff_set(a: Any, b: Any) -> str | None:
    """For ISA flag lists: what one side has and the other lacks."""
    if isinstance(a, list) and isinstance(b, list):
        only_b = sorted(set(a) - set(b))  # baseline only
        only_r = sorted(set(b) - set(a))
        parts = []
        if only_b:
            parts.append("only the baseline has " + " ".join(only_b))
        if only_r:
            parts.append("only the run has " + " ".join(only_r))
        return "; ".join(parts) or None
    return None


def compare_env(run: Side, baseline: Side) -> tuple[list[str], list[str], bool]:
    """-> (differences, notes, hardware_differs). Differences name the key and both values."""
    a, b = baseline.env or {}, run.env or {}
    diffs: list[str] = []
    notes: list[str] = []
    hardware = False
    if not a or not b:
        missing = baseline.describe() if not a else run.describe()
        notes.append(f"{missing} carries no environment fingerprint: hardware and library versions "
                     f"cannot be compared.")
        return diffs, notes, False
    for key, name in HARDWARE:
        if key in a and key in b and a[key] != b[key]:
            detail = _diff_set(a[key], b[key]) if key == "cpu_flags" else None
            diffs.append(f"hardware: {name} differs: baseline {_show(a[key])}, run {_show(b[key])}"
                         if detail is None else f"hardware: {name} differ: {detail}")
            hardware = True
    ga, gb = _gpu_names(a.get("gpus")), _gpu_names(b.get("gpus"))
    if "gpus" in a and "gpus" in b and ga != gb:
        diffs.append(f"hardware: GPUs differ: baseline {_show(ga)}, run {_show(gb)}")
        hardware = True
    a, b = {**ASSUMED_WHEN_ABSENT, **a}, {**ASSUMED_WHEN_ABSENT, **b}
    for key, name in SOFTWARE:
        if key in a and key in b and a[key] != b[key]:
            diffs.append(f"library: {name} differs: baseline {_show(a[key])}, run {_show(b[key])}")
    da, db = _gpu_drivers(a.get("gpus")), _gpu_drivers(b.get("gpus"))
    if da and db and da != db:
        diffs.append(f"library: GPU driver differs: baseline {_show(da)}, run {_show(db)}")
    pa, pb = a.get("packages") or {}, b.get("packages") or {}
    for pkg in sorted(set(pa) | set(pb)):
        if pkg == "torch" and "torch" in a and "torch" in b:
            continue  # already compared above
        va, vb = pa.get(pkg), pb.get(pkg)
        if va != vb and pkg in pa and pkg in pb:
            diffs.append(f"library: {pkg} differs: baseline {va or 'not installed'}, "
                         f"run {vb or 'not installed'}")
    if a.get("host") and b.get("host") and a["host"] != b["host"]:
        notes.append(f"host name: baseline {a['host']!r}, run {b['host']!r}")
    if a.get("txsuite_commit") != b.get("txsuite_commit"):
        notes.append(f"txsuite commit: baseline {a.get('txsuite_commit') or 'unknown'}, "
                     f"run {b.get('txsuite_commit') or 'unknown'}")
    peak_diffs = compare_peaks(run, baseline)
    if peak_diffs:
        diffs.extend(peak_diffs)
        hardware = True
    diffs.extend(compare_kernels(run, baseline))
    return diffs, notes, hardware


MAX_NAMED_CELLS = 3


def compare_kernels(run: Side, baseline: Side) -> list[str]:
    """A cell that ran another kernel on each side (an `auto` setting resolved differently: another
    host, another torch, a cleared cache): one line per change, naming up to MAX_NAMED_CELLS cells."""
    changes: dict[tuple[str, str, str], list[str]] = {}
    for cell_id, cell in run.cells.items():
        before = baseline.cells.get(cell_id)
        if before is None:
            continue
        ka, kb = _cell_kernels(before), _cell_kernels(cell)
        for kind in sorted(set(ka) & set(kb)):
            if ka[kind] != kb[kind]:
                changes.setdefault((kind, ka[kind], kb[kind]), []).append(cell.label or cell_id)
    out = []
    for (kind, was, now), labels in sorted(changes.items()):
        named = ", ".join(labels[:MAX_NAMED_CELLS]) + (f" and {len(labels) - MAX_NAMED_CELLS} more"
                                                       if len(labels) > MAX_NAMED_CELLS else "")
        out.append(f"kernel: model.{kind} ran {was} in the baseline and {now} in the run ({named}); its "
                   f"speed is the kernel's as much as the code's — pin model.{kind} to compare code alone")
    return out


def _cell_kernels(cell) -> dict[str, str]:
    """kind -> the kernel the cell's repetitions ran ("a / b" when they differ among themselves)."""
    seen: dict[str, set[str]] = {}
    for rep in cell.repeats:
        for kind, name in (rep.kernels or {}).items():
            seen.setdefault(kind, set()).add(name)
    return {kind: " / ".join(sorted(names)) for kind, names in seen.items()}


def side_peaks(side: Side) -> dict[str, float]:
    """precision -> median measured matmul peak (FLOP/s) over the side's repetitions."""
    by: dict[str, list[float]] = {}
    for cell in side.cells.values():
        for rep in cell.repeats:
            if rep.peak_flops:
                by.setdefault(cell.precision or "?", []).append(rep.peak_flops)
    return {k: statistics.median(v) for k, v in by.items()}


def compare_peaks(run: Side, baseline: Side) -> list[str]:
    pr, pb = side_peaks(run), side_peaks(baseline)
    out = []
    for precision in sorted(set(pr) & set(pb)):
        ratio = pr[precision] / pb[precision]
        if abs(ratio - 1.0) > PEAK_TOLERANCE:
            out.append(f"hardware speed: the measured {precision} matmul peak differs: baseline "
                       f"{pb[precision] / 1e9:,.0f} GFLOP/s, run {pr[precision] / 1e9:,.0f} GFLOP/s "
                       f"({ratio - 1:+.0%})")
    return out
