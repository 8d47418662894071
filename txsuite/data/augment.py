"""`data.augment`: corruption of the training batches (never of validation), seeded.

    none          the text as it is
    replace-<r>   each input token, with probability r, becomes a uniformly random token
    mask-<r>      spans of 3 input tokens become the mask token (id 0), starting with probability
                  r / 3 at each position, so about a fraction r of the inputs is masked
    delete-<r>    each token of the window is dropped with probability r; the shortened text
                  is re-windowed and its tail padded (padding is never scored)
    swap-<r>      disjoint pairs of adjacent tokens, each pair with probability r, trade places

replace and mask corrupt the context only: every position still predicts the clean next token
(word dropout, Bowman et al. 2016; span masking as in T5, without its sentinel targets).
delete and swap edit the training text itself, as EDA does (Wei & Zou 2019): the targets follow
the edited text. Mask id 0 is the NUL byte, which the shipped corpora never contain; on markov
and BPE data it is an ordinary symbol, so mask acts as replacement by one fixed symbol there.

Only for datasets whose targets are the next tokens of the same text (corpora, markov); the
plan refuses copy / reverse / modadd. The rate actually applied is counted: the fraction of
input positions whose token differs from the clean input (delete: the fraction of tokens
dropped), over every training batch, and recorded as `augment_rate_measured`.
"""
from __future__ import annotations

import torch

from .base import derive_seed

AUGMENT_STREAM = 7  # derive_seed stream of the corruption generator (train seed -> its own draws)
MASK_TOKEN = 0
MASK_SPAN = 3
KINDS = ("replace", "mask", "delete", "swap")
IGNORE = -100


def parse(spec: str) -> tuple[str, float] | None:
    """'delete-0.1' -> ('delete', 0.1); 'none' -> None. ValueError names what is allowed."""
    if spec == "none":
        return None
    kind, _, rate = spec.partition("-")
    try:
        value = float(rate)
    except ValueError:
        value = float("nan")
    if kind not in KINDS or not 0.0 < value < 1.0:
        raise ValueError(f"unknown augmentation {spec!r}; allowed: none, or " +
                         ", ".join(f"{k}-<rate>" for k in KINDS) + " with a rate strictly between 0 and 1")
    return kind, value


class Augmenter:
    """Corrupts the samples of each optimizer step (all ranks' rows together, so every
    micro-batch / data-parallel split of a step sees the same corruption), counting what it did."""

    def __init__(self, spec: str, vocab_size: int, seed: int):
        parsed = parse(spec)
        assert parsed is not None, "Augmenter is built only for an augmentation"
        self.kind, self.rate = parsed
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(derive_seed(seed, AUGMENT_STREAM))
        self.changed = 0  # input positions corrupted (delete: tokens dropped)
        self.total = 0  # input positions seen (delete: window tokens)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 [N, T] on the host, y the next tokens of x -> the corrupted pair."""
        return getattr(self, "_" + self.kind)(x, y)

    def measured_rate(self) -> float | None:
        return self.changed / self.total if self.total else None

    def metrics(self) -> dict:
        return {"augment": self.kind, "augment_rate": self.rate, "augment_rate_measured": self.measured_rate()}

    # --- the kinds ---------------------------------------------------------------------------
    def _draw(self, shape: tuple[int, ...], p: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator) < p

    def _count(self, before: torch.Tensor, after: torch.Tensor) -> None:
        self.changed += int((before != after).sum())
        self.total += before.numel()

    def _replace(self, x, y):
        hit = self._draw(x.shape, self.rate)
        noise = torch.randint(0, self.vocab_size, x.shape, generator=self.generator)
        out = torch.where(hit, noise, x)
        self._count(x, out)
        return out, y

    def _mask(self, x, y):
        starts = self._draw(x.shape, self.rate / MASK_SPAN)  # [N, T]
        covered = starts.clone()
        for shift in range(1, MASK_SPAN):  # a start at t masks t .. t + MASK_SPAN - 1
            covered[:, shift:] |= starts[:, :-shift]
        out = x.masked_fill(covered, MASK_TOKEN)
        self._count(x, out)
        return out, y

    def _delete(self, x, y):
        window = torch.cat([x, y[:, -1:]], dim=1)  # [N, T + 1]: the text the pair came from
        keep = ~self._draw(window.shape, self.rate)
        new_x, new_y = torch.full_like(x, MASK_TOKEN), torch.full_like(y, IGNORE)
        for row in range(window.shape[0]):
            kept = window[row][keep[row]]
            n = max(0, kept.numel() - 1)  # pairs (input, next token) left in the shortened text
            new_x[row, :n], new_y[row, :n] = kept[:n], kept[1:n + 1]
        self.changed += int((~keep).sum())
        self.total += window.numel()
        return new_x, new_y

    def _swap(self, x, y):
        window = torch.cat([x, y[:, -1:]], dim=1)  # [N, T + 1]
        rows, length = window.shape
        offset = int(torch.randint(0, 2, (1,), generator=self.generator))  # pairs (o, o+1), (o+2, o+3), ...
        pairs = (length - offset) // 2
        chosen = self._draw((rows, pairs), self.rate)  # [N, pairs]
        first = offset + 2 * torch.arange(pairs)  # left index of each pair
        swapped = window.clone()
        left, right = window[:, first], window[:, first + 1]
        swapped[:, first] = torch.where(chosen, right, left)
        swapped[:, first + 1] = torch.where(chosen, left, right)
        new_x, new_y = swapped[:, :-1].contiguous(), swapped[:, 1:].contiguous()
        self._count(x, new_x)
        return new_x, new_y
