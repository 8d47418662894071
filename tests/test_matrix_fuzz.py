"""Malformed matrices: whatever the input, the parser returns cells or raises MatrixError
(exit 2, one paragraph) — never any other exception, which would print a traceback."""
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsuite.config.matrix import MatrixError, load_matrix
from txsuite.config import spec

KEYS = list(spec.FAMILIES) + list(spec.SCALAR_FAMILIES) + [
    f"{family}.{key}" for family in spec.FAMILIES for key in spec.keys_of(family)] + ["train.", ".x", "a.b.c", ""]
TOP = ["name", "description", "extends", "fixed", "axes", "exclude", "include", "repeats", "guard",
       "baseline", "constant", "timeout_s", "nme"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["fp32", "bf16", "tiny", "markov", "-5%", "none",
                                                           "full", "base.yaml", "m.yaml"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS + TOP), inner, max_size=4)), max_leaves=12)
matrices = st.dictionaries(st.sampled_from(TOP), values, max_size=8).map(
    lambda d: {"name": "fuzz", **d} if "name" not in d and len(d) % 2 else d)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=matrices)
def test_any_document_gives_cells_or_a_matrix_error(tmp_path_factory, doc):
    folder = tmp_path_factory.mktemp("fuzz", numbered=True)
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    (folder / "base.yaml").write_text("name: base\nextends: m.yaml\n")  # a cycle for `extends: base.yaml`
    try:
        matrix = load_matrix(path, max_cells=200)
    except MatrixError as exc:
        message = str(exc)
        assert "m.yaml" in message or "base.yaml" in message
        assert "\n" not in message and "Traceback" not in message
        return
    assert matrix.cells and all(c.cell_id for c in matrix.cells)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_escapes_as_another_exception(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("txt") / "m.yaml"
    path.write_text(text)
    try:
        load_matrix(path)
    except MatrixError:
        pass
