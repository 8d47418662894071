import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
