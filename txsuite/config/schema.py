"""A JSON Schema (draft 2020-12) of a matrix file, generated from the settings' own spec (L1:
stdlib and the loader's top level), so that editors complete and check matrices as they are typed.

Every cell setting comes from `txsuite.config.spec`: the families and their dataclass fields
(type, default, the comments written beside or above a field), CHOICES (enum), WORDS, the
positive and fractional keys, the scalar families, the shorthands (`model: tiny`,
`compile: true`) and the old spellings (`memory.compile`). A setting added to the spec appears
in the schema without an edit here. The value rules mirror `_check_value` in
txsuite/config/matrix.py; the rules between settings (`problems()`) and across files
(`extends`) are the loader's alone.

    python -m txsuite.config.schema > matrix.schema.json

regenerates the shipped schema; tests/test_schema.py fails while it is stale.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
from typing import Any

from txsuite.config import spec
from txsuite.config.matrix import (CONSTANT_QUANTITIES, MAX_NAME_LENGTH, NAME_RE, SEARCH_MODES, TOP_LEVEL_ALIASES,
                                   TOP_LEVEL_KEYS)
from txsuite.config.metrics import BY_NAME, GUARDABLE
from txsuite.config.numbers import MAX_REPETITIONS, MAX_TIMEOUT_S

DRAFT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "python -m txsuite.config.schema > matrix.schema.json"

# The top level of a matrix file is the loader's own (txsuite/config/matrix.py).
NAME_PATTERN = NAME_RE.pattern
# the loader strips a guard's change, then matches [+-]\d+(\.\d+)?%
GUARD_PATTERN = r"^\s*[+-][0-9]+(\.[0-9]+)?%\s*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _key(dotted: str) -> str:
    """The $defs name of one setting (`key:train.steps`, `key:precision`)."""
    return f"key:{dotted}"


def _family(name: str) -> str:
    return f"family:{name}"


def _json(value: Any) -> Any:
    """A spec value as JSON has it (tuples and live views of keys become lists)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "dict_keys":
        return [_json(v) for v in value]
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "object"


def _shown(value: Any) -> str:
    return json.dumps(_json(value))


# ---------------------------------------------------------------------------------------------
# Descriptions, from the spec's own words
# ---------------------------------------------------------------------------------------------

def _words(text: str) -> str:
    return " ".join(text.split())


def _first_paragraph(doc: str | None) -> str:
    return _words(inspect.cleandoc(doc).split("\n\n")[0]) if doc else ""


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> what the dataclass's source says of it: the comment above the field and the
    one beside it (or a string literal right after it). A comment above a run of fields of one
    type with no words of their own (model.n_layer ... d_ff, train.beta1 ... momentum) speaks
    for the whole run. {} when the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    carried: tuple[str, str] | None = None  # (words above a run of fields, their annotation)
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            carried = None
            continue
        annotation = ast.unparse(node.annotation)
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        beside = [comments[k] for k in range(node.lineno, (node.end_lineno or node.lineno) + 1) if k in comments]
        after = body[i + 1] if i + 1 < len(body) else None
        if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            beside.append(after.value.value)
        if above:
            carried = (_words(" ".join(above)), annotation)
            words = [carried[0]] + beside
        elif not beside and carried and carried[1] == annotation:
            words = [carried[0]]
        else:
            carried = None
            words = beside
        text = _words(" ".join(words))
        if text:
            out[node.target.id] = text
    return out


def _family_module(family: str) -> Any:
    cls = spec.FAMILIES.get(family)
    if cls is not None:
        return sys.modules.get(cls.__module__)
    return spec._MODULES.get(family)  # the scalar families are modules without a dataclass


def _family_description(family: str) -> str:
    module = _family_module(family)
    words = [_first_paragraph(getattr(module, "__doc__", None))]
    cls = spec.FAMILIES.get(family)
    doc = getattr(cls, "__doc__", None) or ""
    if cls is not None and not doc.startswith(cls.__name__ + "("):  # dataclass writes a signature
        words.append(_first_paragraph(doc))
    if family in spec.SHORTHANDS:
        _, key, _ = spec.SHORTHANDS[family]
        words.append(f"A single value is short for {{{key}: value}}.")
    return " ".join(w for w in words if w)


