"""Numbers as people read them: 12.3k tokens/s, 1.50 GiB, 1.83×, 41.2 ms.

Used by the templates (as Jinja filters), by the summary sentences and by chart labels, so a
value is written the same way everywhere in a report.
"""
from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def is_number(value: Any) -> bool:
    """A finite int/float (bools are not numbers here: a flag is not a measurement)."""
    if isinstance(value, bool) or value is None:
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def si(value: Any, digits: int = 3) -> str:
    """12345.6 -> '12.3k'; 0.5 -> '0.5'."""
    if not is_number(value):
        return MISSING
    v = float(value)
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.{digits}g}{suffix}"
    return f"{v:.{digits}g}"


def bytes_(value: Any) -> str:
    """Binary units, because that is what memory sizes and OOM messages use."""
    if not is_number(value):
        return MISSING
    v = float(value)
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(v) >= factor:
            return f"{v / factor:.2f} {unit}"
    return f"{v:.0f} B"


def seconds(value: Any) -> str:
    if not is_number(value):
        return MISSING
    v = float(value)
    if abs(v) < 1e-3:
        return f"{v * 1e6:.0f} µs"
    if abs(v) < 1:
        return f"{v * 1e3:.1f} ms"
    if abs(v) < 120:
        return f"{v:.2f} s"
    return f"{v / 60:.1f} min"


def ratio(value: Any) -> str:
    return f"{float(value):.2f}×" if is_number(value) else MISSING


def signed(value: Any) -> str:
    """A difference, with its sign: +0.0123, -4.5e-05."""
    return f"{float(value):+.4g}" if is_number(value) else MISSING


def percent(value: Any, digits: int = 1) -> str:
    """A fraction (0.42) as a percentage ('42.0%')."""
    return f"{float(value) * 100:.{digits}f}%" if is_number(value) else MISSING


def plain(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if is_number(value):
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.{digits}g}"
    return str(value)


def axis_value(value: Any) -> str:
    """An axis value as written in a matrix: a mapping entry reads 'micro_batch=8 grad_accum=2'."""
    if isinstance(value, dict):
        return " ".join(f"{k}={axis_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(axis_value(v) for v in value) + "]"
    return plain(value)


def energy(value: Any) -> str:
    if not is_number(value):
        return MISSING
    v = float(value)
    for factor, unit in ((1, "J"), (1e-3, "mJ"), (1e-6, "µJ")):
        if abs(v) >= factor:
            return f"{v / factor:.3g} {unit}"
    return f"{v * 1e9:.3g} nJ"


# metric kind -> formatter; the cell table declares a kind per column.
BY_KIND = {
    "rate": si, "bytes": bytes_, "seconds": seconds, "ratio": ratio, "fraction": percent,
    "loss": lambda v: plain(v, 4), "energy": energy, "plain": plain, "count": plain,
}


def by_kind(value: Any, kind: str) -> str:
    return BY_KIND.get(kind, plain)(value)
