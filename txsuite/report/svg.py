"""Matplotlib figures -> inline SVG strings (no files, no external fonts, no metadata URLs)."""
from __future__ import annotations

import io
import re
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from markupsafe import Markup

# Text stays <text> (not glyph outlines): files are several times smaller and faster to write,
# and the browser draws it with its own sans-serif font; nothing is fetched either way. These
# settings go over seaborn's theme (report_style), which gives the look: its "whitegrid" style,
# its "notebook" line widths and its "deep" palette.
STYLE = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "legend.title_fontsize": 9,
    "figure.dpi": 100,
    "svg.hashsalt": None,  # unique ids per figure, so several SVGs can share one HTML page
}
MIN_WIDTH_PX = 600
_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)  # XML declaration, DOCTYPE, comments before <svg>


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure that belongs to no GUI and no pyplot state: nothing to close, no global
    backend switch for a notebook that imports this package, safe on a headless host."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def formatter(func) -> FuncFormatter:
    return FuncFormatter(func)


@contextmanager
def report_style() -> Iterator[None]:
    """seaborn's theme (sns.set_theme's "whitegrid" style, "notebook" context and "deep"
    palette) with STYLE over it, applied only while our charts are drawn: the caller's global
    matplotlib settings are left as they were, where sns.set_theme would change them for good."""
    with matplotlib.rc_context(theme()):
        yield


@lru_cache(maxsize=1)
def theme() -> dict[str, Any]:
    # seaborn is imported here, when a chart is drawn, not with the package: it brings
    # scipy.stats (~0.6-1 s), which the CLI's other commands never need.
    import seaborn as sns
    from cycler import cycler

    return {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"),
            "axes.prop_cycle": cycler(color=sns.color_palette("deep")), "image.cmap": "viridis", **STYLE}


def to_svg(fig) -> Markup:
    """Serialise the figure. Markup: matplotlib escapes every text it writes (labels
    are user strings), so the result is safe to place in the page as is."""
    buf = io.StringIO()
    # Empty metadata: matplotlib would otherwise embed Dublin Core URLs in every chart.
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = _PROLOGUE.sub("", buf.getvalue(), count=1)
    # Scale down to narrow screens (the viewBox keeps the aspect) but never beyond natural size,
    # nor below MIN_WIDTH_PX: on a phone a chart scaled to the screen has 5 px text, so it keeps
    # a legible width and its box scrolls sideways (.plot in base.j2).
    text = re.sub(r'<svg([^>]*?) width="([0-9.]+)pt" height="[0-9.]+pt"',
                  rf'<svg\1 style="width:100%;max-width:\2pt;min-width:min(\2pt,{MIN_WIDTH_PX}px);height:auto"',
                  text, count=1)
    return Markup(text)


def plot_text(text: object) -> str:
    """A user string safe for matplotlib: '$' would otherwise start mathtext and can raise."""
    return str(text).replace("$", r"\$")