def _kind_words(dotted: str) -> str:
    """What the spec allows for a setting, in words (the tail of its description)."""
    annotation = str(spec.field_type(dotted))
    choices = spec.CHOICES.get(dotted)
    if choices is not None:
        text = "one of " + ", ".join(_shown(c) for c in choices)
        note = spec.CHOICE_NOTES.get(dotted)
        return f"{text} {note}" if note else text
    if annotation.startswith("int"):
        text = f"an integer >= {1 if dotted in spec.POSITIVE_INTS else 0}"
        if dotted in spec.MAXIMA:
            text = f"an integer from {1 if dotted in spec.POSITIVE_INTS else 0} to {spec.MAXIMA[dotted]:,}"
    elif annotation.startswith("float"):
        text = "a fraction in [0, 1)" if dotted in spec.FRACTIONS else "a number >= 0"
    elif annotation.startswith("str"):
        text = "text"
    else:
        text = annotation
    for word in spec.WORDS.get(dotted, ()):
        text += f" or {word}"
    if "None" in annotation:
        text += " or null"
    return text


def _leaf_description(family: str, leaf: str, comments: dict[str, str], default: Any) -> str:
    dotted = f"{family}.{leaf}" if leaf else family
    said = comments.get(leaf, "")  # the spec's words as written ("auto: ...", "k for every_k")
    tail = f"{_kind_words(dotted)}; default {_shown(default)}"
    if not said:
        return f"{dotted}: {tail}."
    return f"{said}{' ' if said.endswith('.') else '. '}{tail[0].upper() + tail[1:]}."


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

def value_schema(dotted: str) -> dict[str, Any]:
    """The values one setting takes, as `_check_value` in txsuite/config/matrix.py checks them."""
    annotation = str(spec.field_type(dotted))
    choices = spec.CHOICES.get(dotted)
    if choices is not None:  # the loader checks these by value and type, nothing else
        values = _json(choices)
        out: dict[str, Any] = {"enum": values}
        types = {_json_type(v) for v in values}
        if len(types) == 1:
            out["type"] = types.pop()
        return out
    options: list[dict[str, Any]] = []
    if annotation.startswith("int"):
        options.append({"type": "integer", "minimum": 1 if dotted in spec.POSITIVE_INTS else 0,
                        **({"maximum": spec.MAXIMA[dotted]} if dotted in spec.MAXIMA else {})})
    elif annotation.startswith("float"):
        number: dict[str, Any] = {"type": "number", "minimum": 0}
        if dotted in spec.FRACTIONS:
            number["exclusiveMaximum"] = 1
        options.append(number)
    elif annotation.startswith("str"):
        options.append({"type": "string", "minLength": 1})
    else:  # the loader checks no more than that a value is there
        options.append({"not": {"type": "null"}})
    words = spec.WORDS.get(dotted)
    if words:
        options.append({"enum": _json(words)})
    if "None" in annotation:
        options.append({"type": "null"})
    return options[0] if len(options) == 1 else {"anyOf": options}


def _converted(target: str, convert: Any, kinds: tuple[type, ...]) -> dict[str, Any]:
    """The values a shorthand or an old spelling takes: those of `target`, and the booleans its
    converter turns into allowed values of `target` (`compile: true` -> mode default)."""
    options = [_ref(_key(target))] if not kinds or any(k is not bool for k in kinds) else []
    choices = spec.CHOICES.get(target)
    if (bool in kinds or not kinds) and choices is not None:
        flags = [b for b in (False, True)
                 if any(convert(b) == c and type(convert(b)) is type(c) for c in choices)]
        if flags:
            options.append({"enum": flags, "type": "boolean"})
    return options[0] if len(options) == 1 else {"anyOf": options}


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------

def _settings_defs() -> tuple[dict[str, Any], dict[str, Any]]:
    """($defs of every setting and family, properties of a settings mapping: each family nested
    or as a shorthand, each scalar family, each dotted key, each old spelling)."""
    defs: dict[str, Any] = {}
    props: dict[str, Any] = {}
    aliases_of: dict[str, dict[str, Any]] = {}
    for old, (new, convert) in spec.ALIASES.items():
        defs[_key(old)] = _converted(new, convert, ())  # described below, once `new` is
        family, _, leaf = old.partition(".")
        aliases_of.setdefault(family, {})[leaf] = _ref(_key(old))
    cell_defaults = spec.CellConfig()
    for family, cls in spec.FAMILIES.items():
        comments = field_comments(cls)
        leaves: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            dotted = f"{family}.{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else getattr(cls(), f.name)
            defs[_key(dotted)] = {**value_schema(dotted), "default": _json(default),
                                  "description": _leaf_description(family, f.name, comments, default)}
            leaves[f.name] = _ref(_key(dotted))
            props[dotted] = _ref(_key(dotted))
        leaves.update(aliases_of.get(family, {}))
        mapping = {"type": "object", "properties": leaves, "additionalProperties": False}
        description = _family_description(family)
        if family in spec.SHORTHANDS:
            kinds, key, convert = spec.SHORTHANDS[family]
            kinds = kinds if isinstance(kinds, tuple) else (kinds,)
            defs[_family(family)] = {"anyOf": [mapping, _converted(f"{family}.{key}", convert, kinds)],
                                     "description": description}
        else:
            defs[_family(family)] = {**mapping, "description": description}
        props[family] = _ref(_family(family))
    for family in spec.SCALAR_FAMILIES:
        default = getattr(cell_defaults, family)
        defs[_key(family)] = {**value_schema(family), "default": _json(default),
                              "description": f"{_family_description(family)} "
                                             f"{_leaf_description(family, '', {}, default)}".strip()}
        props[family] = _ref(_key(family))
    for old in spec.ALIASES:
        props[old] = _ref(_key(old))
        # the alias's description names today's key and repeats what that key is
        new = spec.ALIASES[old][0]
        defs[_key(old)]["description"] = (f"The old spelling of {new}, still accepted. "
                                          f"{defs[_key(new)]['description']}")
    return defs, props


