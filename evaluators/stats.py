"""Confidence intervals for accuracies: the Wilson score interval, which stays inside [0, 1] and keeps a
sensible width at 0% and 100%, unlike the normal approximation."""
import math
from typing import Dict, Iterable, Optional, Tuple


def wilson_interval(successes: float, n: float, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval for `successes` out of `n` trials (z = 1.96: 95%). No trials -> (0, 1), i.e. no
    information. Fractional successes are accepted (ARC credits puzzles with several test inputs partially)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"Wilson interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def accuracy_with_interval(key: str, successes: float, n: float, z: float = 1.96) -> Dict[str, float]:
    """{key: rate, key_ci_low, key_ci_high} (rate 0 when n is 0)."""
    low, high = wilson_interval(successes, n, z)
    return {key: successes / n if n else 0.0, f"{key}_ci_low": low, f"{key}_ci_high": high}


def add_wilson_intervals(metrics: Dict[str, float], n: float, keys: Optional[Iterable[str]] = None,
                         z: float = 1.96) -> Dict[str, float]:
    """Copy of `metrics` with `_ci_low`/`_ci_high` beside each rate in `keys` (default: all), the rates being
    fractions of the same `n` trials; e.g. ARC's pass@K with n = the number of test puzzles."""
    out = dict(metrics)
    for key in (metrics if keys is None else keys):
        successes = metrics[key] * n
        if successes > n and math.isclose(successes, n):
            successes = n  # rate * n rounding past n
        out.update(accuracy_with_interval(key, successes, n, z), **{key: metrics[key]})
    return out
