"""How likely a spot-checking auditor misses a cheat.

An auditor that replays only ``k`` of the ``N`` committed forget points, chosen uniformly without
replacement *after* the owner has committed (the Merkle root fixes the set), misses a cheat that
affects ``m = ceil(f N)`` of them with the hypergeometric probability

    P(miss) = C(N - m, k) / C(N, k) = prod_{i=0}^{k-1} (N - m - i) / (N - i)

which is at most ``(1 - f)^k`` (sampling with replacement). The bound is what makes spot checks
meaningful: to miss a cheat on 1% of the points with probability <= 1e-6 the auditor needs
``k >= ln(1e-6) / ln(0.99) ~ 1375`` replays, whatever ``N`` is.

Assumption: the owner cannot predict which points will be sampled (the auditor's seed is private
or chosen after the commitment). An owner who can predict the sample defeats any ``k < N``.
"""

from __future__ import annotations

import math

__all__ = ["miss_probability", "miss_probability_bound", "replays_needed"]


def _check(n: int, f: float) -> int:
    if n <= 0:
        raise ValueError("the forget set must be non-empty")
    if not 0.0 <= f <= 1.0:
        raise ValueError("the cheating fraction f must lie in [0, 1]")
    return math.ceil(f * n - 1e-12)


def miss_probability(*, n: int, k: int, f: float) -> float:
    """Exact probability that ``k`` uniform draws without replacement from ``n`` points all avoid
    the ``ceil(f n)`` cheated points."""
    m = _check(n, f)
    if not 0 <= k <= n:
        raise ValueError("k must lie in [0, n]")
    if m == 0:
        return 1.0
    if k > n - m:
        return 0.0
    # log-space product: stable for large n and k
    log_p = sum(math.log((n - m - i) / (n - i)) for i in range(k))
    return math.exp(log_p)


def miss_probability_bound(*, k: int, f: float) -> float:
    """The with-replacement bound ``(1 - f)^k``, an upper bound of :func:`miss_probability`."""
    if not 0.0 <= f <= 1.0:
        raise ValueError("the cheating fraction f must lie in [0, 1]")
    return (1.0 - f) ** k


def replays_needed(*, n: int, f: float, alpha: float) -> int:
    """Smallest ``k`` with ``miss_probability(n, k, f) <= alpha`` (``n`` when even a full replay is
    needed; a full replay never misses a cheat on at least one point)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")
    m = _check(n, f)
    if m == 0:
        raise ValueError("f * n rounds to zero cheated points: nothing to detect")
    lo, hi = 0, n
    while lo < hi:  # miss_probability is non-increasing in k
        mid = (lo + hi) // 2
        if miss_probability(n=n, k=mid, f=f) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo
