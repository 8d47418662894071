"""What every dataset offers the worker, and how its random streams are seeded.

A dataset yields (x, y) pairs of int64 tensors [B, seq_len] on the CPU; y[:, t] is the token
after x[:, t], or IGNORE_INDEX where the position is not scored.
"""
from __future__ import annotations

import abc
import json
from typing import Iterator

import numpy as np
import torch

from .cache import sha256_hex

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index

# Seed domains keep the streams apart: a training seed can never reproduce validation data.
TRAIN_STREAM = 1
VAL_STREAM = 2

Batch = tuple[torch.Tensor, torch.Tensor]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (SeedSequence hashing: nearby keys are unrelated)."""
    state = np.random.SeedSequence([k % (1 << 64) for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def torch_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


def synthetic_info(params: dict, **fields) -> dict:
    """Record fields of a synthetic task: its generator params, their sha256, then the rest."""
    return {**params, "sha256": sha256_hex(json.dumps(params, sort_keys=True)), **fields}


class Dataset(abc.ABC):
    """Common attributes; subclasses implement the two batch methods."""

    def __init__(self, *, seq_len: int, vocab_size: int, optimal_loss: float | None, info: dict, seed: int):
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.optimal_loss = optimal_loss  # known optimum of the mean scored-token loss, in nats
        self.info = info  # JSON-able description for the result record
        # The data itself (split, tokenizer, task, validation) never depends on the seed;
        # it is only the default seed of train_batches.
        self.seed = seed

    def train_batches(self, micro_batch: int, seed: int | None = None) -> Iterator[Batch]:
        """Infinite, deterministic for a seed: random training batches."""
        check_positive("micro_batch", micro_batch)
        return self._train_batches(micro_batch, self.seed if seed is None else seed)

    def val_batches(self, micro_batch: int, n_batches: int) -> list[Batch]:
        """Deterministic and independent of any seed: the same for every cell with this data spec."""
        check_positive("micro_batch", micro_batch)
        check_positive("n_batches", n_batches)
        return self._val_batches(micro_batch, n_batches)

    @abc.abstractmethod
    def _train_batches(self, micro_batch: int, seed: int) -> Iterator[Batch]: ...

    @abc.abstractmethod
    def _val_batches(self, micro_batch: int, n_batches: int) -> list[Batch]: ...


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