def matrix_schema() -> dict[str, Any]:
    """The JSON Schema of one matrix file."""
    defs, props = _settings_defs()
    defs["settings"] = {
        "type": "object", "properties": props, "additionalProperties": False,
        "description": "Cell settings: a family as a mapping ({train: {steps: 3}}), a dotted key "
                       "(train.steps: 3), or a scalar family (precision: bf16).",
    }
    defs["axes"] = {
        "type": "object", "additionalProperties": False,
        "properties": {key: {"type": "array", "minItems": 1, "uniqueItems": True, "items": ref,
                             "description": f"The values of {key} to sweep: one cell per value (times the "
                                            f"other axes)."}
                       for key, ref in props.items()},
    }
    nullable_settings = {"anyOf": [_ref("settings"), {"type": "null"}]}
    entries = {"anyOf": [{"type": "array", "items": {"allOf": [_ref("settings"), {"minProperties": 1}]}},
                         {"type": "null"}]}
    guard = {
        "anyOf": [{"type": "object", "additionalProperties": False,
                   "properties": {m: {"type": "string", "pattern": GUARD_PATTERN,
                                      "description": f"{BY_NAME[m].title}: {BY_NAME[m].description}. "
                                                     f"A signed percentage, e.g. -5% or +10%."}
                                  for m in GUARDABLE}},
                  {"type": "null"}],
    }
    top: dict[str, Any] = {
        "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": MAX_NAME_LENGTH},
        "description": {"type": ["string", "null"]},
        "extends": {"anyOf": [{"type": "string", "pattern": r"\S"},
                              {"type": "array", "items": {"type": "string", "pattern": r"\S"}},
                              {"type": "null"}]},
        "fixed": nullable_settings,
        "axes": {"anyOf": [_ref("axes"), {"type": "null"}]},
        "exclude": entries,
        "include": entries,
        "repeats": {"anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_REPETITIONS},
            {"type": "object", "additionalProperties": False, "required": ["min", "max", "detect"],
             "properties": {"min": {"type": "integer", "minimum": 2, "maximum": MAX_REPETITIONS},
                            "max": {"type": "integer", "minimum": 2, "maximum": MAX_REPETITIONS},
                            "detect": {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}}}],
            "default": 1},
        "seeds": {"type": "integer", "minimum": 1, "maximum": MAX_REPETITIONS, "default": 1},
        "guard": guard,
        "reference": nullable_settings,
        "constant": {"anyOf": [{"enum": list(CONSTANT_QUANTITIES)},
                               {"type": "array", "items": {"enum": list(CONSTANT_QUANTITIES)}},
                               {"type": "null"}]},
        "timeout_s": {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
                                {"type": "null"}]},
        "search": {"anyOf": [{"enum": list(SEARCH_MODES)}, {"type": "null"}], "default": "grid"},
    }
    for key, description in TOP_LEVEL_KEYS.items():
        top[key] = {**top[key], "description": description}
    for old, new in TOP_LEVEL_ALIASES.items():
        top[old] = {**top[new], "description": f"The old name of {new}, still accepted: {TOP_LEVEL_KEYS[new]}"}
    return {
        "$schema": DRAFT,
        "title": "txsuite matrix file",
        "description": f"A txsuite matrix (matrices/*.yaml): settings, axes and how each cell is measured. "
                       f"Generated from txsuite/config/spec by `{REGENERATE}`; do not edit by hand.",
        "type": "object",
        "properties": top,
        "additionalProperties": False,
        # a file that extends another may take its name from it
        "anyOf": [{"required": ["name"]}, {"required": ["extends"]}],
        # both spellings at once are an error
        "not": {"anyOf": [{"required": [old, new]} for old, new in TOP_LEVEL_ALIASES.items()]},
        "$defs": defs,
    }


def main() -> None:
    print(json.dumps(matrix_schema(), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
