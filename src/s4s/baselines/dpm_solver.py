r"""DDIM and DPM-Solver++ (multistep, data prediction; Lu et al. 2022), as tables.

With ``h = lam_{i+1} - lam_i``, ``phi = expm1(-h) = e^{-h} - 1`` and history ``m_k = D_{i-k}``,
``r_k = (lam_{i-k} - lam_{i-k-1}) / h``:

* order 1 (DDIM):  ``x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} phi m_0``
* order 2 ("midpoint", 2M):  ``... - 0.5 alpha_{i+1} phi D1``, ``D1 = (m_0 - m_1) / r_0``
* order 3 (3M):  ``... + alpha_{i+1} (phi/h + 1) D1 - alpha_{i+1} ((phi + h)/h^2 - 1/2) D2`` with
  ``D1_0 = (m_0 - m_1)/r_0``, ``D1_1 = (m_1 - m_2)/r_1``, ``D1 = D1_0 + r_0/(r_0 + r_1) (D1_0 - D1_1)``,
  ``D2 = (D1_0 - D1_1)/(r_0 + r_1)``.

Warm-up steps use lower orders; with ``lower_order_final`` the last two steps use orders 1 and 2
(diffusers' default when there are fewer than 15 steps).
"""

from __future__ import annotations

from typing import Optional

import torch

from s4s.baselines.common import GridPoints, empty_tables, resolve_lower_order_final, step_orders
from s4s.solver import Tables

__all__ = ["ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_multistep"]


def dpmpp_multistep(pts: GridPoints, order: int = 3, lower_order_final: Optional[bool] = None) -> Tables:
    """DPM-Solver++ multistep of the given order (1, 2 or 3)."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ multistep supports orders 1-3, got {order}")
    n = pts.n
    tables = empty_tables(n, pts.lam)
    a, b = tables.a, tables.b
    lam, alpha, sigma = pts.lam, pts.alpha, pts.sigma
    for i, p in enumerate(step_orders(n, order, resolve_lower_order_final(lower_order_final, n, "dpm_solver"))):
        h = lam[i + 1] - lam[i]
        phi = torch.expm1(-h)
        a[i, i] = sigma[i + 1] / sigma[i]
        coef = [-alpha[i + 1] * phi]  # on m_0, m_1, m_2
        if p == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            c = -0.5 * alpha[i + 1] * phi / r0  # times (m0 - m1)
            coef = [coef[0] + c, -c]
        elif p == 3:
            r0 = (lam[i] - lam[i - 1]) / h
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d10 = [1 / r0, -1 / r0, 0.0]
            d11 = [0.0, 1 / r1, -1 / r1]
            diff = [u - v for u, v in zip(d10, d11)]
            d1 = [u + r0 / (r0 + r1) * w for u, w in zip(d10, diff)]
            d2 = [w / (r0 + r1) for w in diff]
            c1 = alpha[i + 1] * (phi / h + 1)
            c2 = -alpha[i + 1] * ((phi + h) / h**2 - 0.5)
            coef = [coef[0] + c1 * d1[0] + c2 * d2[0], c1 * d1[1] + c2 * d2[1], c1 * d1[2] + c2 * d2[2]]
        for k, c in enumerate(coef):
            b[i, i - k] = c
    return tables


def ddim(pts: GridPoints) -> Tables:
    """DDIM = first-order DPM-Solver++: ``x_{i+1} = sigma_{i+1}/sigma_i x_i + alpha_{i+1}(1 - e^{-h}) D_i``."""
    return dpmpp_multistep(pts, order=1, lower_order_final=False)


def dpmpp_2m(pts: GridPoints, lower_order_final: Optional[bool] = None) -> Tables:
    """DPM-Solver++(2M)."""
    return dpmpp_multistep(pts, order=2, lower_order_final=lower_order_final)


def dpmpp_3m(pts: GridPoints, lower_order_final: Optional[bool] = None) -> Tables:
    """DPM-Solver++(3M)."""
    return dpmpp_multistep(pts, order=3, lower_order_final=lower_order_final)
