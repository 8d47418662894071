"""torch.compile of the whole model (inductor), `compile.mode` (`memory.compile` in older
matrices). Compilation happens in the first steps, which is why cells time only the steps
after `train.warmup_steps`.

Ordering: the last model transformation (only `gradients`, which touches no module, and
`compression`, which acts after training on the eager module, follow): it traces whatever the
earlier techniques built."""
from __future__ import annotations

import torch

from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    mode = cell.compile.mode
    if mode == "none":
        return setup
    setup.model = torch.compile(setup.model, mode=None if mode == "default" else mode)
    setup.facts["compiled"] = True
    return setup


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile's wrapper (the same parameters), for evaluation and
    inference timing: each new input shape and the train -> eval switch would recompile the
    compiled one (tens of seconds for a 350M model on a GPU), which is not what training costs."""
    return getattr(model, "_orig_mod", model)
