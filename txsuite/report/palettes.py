"""Colour lists for the report's charts: seaborn's palettes (imported when a chart asks for
colours, not with the package; see svg.theme)."""
from __future__ import annotations

CATEGORY_COLOURS = 10  # "deep" has ten colours; beyond that, hues are spread instead


def deep(n: int) -> list[str]:
    """seaborn's "deep" palette (muted versions of matplotlib's ten category colours), cycling."""
    import seaborn as sns

    return sns.color_palette("deep", n).as_hex()


def categories(n: int) -> list[tuple[float, float, float]]:
    """n distinct colours for names: seaborn's "deep", or, when there are more names than it has
    colours, n hues evenly spaced in HUSL (seaborn's "husl": equal lightness and saturation to the
    eye, where evenly spaced HLS hues are not)."""
    import seaborn as sns

    return [tuple(c) for c in sns.color_palette("deep" if n <= CATEGORY_COLOURS else "husl", n)]


def ramp(n: int, name: str = "viridis") -> list[tuple[float, float, float]]:
    """n colours along a sequential map for ordered numbers. seaborn samples a continuous map
    leaving out its two ends (the darkest and the lightest read poorly against the grid)."""
    import seaborn as sns

    return [tuple(c) for c in sns.color_palette(name, n)]
