"""Intervals over seeds: Student-t means and paired differences, the statistics every verdict rests on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# ----------------------------------------------------------------------------- seeds and intervals

def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (bisection on the CDF, whose tail is the
    regularised incomplete beta, integrated numerically: no scipy needed for a 95% interval)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # P(T <= t) for t >= 0: 1/2 + ∫_0^t pdf, substituting u = atan(x/√df)
        u = np.linspace(0.0, math.atan(t / math.sqrt(df)), 4001)
        f = np.exp(logc) * math.sqrt(df) * np.cos(u) ** (df - 1)  # pdf(√df tan u) · √df sec² u
        return 0.5 + float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(u)))

    lo, hi = 0.0, 1e3
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> dict[str, float]:
    """Mean over seeds with the half-width of a Student-t confidence interval ({mean, ci, n}); a single
    run gets ci = NaN (no spread is known)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    ci = float("nan") if n < 2 else t_quantile(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return {"mean": float(v.mean()), "ci": ci, "n": n}


def summarise(frame, by: list[str], metrics: list[str], level: float = 0.95):
    """Mean and CI half-width over seeds of each metric, per group of `by` (columns `<metric>`,
    `<metric>_ci`, and `n` runs)."""
    rows = []
    for key, g in frame.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            s = mean_ci(g[m].to_numpy(), level)
            row[m], row[f"{m}_ci"], row["n"] = s["mean"], s["ci"], s["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(frame, metric: str, arm: str, versus: str, level: float = 0.95, **where) -> dict | None:
    """Mean and CI of (arm − versus) in `metric`, paired by seed, over the rows matching `where`
    (column = value); None when either arm has no rows there."""
    sel = frame
    for col, value in where.items():
        sel = sel[sel[col] == value]
    a = sel[sel["arm"] == arm].set_index("seed")[metric]
    b = sel[sel["arm"] == versus].set_index("seed")[metric]
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    return mean_ci((a[common] - b[common]).to_numpy(), level)


def detectable(ci: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true difference a paired t interval with half-width `ci` over `n` pairs clears its bar with
    probability `power` (two-sided `level`): (t_level + t_power) · sd/√n, where ci = t_level · sd/√n. NaN
    without an interval (n < 2)."""
    if n < 2 or math.isnan(ci):
        return float("nan")
    t_level = t_quantile(0.5 + level / 2, n - 1)
    return ci * (1 + t_quantile(power, n - 1) / t_level)
