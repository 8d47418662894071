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
