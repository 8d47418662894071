"""Tokenizers for text corpora: `byte` (UTF-8 bytes, vocab 256) and `bpe` (byte-level BPE).

Both turn text into numpy arrays (uint8/uint16/int32) and back, exactly: decode(encode(t)) == t
for any text. BPE is trained here, on the train split only, with the `tokenizers` library, and
the trained file is cached under <cache>/bpe/, keyed by the train text's identity and the
vocabulary size, so every later cell with the same corpus loads it in milliseconds.
(Named `tokenization` so that `import tokenizers` always means the library.)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .cache import cache_warning, cache_write, sha256_hex

DEFAULT_BPE_VOCAB = 4096
BPE_MIN_FREQUENCY = 2  # a pair seen once is not worth a token; small corpora end below the request
TOKENIZERS_INSTALL = "pip install 'tokenizers>=0.19'"


class ByteTokenizer:
    """UTF-8 bytes as tokens: zero dependencies, every string round-trips."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:  # [n_bytes] uint8
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def encode_pieces(self, pieces: Sequence[str]) -> np.ndarray:
        return self.encode("".join(pieces))

    def decode(self, ids) -> str:
        return np.asarray(ids, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


class BPETokenizer:
    """A trained byte-level BPE (`tokenizers.Tokenizer`) with numpy in and out."""

    name = "bpe"

    def __init__(self, tokenizer, path: Path, trained_s: float | None, json_text: str | None = None):
        self._tokenizer = tokenizer
        self.path = path  # the cached tokenizer file (not written when the cache could not be)
        self.trained_s = trained_s  # seconds spent training in this process; None when loaded
        self.vocab_size: int = tokenizer.get_vocab_size()
        # of the file's bytes, which are the JSON text: the same whether trained here or loaded
        self.sha256 = sha256_hex(json_text) if json_text is not None else sha256_hex(path.read_bytes())
        self.dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.int32

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text).ids, dtype=self.dtype)

    def encode_pieces(self, pieces: Sequence[str]) -> np.ndarray:
        """Encode each piece separately (in parallel, in Rust) and concatenate the ids."""
        encode_batch = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        arrays = [np.asarray(e.ids, dtype=self.dtype) for e in encode_batch(list(pieces))]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=self.dtype)

    def decode(self, ids) -> str:
        return self._tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


def import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f"data.tokenizer 'bpe' needs the package 'tokenizers'; install it with: {TOKENIZERS_INSTALL}") from None
    return tokenizers


def train_bpe(train_pieces: Sequence[str], vocab_size: int) -> str:
    """Train a byte-level BPE on the pieces; return the tokenizer as JSON text."""
    tokenizers = import_tokenizers()
    bpe = tokenizers.ByteLevelBPETokenizer()  # no lowercasing or normalization: exact round trip
    bpe.train_from_iterator(
        list(train_pieces), vocab_size=vocab_size, min_frequency=BPE_MIN_FREQUENCY,
        show_progress=False, special_tokens=[],
    )
    return bpe._tokenizer.to_str()


def bpe_cache_path(cache_dir: Path, train_identity: str, vocab_size: int) -> Path:
    """One file per (train text identity, vocab size, library version)."""
    tokenizers = import_tokenizers()
    key = sha256_hex(f"{train_identity}|{vocab_size}|{tokenizers.__version__}")[:20]
    return cache_dir / "bpe" / f"bpe-{vocab_size}-{key}.json"


def load_or_train_bpe(train_pieces: Sequence[str], train_identity: str, vocab_size: int, cache_dir: Path) -> BPETokenizer:
    """The cached tokenizer for this train text and vocab size, trained and cached if absent."""
    if vocab_size <= 256:
        raise ValueError(f"data.vocab_size must be above 256 for the bpe tokenizer (256 byte tokens + merges), got {vocab_size}")
    tokenizers = import_tokenizers()
    path = bpe_cache_path(cache_dir, train_identity, vocab_size)
    if path.is_file():  # the cache is advisory: a file that is not a tokenizer is trained again
        try:
            json_text = path.read_text(encoding="utf-8")
            return BPETokenizer(tokenizers.Tokenizer.from_str(json_text), path, None, json_text)
        except Exception as exc:  # noqa: BLE001 - the library's parse errors have no common type
            cache_warning(path, f"is not a tokenizer ({type(exc).__name__}: {str(exc)[:200]})",
                          "it is trained again and rewritten")
    start = time.perf_counter()
    json_text = train_bpe(train_pieces, vocab_size)
    trained_s = time.perf_counter() - start
    cache_write(path, lambda tmp: tmp.write_text(json_text, encoding="utf-8"))
    return BPETokenizer(tokenizers.Tokenizer.from_str(json_text), path, trained_s, json_text)
