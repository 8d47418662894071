"""`device`: where a cell runs. `auto` (the default) becomes the host's device at plan time."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.host import Host
    from txsuite.config.spec.cell import CellConfig

DEVICES = ("auto", "cpu", "cuda")
CHOICES = {"": DEVICES}


def problems(cell: "CellConfig") -> Iterator[Problem]:
    return iter(())


def host_problem(cell: "CellConfig", host: "Host") -> str | None:
    if host.device_of(cell) == "cuda" and not host.has_cuda:
        return "device 'cuda' was asked for but this host has no CUDA GPU"
    return None
