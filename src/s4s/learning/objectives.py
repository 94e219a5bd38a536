r"""Distances ``d(student, teacher)`` for the S4S objective ``E d(student(x_T'), x0_teacher)``.

All return one value per sample (shape ``(B,)``), averaged by the trainer:

* ``l2``: mean squared error per sample;  ``l1``: mean absolute error;
* ``pseudo_huber``: ``sqrt(||x - y||^2 + c^2) - c`` with ``c = 0.00054 sqrt(d)`` (Song & Dhariwal 2023);
* ``feature``: squared L2 between ``f(x)`` and ``f(y)`` for any differentiable module ``f`` (e.g. the
  bundled MNIST classifier's features), averaged over feature dimensions;
* ``perceptual``: ``||f(x) - f(y)||^2`` summed, for an LPIPS-style ``f`` whose squared distance is
  already the perceptual distance (:meth:`s4s.bundled.perceptual.MnistPerceptualNet.features`: the bundled
  MNIST network that is independent of the FD classifier);
* ``lpips``: LPIPS, only when the ``lpips`` package and its weights are present locally.

For a pixel model with a data range ``[lo, hi]``, :func:`range_aware` makes any of them compare the
student with the *set of values that display as the teacher's sample*: where the teacher lies inside
the range the target is the teacher's value; where it lies at or above ``hi`` the target is
``max(x, hi)`` (any value at or above the edge shows the same), and symmetrically below ``lo``. The
residual ``x - target`` is the distance of ``x`` to the set ``{z : clamp(z) = clamp(y)}``, an upper bound
on ``|clamp(x) - clamp(y)|`` that is exact where the student stays in range and still pulls back a
student that leaves it (docs/design.md §5.3).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["LOSSES", "SQUARES_LOSSES", "make_distance", "make_residual", "resolve_auto_loss", "range_aware",
           "range_target"]

Distance = Callable[[Tensor, Tensor], Tensor]
Residual = Callable[[Tensor, Tensor], Tensor]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def l2(x: Tensor, y: Tensor) -> Tensor:
    return _flat(x - y).pow(2).mean(1)


def l1(x: Tensor, y: Tensor) -> Tensor:
    return _flat(x - y).abs().mean(1)


def pseudo_huber(x: Tensor, y: Tensor) -> Tensor:
    d = _flat(x - y)
    c = 0.00054 * d.shape[1] ** 0.5
    return torch.sqrt(d.pow(2).sum(1) + c * c) - c


def range_target(x: Tensor, y: Tensor, lo: float, hi: float) -> Tensor:
    r"""The point of ``{z : clamp(z, lo, hi) = clamp(y, lo, hi)}`` nearest to ``x``, per value (no gradient):
    ``y`` where ``lo < y < hi``, ``max(x, hi)`` where ``y >= hi``, ``min(x, lo)`` where ``y <= lo``."""
    x = x.detach()
    return torch.where(y >= hi, torch.clamp(x, min=hi), torch.where(y <= lo, torch.clamp(x, max=lo), y))


def range_aware(distance: Distance, data_range: tuple[float, float]) -> Distance:
    """``distance(x, range_target(x, y))``: the teacher's values beyond the data range are targets only up
    to the range's edge (see the module docstring)."""
    lo, hi = data_range
    return lambda x, y: distance(x, range_target(x, y, lo, hi))


LOSSES = ("l2", "l1", "pseudo_huber", "feature", "perceptual", "lpips")
# the distances that are a sum of squares of a residual vector, d(x, y) = ||r(x, y)||^2 (make_residual): the ones
# the Levenberg-Marquardt optimiser can learn with (s4s.learning.levenberg_marquardt)
SQUARES_LOSSES = ("l2", "feature", "perceptual")


def resolve_auto_loss(loss: str, feature_fn: Optional[Callable[[Tensor], Tensor]] = None) -> str:
    """``loss`` itself, or for ``"auto"`` without a model-specific choice: ``l2`` (a feature network is
    used only when it is known to fit the model's data, see :mod:`s4s.learning.model_losses`)."""
    if loss != "auto":
        return loss
    if feature_fn is not None:
        raise ValueError("a feature_fn was given with loss 'auto': name the distance it is for, loss='perceptual' "
                         "(an LPIPS-style network) or loss='feature'")
    return "l2"


def make_residual(name: str, feature_fn: Optional[Callable[[Tensor], Tensor]] = None,
                  data_range: Optional[tuple[float, float]] = None) -> Residual:
    r"""``r(x, y)`` of shape ``(B, R)`` with ``make_distance(name)(x, y) = ||r(x, y)||^2`` per sample, for the
    sum-of-squares distances (:data:`SQUARES_LOSSES`): ``l2`` ``(x - y) / sqrt(d)``, ``feature``
    ``(f(x) - f(y)) / sqrt(F)``, ``perceptual`` ``f(x) - f(y)``. With ``data_range`` the target is
    :func:`range_target` of ``x`` (held fixed: the Gauss-Newton model of the range-aware distance)."""
    if name not in SQUARES_LOSSES:
        raise ValueError(f"loss {name!r} is not a sum of squares; the Levenberg-Marquardt optimiser needs one of "
                         f"{list(SQUARES_LOSSES)} (or use optimizer 'adam')")
    if name in ("feature", "perceptual") and feature_fn is None:
        raise ValueError(f"loss {name!r} needs a feature network")

    def residual(x: Tensor, y: Tensor) -> Tensor:
        if data_range is not None:
            y = range_target(x, y, *data_range)
        if name == "l2":
            d = _flat(x - y)
            return d / d.shape[1] ** 0.5
        d = _flat(feature_fn(x) - feature_fn(y))
        return d / d.shape[1] ** 0.5 if name == "feature" else d

    return residual


def make_distance(name: str, feature_fn: Optional[Callable[[Tensor], Tensor]] = None) -> Distance:
    """The distance called ``name`` (``feature`` and ``perceptual`` need ``feature_fn``)."""
    if name == "l2":
        return l2
    if name == "l1":
        return l1
    if name == "pseudo_huber":
        return pseudo_huber
    if name == "feature":
        if feature_fn is None:
            raise ValueError("loss 'feature' needs a feature network (e.g. the bundled MNIST classifier's features)")
        return lambda x, y: _flat(feature_fn(x) - feature_fn(y)).pow(2).mean(1)
    if name == "perceptual":
        if feature_fn is None:
            raise ValueError("loss 'perceptual' needs a perceptual feature network (for MNIST-like images: "
                             "s4s.bundled.perceptual.load_mnist_perceptual().features)")
        return lambda x, y: _flat(feature_fn(x) - feature_fn(y)).pow(2).sum(1)
    if name == "lpips":
        try:
            import lpips  # type: ignore[import-not-found]
        except ImportError as err:
            raise ValueError("loss 'lpips' needs the 'lpips' package with its weights available locally "
                             "(pip install lpips on a machine that can fetch its VGG weights); use l2/l1/feature") from err
        net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
        return lambda x, y: net(x, y).reshape(x.shape[0])
    raise ValueError(f"unknown loss {name!r}; choose from {list(LOSSES)}")
