"""Training techniques, applied to the pure model from outside it (L3).

A technique is a module with one `apply(setup, cell) -> setup` entry point, registered in ORDER
below. It reads its settings from the cell; the settings, and the rules that say which values
can work together and on which host, live beside them in txsuite/config/spec/<family>.py (the
plan checks them without torch, before anything runs). Inside `apply` a technique probes what
only torch can tell (a kernel that will not run here) and raises Unsupported: the cell is then
recorded as `skipped` with the reason, before it trains.

txsuite.train.build_training applies them in this order; the reasons are written where they bind:

1. precision        - a `bf16-pure` cast must happen before anything captures parameters (the
                      optimizer, compile's graph, a parallel wrapper's flat buffers).
2. converters       - swap modules of the whole model before anything splits, wraps or traces
                      it (torchtitan's model converters): float8 (precision or quantization
                      fp8), qat (qat-int8 fake quantizers), prune_schedule (masks and a step
                      hook for pruning while training), linear_kernel (last: it converts only
                      the plain nn.Linear layers the others left).
3. pipeline         - cuts the model into this rank's stage modules; everything after walks
                      `setup.parts` (the stages) instead of the whole model.
4. tensor_parallel  - shards each block's linears over the tp ranks; before checkpointing and
                      FSDP, which wrap the parallelised blocks (torchtitan: TP -> AC -> FSDP).
5. checkpointing    - wraps blocks; must precede compile so the compiled graph includes the
                      recomputation boundaries.
6. data parallelism - ddp or fsdp wrap what the block has become; deepspeed registers its
                      engine, which takes model, optimizer and schedule together once the
                      optimizer exists (txsuite.train.make_trainer).
7. compilation      - last model transformation: it traces whatever the earlier steps built.
8. gradients        - with every parameter placed, chooses how the global norm is clipped.
9. compression      - probes the host for post-training compression, and registers it to run
                      after training (setup.after_training).
The optimizer is built after all of them, from the final module's parameters.
"""
from txsuite.techniques.setup import TrainSetup, Unsupported
from txsuite.techniques import (checkpointing, compilation, compression, ddp, deepspeed, float8, fsdp, gradients,
                              linear_kernel, pipeline, precision, prune_schedule, qat, tensor_parallel)

CONVERTERS = (float8, qat, prune_schedule, linear_kernel)
ORDER = (precision, *CONVERTERS, pipeline, tensor_parallel, checkpointing, ddp, fsdp, deepspeed, compilation,
         gradients, compression)


def apply_all(setup: TrainSetup, cell) -> TrainSetup:
    for technique in ORDER:
        setup = technique.apply(setup, cell)
    return setup


__all__ = ["CONVERTERS", "ORDER", "TrainSetup", "Unsupported", "apply_all"]
