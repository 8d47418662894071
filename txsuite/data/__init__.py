"""Datasets for txsuite: real text shipped offline and synthetic tasks with a known optimum.

    from txsuite.data import build_dataset
    ds = build_dataset(spec, seed, cache_dir=None)      # spec: txsuite.config.spec.DataSpec
    ds.vocab_size, ds.optimal_loss, ds.info
    x, y = next(ds.train_batches(micro_batch, seed))    # int64 [B, seq_len]; y = next token or -100
    ds.val_batches(micro_batch, n_batches)              # same for every cell with this data spec

Modules, one job each: corpora (text sources, stdlib only), split (train/val chunks of text),
tokenization (byte, BPE), batches (windows over token streams), text (corpus -> dataset),
synthetic (copy, reverse, modadd), markov (Markov chain source), cache (cache dir, safe writes),
steps (the micro-batches of each optimizer step for one rank),
base (the Dataset interface and seeding).

This module imports neither torch nor numpy at import time, so plan-time code (the runner
never imports torch) can call `check_data_sources`; `build_dataset` imports the builders.
"""
from __future__ import annotations

from pathlib import Path

from ..config.spec import DataSpec, is_dataset_path
from .corpora import TEXT_CORPORA, MissingDataPackage, check_corpus

__all__ = ["build_dataset", "check_data_sources", "MissingDataPackage"]


def check_data_sources(spec: DataSpec) -> None:
    """Raise what a missing corpus package (MissingDataPackage) or a path matching no file
    (FileNotFoundError) would raise when the data is built. Cheap: reads no corpus. The
    settings themselves were checked by DataSpec.problems (txsuite/config/spec/data.py)."""
    if not spec.synthetic:
        check_corpus(spec.dataset)


def build_dataset(spec: DataSpec, seed: int, cache_dir: Path | str | None = None):
    """The dataset a cell trains and validates on; see the module docstring for the interface.

    `seed` is only the default seed of `train_batches`: the split, tokenizer, synthetic task and
    validation batches are the same for every seed. `cache_dir` (default $TXSUITE_CACHE or
    ~/.cache/txsuite) holds trained BPE tokenizers and BPE token arrays.
    """
    for problem in spec.problems():  # the plan's rules, for callers that built the spec by hand
        allowed = f" Allowed: {problem.allowed}." if problem.allowed else ""
        raise ValueError(f"{problem.key}: {problem.message}{allowed}")
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
