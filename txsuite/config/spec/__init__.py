"""The settings of one cell: one module per family, each holding its dataclass (or, for the
scalar families precision and device, its values), the allowed values of its keys, and its
rules (`problems(cell)`: never valid; `host_problem(cell, host)`: valid, but not here).

    model      model.py      shape of the reference Transformer
    data       data.py       dataset, sequence length, tokenizer
    train      train.py      steps, batch, optimizer (OPTIMIZERS), schedule
    precision  precision.py  numeric format
    parallel   parallel.py   engine, dp / tp / pp, ZeRO
    memory     memory.py     activation checkpointing
    compile    compile.py    torch.compile
    compress   compress.py   quantization, pruning
    measure    measure.py    how a cell is measured (threads)
    device     device.py     cpu / cuda

`txsuite.config.matrix` validates a matrix file against this schema; the worker reads the
resolved `CellConfig`. Stdlib only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from txsuite.config.spec import compile as _compile
from txsuite.config.spec import compress as _compress
from txsuite.config.spec import data as _data
from txsuite.config.spec import device as _device
from txsuite.config.spec import measure as _measure
from txsuite.config.spec import memory as _memory
from txsuite.config.spec import model as _model
from txsuite.config.spec import parallel as _parallel
from txsuite.config.spec import precision as _precision
from txsuite.config.spec import train as _train
from txsuite.config.spec.cell import FAMILIES, CellConfig, upgrade
from txsuite.config.spec.compile import COMPILE_MODES, CompileSpec, mode_from_flag
from txsuite.config.spec.compress import (PRUNING_KINDS, QUANTIZATIONS, SEMI_STRUCTURED_MIN_CAPABILITY,
                                        CompressSpec)
from txsuite.config.spec.data import NAMED_DATASETS, SYNTHETIC_DATASETS, TOKENIZERS, DataSpec, is_dataset_path
from txsuite.config.spec.measure import MeasureSpec
from txsuite.config.spec.memory import MemorySpec
from txsuite.config.spec.model import ATTENTIONS, MODEL_PRESET_DIMS, MODEL_PRESETS, ModelSpec
from txsuite.config.spec.parallel import ENGINES, ParallelSpec
from txsuite.config.spec.precision import FP8_MIN_CAPABILITY, PRECISIONS
from txsuite.config.spec.train import OPTIMIZERS, OptimizerInfo, TrainSpec

# family name -> its module (allowed values, positive and fractional keys)
_MODULES = {"model": _model, "data": _data, "train": _train, "parallel": _parallel, "memory": _memory,
            "compile": _compile, "compress": _compress, "measure": _measure, "precision": _precision,
            "device": _device}
SCALAR_FAMILIES: dict[str, tuple] = {"precision": PRECISIONS, "device": _device.DEVICES}


def _dotted(family: str, leaf: str) -> str:
    return f"{family}.{leaf}" if leaf else family


# Allowed values per dotted key (anything not listed is checked by type only).
CHOICES: dict[str, tuple] = {_dotted(f, leaf): values for f, m in _MODULES.items()
                             for leaf, values in m.CHOICES.items()}
# A few words after the allowed values of a key, where its spelling needs them.
CHOICE_NOTES: dict[str, str] = {_dotted(f, leaf): note for f, m in _MODULES.items()
                                for leaf, note in getattr(m, "CHOICE_NOTES", {}).items()}
# Words a number-typed key also takes (train.target_loss: auto).
WORDS: dict[str, tuple[str, ...]] = {_dotted(f, leaf): words for f, m in _MODULES.items()
                                     for leaf, words in getattr(m, "WORDS", {}).items()}
# Integer keys that must be >= 1 (the other ints must be >= 0).
POSITIVE_INTS = {_dotted(f, leaf) for f, m in _MODULES.items() for leaf in getattr(m, "POSITIVE", ())}
# Number keys that must lie in [0, 1).
FRACTIONS = {_dotted(f, leaf) for f, m in _MODULES.items() for leaf in getattr(m, "FRACTIONS", ())}
# The largest value of each integer key (txsuite.config.numbers.INT64_MAX where a family names
# none): beyond it no machine could run the cell, and the plan refuses it naming the key.
MAXIMA: dict[str, int] = {_dotted(f, leaf): top for f, m in _MODULES.items()
                          for leaf, top in getattr(m, "MAXIMA", {}).items()}
# why a key's maximum is what it is, where not "beyond what any machine could run"
MAXIMA_WHY: dict[str, str] = {_dotted(f, leaf): why for f, m in _MODULES.items()
                              for leaf, why in getattr(m, "MAXIMA_WHY", {}).items()}
# Old spellings still accepted in matrix files: dotted key -> (today's key, value converter).
ALIASES: dict[str, tuple[str, Any]] = {"memory.compile": ("compile.mode", mode_from_flag)}
# A family written as a scalar is short for one of its keys: `model: tiny`, `compile: true`.
SHORTHANDS: dict[str, tuple[type, str, Any]] = {
    "model": (str, "preset", lambda v: v),
    "compile": ((bool, str), "mode", mode_from_flag),
}


def field_type(dotted: str) -> Any:
    """The annotation (as a string) of a dotted key, or None if the key does not exist."""
    family, _, leaf = dotted.partition(".")
    if not leaf:
        return "str" if family in SCALAR_FAMILIES else ("mapping" if family in FAMILIES else None)
    cls = FAMILIES.get(family)
    if cls is None:
        return None
    for f in dataclasses.fields(cls):
        if f.name == leaf:
            return f.type
    return None


def keys_of(family: str) -> list[str]:
    return [f.name for f in dataclasses.fields(FAMILIES[family])]


__all__ = [
    "ALIASES", "ATTENTIONS", "CHOICE_NOTES", "CHOICES", "COMPILE_MODES", "ENGINES", "FAMILIES", "FP8_MIN_CAPABILITY",
    "FRACTIONS", "MAXIMA", "MAXIMA_WHY", "MODEL_PRESETS", "MODEL_PRESET_DIMS", "NAMED_DATASETS", "OPTIMIZERS", "POSITIVE_INTS",
    "PRECISIONS", "PRUNING_KINDS", "QUANTIZATIONS", "SCALAR_FAMILIES", "SEMI_STRUCTURED_MIN_CAPABILITY",
    "SHORTHANDS", "SYNTHETIC_DATASETS", "TOKENIZERS", "WORDS", "CellConfig", "CompileSpec", "CompressSpec",
    "DataSpec", "MeasureSpec", "MemorySpec", "ModelSpec", "OptimizerInfo", "ParallelSpec", "TrainSpec", "field_type",
    "is_dataset_path", "keys_of", "upgrade",
]
