"""Statistics over seeds: mean, sample standard deviation, and paired 95 % t-intervals.

Kept dependency-free (scipy may not be installed): the two-sided 95 % t quantiles for 1..30 degrees
of freedom are tabulated; beyond that a Cornish-Fisher correction of the normal quantile is exact to
three decimals.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

#: t_{0.975, df} for df = 1..30 (two-sided 95 %).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (two-sided 95 % intervals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of one score over seeds; std is 0 for one seed."""

    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields, for JSON."""
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation of ``values`` (at least one)."""
    if not values:
        raise ValueError("summarize: no values")
    vals = [float(v) for v in values]
    return Summary(statistics.fmean(vals), _stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def _stdev(vals: list[float]) -> float:
    """Sample standard deviation; NaN when a value is NaN or infinite (``statistics.stdev`` raised AttributeError)."""
    return statistics.stdev(vals) if all(math.isfinite(v) for v in vals) else math.nan


#: A paired interval this narrow has no width: every seed gave the same difference (up to float rounding).
SPREAD_EPS = 1e-9


@dataclass(frozen=True)
class PairedDiff:
    """Mean of ``a_i - b_i`` over paired seeds and its 95 % t-interval (None below two pairs)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def no_spread(self) -> bool:
        """True when every seed gave the same difference (an interval of width 0, as a small grid's discrete scores
        can give): no evidence either way."""
        return self.low is not None and self.high is not None and self.high - self.low <= SPREAD_EPS

    @property
    def significant(self) -> bool:
        """True when the 95 % interval excludes zero and has a width (see :attr:`no_spread`)."""
        return self.low is not None and self.high is not None and not self.no_spread and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | int | None]:
        """The fields, for JSON."""
        return asdict(self)


def paired_diff(a: Sequence[float], b: Sequence[float]) -> PairedDiff:
    """Paired difference ``a - b`` (same seeds, same order): mean ± t_{0.975, n-1} · sd / √n."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_diff: need two equally long, non-empty sequences, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    m = statistics.fmean(d)
    if len(d) < 2:
        return PairedDiff(m, None, None, 1)
    half = t_quantile_975(len(d) - 1) * _stdev(d) / math.sqrt(len(d))   # NaN: an interval of NaN, not significant
    return PairedDiff(m, m - half, m + half, len(d))
