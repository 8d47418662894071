import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The suite runs two workers on the cores, and every cell, runner and helper process they start is
# an OpenMP program. OpenMP threads that spin while they wait burn the core the other worker needs
# (the suite took a third more CPU time that way: docs/measurements.md, "The test suite"); passive
# threads sleep. Set before any test imports torch, and inherited by every process a test starts.
# What a cell gets by default (a short spin, txsuite.measure.peak.cell_openmp_env) is tested as
# a function in tests/test_measure_host.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True, scope="session")
def _shared_cache(tmp_path_factory):
    """One txsuite cache (tokenizers, measured peaks) per test session, outside the user's."""
    if "TXSUITE_CACHE" not in os.environ:
        os.environ["TXSUITE_CACHE"] = str(tmp_path_factory.mktemp("txsuite-cache"))
    yield


@pytest.fixture
def write_matrix(tmp_path):
    """write_matrix(text, name="m.yaml") -> path of a matrix file in a temp folder."""
    def write(text: str, name: str = "m.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write
