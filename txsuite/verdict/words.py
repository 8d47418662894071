"""The words of a verdict, one set for every command.

A comparison ends in one of four verdicts; each metric names the two that separate in its own
words (tokens/s: faster / slower; memory: lighter / heavier; loss: better / worse), taken from
the metric registry's `kind` (txsuite/config/metrics.py).
"""
from __future__ import annotations

from txsuite.config.metrics import BY_NAME

BETTER, WORSE, WITHIN_NOISE, UNTESTED = "better", "worse", "within noise", "untested"

_BY_KIND = {"rate": ("faster", "slower"), "seconds": ("faster", "slower"), "bytes": ("lighter", "heavier"),
            "fraction": ("higher", "lower"), "loss": ("better", "worse")}


def in_words(verdict: str | None, metric: str) -> str | None:
    """`verdict` in the metric's words: "faster", "lighter", "within noise", ... (None stays None)."""
    if verdict not in (BETTER, WORSE):
        return verdict
    kind = BY_NAME[metric].kind if metric in BY_NAME else ""
    better, worse = _BY_KIND.get(kind, (BETTER, WORSE))
    return better if verdict == BETTER else worse


def is_better(word: str | None) -> bool:
    """True for BETTER and every metric's word for it (faster, lighter, higher)."""
    return word == BETTER or word in {pair[0] for pair in _BY_KIND.values()}


def is_worse(word: str | None) -> bool:
    return word == WORSE or word in {pair[1] for pair in _BY_KIND.values()}
