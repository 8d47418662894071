"""Training techniques, applied to the pure model from outside it (L2).

Each module has one `apply(setup, cell)` entry point. The worker applies them in this order;
the reasons for the order are written where they bind:

1. precision      - a `bf16-pure` cast must happen before anything captures parameters (the
                    optimizer, compile's graph, a parallel wrapper's flat buffers).
2. checkpointing  - wraps blocks; must precede compile so the compiled graph includes the
                    recomputation boundaries (torchtitan orders TP -> AC -> compile -> FSDP).
3. ddp            - wraps the whole model; compile then traces the DDP module (PyTorch's
                    recommended torch.compile(DDP(model)) order).
4. compilation    - last model transformation: it traces whatever the earlier steps built.
The optimizer is built after all three, from the final module's parameters.
"""
from suite.techniques.setup import TrainSetup, Unsupported
from suite.techniques import checkpointing, compilation, ddp, precision

ORDER = (precision, checkpointing, ddp, compilation)


def apply_all(setup: TrainSetup, cell) -> TrainSetup:
    for technique in ORDER:
        setup = technique.apply(setup, cell)
    return setup


__all__ = ["ORDER", "TrainSetup", "Unsupported", "apply_all"]
