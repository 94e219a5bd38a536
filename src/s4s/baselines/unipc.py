r"""UniPC (Zhao et al. 2023), data prediction, predictor UniP-p with corrector UniC, as tables.

Step ``i`` of order ``p``, ``h = lam_{i+1} - lam_i``, ``hh = -h``, history ``m_k = D_{i-k}`` with
``r_k = (lam_{i-k} - lam_i) / h`` (``k = 1..p-1``) and ``r_p = 1``:

* ``phi_1 = expm1(hh)``; ``B(h) = hh`` (variant ``bh1``) or ``expm1(hh)`` (``bh2``);
* ``g_k = k! phi_{k+1}(hh) / B(h)`` with ``phi_{k+1}`` from the recursion
  ``phi_{k+1} = phi_k / hh - 1/k!`` (``phi_1 = expm1(hh)/hh - 1`` after the first division);
* ``R[k, :] = r^k`` (``k = 0..p-1``).

Predictor: ``x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} phi_1 m_0 - alpha_{i+1} B(h) sum_k rho^p_k (m_k - m_0)/r_k``
with ``rho^p = 1/2`` for ``p = 2`` and ``R[:-1, :-1]^{-1} g[:-1]`` for ``p >= 3``.

Corrector (after ``D_{i+1}`` is computed at the predicted point): the same with
``rho^c = R^{-1} g`` (``1/2`` for ``p = 1``), the last weight on ``D_{i+1} - m_0``.
The corrector at step ``i`` uses that step's predictor order, as diffusers does.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from s4s.baselines.common import GridPoints, empty_tables, resolve_lower_order_final, step_orders
from s4s.solver import Tables

__all__ = ["unipc", "unipc_bh1", "unipc_bh2", "unip_bh1", "unip_bh2"]


def _unipc_terms(lam: Tensor, i: int, p: int, variant: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(phi_1, B(h), r, R, g)`` for step ``i`` of order ``p``."""
    h = lam[i + 1] - lam[i]
    hh = -h
    phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    r = torch.stack([(lam[i - k] - lam[i]) / h for k in range(1, p)] + [torch.ones_like(h)])
    rows, g = [], []
    h_phi_k, factorial = phi_1 / hh - 1, 1.0
    for k in range(1, p + 1):
        rows.append(r ** (k - 1))
        g.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return phi_1, b_h, r, torch.stack(rows), torch.stack(g)


def _add_differences(row: Tensor, i: int, p: int, scale: Tensor, rho: Tensor, r: Tensor) -> None:
    """Add ``scale * sum_k rho_k (D_i - D_{i-k}) / r_k`` (``k = 1 .. p-1``) to the ``D`` weights ``row`` in place:
    the divided-difference terms shared by UniPC's predictor and corrector."""
    for k in range(1, p):
        w = scale * rho[k - 1] / r[k - 1]
        row[i - k] = row[i - k] - w
        row[i] = row[i] + w


def unipc(pts: GridPoints, order: int = 3, variant: str = "bh2", corrector: bool = True,
          lower_order_final: Optional[bool] = None) -> Tables:
    """UniPC-p (``variant`` ``bh1`` or ``bh2``); ``lower_order_final`` defaults to True as in diffusers."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    n = pts.n
    tables = empty_tables(n, pts.lam, corrector=corrector and n > 1)
    lam, alpha, sigma = pts.lam, pts.alpha, pts.sigma
    orders = step_orders(n, order, resolve_lower_order_final(lower_order_final, n, "unipc"))
    for i, p in enumerate(orders):
        phi_1, b_h, r, mat, g = _unipc_terms(lam, i, p, variant)
        scale = alpha[i + 1] * b_h
        # predictor
        tables.a[i, i] = sigma[i + 1] / sigma[i]
        tables.b[i, i] = -alpha[i + 1] * phi_1
        if p >= 2:
            rho = torch.full((1,), 0.5, dtype=lam.dtype) if p == 2 else torch.linalg.solve(mat[:-1, :-1], g[:-1])
            _add_differences(tables.b[i], i, p, scale, rho, r)
        # corrector of x_{i+1} with D_{i+1}
        if tables.ac is not None and i < n - 1:
            rho_c = torch.full((1,), 0.5, dtype=lam.dtype) if p == 1 else torch.linalg.solve(mat, g)
            tables.ac[i, i] = sigma[i + 1] / sigma[i]
            tables.bc[i, i] = -alpha[i + 1] * phi_1
            _add_differences(tables.bc[i], i, p, scale, rho_c, r)
            tables.bc[i, i + 1] = tables.bc[i, i + 1] - scale * rho_c[-1]
            tables.bc[i, i] = tables.bc[i, i] + scale * rho_c[-1]
    return tables


def unipc_bh1(pts: GridPoints, order: int = 3, corrector: bool = True, lower_order_final: Optional[bool] = None) -> Tables:
    """UniPC with ``B(h) = h`` (recommended by its authors for unconditional sampling)."""
    return unipc(pts, order, "bh1", corrector, lower_order_final)


def unipc_bh2(pts: GridPoints, order: int = 3, corrector: bool = True, lower_order_final: Optional[bool] = None) -> Tables:
    """UniPC with ``B(h) = e^h - 1`` (diffusers' default variant)."""
    return unipc(pts, order, "bh2", corrector, lower_order_final)


def unip_bh1(pts: GridPoints, order: int = 3, lower_order_final: Optional[bool] = None) -> Tables:
    """UniP-p alone (UniPC-bh1's predictor, no corrector): the linear-multistep base S4S learns from."""
    return unipc(pts, order, "bh1", False, lower_order_final)


def unip_bh2(pts: GridPoints, order: int = 3, lower_order_final: Optional[bool] = None) -> Tables:
    """UniP-p alone (UniPC-bh2's predictor, no corrector): the linear-multistep base S4S learns from."""
    return unipc(pts, order, "bh2", False, lower_order_final)
