r"""k-diffusion-style sampling with an s4s solver.

``sample_s4s(model, x, sigmas, extra_args=None, callback=None, disable=None, solver=...)`` has the
signature of k-diffusion's ``sample_*`` functions, so UIs built on that convention can call it.
``model(x, sigma, **extra_args)`` is a VE-coordinate denoiser (EDM / k-diffusion wrappers) and
``x = sigmas[0] * noise``. The solver runs in its own schedule's coordinates
``x_s4s = alpha_t x_ve`` (identity on the EDM schedule) on its own grid, which is part of the
solver: ``sigmas`` must be that grid's noise levels, ``solver.k_sigmas()`` (``N + 1`` values; the last
may be ``0``, k-diffusion's convention, or the grid's last noise level); other sigmas are refused.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from s4s.solver import Solver, integrate

__all__ = ["sample_s4s"]


@torch.no_grad()
def sample_s4s(model: Callable[..., Tensor], x: Tensor, sigmas: Tensor, extra_args: Optional[dict[str, Any]] = None,
               callback: Optional[Callable[[dict[str, Any]], None]] = None, disable: Optional[bool] = None,
               solver: Optional[Solver] = None) -> Tensor:
    """Sample with ``solver`` (exactly ``solver.nfe`` calls of ``model``); returns the VE-coordinate sample."""
    if solver is None:
        raise ValueError("sample_s4s needs solver=... (an s4s.Solver, e.g. s4s.Solver.load('solver.json'))")
    if not isinstance(solver, Solver):
        raise ValueError(f"sample_s4s needs one s4s.Solver, got {type(solver).__name__} (a guidance family: pass "
                         "family.at_guidance(w) for the scale the sampler's model applies)")
    if solver.schedule is None:
        raise ValueError("the solver must record its noise schedule")
    extra_args = extra_args or {}
    sched = solver.schedule
    steps = len(sigmas) - 1
    if steps != solver.nfe:
        raise ValueError(f"sigmas describe {steps} steps; this solver makes {solver.nfe} model calls")
    alpha = sched.alpha(solver.grid)
    ve_grid = solver.noise_levels()  # N + 1 values; k_sigmas() ends them with 0 instead
    given = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
    last_ok = bool(given[-1] == 0) or bool(torch.isclose(given[-1], ve_grid[-1], rtol=1e-4))
    if not (torch.allclose(given[:-1], ve_grid[:-1], rtol=1e-4, atol=0) and last_ok):
        raise ValueError(f"sigmas {given.tolist()} differ from this solver's noise levels {ve_grid.tolist()} "
                         "(its tables are made for its own grid): pass sigmas=solver.k_sigmas()")
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
