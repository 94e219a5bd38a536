r"""The distance to the teacher: one definition for learning, evaluation and the benchmarks.

``RMSE = sqrt(mean((x - x_teacher)^2))`` over every value of every sample, on what a user gets from the
solver: for a pixel model, whose data has a known range (the range its denoiser clamps D to, else
``[-1, 1]``, the range pixel pipelines display), both samples clamped to that range, as a pipeline
clamps them before showing an image; for latents and other models without a range, the raw samples
(there is no clamp to hide anything). Beside it: the raw RMSE and the *range excursion*, the RMS
distance of the samples to the range, ``sqrt(mean((x - clamp(x))^2))``, so that a solver whose samples
leave the range far more than the base's is seen (and flagged by learning).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

__all__ = ["squared_error_sum", "excursion_sum", "is_far_outside", "pixel_data_range", "DataRange"]

DataRange = Optional[tuple[float, float]]


def squared_error_sum(x: Tensor, reference: Tensor, clamp: DataRange = None) -> float:
    """``sum over samples of mean((x - reference)^2)`` (divide by the number of samples for the MSE);
    with ``clamp``, of both clamped to that range."""
    if clamp is not None:
        x, reference = x.clamp(*clamp), reference.clamp(*clamp)
    return float((x - reference).double().pow(2).reshape(x.shape[0], -1).mean(1).sum())


def excursion_sum(x: Tensor, data_range: DataRange) -> float:
    """``sum over samples of mean((x - clamp(x))^2)``: how far ``x`` lies outside ``data_range`` (divide by
    the number of samples and take the root for the range excursion; 0 without a range)."""
    if data_range is None:
        return 0.0
    return float((x - x.clamp(*data_range)).double().pow(2).reshape(x.shape[0], -1).mean(1).sum())


def is_far_outside(kept: float, base: float) -> bool:
    """A solver's samples leave the data range *far more* than the base's: a range excursion more than
    three times the base's and above 0.02 (1 % of a [-1, 1] range)."""
    return kept > max(3 * base, 0.02)


def pixel_data_range(clip: DataRange) -> tuple[float, float]:
    """The data range of a pixel model: its denoiser's clamp, else ``[-1, 1]``."""
    return tuple(clip) if clip is not None else (-1.0, 1.0)  # type: ignore[return-value]


