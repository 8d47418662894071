"""Datasets for txsuite: real text shipped offline and synthetic tasks with a known optimum.

    from suite.data import build_dataset
    ds = build_dataset(spec, seed, cache_dir=None)      # spec: suite.spec.DataSpec
    ds.vocab_size, ds.optimal_loss, ds.info
    x, y = next(ds.train_batches(micro_batch, seed))    # int64 [B, seq_len]; y = next token or -100
    ds.val_batches(micro_batch, n_batches)              # same for every cell with this data spec

Modules, one job each: corpora (text sources, stdlib only), split (train/val chunks of text),
tokenization (byte, BPE), batches (windows over token streams), text (corpus -> dataset),
synthetic (copy, reverse, modadd), markov (Markov chain source), cache (cache dir, safe writes),
base (the Dataset interface and seeding).

This module imports neither torch nor numpy at import time, so plan-time code (the runner
never imports torch) can call `validate_data_spec`; `build_dataset` imports the builders.
"""
from __future__ import annotations

from pathlib import Path

from ..spec import NAMED_DATASETS, SYNTHETIC_DATASETS, TOKENIZERS, DataSpec, is_dataset_path
from .corpora import TEXT_CORPORA, MissingDataPackage, check_corpus

__all__ = ["build_dataset", "validate_data_spec", "MissingDataPackage"]


def validate_data_spec(spec: DataSpec, check_sources: bool = True) -> None:
    """Raise ValueError for a bad setting; with check_sources, also the error a missing package
    (MissingDataPackage) or an empty glob (FileNotFoundError) would give. Cheap: reads no corpus."""
    name = spec.dataset
    if not isinstance(name, str) or not (name in NAMED_DATASETS or is_dataset_path(name)):
        raise ValueError(
            f"data.dataset: unknown dataset {name!r}; allowed: {', '.join(NAMED_DATASETS)}, "
            "or a path or glob of text files (e.g. 'corpus/*.txt', '~/notes.md')"
        )
    if spec.tokenizer not in TOKENIZERS:
        raise ValueError(f"data.tokenizer: unknown tokenizer {spec.tokenizer!r}; allowed: {', '.join(TOKENIZERS)}")
    if name in SYNTHETIC_DATASETS and spec.tokenizer != "byte":
        raise ValueError(
            f"data.tokenizer {spec.tokenizer!r} applies to text corpora; the synthetic task {name!r} "
            "has its own symbols (leave data.tokenizer at 'byte')"
        )
    if not isinstance(spec.seq_len, int) or spec.seq_len < 1:
        raise ValueError(f"data.seq_len must be a positive integer, got {spec.seq_len!r}")
    if not 0.0 < spec.val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {spec.val_fraction!r}")
    if check_sources and name not in SYNTHETIC_DATASETS:
        check_corpus(name)


def build_dataset(spec: DataSpec, seed: int, cache_dir: Path | str | None = None):
    """The dataset a cell trains and validates on; see the module docstring for the interface.

    `seed` is only the default seed of `train_batches`: the split, tokenizer, synthetic task and
    validation batches are the same for every seed. `cache_dir` (default $TXSUITE_CACHE or
    ~/.cache/txsuite) holds trained BPE tokenizers and BPE token arrays.
    """
    validate_data_spec(spec, check_sources=False)  # sources are checked as they are loaded
    name = spec.dataset
    if name == "markov":
        from .markov import build_markov_dataset

        return build_markov_dataset(spec, seed)
    if name in ("copy", "reverse"):
        from .synthetic import COPY_DEFAULT_SYMBOLS, SequenceTransformTask

        return SequenceTransformTask(task=name, symbols=spec.symbols or COPY_DEFAULT_SYMBOLS, seq_len=spec.seq_len, seed=seed)
    if name == "modadd":
        from .synthetic import MODADD_DEFAULT_MODULUS, ModularAdditionTask

        return ModularAdditionTask(modulus=spec.symbols or MODADD_DEFAULT_MODULUS, seq_len=spec.seq_len,
                                   val_fraction=spec.val_fraction, seed=seed)
    assert name in TEXT_CORPORA or is_dataset_path(name)
    from .text import build_text_dataset

    return build_text_dataset(spec, seed, cache_dir)
