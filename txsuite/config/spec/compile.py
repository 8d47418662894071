"""`compile`: torch.compile of the model (txsuite/techniques/compilation.py).

`compile: true` is short for `compile: {mode: default}` and `compile: false` for mode `none`;
the old key `memory.compile` is an alias of `compile.mode` (true -> default, false -> none)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class CompileSpec:
    mode: str = "none"  # none, or a torch.compile mode

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        if not self.enabled:
            return
        if cell.parallel.engine == "deepspeed":
            yield Problem("compile.mode", "torch.compile is not applied under engine 'deepspeed' in this "
                                          "version.", "none")
        if cell.parallel.pp > 1:
            yield Problem("compile.mode", "torch.compile of pipeline stages is not supported in this version.",
                          "none")


def mode_from_flag(value: Any) -> Any:
    """`compile: true/false` and the old `memory.compile: true/false` -> a mode name."""
    if value is True:
        return "default"
    if value is False:
        return "none"
    return value


CHOICES = {"mode": COMPILE_MODES}
# said beside the allowed values: what the flag spellings mean
CHOICE_NOTES = {"mode": "or true (= default) / false (= none)"}
POSITIVE: set[str] = set()
FRACTIONS: set[str] = set()
