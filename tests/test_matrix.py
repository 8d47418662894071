"""Matrix expansion and validation: cells, ids, exclude/include, and errors that name the
file, the line, the key and what is allowed."""
import textwrap

import pytest

from txsuite.config.matrix import Host, MatrixError, MatrixTooLarge, load_matrix

BASIC = """\
name: precision
description: demo
fixed:
  model: tiny
  data: {dataset: shakespeare, seq_len: 64}
  train: {steps: 4, warmup_steps: 1, micro_batch: 8}
axes:
  precision: [fp32, bf16, fp16]
  train.micro_batch: [4, 8]
exclude:
  - {precision: fp16, device: cpu}
include:
  - {precision: fp8, device: cuda}
repeats: 3
guard: {tokens_per_s: -5%, peak_mem_bytes: +10%}
"""


def error_of(write_matrix, text, **kw) -> MatrixError:
    path = write_matrix(textwrap.dedent(text))
    with pytest.raises(MatrixError) as info:
        load_matrix(path, **kw)
    return info.value


def test_expansion_exclude_include_and_host_skips(write_matrix):
    m = load_matrix(write_matrix(BASIC), host=Host(has_cuda=False))
    labels = [c.label for c in m.cells]
    # 3 x 2 product, fp16 excluded on this cpu host, plus one include
    assert len(m.cells) == 5
    assert not any("fp16" in label for label in labels)
    fp8 = m.cells[-1]
    assert fp8.origin == "include[0]" and fp8.config.precision == "fp8"
    assert "no CUDA GPU" in fp8.skip_reason
    assert all(c.skip_reason is None for c in m.cells[:-1])
    assert {c.config.train.micro_batch for c in m.cells[:-1]} == {4, 8}
    assert m.repeats == 3 and m.guard == {"tokens_per_s": "-5%", "peak_mem_bytes": "+10%"}
    # fixed values reach every cell; untouched keys keep their defaults
    assert all(c.config.data.seq_len == 64 and c.config.train.steps == 4 for c in m.cells)
    assert all(c.config.train.lr == 3.0e-4 for c in m.cells)


def test_on_a_gpu_host_the_exclude_no_longer_matches(write_matrix):
    m = load_matrix(write_matrix(BASIC), host=Host(has_cuda=True, gpu_count=1))
    assert sum(c.config.precision == "fp16" for c in m.cells) == 2
    assert all(c.config.device == "cuda" for c in m.cells)
    assert all(c.skip_reason is None for c in m.cells)


def test_fp8_and_tf32_on_cpu_are_skipped_with_reasons(write_matrix):
    m = load_matrix(write_matrix("name: x\naxes: {precision: [fp8, tf32, fp32]}\n"), host=Host())
    reasons = {c.config.precision: c.skip_reason for c in m.cells}
    assert "fp8" in reasons["fp8"] and "compute capability" in reasons["fp8"]
    assert "silently be fp32" in reasons["tf32"]
    assert reasons["fp32"] is None


def test_cell_ids_are_stable_and_depend_on_the_resolved_config(write_matrix):
    a = load_matrix(write_matrix(BASIC))
    b = load_matrix(write_matrix(BASIC.replace("seq_len: 64", "seq_len: 64 ")))
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]
    c = load_matrix(write_matrix(BASIC.replace("seq_len: 64", "seq_len: 32")))
    assert not set(x.cell_id for x in a.cells) & set(x.cell_id for x in c.cells)
    # a nested mapping and the dotted form of the same setting give the same cell
    d = load_matrix(write_matrix("name: d\nfixed: {train.steps: 7}\n"))
    e = load_matrix(write_matrix("name: d\nfixed: {train: {steps: 7}}\n"))
    assert d.cells[0].cell_id == e.cells[0].cell_id


def test_mapping_valued_axis_and_constant_tokens(write_matrix):
    text = """\
    name: batch
    fixed: {data: {seq_len: 32}}
    axes:
      train: [{micro_batch: 8, grad_accum: 1}, {micro_batch: 4, grad_accum: 2}]
    constant: [tokens_per_step]
    """
    m = load_matrix(write_matrix(textwrap.dedent(text)))
    assert [(c.config.train.micro_batch, c.config.train.grad_accum) for c in m.cells] == [(8, 1), (4, 2)]
    assert {c.config.tokens_per_step for c in m.cells} == {256}
    err = error_of(write_matrix, text.replace("grad_accum: 2}", "grad_accum: 3}"))
    assert err.key == "constant" and "tokens_per_step" in str(err) and "384" in str(err)


