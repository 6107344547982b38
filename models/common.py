"""Initialisation shared by every layer."""
import math

import torch


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def truncated_normal_std(lower: float = -2.0, upper: float = 2.0) -> float:
    """Standard deviation of a unit normal truncated to [lower, upper]."""
    z = _normal_cdf(upper) - _normal_cdf(lower)
    mean = (_normal_pdf(lower) - _normal_pdf(upper)) / z
    var = 1.0 + (lower * _normal_pdf(lower) - upper * _normal_pdf(upper)) / z - mean * mean
    return math.sqrt(var)


@torch.no_grad()
def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Truncated normal at [lower, upper] std, rescaled so that the samples' std is `std` (JAX convention).

    torch.nn.init.trunc_normal_ truncates without rescaling, which leaves the std about 12% low."""
    if std == 0:
        return tensor.zero_()
    scale = std / truncated_normal_std(lower, upper)
    # Inverse-CDF sampling: uniform over the CDF range of [lower, upper], mapped back through erfinv.
    lo, hi = 2.0 * _normal_cdf(lower) - 1.0, 2.0 * _normal_cdf(upper) - 1.0
    tensor.uniform_(lo, hi).erfinv_().mul_(math.sqrt(2.0) * scale)
    return tensor.clamp_(lower * scale, upper * scale)
