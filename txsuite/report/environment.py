"""The environment fingerprint as rows of text, and the difference between two of them.

A number is only meaningful with the host it was measured on, so reports show the fingerprint
(env.json, plus the device details each worker added to its records) and compare reports put
the two hosts side by side with every difference marked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from txsuite.measure.env import EPHEMERAL
from txsuite.results import Run
from txsuite.results import flatten


@dataclass
class EnvRow:
    key: str
    value: str


@dataclass
class EnvDiffRow:
    key: str
    a: str
    b: str

    @property
    def differs(self) -> bool:
        return self.a != self.b


def run_environment(run: Run) -> dict[str, str]:
    """Flat key -> text. Keys that differ between records (e.g. a cpu and a cuda cell) read
    'varies: x · y' instead of hiding all but one."""
    host = _flat_text(run.env)
    seen: dict[str, list[str]] = {}
    for record in run.records:
        for key, value in _flat_text(record.env).items():
            values = seen.setdefault(key, [])
            if value not in values:
                values.append(value)
    out = dict(host)  # env.json first: it is what the runner measured once for the whole run
    for key, values in seen.items():
        if len(values) == 1:
            out.setdefault(key, values[0])
        else:
            out[key] = "varies: " + " · ".join(values[:4]) + (" …" if len(values) > 4 else "")
    return out


def env_rows(run: Run) -> list[EnvRow]:
    return [EnvRow(k, v) for k, v in run_environment(run).items()]


def env_diff(a: Run, b: Run) -> list[EnvDiffRow]:
    """Key by key, without the keys that change from run to run on one machine (measure.env.EPHEMERAL)."""
    env_a, env_b = _stable(run_environment(a)), _stable(run_environment(b))
    keys = list(dict.fromkeys([*env_a, *env_b]))
    return [EnvDiffRow(k, env_a.get(k, "—"), env_b.get(k, "—")) for k in keys]


def _stable(env: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k not in EPHEMERAL}
    if "launcher" in out:  # records before launched_on: "fork server (server pid 2463)"
        out["launcher"] = re.sub(r" \((server pid|slurm job) [^)]*\)", "", out["launcher"])
    return out


def _flat_text(env: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in flatten(env or {}).items():
        if value is None or value == [] or value == "":
            continue  # absent packages / features: noise in a fingerprint table
        out[key] = _text(value)
    return out


def _text(value: Any) -> str:
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return "; ".join(", ".join(f"{k}={v}" for k, v in item.items()) for item in value)
        return ", ".join(str(v) for v in value)
    return str(value)
