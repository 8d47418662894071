"""Algorithmic tasks whose optimum is exactly 0 nats: copy, reverse, modular addition.

copy / reverse (alphabet S = data.symbols, default 16; SEP = S; vocab S + 1), one example per
row, n = seq_len // 2 random symbols a, then SEP, then a again (copy) or a reversed (reverse):
    sequence  a_1 .. a_n SEP b_1 .. b_n          (2n + 1 tokens = seq_len + 1; odd seq_len:
    x         a_1 .. a_n SEP b_1 .. b_(n-1)       one extra SEP at the end, not scored)
    y         -100 .. -100  b_1 .. b_n            only the copied half is scored
Fresh random sequences every batch (the space is S^n), so there is no finite train set.

modadd (p = data.symbols, default 97; EQ = p, PAD = p + 1; vocab p + 2): all p² examples
"a b = c" with c = (a + b) mod p, split once by a fixed permutation into train and validation
(data.val_fraction of them), so validation measures generalisation to unseen pairs.
Packing: each row holds k = (seq_len + 1) // 4 whole examples back to back, padded with PAD:
    sequence  a b EQ c a' b' EQ c' ... PAD        (seq_len + 1 tokens)
    y         only the answers c, c', ... are scored (at the positions where x == EQ)
Packing rather than one example per padded row gives seq_len/4 scored tokens per row instead
of one; each answer depends only on the three tokens before it, so the optimum stays 0.
Training samples train examples uniformly with replacement; validation walks the validation
examples in order (wrapping around if more are asked for than exist).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import IGNORE_INDEX, TRAIN_STREAM, VAL_STREAM, Batch, Dataset, synthetic_info, torch_generator

COPY_DEFAULT_SYMBOLS = 16
MODADD_DEFAULT_MODULUS = 97
MODADD_TASK_SEED = 97  # fixes the train/validation partition of the p² examples
MODADD_EXAMPLE_LEN = 4  # a b = c
SEQUENCE_TASK_VAL_SEED = 20_241_128  # validation sequences of copy/reverse


class SequenceTransformTask(Dataset):
    """copy or reverse: reproduce the first half after the separator."""

    def __init__(self, *, task: str, symbols: int, seq_len: int, seed: int):
        if seq_len < 2:
            raise ValueError(f"data.seq_len must be at least 2 for {task!r}, got {seq_len}")
        if symbols < 2:
            raise ValueError(f"data.symbols must be at least 2 for {task!r}, got {symbols}")
        self.task = task
        self.symbols = symbols
        self.separator = symbols  # token id of SEP
        self.half = seq_len // 2  # n: symbols to copy
        params = {"dataset": task, "kind": "synthetic", "symbols": symbols, "seq_len": seq_len,
                  "copy_len": self.half, "val_seed": SEQUENCE_TASK_VAL_SEED}
        info = synthetic_info(params, tokenizer="symbols", vocab_size=symbols + 1,
                           n_train_tokens=None, n_val_tokens=None, bytes_per_token=None, optimal_loss=0.0)
        super().__init__(seq_len=seq_len, vocab_size=symbols + 1, optimal_loss=0.0, info=info, seed=seed)

    def make_batch(self, batch: int, generator: torch.Generator) -> Batch:
        n = self.half
        source = torch.randint(0, self.symbols, (batch, n), generator=generator)  # [B, n]
        target = source if self.task == "copy" else source.flip(1)
        sep = torch.full((batch, 1), self.separator, dtype=torch.int64)
        filler = torch.full((batch, self.seq_len + 1 - (2 * n + 1)), self.separator, dtype=torch.int64)
        sequence = torch.cat([source, sep, target, filler], dim=1)  # [B, seq_len + 1]
        x = sequence[:, :-1].contiguous()
        y = torch.full_like(x, IGNORE_INDEX)
        y[:, n : 2 * n] = target  # y[:, t] = sequence[:, t + 1]: the copied half only
        return x, y

    def _train_batches(self, micro_batch: int, seed: int) -> Iterator[Batch]:
        generator = torch_generator(seed, TRAIN_STREAM)
        while True:
            yield self.make_batch(micro_batch, generator)

    def _val_batches(self, micro_batch: int, n_batches: int) -> list[Batch]:
        generator = torch_generator(SEQUENCE_TASK_VAL_SEED, VAL_STREAM)
        return [self.make_batch(micro_batch, generator) for _ in range(n_batches)]


class ModularAdditionTask(Dataset):
    """a + b mod p, answers scored, examples packed several to a row."""

    def __init__(self, *, modulus: int, seq_len: int, val_fraction: float, seed: int):
        if modulus < 2:
            raise ValueError(f"data.symbols (the modulus) must be at least 2 for 'modadd', got {modulus}")
        if seq_len + 1 < MODADD_EXAMPLE_LEN:
            raise ValueError(f"data.seq_len must be at least {MODADD_EXAMPLE_LEN - 1} for 'modadd', got {seq_len}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
        self.modulus = p = modulus
        self.equals, self.pad = p, p + 1  # token ids of '=' and padding
        self.per_row = (seq_len + 1) // MODADD_EXAMPLE_LEN  # k examples per row

        a, b = np.divmod(np.arange(p * p), p)
        examples = np.stack([a, b, np.full_like(a, p), (a + b) % p], axis=1)  # [p², 4]: a b = c
        order = np.random.default_rng(MODADD_TASK_SEED).permutation(p * p)
        n_val = min(p * p - 1, max(1, round(val_fraction * p * p)))
        self.val_examples = torch.from_numpy(examples[np.sort(order[:n_val])])  # [n_val, 4]
        self.train_examples = torch.from_numpy(examples[np.sort(order[n_val:])])  # [n_train, 4]

        params = {"dataset": "modadd", "kind": "synthetic", "modulus": p, "seq_len": seq_len,
                  "val_fraction": val_fraction, "task_seed": MODADD_TASK_SEED, "examples_per_row": self.per_row}
        info = synthetic_info(
            params, tokenizer="symbols", vocab_size=p + 2,
            n_train_examples=len(self.train_examples), n_val_examples=len(self.val_examples),
            n_train_tokens=len(self.train_examples) * MODADD_EXAMPLE_LEN,
            n_val_tokens=len(self.val_examples) * MODADD_EXAMPLE_LEN, bytes_per_token=None, optimal_loss=0.0,
        )
        super().__init__(seq_len=seq_len, vocab_size=p + 2, optimal_loss=0.0, info=info, seed=seed)

    def pack(self, examples: torch.Tensor) -> Batch:
        """examples: [B, k, 4] -> x, y: [B, seq_len]."""
        batch = examples.shape[0]
        packed = examples.reshape(batch, -1)  # [B, 4k]
        padding = torch.full((batch, self.seq_len + 1 - packed.shape[1]), self.pad, dtype=torch.int64)
        sequence = torch.cat([packed, padding], dim=1)  # [B, seq_len + 1]
        x = sequence[:, :-1].contiguous()
        answers = sequence[:, 1:]
        y = torch.where(x == self.equals, answers, torch.full_like(answers, IGNORE_INDEX))
        return x, y

    def _train_batches(self, micro_batch: int, seed: int) -> Iterator[Batch]:
        generator = torch_generator(seed, TRAIN_STREAM)
        n_train = len(self.train_examples)
        while True:
            picks = torch.randint(0, n_train, (micro_batch, self.per_row), generator=generator)
            yield self.pack(self.train_examples[picks])

    def _val_batches(self, micro_batch: int, n_batches: int) -> list[Batch]:
        picks = torch.arange(n_batches * micro_batch * self.per_row) % len(self.val_examples)
        examples = self.val_examples[picks].reshape(n_batches, micro_batch, self.per_row, MODADD_EXAMPLE_LEN)
        return [self.pack(e) for e in examples]
