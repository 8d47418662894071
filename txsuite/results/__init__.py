"""Results on disk (L1): run folders, their records and metadata, and records as a DataFrame.

    folder = RunFolder("results/precision/<run id>")
    folder.records(), folder.meta (RunMeta: matrix.json, typed), folder.env
    run = folder.load()             # Run: records, meta and env read once (report, guard)
    to_dataframe("results/")        # every record below a path, config flattened into columns
"""
from txsuite.results.folder import (ENV, META, RECORDS, RecordsWarning, Run, RunFolder, RunInUse, RunLock, RunMeta,
                                  UnsafeRunFolder, find_runs, load_records, write_atomic)
from txsuite.results.table import flatten, to_dataframe

__all__ = ["ENV", "META", "RECORDS", "RecordsWarning", "Run", "RunFolder", "RunInUse", "RunLock", "RunMeta",
           "UnsafeRunFolder", "find_runs", "flatten", "load_records", "to_dataframe", "write_atomic"]