def test_extends_merges_base_first_and_detects_cycles(write_matrix, tmp_path):
    write_matrix("name: base\nfixed: {train: {steps: 9, lr: 0.01}, model: small}\n", "base.yaml")
    m = load_matrix(write_matrix("name: child\nextends: base.yaml\nfixed: {train: {lr: 0.02}}\n"))
    t = m.cells[0].config.train
    assert (t.steps, t.lr, m.cells[0].config.model.preset, m.name) == (9, 0.02, "small", "child")
    write_matrix("name: a\nextends: b.yaml\n", "a.yaml")
    write_matrix("name: b\nextends: a.yaml\n", "b.yaml")
    with pytest.raises(MatrixError, match="cycle"):
        load_matrix(tmp_path / "a.yaml")


def test_include_entries_each_add_a_cell_and_duplicates_are_noted(write_matrix):
    text = "name: i\naxes: {precision: [fp32]}\ninclude:\n  - {precision: bf16}\n  - {precision: fp32}\n"
    m = load_matrix(write_matrix(text))
    assert [c.config.precision for c in m.cells] == ["fp32", "bf16"]
    assert len(m.notes) == 1 and "identical" in m.notes[0]


@pytest.mark.parametrize("text, line, key, fragments", [
    ("name: x\nfixed:\n  train:\n    stepz: 3\n", 4, "train.stepz", ["did you mean 'steps'", "train.steps"]),
    ("name: x\naxes:\n  precision: [fp32, bf17]\n", 3, "precision", ["bf17", "fp32, tf32, bf16"]),
    ("name: x\nfixed:\n  train: {micro_batch: eight}\n", 3, "train.micro_batch", ["expected an integer", "'eight'"]),
    ("name: x\nfixed:\n  train: {micro_batch: 0}\n", 3, "train.micro_batch", [">= 1"]),
    ("name: x\nfixd: {}\n", 2, "fixd", ["did you mean 'fixed'", "axes"]),
    ("name: x\naxes:\n  model.preset: [tiny, huge]\n", 3, "model.preset", ["gpt2-124m"]),
    ("name: x\naxes:\n  precision: []\n", 3, "axes.precision", ["non-empty list"]),
    ("name: x\nfixed: {data: {dataset: wikipedia}}\n", 2, "data.dataset", ["shakespeare", "path/glob"]),
    ("name: x\nrepeats: 0\n", 2, "repeats", [">= 1"]),
    ("name: x\nguard: {tokens_per_s: 5}\n", 2, "guard.tokens_per_s", ["signed percentage"]),
    ("name: x\nguard: {speed: -5%}\n", 2, "guard.speed", ["tokens_per_s"]),
    ("name: x\nfixed: {parallel: {dp: 2}}\n", 2, "parallel.engine", ["needs a parallel engine"]),
    ("name: x\nfixed: {model: {n_head: 3}}\n", 2, "model.n_head", ["not divisible"]),
    ("name: x\nfixed: {model: {linear: fast}}\n", 2, "model.linear", ["auto, torch, transposed-weight"]),
    ("name: x\nfixed: {model: {linear: transposed-weight}, parallel: {engine: ddp, tp: 2}}\n", 2, "model.linear",
     ["tensor parallelism", "Use auto"]),
    ("name: x\nfixed: {precision: {x: 1}}\n", 2, "precision", ["not allowed"]),
    ("name: x\nfixed:\n  train: {steps: 1}\n  train: {steps: 2}\n", 4, None, ["appears twice", "line 3"]),
    ("name: x\nfixed: [1, 2\n", 3, None, ["not valid YAML"]),
    ("description: no name\n", None, "name", ["needs a name"]),
    ("name: x\nfixed: {memory: {compile: maybe}}\n", 2, "memory.compile", ["true", "max-autotune"]),
    ("name: x\nfixed: {train: {lr: .nan}}\n", 2, "train.lr", ["finite"]),
    ("name: x\nfixed: {measure: {host_allocator: jemalloc}}\n", 2, "measure.host_allocator", ["system, cache"]),
    ("name: x\nfixed: {data: {dataset: markov, symbols: 32768}}\n", 2, "data.symbols", ["8.0 GiB", "2 to 8192"]),
    ("name: x\nfixed: {precision: fp8, train: {micro_batch: 3}, data: {seq_len: 100}}\n", 2, "train.micro_batch",
     ["fp8", "= 300", "multiple of 16"]),
    ("name: x\nfixed: {compress: {quantization: fp8}, train: {micro_batch: 3}, data: {seq_len: 100}}\n", 2,
     "train.micro_batch", ["weight-gradient GEMM"]),
    ("name: x\nfixed: !!python/object:os.system {}\n", 2, None, ["not valid YAML"]),
])
def test_errors_name_file_line_key_and_allowed(write_matrix, text, line, key, fragments):
    err = error_of(write_matrix, text)
    message = str(err)
    assert message.startswith(str(err.file)) and err.file.endswith("m.yaml")
    if line is not None:
        assert err.line == line and f"line {line}" in message
    if key is not None:
        assert err.key == key and f"'{key}'" in message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message and "\n" not in message


