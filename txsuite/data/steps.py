"""The micro-batches of each optimizer step, in training order, for one rank."""
from __future__ import annotations

from typing import Iterator

from .base import Batch


def step_batches(dataset, micro_batch: int, grad_accum: int, seed: int, rank: int = 0, dp: int = 1,
                 pin: bool = False, augment=None) -> Iterator[Batch]:
    """The samples of one optimizer step (all dp ranks) are drawn together, identically on
    every rank, and this rank takes its contiguous share before splitting it into
    micro-batches; so cells with the same samples per step train on identical data whatever
    their micro-batch x accumulation x data-parallel split. pin: page-locked host memory, so
    the trainer's non_blocking copies to a GPU really overlap (a no-op request otherwise).
    augment: a txsuite.data.augment.Augmenter, applied to the whole step's samples (every rank
    draws the same corruption) before this rank takes its share."""
    share = micro_batch * grad_accum
    for x, y in dataset.train_batches(share * dp, seed=seed):  # [dp * B * k, T] each
        if augment is not None:
            x, y = augment(x, y)
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield from zip(x.split(micro_batch), y.split(micro_batch))
