"""Text corpora as datasets: load the text, split it, tokenize both halves, preload as tensors.

Pipeline: corpus text (corpora) -> train/val chunks (split) -> tokenizer trained or loaded for
the train chunks (tokenization) -> one token stream per split (cached for BPE) -> int64 tensors
that batches are gathered from (batches).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .batches import StreamDataset, TokenStream
from .cache import cache_warning, cache_write, resolve_cache_dir, sha256_hex
from .corpora import Corpus, load_corpus
from .split import TextSplit, split_text
from .tokenization import DEFAULT_BPE_VOCAB, BPETokenizer, ByteTokenizer, load_or_train_bpe


class TextDataset(StreamDataset):
    """A StreamDataset that also knows its tokenizer (for decoding samples)."""

    def __init__(self, *, tokenizer, **rest):
        super().__init__(**rest)
        self.tokenizer = tokenizer

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)


def build_text_dataset(spec, seed: int, cache_dir: Path | str | None) -> TextDataset:
    corpus = load_corpus(spec.dataset)
    split = split_text(corpus.text, spec.val_fraction)
    # Everything that determines the train text: the corpus and the split rule.
    train_identity = sha256_hex(json.dumps({"corpus": corpus.sha256, **split.identity()}, sort_keys=True))

    if spec.tokenizer == "byte":
        tokenizer = ByteTokenizer()
        train_ids = tokenizer.encode_pieces(split.train_pieces)  # a fraction of a second: not worth caching
        val_ids = tokenizer.encode_pieces(split.val_pieces)
    else:
        root = resolve_cache_dir(cache_dir)
        vocab = spec.vocab_size or DEFAULT_BPE_VOCAB
        tokenizer = load_or_train_bpe(split.train_pieces, train_identity, vocab, root)
        train_ids, val_ids = cached_bpe_streams(tokenizer, split, train_identity, root)

    info = text_info(spec, corpus, split, tokenizer, train_ids, val_ids)
    return TextDataset(
        train=TokenStream(torch.from_numpy(train_ids.astype(np.int64)), len(train_ids), spec.seq_len, "train"),
        val=TokenStream(torch.from_numpy(val_ids.astype(np.int64)), len(val_ids), spec.seq_len, "validation"),
        tokenizer=tokenizer, seq_len=spec.seq_len, vocab_size=tokenizer.vocab_size,
        optimal_loss=None, info=info, seed=seed,
    )


def cached_bpe_streams(tokenizer: BPETokenizer, split: TextSplit, train_identity: str, cache_dir: Path):
    """(train_ids, val_ids) for this split and tokenizer; BPE encoding of a corpus takes seconds
    (docs/measurements.md, "Data")."""
    key = sha256_hex(f"{train_identity}|{tokenizer.sha256}")[:20]
    path = cache_dir / "tokens" / f"bpe-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as arrays:
                return arrays["train"], arrays["val"]
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry (zip, pickle, key errors) is re-made
            cache_warning(path, f"cannot be read as token arrays ({type(exc).__name__}: {exc})",
                          "it is encoded again and rewritten")
    train_ids = tokenizer.encode_pieces(split.train_pieces)
    val_ids = tokenizer.encode_pieces(split.val_pieces)
    cache_write(path, lambda tmp: np.savez(tmp, train=train_ids, val=val_ids))
    return train_ids, val_ids


def text_info(spec, corpus: Corpus, split: TextSplit, tokenizer, train_ids, val_ids) -> dict:
    n_tokens = len(train_ids) + len(val_ids)
    n_bytes = len(corpus.text.encode("utf-8"))
    info = {
        "dataset": spec.dataset,
        "kind": "text",
        "source": corpus.source,
        "n_files": corpus.n_files,
        "sha256": corpus.sha256,
        "n_bytes": n_bytes,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "n_train_tokens": int(len(train_ids)),
        "n_val_tokens": int(len(val_ids)),
        "val_token_fraction": round(len(val_ids) / n_tokens, 4),
        "bytes_per_token": round(n_bytes / n_tokens, 4),
        "split": {**split.identity(), "n_chunks": split.n_chunks, "n_val_chunks": len(split.val_pieces)},
        "seq_len": spec.seq_len,
        "optimal_loss": None,
    }
    if tokenizer.name == "bpe":
        info["requested_vocab_size"] = spec.vocab_size or DEFAULT_BPE_VOCAB
        info["tokenizer_sha256"] = tokenizer.sha256
    return info
