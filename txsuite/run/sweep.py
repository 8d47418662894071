"""A whole sweep from Python: the matrix file with its overrides, every cell run, the report
written — what `txsuite run` does without the terminal. `txsuite.run(...)` is this function."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def run_sweep(matrix: str | Path, overrides: Mapping[str, Any] | Sequence[str] = (), *, results_dir: str | Path = "results",
        reports_dir: str | Path | None = "reports", run_id: str | None = None, only: str | None = None,
        device: str | None = None, timeout_s: float | None = None):
    """Run every cell of `matrix` (a matrix file) as `txsuite run` does and return the run as
    loaded (`txsuite.results.Run`: its records, matrix.json and env.json; `.dir` its folder).
    `overrides`: {"train.steps": 3} or ["train.steps=3"], as on the command line. The report is
    written under `reports_dir` (None: none)."""
    from txsuite.config.matrix import load_matrix
    from txsuite.data import check_data_sources
    from txsuite.measure.env import plan_host
    from txsuite.results import RunFolder
    from txsuite.run.runner import choose_run_dir, run_matrix

    loaded = load_matrix(Path(matrix), host=plan_host(), device_override=device, max_cells=None,
                         check_data=check_data_sources, overrides=override_texts(overrides))
    run_dir, _ = choose_run_dir(Path(results_dir), loaded, run_id)
    run_matrix(loaded, run_dir, only=only, timeout_s=timeout_s)
    if reports_dir is not None:
        from txsuite.report import render_report
        render_report(run_dir, Path(reports_dir) / loaded.name / f"{run_dir.name}.html")
    return RunFolder(run_dir).load()


def override_texts(overrides: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """{"train.steps": 3, "precision": ["fp32", "bf16"]} -> ["train.steps=3", "precision=["fp32", "bf16"]"]:
    the command line's form (a JSON value is a YAML value)."""
    if isinstance(overrides, Mapping):
        return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()]
    return [str(text) for text in overrides]
