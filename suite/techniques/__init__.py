"""Training techniques, applied to the pure model from outside it (L2).

Each module has one `apply(setup, cell)` entry point. The worker applies them in this order;
the reasons for the order are written where they bind:

1. precision        - a `bf16-pure` cast must happen before anything captures parameters (the
                      optimizer, compile's graph, a parallel wrapper's flat buffers).
2. float8           - swaps Linear layers for torchao's Float8Linear (precision fp8, CUDA
                      only) after precision set the tf32 flags, and before anything splits,
                      wraps or traces the model, which must hold the final modules (torchtitan
                      converts before parallelising).
3. pipeline         - cuts the model into this rank's stage modules; everything after walks
                      `setup.parts` (the stages) instead of the whole model.
4. tensor_parallel  - shards each block's linears over the tp ranks; before checkpointing and
                      FSDP, which wrap the parallelised blocks (torchtitan: TP -> AC -> FSDP).
5. checkpointing    - wraps blocks; must precede compile so the compiled graph includes the
                      recomputation boundaries.
6. ddp / fsdp       - data parallelism over the dp ranks wraps what the block has become.
7. compilation      - last model transformation: it traces whatever the earlier steps built.
8. gradients        - with every parameter placed, chooses how the global norm is clipped.
The optimizer is built after all of them, from the final module's parameters. DeepSpeed is
not in this list: its engine wraps model, optimizer and schedule together (suite.trainer_deepspeed).
"""
from suite.techniques.setup import TrainSetup, Unsupported
from suite.techniques import (checkpointing, compilation, ddp, float8, fsdp, gradients, pipeline, precision,
                              tensor_parallel)

ORDER = (precision, float8, pipeline, tensor_parallel, checkpointing, ddp, fsdp, compilation, gradients)


def apply_all(setup: TrainSetup, cell) -> TrainSetup:
    for technique in ORDER:
        setup = technique.apply(setup, cell)
    return setup


__all__ = ["ORDER", "TrainSetup", "Unsupported", "apply_all"]
