"""torch.compile of the whole model (inductor). Compilation happens in the first steps, which
is why cells time only the steps after `train.warmup_steps`."""
from __future__ import annotations

import torch

from suite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    mode = cell.memory.compile
    if mode is False:
        return setup
    setup.model = torch.compile(setup.model, mode=None if mode in (True, "default") else mode)
    setup.facts["compiled"] = True
    return setup


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile's wrapper (the same parameters), for evaluation and
    inference timing: each new input shape and the train -> eval switch would recompile the
    compiled one (tens of seconds for a 350M model on a GPU), which is not what training costs."""
    return getattr(model, "_orig_mod", model)
