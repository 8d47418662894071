"""Training techniques, applied to the pure model from outside it (L2).

Each module has one `apply(setup, cell)` entry point. The worker applies them in this order;
the reasons for the order are written where they bind:

1. precision        - a `bf16-pure` cast must happen before anything captures parameters (the
                      optimizer, compile's graph, a parallel wrapper's flat buffers).
2. pipeline         - cuts the model into this rank's stage modules; everything after walks
                      `setup.parts` (the stages) instead of the whole model.
3. tensor_parallel  - shards each block's linears over the tp ranks; before checkpointing and
                      FSDP, which wrap the parallelised blocks (torchtitan: TP -> AC -> FSDP).
4. checkpointing    - wraps blocks; must precede compile so the compiled graph includes the
                      recomputation boundaries.
5. ddp / fsdp       - data parallelism over the dp ranks wraps what the block has become.
6. compilation      - last model transformation: it traces whatever the earlier steps built.
7. gradients        - with every parameter placed, chooses how the global norm is clipped.
The optimizer is built after all of them, from the final module's parameters. DeepSpeed is
not in this list: its engine wraps model, optimizer and schedule together (suite.deepspeed_step).
"""
from suite.techniques.setup import TrainSetup, Unsupported
from suite.techniques import (checkpointing, compilation, ddp, fsdp, gradients, pipeline, precision,
                              tensor_parallel)

ORDER = (precision, pipeline, tensor_parallel, checkpointing, ddp, fsdp, compilation, gradients)


def apply_all(setup: TrainSetup, cell) -> TrainSetup:
    for technique in ORDER:
        setup = technique.apply(setup, cell)
    return setup


__all__ = ["ORDER", "TrainSetup", "Unsupported", "apply_all"]
