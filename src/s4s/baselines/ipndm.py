r"""iPNDM (Zhang & Chen 2023; as in zju-pi/diff-sampler): fixed Adams-Bashforth weights on EDM's
``d = (x - D)/sigma`` (= ``eps``) in VE coordinates ``y = x/alpha``, ``rho = sigma/alpha``::

    y_{i+1} = y_i + (rho_{i+1} - rho_i) sum_k w^{(p)}_k eps_{i-k}

with ``w^(1) = [1]``, ``w^(2) = [3, -1]/2``, ``w^(3) = [23, -16, 5]/12``, ``w^(4) = [55, -59, 37, -9]/24``
and warm-up order ``p = min(order, i + 1)``.
"""

from __future__ import annotations

from typing import Optional

from s4s.baselines.common import GridPoints, add_eps_step, empty_tables, resolve_lower_order_final, step_orders
from s4s.solver import Tables

__all__ = ["ipndm", "AB_WEIGHTS"]

AB_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm(pts: GridPoints, order: int = 4, lower_order_final: Optional[bool] = None) -> Tables:
    """iPNDM of order 1-4."""
    if order not in AB_WEIGHTS:
        raise ValueError(f"iPNDM supports orders 1-4, got {order}")
    n = pts.n
    tables = empty_tables(n, pts.lam)
    rho = (pts.sigma / pts.alpha)
    for i, p in enumerate(step_orders(n, order, resolve_lower_order_final(lower_order_final, n, "ipndm"))):
        step = rho[i + 1] - rho[i]
        add_eps_step(tables, pts, i, [step * w for w in AB_WEIGHTS[p]])
    return tables
