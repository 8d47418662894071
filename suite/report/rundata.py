"""Everything a report reads from one run folder, loaded once.

A run folder (DESIGN.md) holds records.jsonl and, when the runner wrote them, matrix.json
(name, description, axes, baseline, guard...) and env.json (the host fingerprint). Reports must
still render from records alone (a copied records.jsonl, a run killed before matrix.json), so the
metadata is optional and every reader below has a fallback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.record import Record
from suite.store import RunStore


@dataclass
class RunData:
    dir: Path
    records: list[Record]
    meta: dict[str, Any] = field(default_factory=dict)  # matrix.json, or {}
    host_env: dict[str, Any] = field(default_factory=dict)  # env.json, or {}

    @property
    def name(self) -> str:
        if self.meta.get("name"):
            return str(self.meta["name"])
        if self.records and self.records[0].matrix:
            return self.records[0].matrix
        return self.dir.parent.name or "matrix"

    @property
    def run_id(self) -> str:
        return self.records[0].run_id if self.records and self.records[0].run_id else self.dir.name

    @property
    def description(self) -> str:
        return str(self.meta.get("description") or "")

    @property
    def axes(self) -> dict[str, list[Any]]:
        axes = self.meta.get("axes")
        return dict(axes) if isinstance(axes, dict) else {}

    @property
    def time_span(self) -> tuple[str | None, str | None]:
        starts = sorted(r.started_at for r in self.records if r.started_at)
        ends = sorted(r.finished_at for r in self.records if r.finished_at)
        return (starts[0] if starts else None, ends[-1] if ends else None)


def load_run(run_dir: Path | str) -> RunData:
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    if not store.records_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it holds no records.jsonl")
    meta = _read_dict(store, "matrix.json")
    host_env = _read_dict(store, "env.json")
    return RunData(dir=run_dir, records=store.records(), meta=meta, host_env=host_env)


def _read_dict(store: RunStore, name: str) -> dict[str, Any]:
    try:
        value = store.read_json(name)
    except ValueError:  # a half-written or hand-edited file must not cost the whole report
        return {}
    return value if isinstance(value, dict) else {}
