"""Jinja2 rendering: one environment, autoescaping on, templates shipped in the package.

Every user string (matrix name, description, labels, reasons, log tails) reaches the page
through autoescaping; the only pre-built markup is the charts' SVG, which matplotlib escapes
when it writes text.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from txsuite.report import formatting as fmt
from txsuite.results import write_atomic

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(si=fmt.si, bytes=fmt.bytes_, seconds=fmt.seconds, ratio=fmt.ratio,
                       percent=fmt.percent, plain=fmt.plain)
    return env


def render_to_file(template: str, out_path: Path | str, **context: Any) -> Path:
    """Render and write atomically: a reader never sees half a report, and a failed render
    leaves the previous report in place."""
    html = environment().get_template(template).render(**context)
    out_path = Path(out_path)
    write_atomic(out_path, html)
    return out_path
