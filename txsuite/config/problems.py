"""A setting that can never work, as the rules beside the settings report it (L0)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """`key` is the dotted setting the message is about (the plan points at the line that set
    it); `allowed` says what would work instead, or None."""
    key: str
    message: str
    allowed: str | None = None
