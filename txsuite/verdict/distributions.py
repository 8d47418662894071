"""The distributions every verdict reads: Student's t (its quantile, survival function and
inverse), the F quantile that tells a noisier cell, and the inverse trigamma function that fits
a prior's degrees of freedom.

scipy.special only: scipy.stats costs about a second to import, and the CLI imports verdicts.
An infinite number of degrees of freedom means a known variance: the standard normal.
"""
from __future__ import annotations

import math


def t_quantile(df: float, level: float = 0.95) -> float:
    """The t with a two-sided `level` interval: P(|T| <= t) = level for `df` degrees of freedom."""
    return t_isf((1.0 - level) / 2.0, df)


def t_quantiles(dfs: "np.ndarray", levels: "float | np.ndarray" = 0.95) -> "np.ndarray":
    """t_quantile(dfs[i], levels[i] or levels) for arrays: element by element the same values."""
    import numpy as np
    from scipy.special import ndtri, stdtrit

    dfs = np.asarray(dfs, dtype=float)
    p = (1.0 - np.broadcast_to(np.asarray(levels, dtype=float), dfs.shape)) / 2.0
    finite = np.isfinite(dfs)
    out = -ndtri(p)  # an infinite df: the standard normal
    out[finite] = stdtrit(dfs[finite], 1.0 - p[finite])
    return out


def t_isf(p: float, df: float) -> float:
    """The t with P(T > t) = p."""
    from scipy.special import ndtri, stdtrit

    if math.isinf(df):
        return float(-ndtri(p))
    return float(stdtrit(df, 1.0 - p))


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    from scipy.special import ndtr, stdtr

    if math.isinf(df):
        return float(ndtr(-t))
    return float(stdtr(df, -t))


def f_quantile(df_num: float, df_den: float, p: float) -> float:
    """The x with P(F <= x) = p for Fisher's F with (df_num, df_den) degrees of freedom."""
    from scipy.special import fdtri

    return float(fdtri(df_num, df_den, p))


def trigamma_inverse(x: float) -> float:
    """The y > 0 with trigamma(y) = x (Newton's method on 1/trigamma, as Smyth's limma does:
    trigamma is convex and decreasing, so the iteration converges from y = 0.5 + 1/x)."""
    from scipy.special import polygamma

    if x > 1e7:
        return 1.0 / math.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1.0 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y
