"""How cells are told apart in charts: colour by the first varying axis, marker / line style by
the second. Every chart of a report uses the same encoding, so 'orange' means the same cells
everywhere and one legend reading carries over."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.lines import Line2D

from txsuite.report import palettes
from txsuite.report.svg import plot_text

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DASHES = ["-", "--", ":", "-."]
MAX_STYLE_VALUES = 4  # beyond this, marker/line shapes stop being distinguishable at a glance
MAX_LEGEND_VALUES = 12


@dataclass
class Encoding:
    hue_key: str | None
    style_key: str | None
    colors: dict[Any, Any] = field(default_factory=dict)
    markers: dict[Any, str] = field(default_factory=dict)
    dashes: dict[Any, str] = field(default_factory=dict)
    default_color: Any = field(default_factory=lambda: palettes.deep(1)[0])

    def color(self, row: pd.Series) -> Any:
        return self.colors.get(_key(row[self.hue_key]), self.default_color) if self.hue_key else self.default_color

    def marker(self, row: pd.Series) -> str:
        return self.markers.get(_key(row[self.style_key]), "o") if self.style_key else "o"

    def dash(self, row: pd.Series) -> str:
        return self.dashes.get(_key(row[self.style_key]), "-") if self.style_key else "-"

    def legend_handles(self, kind: str = "marker") -> list[Line2D]:
        """Proxy artists naming axis values (not cells: a legend of 200 cells helps nobody)."""
        handles = []
        if self.hue_key:
            values = list(self.colors.items())
            for value, color in values[:MAX_LEGEND_VALUES]:
                label = plot_text(f"{_tail(self.hue_key)}={value}")
                if kind == "line":
                    handles.append(Line2D([], [], color=color, lw=2, label=label))
                else:
                    handles.append(Line2D([], [], color=color, marker="o", lw=0, markersize=7, label=label))
            if len(values) > MAX_LEGEND_VALUES:
                handles.append(Line2D([], [], lw=0, label=f"… {len(values) - MAX_LEGEND_VALUES} more"))
        if self.style_key:
            for value in self.markers:
                label = plot_text(f"{_tail(self.style_key)}={value}")
                if kind == "line":
                    handles.append(Line2D([], [], color="#555", ls=self.dashes[value], lw=1.5, label=label))
                else:
                    handles.append(Line2D([], [], color="#555", marker=self.markers[value], lw=0,
                                          markersize=7, label=label))
        return handles


def choose_encoding(cells: pd.DataFrame, axes: list[str]) -> Encoding:
    hue_key = axes[0] if axes else None
    style_key = None
    for key in axes[1:]:
        if cells[key].map(_key).nunique() <= MAX_STYLE_VALUES:
            style_key = key
            break
    enc = Encoding(hue_key=hue_key, style_key=style_key)
    if hue_key:
        values = ordered_values(cells[hue_key])
        # Numeric axes (batch sizes, sparsities) read best as a ramp; names as distinct hues.
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(values) > 2:
            palette = palettes.ramp(len(values))
        else:
            palette = palettes.categories(len(values))
        enc.colors = dict(zip(values, palette))
    if style_key:
        values = ordered_values(cells[style_key])
        enc.markers = dict(zip(values, MARKERS))
        enc.dashes = dict(zip(values, DASHES))
    return enc


def ordered_values(column: pd.Series) -> list[Any]:
    """Distinct values, numerically sorted when they are numbers, else in first-seen order."""
    values = list(dict.fromkeys(_key(v) for v in column))
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return values


def _key(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if hasattr(value, "item"):  # numpy scalar -> python, so dict lookups match
        return value.item()
    return value


def _tail(key: str) -> str:
    return key.rsplit(".", 1)[-1]
