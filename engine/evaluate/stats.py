"""Confidence intervals for the numbers checks and gates judge: how far a held-out estimate can be trusted.

All intervals are two-sided 95%: Wilson's score interval for a share of successes (pairwise or exact-match
accuracy), and the normal approximation for a mean (a mean score, or the mean of paired differences on the
same examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)  # the two-sided 95% normal quantile, 1.95996...


@dataclass(frozen=True)
class Interval:
    """An estimate from n examples and its 95% interval; low and high are None when n = 1 leaves a mean's spread
    unknown."""
    estimate: float
    low: float | None
    high: float | None
    n: int

    def describe(self, signed: bool = False, digits: int = 4) -> str:
        """"95% CI 0.4902..0.9433, n=10" (signed: "95% CI -0.0200..+0.0900, n=82")."""
        if self.low is None or self.high is None:
            return f"n={self.n}, too few for an interval"
        form = f"{'+' if signed else ''}.{digits}f"
        return f"95% CI {self.low:{form}}..{self.high:{form}}, n={self.n}"

    def bounds(self, digits: int = 4) -> list[float] | None:
        """[low, high] rounded, as a manifest stores it (None: no interval)."""
        if self.low is None or self.high is None:
            return None
        return [round(self.low, digits), round(self.high, digits)]


def wilson_interval(successes: int, n: int) -> Interval:
    """Wilson's score interval for `successes` out of `n`: unlike p ± z·se it stays inside [0, 1] and does not
    shrink to a point at 0 or n successes (1 of 1 is 0.21..1.00, not 1.00..1.00). Raises ValueError for n < 1."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"a share needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p, z2 = successes / n, Z95 ** 2
    # Wilson (1927): centre (p + z²/2n) / (1 + z²/n), half-width z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of `values` with its normal-approximation interval, mean ± z·s/√n (s the sample standard
    deviation). Raises ValueError for no values."""
    x = np.asarray(values, dtype=float)
    if x.size < 1:
        raise ValueError("a mean needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, 1)
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size))


def right_or_wrong(x: np.ndarray) -> bool:
    """Whether every score is 0 or 1 (exact match, a pairwise win), so that share intervals apply."""
    return bool(x.size) and bool(np.isin(x, (0.0, 1.0)).all())


def score_interval(scores: Sequence[float]) -> Interval:
    """The mean of per-example scores in [0, 1]: Wilson's interval when every score is 0 or 1, the normal one when
    a scorer gives partial credit."""
    x = np.asarray(scores, dtype=float)
    if right_or_wrong(x):
        return wilson_interval(int(x.sum()), int(x.size))
    return mean_interval(x)


def paired_difference(after: Sequence[float], before: Sequence[float]) -> Interval:
    """mean(after) - mean(before) over the same examples, with its interval: pairing takes each example's own
    difficulty out of the spread. Right-or-wrong scores get Bonett and Price's interval for paired shares, other
    values the normal approximation of the mean difference. Raises ValueError when the two are not the same
    examples' values (their lengths differ) or there are none."""
    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same examples: {a.size} values against {b.size}")
    if right_or_wrong(a) and right_or_wrong(b):
        return paired_share_difference(a, b)
    return mean_interval(a - b)


def paired_share_difference(after: np.ndarray, before: np.ndarray) -> Interval:
    """The change in the share right, from 0/1 scores on the same examples, with Bonett and Price's (2012) adjusted
    Wald interval: unlike the normal one it does not shrink to a point when the two agree on every example."""
    n = after.size
    gained, lost = int(((after == 1) & (before == 0)).sum()), int(((after == 0) & (before == 1)).sum())
    # Bonett-Price: one pseudo-count per discordant cell, p = (f + 1)/(n + 2); Wald half-width on p12 - p21
    p12, p21 = (gained + 1) / (n + 2), (lost + 1) / (n + 2)
    half = Z95 * math.sqrt((p12 + p21 - (p12 - p21) ** 2) / (n + 2))
    return Interval((gained - lost) / n, max(-1.0, p12 - p21 - half), min(1.0, p12 - p21 + half), n)
