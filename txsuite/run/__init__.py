"""Running cells (L5-L6): the worker runs one cell repetition in its own process (worker.py,
L5); the runner turns a matrix into worker processes, timeouts, resume and records
(runner.py, L6, never imports torch), on this host or a cluster (executors.py)."""

import sys
import types


class _Callable(types.ModuleType):
    """`txsuite.run(matrix, overrides, ...)` runs a sweep (sweep.run_sweep): the function and this
    package share the name `txsuite.run`, and importing txsuite.run.runner would replace a
    function of that name on the txsuite package with this module, so the module is callable."""

    def __call__(self, *args, **kwargs):
        from txsuite.run.sweep import run_sweep
        return run_sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
