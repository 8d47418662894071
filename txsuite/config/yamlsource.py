"""Safe YAML loading that remembers the line of every key (L0: PyYAML + stdlib).

Errors in a matrix must name the file and the line; plain `yaml.safe_load` forgets both.
`load_located` returns the data and a map from key path to line number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Path_ = tuple  # a key path: ("fixed", "train", "steps") or ("include", 0, "precision")

# Bounds checked before anything is built from the document: a matrix is a few kilobytes, and
# YAML aliases can make a tiny file expand exponentially (the "billion laughs" bomb: tens of
# seconds and gigabytes before a MemoryError, unbounded; docs/measurements.md, "Matrix files").
# The expanded size is counted on the node graph
# without expanding it.
MAX_BYTES = 1 << 20  # 1 MiB of YAML
MAX_NODES = 100_000  # nodes once every alias is expanded


class YamlError(Exception):
    def __init__(self, file: str, line: int | None, message: str):
        self.file, self.line, self.message = file, line, message
        where = f"{file}, line {line}" if line else file
        super().__init__(f"{where}: {message}")


def load_located(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse with the safe loader only (no Python object tags). Duplicate keys are errors:
    YAML would silently keep the last one, and the user would run a matrix they did not write."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise YamlError(str(path), None, f"the file is {path.stat().st_size:,} bytes; a matrix is at most "
                                             f"{MAX_BYTES:,} (is it the right file?)")
        if not path.is_file():
            raise YamlError(str(path), None, "not a regular file (a folder, a FIFO or a device?)")
        text = path.read_text()
    except OSError as exc:
        raise YamlError(str(path), None, f"cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise YamlError(str(path), None, f"not UTF-8 text (byte {exc.start})") from None
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise YamlError(str(path), None, f"not valid YAML: {exc}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        expanded = _expanded_size(node, {})
        if expanded > MAX_NODES:
            raise YamlError(str(path), None, f"its aliases expand to more than {MAX_NODES:,} values (a YAML "
                                             f"alias bomb?); a matrix is far smaller")
        lines: dict[Path_, int] = {}
        _collect_lines(node, (), lines, str(path))
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlError(str(path), line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(str(path), None, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded, computed once per node (an alias
    is the same node object again), so a bomb is measured without being built."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_NODES + 1  # a cycle (a node inside itself) counts as too large
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, memo) for item in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def _collect_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlError(file, line, f"key {key!r} appears twice (first on line {seen[key]})")
            seen[key] = line
            lines[path + (key,)] = line
            _collect_lines(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, path + (i,), lines, file)
