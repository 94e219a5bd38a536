r"""Adaptive Runge-Kutta 4(5) (Dormand-Prince) on the probability-flow ODE: a teacher to a tolerance.

The ODE is integrated in EDM's well-conditioned variables (Karras et al. 2022): the scaled state
``y = x / alpha_t`` against ``u = log(sigma_t / alpha_t) = -lambda_t``, where it reads

.. math::  \frac{dy}{du} = y - D\bigl(\alpha_t\, y,\ t(u)\bigr),

for any schedule (VP, VE, flow). Dormand-Prince 5(4) with the first-same-as-last property (six new
model calls per attempted step), error per sample measured as the RMS of
``err / (atol + rtol * max(|y_n|, |y_{n+1}|))``, the step accepted when the largest per-sample error
is <= 1 (all samples share the step: a batch is integrated as one ODE), and the standard
controller ``h <- h * clip(0.9 * err^(-1/5), 0.2, 5)``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from s4s.schedules import Schedule

log = logging.getLogger(__name__)

__all__ = ["rk45_sample"]

# Dormand-Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))


def _combine(base: Tensor, h: float, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    out = base
    for w, k in zip(weights, ks):
        if w != 0.0:
            out = out + (h * w) * k
    return out


def rk45_sample(denoiser: Callable[..., Tensor], x_T: Tensor, schedule: Schedule, cond: Any = None,
                guidance: Optional[float] = None, rtol: float = 1e-4, atol: float = 1e-4,
                t_from: Optional[float] = None, t_to: Optional[float] = None, max_steps: int = 10_000
                ) -> tuple[Tensor, int]:
    """Solve the probability-flow ODE from ``x_T`` at ``t_from`` (default ``schedule.t_max``) to
    ``t_to`` (default ``schedule.t_min``) to tolerance ``rtol`` / ``atol`` (in units of ``x / alpha``).

    Returns ``(x_0, model_calls)``. Raises ``RuntimeError`` after ``max_steps`` attempted steps.
    """
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0, got {rtol}, {atol}")
    t_from = schedule.t_max if t_from is None else t_from
    t_to = schedule.t_min if t_to is None else t_to
    lam_from = float(schedule.lam(torch.tensor(t_from, dtype=torch.float64)))
    lam_to = float(schedule.lam(torch.tensor(t_to, dtype=torch.float64)))
    u0, u1 = -lam_from, -lam_to
    dtype = x_T.dtype

    def t_of(u: float) -> Tensor:
        return schedule.t_from_lambda(torch.tensor(-u, dtype=torch.float64))

    def alpha_of(u: float) -> float:
        return float(schedule.alpha_sigma_from_lambda(torch.tensor(-u, dtype=torch.float64))[0])

    calls = 0

    def f(u: float, y: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        with torch.no_grad():
            d = denoiser((alpha_of(u) * y).to(dtype), t_of(u), cond, guidance)
        return y - d.to(y.dtype)

    y = x_T.to(torch.float64) / alpha_of(u0)
    span = u1 - u0
    h = span / 50  # the controller adapts it after the first step
    u = u0
    k1 = f(u, y)
    steps = 0
    while (u1 - u) * math.copysign(1.0, span) > 1e-12:
        if steps >= max_steps:
            raise RuntimeError(f"rk45 teacher took more than {max_steps} steps (rtol {rtol}); loosen the tolerance")
        steps += 1
        if (u + h - u1) * math.copysign(1.0, span) > 0:
            h = u1 - u
        ks = [k1]
        for i in range(1, 7):
            ks.append(f(u + _C[i] * h, _combine(y, h, _A[i], ks)))
        y_new = _combine(y, h, _A[6], ks[:6])
        err = _combine(torch.zeros_like(y), h, _E, ks)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err_norm = float((err / scale).pow(2).flatten(1).mean(1).sqrt().max())
        if not math.isfinite(err_norm):
            raise FloatingPointError("rk45 teacher: non-finite error estimate (the model returned NaN/inf)")
        if err_norm <= 1.0:
            u, y, k1 = u + h, y_new, ks[6]  # first same as last
        factor = 5.0 if err_norm == 0 else min(5.0, max(0.2, 0.9 * err_norm ** -0.2))
        h *= factor if err_norm <= 1.0 else min(1.0, factor)
    log.debug("rk45: %d steps, %d model calls", steps, calls)
    return (alpha_of(u1) * y).to(dtype), calls
