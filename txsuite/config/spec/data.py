"""`data`: what a cell trains and validates on (txsuite/data builds it)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig

NAMED_DATASETS = ("shakespeare", "bible", "python-stdlib", "copy", "reverse", "modadd", "markov")
SYNTHETIC_DATASETS = ("copy", "reverse", "modadd", "markov")
# markov draws a symbols x symbols float64 transition matrix (txsuite/data/markov.py), plus
# Dirichlet temporaries of the same size: 8,192 symbols take 512 MiB; 32,768 took the worker
# past the host's memory and the OOM killer ended it (docs/measurements.md, "Data").
MARKOV_MAX_SYMBOLS = 8192
# modadd builds every one of its p^2 examples (a, b, =, a+b) as int64 rows plus a permutation of
# them (txsuite/data/synthetic.py), about 80 bytes each: p = 4,096 is 1.3 GiB, p = 2^24 would be
# petabytes, which the plan's memory estimate (the model's) does not see.
MODADD_MAX_SYMBOLS = 4096
TOKENIZERS = ("byte", "bpe")
AUGMENT_KINDS = ("replace", "mask", "delete", "swap")  # txsuite/data/augment.py


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "shakespeare"  # a name in NAMED_DATASETS, or a path / glob of text files
    seq_len: int = 256
    tokenizer: str = "byte"
    vocab_size: int | None = None  # BPE vocabulary size (default 4096); ignored for byte
    symbols: int | None = None  # alphabet size of synthetic tasks (markov: 64, copy/reverse: 16)
    val_fraction: float = 0.1
    # corruption of the training batches: none, replace-<r>, mask-<r>, delete-<r>, swap-<r>
    # (txsuite/data/augment.py); validation is never augmented
    augment: str = "none"

    @property
    def synthetic(self) -> bool:
        return self.dataset in SYNTHETIC_DATASETS

    def problems(self, cell: "CellConfig | None" = None) -> Iterator[Problem]:
        """The data settings' own rules (they need nothing else of the cell)."""
        if self.dataset not in NAMED_DATASETS and not is_dataset_path(self.dataset):
            close = difflib.get_close_matches(self.dataset, NAMED_DATASETS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            yield Problem("data.dataset", f"unknown dataset {self.dataset!r}{hint}.",
                          ", ".join(NAMED_DATASETS) + ", or a path/glob of text files")
        if self.synthetic and self.tokenizer != "byte":
            yield Problem("data.tokenizer", f"the synthetic task '{self.dataset}' has its own symbols; "
                                            f"tokenizer '{self.tokenizer}' does not apply.", "byte")
        if self.symbols is not None and not self.synthetic:
            yield Problem("data.symbols", "data.symbols only applies to synthetic tasks.",
                          ", ".join(SYNTHETIC_DATASETS))
        if self.dataset == "markov" and self.symbols is not None and self.symbols > MARKOV_MAX_SYMBOLS:
            gib = self.symbols ** 2 * 8 / 2**30
            yield Problem("data.symbols", f"the markov task draws a {self.symbols} x {self.symbols} transition "
                                          f"matrix of float64, {gib:,.1f} GiB before its temporaries.",
                          f"2 to {MARKOV_MAX_SYMBOLS}")
        if self.dataset == "modadd" and self.symbols is not None and self.symbols > MODADD_MAX_SYMBOLS:
            yield Problem("data.symbols", f"modadd builds all {self.symbols:,}^2 = {self.symbols ** 2:,} examples of "
                                          f"a + b mod {self.symbols:,} in memory, about 80 bytes each.",
                          f"2 to {MODADD_MAX_SYMBOLS}")
        if self.vocab_size is not None and self.tokenizer != "bpe":
            yield Problem("data.vocab_size", "data.vocab_size only applies to tokenizer 'bpe'.")
        if self.vocab_size is not None and self.vocab_size < 257:
            yield Problem("data.vocab_size", f"a byte-level BPE vocabulary needs more than 256 entries, "
                                             f"got {self.vocab_size}.")
        if self.augment != "none":
            kind, _, rate = self.augment.partition("-")
            if kind not in AUGMENT_KINDS or not _fraction(rate):
                yield Problem("data.augment", f"unknown augmentation {self.augment!r}.",
                              "none, " + ", ".join(f"{k}-<rate>" for k in AUGMENT_KINDS) +
                              " with a rate strictly between 0 and 1, e.g. delete-0.1")
            elif self.dataset in ("copy", "reverse", "modadd"):
                yield Problem("data.augment", f"'{self.dataset}' scores only the answer tokens of a prompt; "
                                              f"augmentation corrupts text whose targets are its next tokens.",
                              "a corpus, a path of text files, or markov")
        if not 0.0 < self.val_fraction < 1.0:
            yield Problem("data.val_fraction", f"the share of the text held out for validation must lie "
                                               f"strictly between 0 and 1, got {self.val_fraction:g}.",
                          "a fraction such as 0.1")


def _fraction(text: str) -> bool:
    try:
        return 0.0 < float(text) < 1.0
    except ValueError:
        return False


def is_dataset_path(name: str) -> bool:
    """A `data.dataset` value that names files rather than a shipped corpus."""
    return any(ch in name for ch in "/*?") or name.endswith((".txt", ".md"))


CHOICES = {"tokenizer": TOKENIZERS}
POSITIVE = {"seq_len", "vocab_size", "symbols"}
FRACTIONS: set[str] = set()
# Upper bounds: a sequence of 16M tokens is past the longest context trained in one sequence, a
# vocabulary of 16M entries past the largest (~256k); every product of them stays finite.
MAXIMA = {"seq_len": 2**24, "vocab_size": 2**24, "symbols": 2**24}
