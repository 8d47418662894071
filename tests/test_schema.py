"""matrix.schema.json: generated from the settings' spec, never stale, valid for every shipped
matrix, and in agreement with the loader on good and bad files."""
from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="the test extra (jsonschema) is not installed")

from txsuite.config import matrix, spec  # noqa: E402
from txsuite.config.matrix import Host, MatrixError, load_matrix  # noqa: E402
from txsuite.config.schema import REGENERATE, matrix_schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "matrix.schema.json"
MATRICES = sorted((ROOT / "matrices").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict:
    return matrix_schema()


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_the_generated_one():
    expected = json.dumps(matrix_schema(), indent=1, sort_keys=True) + "\n"
    assert SHIPPED.exists(), f"matrix.schema.json is missing; write it with `{REGENERATE}`"
    assert SHIPPED.read_text() == expected, (
        f"matrix.schema.json is stale (the settings' spec changed); regenerate it with `{REGENERATE}`")


def test_the_schema_is_a_valid_draft_2020_12_schema(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("path", MATRICES, ids=[p.name for p in MATRICES])
def test_every_shipped_matrix_validates(path, validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_the_top_level_is_the_loaders(schema):
    """The schema's top level is the loader's: every key, with the loader's words for it."""
    assert set(schema["properties"]) == set(matrix.TOP_LEVEL_KEYS) | set(matrix.TOP_LEVEL_ALIASES)
    assert schema["additionalProperties"] is False
    for key, description in matrix.TOP_LEVEL_KEYS.items():
        assert schema["properties"][key]["description"] == description
    guard = schema["properties"]["guard"]["anyOf"][0]
    assert set(guard["properties"]) == set(matrix.GUARD_METRICS)


def test_every_setting_of_the_spec_is_in_the_schema(schema):
    defs = schema["$defs"]
    settings = defs["settings"]["properties"]
    axes = defs["axes"]["properties"]
    assert defs["settings"]["additionalProperties"] is False
    for family, cls in spec.FAMILIES.items():
        assert family in settings and family in axes
        mapping = defs[f"family:{family}"]
        mapping = next((m for m in mapping.get("anyOf", []) if m.get("type") == "object"), mapping)
        assert mapping["additionalProperties"] is False
        for f in dataclasses.fields(cls):
            dotted = f"{family}.{f.name}"
            assert f.name in mapping["properties"], dotted
            assert dotted in settings and dotted in axes, dotted
            leaf = defs[f"key:{dotted}"]
            assert leaf["description"], dotted
            assert leaf["default"] == json.loads(json.dumps(f.default)), dotted
    for family in spec.SCALAR_FAMILIES:
        assert family in settings and family in axes
    for old in spec.ALIASES:
        assert old in settings and old in axes
    for dotted, choices in spec.CHOICES.items():
        assert defs[f"key:{dotted}"]["enum"] == list(choices), dotted
    for dotted in spec.POSITIVE_INTS:
        assert any(o.get("type") == "integer" and o.get("minimum") == 1
                   for o in _options(defs[f"key:{dotted}"])), dotted
    for dotted in spec.FRACTIONS:
        assert any(o.get("exclusiveMaximum") == 1 for o in _options(defs[f"key:{dotted}"])), dotted


def _options(leaf: dict) -> list[dict]:
    return leaf.get("anyOf", [leaf])


def test_descriptions_come_from_the_spec(schema):
    defs = schema["$defs"]
    assert defs["key:train.steps"]["description"].startswith("measured optimizer steps.")
    # a comment above a run of like fields speaks for each of them
    for key in ("beta1", "beta2", "momentum"):
        assert "the optimizer's own default" in defs[f"key:train.{key}"]["description"]
    assert "the optimizer's own default" not in defs["key:train.grad_clip"]["description"]
    assert defs["family:train"]["description"].startswith("`train`: steps, batch, optimizer")


def test_a_new_setting_appears_without_editing_schema_py(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class ExtraSpec:
        # how hard to try
        effort: int = 3
        flavour: str = "plain"  # the taste of the cell

    monkeypatch.setitem(spec.FAMILIES, "extra", ExtraSpec)
    monkeypatch.setitem(spec.CHOICES, "extra.flavour", ("plain", "spicy"))
    monkeypatch.setattr(spec, "POSITIVE_INTS", spec.POSITIVE_INTS | {"extra.effort"})
    defs = matrix_schema()["$defs"]
    assert defs["key:extra.flavour"]["enum"] == ["plain", "spicy"]
    assert defs["key:extra.flavour"]["description"].startswith("the taste of the cell.")
    assert defs["key:extra.effort"]["minimum"] == 1
    assert defs["key:extra.effort"]["description"].startswith("how hard to try.")
    assert "extra.effort" in defs["settings"]["properties"]


# ---------------------------------------------------------------------------------------------
# The schema and the loader agree
# ---------------------------------------------------------------------------------------------

GOOD = {
    "only a name": "name: x\n",
    "nested, dotted and shorthand": """\
        name: x
        fixed: {model: small, train: {steps: 3, warmup_steps: 1}, data.seq_len: 32, compile: true}
        axes: {precision: [fp32, bf16]}
        """,
    "old spelling memory.compile": "name: x\nfixed: {memory.compile: true}\n",
    "old spelling nested": "name: x\nfixed: {memory: {compile: false}}\n",
    "a word for a number": "name: x\nfixed: {train: {target_loss: auto, eval_every: 5}}\n",
    "null where the spec allows None": "name: x\nfixed: {train: {beta1: null}, model: {n_layer: null}}\n",
    "family axis and baseline alias": """\
        name: x
        axes: {train: [{optimizer: sgd, lr: 0.1}, {optimizer: adamw}]}
        baseline: {train.optimizer: adamw}
        """,
    "every top-level key": """\
        name: x.y-z_1
        description: demo
        fixed: {data: {seq_len: 64}}
        axes: {precision: [fp32, bf16], model.attention: [sdpa, matmul]}
        exclude: [{precision: bf16, model.attention: matmul}]
        include: [{precision: bf16, train: {lr: 0.01}}]
        repeats: 2
        seeds: 3
        guard: {tokens_per_s: -5%, peak_mem_bytes: +10.5%}
        reference: {precision: fp32, model.attention: sdpa}
        constant: samples_per_step
        timeout_s: 12.5
        """,
    "nulls the loader ignores": "name: x\ndescription: null\nfixed: null\naxes: null\nguard: null\n"
                                "timeout_s: null\nconstant: null\n",
}

BAD = {
    "misspelt setting": "name: x\nfixed: {train: {stepz: 3}}\n",
    "misspelt family": "name: x\nfixed: {trian: {steps: 3}}\n",
    "misspelt dotted key": "name: x\nfixed: {train.stepz: 3}\n",
    "value outside an enum": "name: x\nfixed: {precision: fp12}\n",
    "enum value of the wrong type": "name: x\nfixed: {parallel: {zero_stage: true}}\n",
    "unknown preset in the shorthand": "name: x\nfixed: {model: huge}\n",
    "unknown compile mode in the shorthand": "name: x\nfixed: {compile: fast}\n",
    "negative positive key": "name: x\nfixed: {train.steps: -1}\n",
    "zero positive key": "name: x\nfixed: {train: {micro_batch: 0}}\n",
    "negative in an axis": "name: x\naxes: {train.steps: [10, -1]}\n",
    "negative int >= 0": "name: x\nfixed: {train.seed: -2}\n",
    "fraction >= 1": "name: x\nfixed: {model: {dropout: 1.5}}\n",
    "text for a number": "name: x\nfixed: {train: {lr: fast}}\n",
    "a boolean for an integer": "name: x\nfixed: {train: {steps: true}}\n",
    "null where the spec has no None": "name: x\nfixed: {train: {steps: null}}\n",
    "empty text": "name: x\nfixed: {data: {dataset: ''}}\n",
    "a family that is not a mapping": "name: x\nfixed: {train: 3}\n",
    "a sub-key of a scalar family": "name: x\nfixed: {precision.mode: bf16}\n",
    "empty axis": "name: x\naxes: {precision: []}\n",
    "axis not a list": "name: x\naxes: {precision: bf16}\n",
    "unknown top-level key": "name: x\nflavour: mild\n",
    "no name": "description: nameless\n",
    "a name that is a path": "name: a/b\n",
    "zero repeats": "name: x\nrepeats: 0\n",
    "seeds not an integer": "name: x\nseeds: 1.5\n",
    "guard without a sign": "name: x\nguard: {tokens_per_s: 5%}\n",
    "guard of a metric that cannot be guarded": "name: x\nguard: {val_ppl: -5%}\n",
    "empty include entry": "name: x\ninclude: [{}]\n",
    "include not a list": "name: x\ninclude: {precision: bf16}\n",
    "unknown constant": "name: x\nconstant: [tokens]\n",
    "zero timeout": "name: x\ntimeout_s: 0\n",
    "reference and baseline both": "name: x\nreference: {precision: fp32}\nbaseline: {precision: fp32}\n",
    "extends not a file name": "name: x\nextends: {file: base.yaml}\n",
}

# What the loader rejects and a schema of one file cannot say: rules between settings, between
# files, or about how a value was written. Listed so that the gap is known (and this test says
# when it closes).
LOADER_ONLY = {
    "a setting set twice, nested and dotted": "name: x\nfixed: {data: {seq_len: 64}, data.seq_len: 32}\n",
    "a rule between settings": "name: x\nfixed: {model: {d_model: 100, n_head: 3}}\n",
    "an axis value that means the same as another": "name: x\naxes: {compile: [true, default]}\n",
    "a base file that does not exist": "name: x\nextends: nowhere.yaml\n",
    "a reference that matches no cell": "name: x\nreference: {precision: bf16}\n",
    "an infinite number": "name: x\nfixed: {train: {lr: .inf}}\n",
    "an integer written as a float for an enum of integers": "name: x\nfixed: {parallel: {zero_stage: 1.0}}\n",
}


def _loads(path: Path) -> bool:
    try:
        load_matrix(path, host=Host(has_cuda=False))
    except MatrixError:
        return False
    return True


def _valid(validator, text: str) -> bool:
    return validator.is_valid(yaml.safe_load(text))


@pytest.mark.parametrize("text", GOOD.values(), ids=GOOD.keys())
def test_schema_and_loader_accept(text, validator, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    assert _loads(path)
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_schema_and_loader_reject(text, validator, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    assert not _loads(path), "the loader accepts it"
    assert not _valid(validator, path.read_text()), "the schema accepts it"


@pytest.mark.parametrize("text", LOADER_ONLY.values(), ids=LOADER_ONLY.keys())
def test_what_only_the_loader_rejects(text, validator, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    assert not _loads(path)
    assert _valid(validator, path.read_text())


def test_a_file_that_extends_another_may_take_its_name_from_it(validator, tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nfixed: {train: {steps: 3}}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\naxes: {precision: [fp32, bf16]}\n")
    assert _loads(child)
    assert _valid(validator, child.read_text()) and _valid(validator, (tmp_path / "base.yaml").read_text())


def test_the_guard_pattern_is_the_loaders(schema):
    pattern = schema["properties"]["guard"]["anyOf"][0]["properties"]["tokens_per_s"]["pattern"]
    for change in ("-5%", "+10%", " +2.5% ", "5%", "-5", "-5.%", "--5%", "-x%"):
        loader = bool(re.fullmatch(r"[+-]\d+(\.\d+)?%", change.strip()))
        assert bool(re.search(pattern, change)) == loader, change