def test_errors_in_a_base_file_point_at_the_base(write_matrix, tmp_path):
    write_matrix("name: base\nfixed:\n  train: {seed: -1}\n", "base.yaml")
    err = error_of(write_matrix, "name: c\nextends: base.yaml\n")
    assert err.file.endswith("base.yaml") and err.line == 3 and err.key == "train.seed"


def test_every_cell_excluded_is_an_error(write_matrix):
    err = error_of(write_matrix, "name: x\naxes: {precision: [fp32]}\nexclude: [{precision: fp32}]\n")
    assert "every cell was excluded" in str(err)


def test_huge_products_need_yes(write_matrix):
    text = "name: big\naxes:\n  train.seed: [%s]\n  train.steps: [%s]\n" % (
        ", ".join(map(str, range(40))), ", ".join(map(str, range(1, 41))))
    path = write_matrix(text)
    with pytest.raises(MatrixTooLarge, match="1600 cells.*--yes"):
        load_matrix(path)
    assert len(load_matrix(path, max_cells=None).cells) == 1600


def test_reference_picks_the_matching_cell(write_matrix):
    m = load_matrix(write_matrix("name: b\naxes: {precision: [fp32, bf16]}\nreference: {precision: bf16}\n"))
    assert m.reference == m.cells[1].cell_id
    err = error_of(write_matrix, "name: b\naxes: {precision: [fp32]}\nreference: {precision: bf16}\n")
    assert "no cell matches the reference" in str(err) and err.line == 3


def test_baseline_is_the_old_name_of_reference(write_matrix):
    m = load_matrix(write_matrix("name: b\naxes: {precision: [fp32, bf16]}\nbaseline: {precision: bf16}\n"))
    assert m.reference == m.cells[1].cell_id and m.to_json()["reference"] == m.reference
    err = error_of(write_matrix, "name: b\naxes: {precision: [fp32]}\nbaseline: {precision: bf16}\n"
                                 "reference: {precision: fp32}\n")
    assert err.key == "baseline" and "both" in str(err)


def test_shipped_matrices_plan(tmp_path):
    from pathlib import Path
    for path in sorted(Path(__file__).resolve().parents[1].glob("matrices/*.yaml")):
        m = load_matrix(path, host=Host())
        assert m.cells, path


def test_a_cell_id_depends_only_on_the_settings_that_differ_from_their_defaults():
    """So a setting added later at its default leaves old ids (resumes, guard baselines) alone:
    a config without a key and one with it at its default hash alike."""
    import dataclasses
    import hashlib
    import json as _json
    from txsuite.config.spec import CellConfig, TrainSpec

    assert CellConfig().cell_id() == hashlib.sha1(b"{}").hexdigest()[:10]
    explicit = CellConfig(train=TrainSpec(lr=TrainSpec().lr, seed=0))
    assert explicit.cell_id() == CellConfig().cell_id()
    changed = CellConfig(train=TrainSpec(lr=1e-3))
    assert changed.cell_id() != CellConfig().cell_id()
    assert changed.differences() == {"train": {"lr": 1e-3}}
    # an older record's config (without a newer key) resolves to the same id
    old = changed.to_dict()
    del old["measure"]
    assert CellConfig.from_dict(_json.loads(_json.dumps(old))).cell_id() == changed.cell_id()
    assert dataclasses.replace(changed, precision="bf16").cell_id() != changed.cell_id()
