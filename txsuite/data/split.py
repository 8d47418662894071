"""Deterministic train/validation split of a text corpus, done on the text before tokenizing.

The text is cut into consecutive chunks of about `chunk_chars` characters (each cut moved to
just after the next newline, so no line is split), and chunk i goes to validation when
floor((i+1)·f) > floor(i·f): with f = 0.1 that is every 10th chunk (9, 19, 29, ...); other
fractions are spread just as evenly. Splitting text rather than tokens means the split is
the same for every tokenizer (BPE is trained on the train chunks only, and byte-level and BPE
losses are measured on the same validation text) and for every training seed.
Train chunks are concatenated into one stream; a training window may therefore span the seam
where a validation chunk was taken out, like a document boundary, but never reads val text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SPLIT_VERSION = 1  # bump when the rule changes: it is part of every cache key derived from a split
MAX_CHUNK_CHARS = 1 << 16  # shakespeare (5.3 M chars) -> 82 chunks, 8 of them validation
MIN_CHUNKS = 64  # small corpora get smaller chunks, so validation is spread through the text


@dataclass(frozen=True)
class TextSplit:
    train_pieces: tuple[str, ...]  # train chunks, in text order
    val_pieces: tuple[str, ...]  # validation chunks, in text order
    chunk_chars: int
    val_fraction: float

    @property
    def n_chunks(self) -> int:
        return len(self.train_pieces) + len(self.val_pieces)

    def identity(self) -> dict:
        """What, besides the corpus hash, determines the split (for cache keys and records)."""
        return {"split_version": SPLIT_VERSION, "chunk_chars": self.chunk_chars, "val_fraction": self.val_fraction}


def chunk_bounds(text: str, chunk_chars: int) -> list[int]:
    """Offsets [0, c1, c2, ..., len(text)] of consecutive chunks, each cut just after a newline."""
    bounds = [0]
    target = chunk_chars
    while target < len(text):
        newline = text.find("\n", target, target + chunk_chars)
        cut = newline + 1 if newline != -1 else target  # no newline nearby: cut mid-line
        if cut >= len(text):
            break
        bounds.append(cut)
        target = cut + chunk_chars
    bounds.append(len(text))
    return bounds


def is_val_chunk(index: int, val_fraction: float) -> bool:
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def split_text(text: str, val_fraction: float) -> TextSplit:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    # Enough chunks that even a small val_fraction gets a couple of validation chunks.
    min_chunks = max(MIN_CHUNKS, math.ceil(2 / val_fraction))
    chunk_chars = max(1, min(MAX_CHUNK_CHARS, math.ceil(len(text) / min_chunks)))
    bounds = chunk_bounds(text, chunk_chars)
    train: list[str] = []
    val: list[str] = []
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        (val if is_val_chunk(i, val_fraction) else train).append(text[start:end])
    if not train or not val:
        raise ValueError(
            f"data.val_fraction {val_fraction} leaves {len(train)} train and {len(val)} validation chunks "
            f"of a {len(text)}-character corpus; use more text or a fraction nearer 0.5"
        )
    return TextSplit(tuple(train), tuple(val), chunk_chars, val_fraction)
