r"""DEIS-tAB (Zhang & Chen 2023): Adams-Bashforth on ``eps`` in ``u = log rho`` coordinates.

In VE coordinates ``y = x/alpha``, ``rho = sigma/alpha = e^u``: ``dy/du = rho eps``. Step ``i`` of order
``p`` interpolates ``eps`` with the Lagrange polynomial through ``u_i, u_{i-1}, ..., u_{i-p+1}`` and
integrates exactly::

    y_{i+1} = y_i + sum_k c_k eps_{i-k},   c_k = int_{u_i}^{u_{i+1}} L_k(u) e^u du

using ``int P(u) e^u du = e^u sum_m (-1)^m P^{(m)}(u)`` for polynomials ``P``. Same warm-up and
``lower_order_final`` rule as diffusers' ``DEISMultistepScheduler`` (``deis_type="logrho"``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from s4s.baselines.common import GridPoints, add_eps_step, empty_tables, resolve_lower_order_final, step_orders
from s4s.solver import Tables

__all__ = ["deis"]


def _poly_mul_linear(poly: list[Tensor], root: Tensor, scale: Tensor) -> list[Tensor]:
    """``poly(u) * (u - root) * scale`` with ascending coefficients."""
    out = [torch.zeros_like(root) for _ in range(len(poly) + 1)]
    for m, c in enumerate(poly):
        out[m + 1] = out[m + 1] + c * scale
        out[m] = out[m] - c * root * scale
    return out


def _exp_poly_antiderivative(poly: list[Tensor], u: Tensor) -> Tensor:
    """``e^u sum_m (-1)^m P^{(m)}(u)``: an antiderivative of ``P(u) e^u``."""
    deriv, total, sign = list(poly), torch.zeros_like(u), 1.0
    while deriv:
        total = total + sign * sum(c * u**m for m, c in enumerate(deriv))
        deriv = [m * c for m, c in enumerate(deriv)][1:]
        sign = -sign
    return torch.exp(u) * total


def deis(pts: GridPoints, order: int = 3, lower_order_final: Optional[bool] = None) -> Tables:
    """DEIS-tAB of order 1-3 (higher orders work too but are rarely stable)."""
    n = pts.n
    tables = empty_tables(n, pts.lam)
    u = -pts.lam  # log(sigma/alpha)
    for i, p in enumerate(step_orders(n, order, resolve_lower_order_final(lower_order_final, n, "deis"))):
        nodes = [u[i - k] for k in range(p)]
        coefs = []
        for k in range(p):
            poly = [torch.ones_like(u[i])]
            for j, node in enumerate(nodes):
                if j != k:
                    poly = _poly_mul_linear(poly, node, 1 / (nodes[k] - node))
            coefs.append(_exp_poly_antiderivative(poly, u[i + 1]) - _exp_poly_antiderivative(poly, u[i]))
        add_eps_step(tables, pts, i, coefs)
    return tables
