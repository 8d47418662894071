"""Every number a user hands txsuite, checked one way (L0: stdlib only).

A matrix key, a command-line option and a guard threshold each come here for the question
"is this a usable number?": the right kind (an integer is not a float, a boolean is not a
number), finite (NaN and infinity are never a size, a limit or a threshold), and within bounds
that keep every product of it finite (a timeout that `select` can take, a size within int64,
a percentage that can be crossed). The answer is a NumberProblem whose `problem` and `allowed`
the caller puts in its own one-paragraph error (the matrix loader's MatrixError, the command
line's UsageProblem, the guard's GuardInputError), so every surface says the same words.
"""
from __future__ import annotations

import math
import re
from typing import Any

INT64_MAX = 2**63 - 1
KiB, MiB, GiB, TiB, PiB = 2**10, 2**20, 2**30, 2**40, 2**50

# A cell repetition's time limit: above 0, at most a week. `select` and `Popen.wait` overflow
# near 1e9 s on some platforms; no benchmark cell is meant to run for more than days.
MAX_TIMEOUT_S = 7 * 24 * 3600.0
# --memory-limit: below 1 MiB not even the interpreter starts (a limit of 0 is not "no limit");
# above 1 PiB no machine has it (and setrlimit's 64-bit argument is not far beyond).
MEMORY_LIMIT_RANGE = (MiB, PiB)
# Timing repetitions and training seeds per cell: each is a process of its own. More than
# DEFAULT_MAX_REPETITIONS in a sweep already needs --yes (txsuite/config/matrix.py); a million
# per cell is past any sweep, so beyond it even --yes cannot ask for it.
MAX_REPETITIONS = 1_000_000

SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 10**3, "kib": KiB, "m": MiB, "mb": 10**6, "mib": MiB,
              "g": GiB, "gb": 10**9, "gib": GiB, "t": TiB, "tb": 10**12, "tib": TiB,
              "p": PiB, "pb": 10**15, "pib": PiB}
SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*")


class NumberProblem(ValueError):
    """Why a value is not a usable number: `problem` (a sentence) and `allowed` (what is)."""

    def __init__(self, problem: str, allowed: str | None = None):
        self.problem, self.allowed = problem, allowed
        super().__init__(problem + (f" Allowed: {allowed}." if allowed else ""))


def shown(value: Any) -> str:
    """A value as an error names it: 'the text 'abc'', 'a number (1e+20)', 'an empty list'."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"a number ({_count(value)})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"the text {value[:40]!r}{'...' if len(value) > 40 else ''}"
    if isinstance(value, (list, tuple)):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an empty mapping" if not value else "a mapping"
    return type(value).__name__


def _count(n: int) -> str:
    """An integer as an error shows it: 1,048,576; 2^63-1; 1e+20; one of 401 digits."""
    if n == INT64_MAX:
        return "2^63-1"
    if abs(n) < 10**12:
        return f"{n:,}"
    digits = len(str(abs(n)))
    return f"{float(n):.3g}" if digits < 300 else f"{'-' if n < 0 else ''}{digits}-digit integer"


def integer(value: Any, low: int = 0, high: int = INT64_MAX, why: str = "beyond what any machine could run") -> int:
    """`value` if it is an integer in [low, high]; else NumberProblem (`why`: why above `high`
    is refused)."""
    allowed = f"an integer from {_count(low)} to {_count(high)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumberProblem(f"expected an integer, got {shown(value)}.", allowed)
    if value < low:
        raise NumberProblem(f"expected an integer >= {_count(low)}, got {_count(value)}.", allowed)
    if value > high:
        raise NumberProblem(f"{_count(value)} is more than {_count(high)}, {why}.", allowed)
    return value


def real(value: Any, low: float = 0.0, high: float = math.inf, *, low_open: bool = False,
         unit: str = "") -> float:
    """`value` as a float if it is a finite number in [low, high] ((low, high] with low_open);
    `unit` (e.g. "seconds") names what it counts in the messages."""
    of = f" of {unit}" if unit else ""
    bound = f"above {low:g}" if low_open else f">= {low:g}"
    allowed = f"a finite number{of} {bound}" + (f", at most {high:,g}" if high < math.inf else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NumberProblem(f"expected a number{of}, got {shown(value)}.", allowed)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the largest float
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number):
        raise NumberProblem(f"expected a finite number{of}, got {shown(number)}.", allowed)
    if number < low or (low_open and number == low):
        raise NumberProblem(f"expected a number{of} {bound}, got {number:g}.", allowed)
    if number > high:
        raise NumberProblem(f"{number:g}{' ' + unit if unit else ''} is more than the {high:,g} allowed.", allowed)
    return number


SECONDS_ALLOWED = f"seconds above 0, at most {MAX_TIMEOUT_S:,.0f} (7 days)"


def seconds(value: Any) -> float:
    """A time limit in seconds: a finite number above 0, at most MAX_TIMEOUT_S (a week). With
    `value` text (a command-line option), the text is read as a number first."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise NumberProblem(f"{value!r} is not a number of seconds.", SECONDS_ALLOWED) from None
    try:
        return real(value, 0.0, MAX_TIMEOUT_S, low_open=True, unit="seconds")
    except NumberProblem as exc:
        raise NumberProblem(exc.problem, SECONDS_ALLOWED) from None


def size(text: Any, low: int = MEMORY_LIMIT_RANGE[0], high: int = MEMORY_LIMIT_RANGE[1]) -> int:
    """'4GiB', '512 MiB', '2e9' (bytes), '1.5G' -> bytes, within [low, high]."""
    allowed = f"a size from {size_text(low)} to {size_text(high)}, such as 4GiB, 512MiB or 2e9 (bytes)"
    match = SIZE_RE.fullmatch(text) if isinstance(text, str) else None
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise NumberProblem("not a size (a number, then a unit or none for bytes).", allowed)
    number = float(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(number):
        raise NumberProblem("the size is not a finite number.", allowed)
    if number < low:
        raise NumberProblem(f"the size is {'zero' if number == 0 else 'less than ' + size_text(low)}, too small "
                            f"to run anything (no size means 'no limit': leave the option out).", allowed)
    if number > high:
        raise NumberProblem(f"the size is more than {size_text(high)}, beyond any machine.", allowed)
    return int(number)


def size_text(n: float) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1: 1 MiB, 1.5 GiB, 6.1e+20 PiB."""
    for unit, scale in (("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:,.4g} {unit}" if value < 1e6 else f"{value:.3g} {unit}"
    return f"{n:,.0f} bytes"


def change_problem(sign: int, fraction: float) -> str | None:
    """Why a guard threshold (a signed change: sign -1 a fall, +1 a rise, by `fraction`) could
    never be crossed by a positive measurement, or None. Every guarded metric is positive, so a
    fall of 100 % or more would need it at zero or below: such a guard always passes."""
    if not math.isfinite(fraction):
        return "the percentage is not a finite number"
    if sign < 0 and fraction >= 1.0:
        return (f"a fall of {fraction:.0%} would take a positive measurement to zero or below, which never "
                f"happens, so this guard could never fail")
    return None


CHANGE_ALLOWED = "a signed percentage like -5% or +10% (a fall of less than 100%)"
