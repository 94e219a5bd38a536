r"""k-diffusion-style sampling with an s4s solver.

``sample_s4s(model, x, sigmas, extra_args=None, callback=None, disable=None, solver=...)`` has the
signature of k-diffusion's ``sample_*`` functions, so UIs built on that convention can call it.
``model(x, sigma, **extra_args)`` is a VE-coordinate denoiser (EDM / k-diffusion wrappers) and
``x = sigmas[0] * noise``. The solver runs in its own schedule's coordinates
``x_s4s = alpha_t x_ve`` (identity on the EDM schedule) on its own grid: a learned grid is part of
the solver, so ``sigmas`` only has to match its number of steps (a mismatch in values is logged).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from s4s.solver import Solver, integrate

log = logging.getLogger(__name__)

__all__ = ["sample_s4s"]


@torch.no_grad()
def sample_s4s(model: Callable[..., Tensor], x: Tensor, sigmas: Tensor, extra_args: Optional[dict[str, Any]] = None,
               callback: Optional[Callable[[dict[str, Any]], None]] = None, disable: Optional[bool] = None,
               solver: Optional[Solver] = None) -> Tensor:
    """Sample with ``solver`` (exactly ``solver.nfe`` calls of ``model``); returns the VE-coordinate sample."""
    if solver is None:
        raise ValueError("sample_s4s needs solver=... (an s4s.Solver, e.g. s4s.Solver.load('solver.json'))")
    if solver.schedule is None:
        raise ValueError("the solver must record its noise schedule")
    extra_args = extra_args or {}
    sched = solver.schedule
    steps = len(sigmas) - 1
    if steps != solver.nfe:
        raise ValueError(f"sigmas describe {steps} steps; this solver makes {solver.nfe} model calls")
    alpha, sigma = sched.alpha(solver.grid), sched.sigma(solver.grid)
    ve_grid = sigma / alpha
    given = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if not torch.allclose(given[:1], ve_grid[:1], rtol=1e-3):
        log.warning("sigmas[0]=%.4g differs from the solver's starting noise level %.4g; x is rescaled to it",
                    float(given[0]), float(ve_grid[0]))
        x = x * (float(ve_grid[0]) / float(given[0]))
    s_in = x.new_ones([x.shape[0]])
    bar = tqdm(total=solver.nfe, disable=disable)

    def denoise(xs: Tensor, s: Tensor) -> Tensor:
        a, sg = sched.alpha(s), sched.sigma(s)
        ve = float(sg / a)
        return model(xs / float(a), ve * s_in, **extra_args)

    def on_call(i: int, xs: Tensor, d: Tensor) -> None:
        bar.update(1)
        if callback is not None:
            ve = ve_grid[i].item()
            callback({"x": xs / float(alpha[i]), "i": i, "sigma": ve, "sigma_hat": ve, "denoised": d})

    out = integrate(denoise, x * float(alpha[0]), solver.input_times, solver.tables, callback=on_call)
    bar.close()
    return out / float(alpha[-1])
