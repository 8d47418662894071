"""Windows over preloaded token streams: the batches of text corpora and of the Markov task.

A stream is a flat int64 tensor made of `rows` segments of `row_len` tokens each (text: one
segment, the whole split; Markov: many independent chains). A window of seq_len + 1 tokens
never crosses a segment end; x is its first seq_len tokens and y the last seq_len, so every
position is scored. Making a batch is two gathers with a [B, seq_len] index: no Python loop
over tokens, cheap enough for the timed training loop.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .base import TRAIN_STREAM, Batch, Dataset, torch_generator


class TokenStream:
    """A flat int64 token tensor of `rows` equal segments, and the windows that fit in them."""

    def __init__(self, tokens: torch.Tensor, row_len: int, seq_len: int, name: str):
        if tokens.dtype != torch.int64 or tokens.dim() != 1 or tokens.numel() % row_len:
            raise ValueError("a token stream is a flat int64 tensor of whole rows")
        window = seq_len + 1  # x and y overlap by all but one token
        if row_len < window:
            raise ValueError(
                f"the {name} split has {row_len} tokens, fewer than data.seq_len + 1 = {window}; "
                "use a larger corpus, a smaller seq_len or a larger data.val_fraction"
            )
        self.tokens = tokens
        self.row_len = row_len
        self.rows = tokens.numel() // row_len
        self.starts_per_row = row_len - window + 1
        self.n_starts = self.rows * self.starts_per_row  # valid window starts, numbered row-major
        self.offsets = torch.arange(seq_len, dtype=torch.int64)  # [seq_len]

    def __len__(self) -> int:
        return self.tokens.numel()

    def windows(self, start_numbers: torch.Tensor) -> Batch:
        """start_numbers: [B] in [0, n_starts) -> x, y: [B, seq_len] int64, contiguous."""
        starts = (start_numbers // self.starts_per_row) * self.row_len + start_numbers % self.starts_per_row
        index = starts[:, None] + self.offsets[None, :]  # [B, seq_len]
        return self.tokens[index], self.tokens[index + 1]

    def random_windows(self, batch: int, generator: torch.Generator) -> Batch:
        return self.windows(torch.randint(0, self.n_starts, (batch,), generator=generator))

    def spaced_windows(self, count: int) -> Batch:
        """`count` windows evenly spaced over all valid starts (first at 0)."""
        numbers = torch.arange(count, dtype=torch.int64) * self.n_starts // count
        return self.windows(numbers)


class StreamDataset(Dataset):
    """Random training windows from the train stream; evenly spaced windows over the val stream."""

    def __init__(self, *, train: TokenStream, val: TokenStream, **common):
        super().__init__(**common)
        self.train = train
        self.val = val

    def _train_batches(self, micro_batch: int, seed: int) -> Iterator[Batch]:
        generator = torch_generator(seed, TRAIN_STREAM)
        while True:
            yield self.train.random_windows(micro_batch, generator)

    def _val_batches(self, micro_batch: int, n_batches: int) -> list[Batch]:
        x, y = self.val.spaced_windows(micro_batch * n_batches)
        return list(zip(x.split(micro_batch), y.split(micro_batch)))
