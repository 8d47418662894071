"""Colour lists for the report's charts, from matplotlib's colour maps (no seaborn import)."""
from __future__ import annotations

import colorsys

import numpy as np
from matplotlib import colormaps

# seaborn's "deep": muted versions of matplotlib's ten category colours
DEEP = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3",
        "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
CATEGORY_COLOURS = 10  # beyond this, category colours repeat: hues are spread instead


def deep(n: int) -> list[str]:
    return [DEEP[i % len(DEEP)] for i in range(n)]


def categories(n: int) -> list[tuple[float, float, float]]:
    """n distinct colours for names: matplotlib's tab10, or n hues evenly spread around the
    colour wheel when there are more names than tab10 has colours."""
    if n <= CATEGORY_COLOURS:
        return [tuple(c) for c in colormaps["tab10"].colors[:n]]
    return [colorsys.hls_to_rgb((0.01 + i / n) % 1.0, 0.6, 0.65) for i in range(n)]


def ramp(n: int, name: str = "viridis") -> list[tuple[float, float, float]]:
    """n colours along a sequential map for ordered numbers, leaving out its two ends (the
    darkest and the lightest read poorly against the grid)."""
    cmap = colormaps[name]
    return [tuple(cmap(x)[:3]) for x in np.linspace(0.0, 1.0, n + 2)[1:-1]]
