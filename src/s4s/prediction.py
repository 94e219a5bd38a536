r"""The one table of prediction types: what a network's output means, and how it becomes D.

The names are diffusers' ``prediction_type`` vocabulary, used everywhere in s4s (denoisers, the
diffusers scheduler, the test bed, model folders). With ``x_t = alpha_t x0 + sigma_t eps`` and
the network output ``out`` at ``(x_t, t)``:

==================  ==============================  ==============================================
name                the network predicts            data prediction ``D``
==================  ==============================  ==============================================
``epsilon``         the noise ``eps``               ``D = (x - sigma out) / alpha``
``v_prediction``    ``v = alpha eps - sigma x0``    ``D = (alpha x - sigma out) / (alpha^2 + sigma^2)``
``sample``          ``x0``                          ``D = out``
``flow_prediction`` velocity ``u = eps - x0``       ``D = x - sigma out``  (flow schedule: ``alpha = 1 - sigma``)
==================  ==============================  ==============================================

Each conversion is affine in ``out`` at fixed ``(x, t)``, so classifier-free guidance applied to
``out`` equals guidance applied to D. :func:`from_denoised` is the inverse map (the exact
Gaussian-mixture test bed uses it to play any kind of network).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

__all__ = ["PREDICTION_TYPES", "check_prediction_type", "to_denoised", "from_denoised"]

Convert = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

# name -> (output -> D, D -> output); arguments (value, x, alpha, sigma), all broadcast to x.
_TABLE: dict[str, tuple[Convert, Convert]] = {
    "epsilon": (lambda out, x, a, s: (x - s * out) / a,
                lambda d, x, a, s: (x - a * d) / s),
    "v_prediction": (lambda out, x, a, s: (a * x - s * out) / (a * a + s * s),
                     lambda d, x, a, s: a * (x - a * d) / s - s * d),
    "sample": (lambda out, x, a, s: out,
               lambda d, x, a, s: d),
    "flow_prediction": (lambda out, x, a, s: x - s * out,
                        lambda d, x, a, s: (x - a * d) / s - d),
}

PREDICTION_TYPES: tuple[str, ...] = tuple(_TABLE)


def check_prediction_type(name: object) -> str:
    """Return ``name`` if it is a known prediction type, else raise one ``ValueError`` listing them."""
    if name not in _TABLE:
        raise ValueError(f"unknown prediction_type {name!r}; expected one of {', '.join(PREDICTION_TYPES)}")
    return str(name)


def to_denoised(prediction_type: str, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``D`` from the network output ``out`` at state ``x`` (``alpha, sigma`` broadcast to ``x``)."""
    return _TABLE[check_prediction_type(prediction_type)][0](out, x, alpha, sigma)


def from_denoised(prediction_type: str, d: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The network output whose conversion is ``d`` (inverse of :func:`to_denoised`)."""
    return _TABLE[check_prediction_type(prediction_type)][1](d, x, alpha, sigma)
