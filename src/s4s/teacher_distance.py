r"""The distance to the teacher: one definition for learning, evaluation and the benchmarks.

``RMSE = sqrt(mean((x - x_teacher)^2))`` over every value of every sample, on the samples exactly as the
solver returns them: never clamped, so that a solver cannot look good because a clamp hides how far its
samples went (in latent space there is no clamp at all). Where the model's data has a known range
(pixel models: the range the denoiser clamps D to, else ``[-1, 1]``, the range pixel pipelines
display), the fraction of sample values outside it is reported beside the RMSE, and the RMSE of the
clamped samples, which is what a user sees.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

__all__ = ["squared_error_sum", "out_of_range_count", "is_far_outside", "pixel_data_range", "DataRange"]

DataRange = Optional[tuple[float, float]]


def squared_error_sum(x: Tensor, reference: Tensor, clamp: DataRange = None) -> float:
    """``sum over samples of mean((x - reference)^2)`` (divide by the number of samples for the MSE);
    with ``clamp``, of both clamped to that range."""
    if clamp is not None:
        x, reference = x.clamp(*clamp), reference.clamp(*clamp)
    return float((x - reference).double().pow(2).reshape(x.shape[0], -1).mean(1).sum())


def out_of_range_count(x: Tensor, data_range: DataRange) -> int:
    """How many values of ``x`` lie outside ``data_range`` (0 without a range)."""
    if data_range is None:
        return 0
    lo, hi = data_range
    return int(((x < lo) | (x > hi)).sum())


def is_far_outside(kept: float, base: float) -> bool:
    """A solver's samples leave the data range *far more* than the base's: more than twice the base's
    fraction of values and more than 1 % of all values."""
    return kept > max(2 * base, 0.01)


def pixel_data_range(clip: DataRange) -> tuple[float, float]:
    """The data range of a pixel model: its denoiser's clamp, else ``[-1, 1]``."""
    return tuple(clip) if clip is not None else (-1.0, 1.0)  # type: ignore[return-value]


