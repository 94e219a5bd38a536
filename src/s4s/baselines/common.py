r"""Shared pieces of the baseline table builders.

Each builder is a pure function ``GridPoints -> Tables``, written with torch ops so the
tables are differentiable in the grid (S4S-Alt moves it).

Several classic solvers live in the VE-equivalent coordinates ``y = x / alpha``,
``rho = sigma / alpha = e^{-lam}``, where the probability-flow ODE reads
``dy/drho = eps = (y - D) / rho`` (EDM's ``d``). A step ``y_{i+1} = y_i + sum_k c_k eps_{i-k}``
becomes, with ``eps_j = (x_j - alpha_j D_j) / sigma_j``::

    x_{i+1} = alpha_{i+1}/alpha_i x_i + sum_k alpha_{i+1} c_k / sigma_{i-k} (x_{i-k} - alpha_{i-k} D_{i-k})

which is why those rows need past-state coefficients ``a[i, j]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from s4s.schedules import Schedule
from s4s.solver import Tables

__all__ = ["GridPoints", "step_orders", "add_eps_step", "empty_tables"]


@dataclass
class GridPoints:
    """Schedule values at the grid: ``t``, ``alpha``, ``sigma``, ``lam`` (each of length N+1)."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor

    @property
    def n(self) -> int:
        return self.t.numel() - 1

    @classmethod
    def from_grid(cls, schedule: Schedule, grid: Tensor) -> "GridPoints":
        return cls(grid, schedule.alpha(grid), schedule.sigma(grid), schedule.lam(grid))

    @classmethod
    def from_lambda(cls, schedule: Schedule, lam: Tensor) -> "GridPoints":
        """Points given by their log-SNR (closed-form alpha/sigma where the schedule has one)."""
        alpha, sigma = schedule.alpha_sigma_from_lambda(lam)
        return cls(schedule.t_from_lambda(lam), alpha, sigma, lam)


def step_orders(n: int, order: int, lower_order_final: bool, max_order: int = 4) -> list[int]:
    """Order used at each step: warm-up ``min(order, i + 1)``; with ``lower_order_final`` also ``<= n - i``.

    ``order`` must lie in ``1..max_order`` (the highest order the method is defined or stable for).
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= max_order:
        raise ValueError(f"order must be an integer in 1..{max_order}, got {order!r}")
    return [min(order, i + 1, n - i if lower_order_final else order) for i in range(n)]


def empty_tables(n: int, like: Tensor, corrector: bool = False) -> Tables:
    z = lambda r, c: torch.zeros(r, c, dtype=like.dtype, device=like.device)  # noqa: E731
    return Tables(z(n, n), z(n, n), z(n - 1, n) if corrector else None, z(n - 1, n) if corrector else None)


def add_eps_step(tables: Tables, pts: GridPoints, i: int, coefs: Sequence[Tensor]) -> None:
    """Write row ``i`` for ``y_{i+1} = y_i + sum_k coefs[k] eps_{i-k}`` (VE coordinates, see module doc)."""
    a, b = tables.a, tables.b
    alpha, sigma = pts.alpha, pts.sigma
    a[i, i] = a[i, i] + alpha[i + 1] / alpha[i]
    for k, c in enumerate(coefs):
        j = i - k
        a[i, j] = a[i, j] + alpha[i + 1] * c / sigma[j]
        b[i, j] = b[i, j] - alpha[i + 1] * c * alpha[j] / sigma[j]


# Whether the last steps lower their order when the caller does not say (diffusers' defaults, one table):
# DPM-Solver++ and DEIS when fewer than 15 steps, UniPC always, iPNDM (no diffusers scheduler) never.
LOWER_ORDER_FINAL_DEFAULTS: dict[str, Callable[[int], bool]] = {
    "dpm_solver": lambda n: n < 15,
    "deis": lambda n: n < 15,
    "unipc": lambda n: True,
    "ipndm": lambda n: False,
}


def resolve_lower_order_final(value: Optional[bool], n: int, method: str) -> bool:
    """``value``, or for ``None`` the default of ``method`` at ``n`` steps (:data:`LOWER_ORDER_FINAL_DEFAULTS`)."""
    return LOWER_ORDER_FINAL_DEFAULTS[method](n) if value is None else bool(value)
