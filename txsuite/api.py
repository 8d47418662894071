"""txsuite from Python (a notebook, a script): run a matrix, load a run or every run as pandas.

    import txsuite
    run = txsuite.run("matrices/smoke.yaml", overrides={"train.steps": 3})
    cells = txsuite.load(run.dir)                 # one row per repetition, with provenance
    history = txsuite.load_history("results")     # every run under results/, oldest first

The same code paths as the command line (the matrix loader with its overrides, the runner, the
report), without the terminal. Errors are raised (MatrixError, RunInUse, RunMismatch), not
printed.
"""
from __future__ import annotations

from pathlib import Path

from txsuite.run.sweep import override_texts, run_sweep as run

__all__ = ["run", "load", "load_history", "override_texts"]

PROVENANCE = ("matrix", "run_id", "txsuite_commit", "host", "started_at")


def load(run_dir: str | Path):
    """One run as a DataFrame: a row per repetition (txsuite.results.to_dataframe), led by its
    provenance (matrix, run id, txsuite commit, host, when the run started)."""
    return load_history(run_dir)


def load_history(results: str | Path):
    """Every run at or below `results` (a run, a matrix folder, the results root) as one
    DataFrame, oldest run first, each row led by its provenance, so runs of many commits stack."""
    import pandas as pd

    from txsuite.report.export import provenance
    from txsuite.results import RunFolder, find_runs, to_dataframe

    frames = []
    for run_dir in find_runs(results):
        loaded = RunFolder(run_dir).load()
        if not loaded.records:
            continue
        frame = to_dataframe(loaded.records)
        frame = frame.drop(columns=[c for c in ("matrix", "run_id") if c in frame])
        origin = {**provenance(loaded), "started_at": loaded.time_span[0]}  # the exports' columns, and when
        for position, column in enumerate(PROVENANCE):
            frame.insert(position, column, origin[column])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(PROVENANCE))
    history = pd.concat(frames, ignore_index=True)
    return history.sort_values(["started_at", "run_id"], kind="stable", na_position="first").reset_index(drop=True)
