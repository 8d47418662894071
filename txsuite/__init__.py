"""txsuite: what does each training technique cost and buy, on this hardware?

`txsuite.run`, `txsuite.load` and `txsuite.load_history` (txsuite/api.py) are imported on first
use: a worker process imports this package too, and must not pay for pandas or the report."""

import sys

__all__ = ["run", "load", "load_history"]


def __getattr__(name: str):
    if name == "run":  # the package txsuite.run, callable as the function (txsuite/run/__init__.py)
        import txsuite.run
        return sys.modules["txsuite.run"]
    if name in __all__:
        from txsuite import api
        return getattr(api, name)
    raise AttributeError(f"module 'txsuite' has no attribute {name!r}")
