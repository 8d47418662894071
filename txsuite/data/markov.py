"""A first-order Markov chain source whose optimal loss is its entropy rate, computed exactly.

V = data.symbols (default 64) states. Each row of the transition matrix P is drawn from
Dirichlet(0.1) by a generator with a fixed task seed (never the training seed), so every cell
sees the same chain. A model that knows P and the previous token reaches
    H = -sum_i pi_i sum_j P_ij log P_ij   nats per token (pi: the stationary distribution),
and no model can do better on average, because each window starts in a state drawn from pi.

Sequences are pre-generated once per build (about 2 M train and 256 k validation tokens, in
a fraction of a second): many independent chains, each started from pi, stored as the rows of a TokenStream;
batches are windows inside a row, so every scored transition is a true step of the chain.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import TRAIN_STREAM, VAL_STREAM, derive_seed, synthetic_info
from .batches import StreamDataset, TokenStream

MARKOV_DEFAULT_SYMBOLS = 64
MARKOV_CONCENTRATION = 0.1  # Dirichlet parameter: small -> peaked rows -> low entropy rate
MARKOV_TASK_SEED = 0
TRAIN_POOL_TOKENS = 1 << 21
VAL_POOL_TOKENS = 1 << 18
MIN_ROW_LEN = 1024  # chain length per pool row (at least two windows long)


def transition_matrix(symbols: int, seed: int = MARKOV_TASK_SEED) -> np.ndarray:
    """[V, V] float64, rows sum to 1."""
    rng = np.random.default_rng(seed)
    matrix = rng.dirichlet(np.full(symbols, MARKOV_CONCENTRATION), size=symbols)
    return matrix / matrix.sum(axis=1, keepdims=True)


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum 1: solve (P^T - I) pi = 0 with one equation replaced by sum(pi) = 1."""
    size = transition.shape[0]
    system = transition.T - np.eye(size)
    system[-1, :] = 1.0
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    pi = np.linalg.solve(system, rhs)
    if pi.min() < -1e-9:
        raise ValueError("the Markov chain has no unique stationary distribution")
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def entropy_rate(transition: np.ndarray, stationary: np.ndarray) -> float:
    """-sum_i pi_i sum_j P_ij log P_ij in nats, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(transition > 0, transition * np.log(transition), 0.0)
    return float(-(stationary * terms.sum(axis=1)).sum())


def sample_chains(transition: np.ndarray, stationary: np.ndarray, rows: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, length] int64 states: independent chains, each started from the stationary distribution.

    One vectorized step per time step: row r of the cumulative matrix is shifted by r, so a single
    searchsorted over the flattened matrix samples every chain's next state at once.
    """
    size = transition.shape[0]
    cumulative = np.cumsum(transition, axis=1)
    cumulative[:, -1] = 1.0  # guard against rounding: u < 1 always lands in the row
    shifted = (cumulative + np.arange(size)[:, None]).ravel()  # row r spans (r, r + 1]
    states = np.empty((rows, length), dtype=np.int64)
    start_cdf = np.cumsum(stationary)
    start_cdf[-1] = 1.0
    states[:, 0] = np.searchsorted(start_cdf, rng.random(rows), side="right")
    for t in range(1, length):
        previous = states[:, t - 1]
        states[:, t] = np.searchsorted(shifted, previous + rng.random(rows), side="right") - previous * size
    return states


def build_markov_dataset(spec, seed: int) -> "MarkovDataset":
    symbols = spec.symbols or MARKOV_DEFAULT_SYMBOLS
    if symbols < 2:
        raise ValueError(f"data.symbols must be at least 2 for 'markov', got {symbols}")
    transition = transition_matrix(symbols)
    stationary = stationary_distribution(transition)
    optimum = entropy_rate(transition, stationary)

    row_len = max(MIN_ROW_LEN, 2 * (spec.seq_len + 1))

    def pool(tokens: int, stream: int, name: str) -> TokenStream:
        rows = -(-tokens // row_len)
        rng = np.random.default_rng(derive_seed(MARKOV_TASK_SEED, stream))
        states = sample_chains(transition, stationary, rows, row_len, rng)
        return TokenStream(torch.from_numpy(states.ravel()), row_len, spec.seq_len, name)

    train, val = pool(TRAIN_POOL_TOKENS, TRAIN_STREAM, "train"), pool(VAL_POOL_TOKENS, VAL_STREAM, "validation")
    params = {"dataset": "markov", "kind": "synthetic", "symbols": symbols, "concentration": MARKOV_CONCENTRATION,
              "task_seed": MARKOV_TASK_SEED, "row_len": row_len, "seq_len": spec.seq_len}
    info = synthetic_info(params, tokenizer="symbols", vocab_size=symbols, n_train_tokens=len(train),
                          n_val_tokens=len(val), bytes_per_token=None, optimal_loss=optimum,
                          uniform_loss=float(np.log(symbols)))
    return MarkovDataset(transition=transition, stationary=stationary, train=train, val=val,
                         seq_len=spec.seq_len, vocab_size=symbols, optimal_loss=optimum, info=info, seed=seed)


class MarkovDataset(StreamDataset):
    """A StreamDataset that keeps its chain, so tests and reports can score samples exactly."""

    def __init__(self, *, transition: np.ndarray, stationary: np.ndarray, **rest):
        super().__init__(**rest)
        self.transition = transition  # [V, V]
        self.stationary = stationary  # [V]
