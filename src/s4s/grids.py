r"""Time grids ``t_0 = T > t_1 > ... > t_N = t_min`` (one model call per step, N steps).

* ``edm`` (Karras et al.): uniform in ``rho_t^(1/rho)`` with ``rho_t = sigma_t/alpha_t = e^{-lam}``,
  ``rho_i = (rho_max^(1/r) + i/N (rho_min^(1/r) - rho_max^(1/r)))^r`` (default ``r = 7``);
* ``time``: uniform in ``t``;
* ``logsnr``: uniform in ``lam`` (DPM-Solver's default);
* ``quadratic``: uniform in ``sqrt(t)`` (DPM-Solver's "time_quadratic"), for VP schedules;
* an explicit sequence of times, validated.

Grids are float64 tensors in the schedule's own time convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Union

import torch
from torch import Tensor

from s4s.schedules import Schedule

__all__ = ["GRIDS", "make_grid", "validate_grid", "edm_grid", "time_uniform_grid", "logsnr_grid", "quadratic_grid"]

GridSpec = Union[str, Sequence[float], Tensor]


def _ends(schedule: Schedule, t_max: float | None, t_min: float | None) -> tuple[float, float]:
    return (schedule.t_max if t_max is None else float(t_max)), (schedule.t_min if t_min is None else float(t_min))


def edm_grid(schedule: Schedule, n: int, rho: float = 7.0, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """Karras et al. (2022) grid, in the VE-equivalent noise level ``sigma/alpha``."""
    hi, lo = _ends(schedule, t_max, t_min)
    lam_hi, lam_lo = schedule.lam(torch.tensor(hi, dtype=torch.float64)), schedule.lam(torch.tensor(lo, dtype=torch.float64))
    r_hi, r_lo = torch.exp(-lam_hi), torch.exp(-lam_lo)
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    ve = (r_hi ** (1 / rho) + u * (r_lo ** (1 / rho) - r_hi ** (1 / rho))) ** rho
    return _pin_ends(schedule.t_from_lambda(-torch.log(ve)), hi, lo)


def time_uniform_grid(schedule: Schedule, n: int, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """Uniform in the schedule's time."""
    hi, lo = _ends(schedule, t_max, t_min)
    return torch.linspace(hi, lo, n + 1, dtype=torch.float64)


def logsnr_grid(schedule: Schedule, n: int, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """Uniform in the half log-SNR ``lam``."""
    hi, lo = _ends(schedule, t_max, t_min)
    lam = torch.linspace(float(schedule.lam(torch.tensor(hi, dtype=torch.float64))),
                         float(schedule.lam(torch.tensor(lo, dtype=torch.float64))), n + 1, dtype=torch.float64)
    return _pin_ends(schedule.t_from_lambda(lam), hi, lo)


def quadratic_grid(schedule: Schedule, n: int, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """Uniform in ``sqrt(t)``: ``t_i = (sqrt(T) + i/N (sqrt(t_min) - sqrt(T)))^2``."""
    hi, lo = _ends(schedule, t_max, t_min)
    return _pin_ends(torch.linspace(hi**0.5, lo**0.5, n + 1, dtype=torch.float64) ** 2, hi, lo)


def _pin_ends(grid: Tensor, hi: float, lo: float) -> Tensor:
    """Put the exact end points back (the lambda round trip moves them by rounding error)."""
    grid = grid.clone()
    grid[0], grid[-1] = hi, lo
    return grid


GRIDS: dict[str, Callable[..., Tensor]] = {
    "edm": edm_grid,
    "time": time_uniform_grid,
    "logsnr": logsnr_grid,
    "quadratic": quadratic_grid,
}


def validate_grid(grid: Tensor, schedule: Schedule | None = None, what: str = "grid") -> Tensor:
    """Check a grid: 1-D, at least two points, finite, strictly decreasing, inside the schedule's range."""
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"{what} must be a 1-D sequence of at least 2 times, got shape {tuple(grid.shape)}")
    g = grid.detach()
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"{what} contains NaN or inf: {g.tolist()}")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError(f"{what} must be strictly decreasing (noise to data), got {g.tolist()}")
    if schedule is not None:
        schedule.check_times(g, what)
    return grid


def make_grid(spec: GridSpec, schedule: Schedule, n: int, **kwargs: float) -> Tensor:
    """A grid of ``n`` steps from a name in :data:`GRIDS` (with its keyword options) or explicit times."""
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    if isinstance(spec, str):
        if spec not in GRIDS:
            raise ValueError(f"unknown grid {spec!r}; choose one of {sorted(GRIDS)} or give explicit times")
        grid = GRIDS[spec](schedule, n, **kwargs)
    else:
        grid = torch.as_tensor(spec, dtype=torch.float64).flatten()
        if grid.numel() != n + 1:
            raise ValueError(f"explicit grid has {grid.numel()} times; {n} steps need {n + 1}")
    return validate_grid(grid, schedule)
