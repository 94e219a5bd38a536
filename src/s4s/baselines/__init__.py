"""Hand-designed solvers, each a pure function ``GridPoints -> Tables`` (plus EDM's Heun).

``baseline(name, schedule, nfe, grid)`` builds a ready :class:`~s4s.Solver`; :data:`BASELINES`
is the name -> builder map the CLI uses.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Union

import torch

from s4s.baselines.common import GridPoints, step_orders
from s4s.baselines.deis import deis
from s4s.baselines.dpm_solver import ddim, dpmpp_2m, dpmpp_3m, dpmpp_multistep
from s4s.baselines.heun import HeunSampler
from s4s.baselines.ipndm import ipndm
from s4s.baselines.unipc import unip_bh1, unip_bh2, unipc, unipc_bh1, unipc_bh2
from s4s.grids import GridSpec, make_grid
from s4s.schedules import Schedule
from s4s.solver import Solver, Tables

__all__ = [
    "BASELINES", "HEUN", "baseline", "nfe_supported", "GridPoints", "HeunSampler", "step_orders", "build_tables",
    "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_multistep", "unipc", "unipc_bh1", "unipc_bh2", "unip_bh1", "unip_bh2",
    "deis", "ipndm",
]

BASELINES: dict[str, Callable[..., Tables]] = {
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "unipc_bh1": unipc_bh1,
    "unipc_bh2": unipc_bh2,
    "unip_bh1": unip_bh1,
    "unip_bh2": unip_bh2,
    "deis": deis,
    "ipndm": ipndm,
}
HEUN = "heun"


def nfe_supported(name: str, nfe: int) -> bool:
    """Whether the named baseline exists at ``nfe`` calls: every table solver at any NFE >= 1, Heun (two
    calls a step, one in the last) only at odd NFE."""
    return nfe >= 1 and (name != HEUN or nfe % 2 == 1)


def build_tables(name: str, pts: GridPoints, **options: Any) -> Tables:
    """Tables of the named baseline on the given grid points."""
    if name not in BASELINES:
        raise ValueError(f"unknown solver {name!r}; table solvers: {sorted(BASELINES)} (and {HEUN!r})")
    builder = BASELINES[name]
    accepted = set(inspect.signature(builder).parameters) - {"pts"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"solver {name!r} does not take option(s) {unknown}; it takes {sorted(accepted)}")
    return builder(pts, **options)


def baseline(name: str, schedule: Schedule, nfe: int, grid: GridSpec = "logsnr",
             grid_options: dict[str, float] | None = None, **options: Any) -> Union[Solver, HeunSampler]:
    """A hand-designed solver with ``nfe`` model calls on the named (or explicit) grid.

    ``options`` go to the builder (e.g. ``order=2``, ``lower_order_final=False``). ``"heun"``
    returns a :class:`HeunSampler` with ``(nfe + 1) // 2`` steps (``2 steps - 1`` calls).
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    grid_kind = grid if isinstance(grid, str) else "explicit"
    meta = {"source": name, "options": options, "grid_kind": grid_kind, "nfe": nfe}
    if name == HEUN:
        if nfe % 2 == 0:
            raise ValueError(f"heun makes 2 model calls a step and 1 in the last: its NFE is odd (1, 3, 5, ...), got {nfe}")
        steps = (nfe + 1) // 2
        return HeunSampler(make_grid(grid, schedule, steps, **(grid_options or {})), schedule, meta)
    times = make_grid(grid, schedule, nfe, **(grid_options or {}))
    with torch.no_grad():
        tables = build_tables(name, GridPoints.from_grid(schedule, times), **options)
    return Solver(times, tables, schedule=schedule, metadata=meta)
