"""Matplotlib figures -> inline SVG strings (no files, no external fonts, no metadata URLs)."""
from __future__ import annotations

import io
import re
from contextlib import contextmanager
from typing import Any, Iterator

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from markupsafe import Markup

# Text stays <text> (not glyph outlines): files are several times smaller and faster to write,
# and the browser draws it with its own sans-serif font; nothing is fetched either way.
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
    # A light grid behind the data, grey frame, no tick marks (the "whitegrid" look of seaborn,
    # set here: importing seaborn brings scipy.stats and cost a report ~1.3 s of its ~3.4 s)
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.edgecolor": ".8",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": ".8",
    "grid.linestyle": "-",
    "axes.labelcolor": ".15",
    "text.color": ".15",
    "xtick.color": ".15",
    "ytick.color": ".15",
    "xtick.bottom": False,
    "ytick.left": False,
    "xtick.top": False,
    "ytick.right": False,
    "lines.solid_capstyle": "round",
    "patch.edgecolor": "w",
    "patch.force_edgecolor": True,
}
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
    """The report's clean grid style, applied only while our charts are drawn (the caller's
    global matplotlib settings are left as they were)."""
    with matplotlib.rc_context(STYLE):
        yield


def to_svg(fig) -> Markup:
    """Serialise the figure. Markup: matplotlib escapes every text it writes (labels
    are user strings), so the result is safe to place in the page as is."""
    buf = io.StringIO()
    # Empty metadata: matplotlib would otherwise embed Dublin Core URLs in every chart.
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = _PROLOGUE.sub("", buf.getvalue(), count=1)
    # Scale down to narrow screens (the viewBox keeps the aspect) but never beyond natural size.
    text = re.sub(r'<svg([^>]*?) width="([0-9.]+)pt" height="[0-9.]+pt"',
                  r'<svg\1 style="width:100%;max-width:\2pt;height:auto"', text, count=1)
    return Markup(text)


def plot_text(text: object) -> str:
    """A user string safe for matplotlib: '$' would otherwise start mathtext and can raise."""
    return str(text).replace("$", r"\$")
