"""Config values from a records frame as keys that compare and hash: lists and dicts as sorted
JSON, NaN and None as None, numpy scalars as Python ones (a frame column mixes all of these)."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def comparable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
