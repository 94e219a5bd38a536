r"""``S4SScheduler``: any :class:`~s4s.Solver` as a diffusers scheduler.

The solver (grid, input times, predictor/corrector tables, schedule, metadata) lives in the
scheduler's config, so ``pipe.save_pretrained`` / ``DiffusionPipeline.from_pretrained`` keep the
learned values. One ``step()`` per model call: at call ``i`` the network output at ``x_i`` becomes
``D_i`` (converted with ``alpha, sigma`` at the input time ``s_i``); if the solver has a corrector,
``x_i`` is first corrected with ``D_i`` (one call late, as diffusers' UniPC does), then the
predictor gives ``x_{i+1}``. Classifier-free guidance done by the pipeline is one call per step.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from s4s.schedules import Schedule, schedule_from_diffusers
from s4s.solver import Solver, weighted_sum

__all__ = ["S4SScheduler"]


class S4SScheduler(SchedulerMixin, ConfigMixin):
    """A fixed-NFE solver (learned or classic) as a diffusers scheduler; build it with :meth:`from_solver`."""

    order = 1
    _compatibles: list[str] = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Optional[list[float]] = None,
                 prediction_type: str = "epsilon", clip_sample: bool = False, clip_sample_range: float = 1.0,
                 solver: Optional[dict[str, Any]] = None):
        if solver is None:
            raise ValueError("S4SScheduler needs a solver: use S4SScheduler.from_solver(solver, base_scheduler)")
        self.solver = Solver.from_dict(solver)
        if self.solver.schedule is None:
            raise ValueError("the solver must record its noise schedule to be used as a diffusers scheduler")
        self.schedule: Schedule = self.solver.schedule
        self.init_noise_sigma = float(self.schedule.sigma(self.solver.grid[0]))
        self.timesteps = self.solver.input_times.clone().float()
        self.num_inference_steps = self.solver.nfe
        self._reset()

    @classmethod
    def from_solver(cls, solver: Solver, base_scheduler: Any = None, **overrides: Any) -> "S4SScheduler":
        """Wrap ``solver``; beta schedule and ``prediction_type`` come from ``base_scheduler`` (or its config)."""
        if solver.schedule is None:
            raise ValueError("the solver must record its noise schedule")
        cfg: dict[str, Any] = {}
        if base_scheduler is not None:
            base = dict(getattr(base_scheduler, "config", base_scheduler))
            for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                        "prediction_type"):
                if key in base and base[key] is not None:
                    cfg[key] = list(base[key]) if key == "trained_betas" else base[key]
            for key in ("clip_sample", "clip_sample_range"):
                if key in base:
                    cfg[key] = base[key]
        cfg.update(overrides)
        scheduler = cls(solver=solver.to_dict(), **cfg)
        if base_scheduler is not None and schedule_from_diffusers(scheduler.config) != solver.schedule:
            raise ValueError(f"the solver was built for {solver.schedule!r}, the base scheduler describes another schedule")
        return scheduler

    def _reset(self) -> None:
        self._xs: list[Tensor] = []
        self._ds: list[Tensor] = []
        self._step_index = 0

    @property
    def step_index(self) -> int:
        return self._step_index

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[list[float]] = None, sigmas: Optional[list[float]] = None, **_: Any) -> None:
        """Accepts what pipelines pass; refuses anything but the solver's own NFE and times."""
        nfe = self.solver.nfe
        if num_inference_steps is not None and num_inference_steps != nfe:
            raise ValueError(f"this S4SScheduler holds a solver learned for {nfe} model calls; "
                             f"num_inference_steps={num_inference_steps} is not supported (learn a solver for it)")
        if timesteps is not None:
            given = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
            if given.numel() != nfe or not torch.allclose(given, self.solver.input_times, rtol=1e-5, atol=1e-3):
                raise ValueError(f"custom timesteps differ from the solver's input times {self.solver.input_times.tolist()}")
        if sigmas is not None:
            given = torch.as_tensor(sigmas, dtype=torch.float64).flatten()[:nfe]
            expected = self.schedule.sigma(self.solver.grid[:-1]) / self.schedule.alpha(self.solver.grid[:-1])
            if given.numel() != nfe or not torch.allclose(given, expected, rtol=1e-4):
                raise ValueError("custom sigmas differ from the solver's grid")
        self.timesteps = self.solver.input_times.clone().float().to(device)
        self._reset()

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return sample

    def _to_denoised(self, output: Tensor, sample: Tensor, s: Tensor) -> Tensor:
        alpha = self.schedule.alpha(s).to(sample.dtype)
        sigma = self.schedule.sigma(s).to(sample.dtype)
        kind = self.config.prediction_type
        if kind == "epsilon":
            d = (sample - sigma * output) / alpha
        elif kind == "v_prediction":
            d = (alpha * sample - sigma * output) / (alpha * alpha + sigma * sigma)
        elif kind == "sample":
            d = output
        elif kind == "flow_prediction":
            d = sample - sigma * output
        else:
            raise ValueError(f"unsupported prediction_type {kind!r}")
        if self.config.clip_sample:
            d = d.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return d

    def step(self, model_output: Tensor, timestep: Union[int, float, Tensor], sample: Tensor,
             return_dict: bool = True, **_: Any) -> Union[SchedulerOutput, tuple[Tensor]]:
        i = self._step_index
        tables, n = self.solver.tables, self.solver.nfe
        if i >= n:
            raise RuntimeError(f"step() called {i + 1} times for a {n}-call solver; call set_timesteps() first")
        dtype, device = sample.dtype, sample.device
        d = self._to_denoised(model_output.to(dtype), sample, self.solver.input_times[i].to(device))
        self._ds.append(d)
        if i == 0:
            self._xs.append(sample)
        elif tables.ac is not None:
            ac = tables.ac[i - 1, :i].to(device, dtype)
            bc = tables.bc[i - 1, : i + 1].to(device, dtype)
            self._xs.append(weighted_sum(ac, self._xs) + weighted_sum(bc, self._ds))
        else:
            self._xs.append(sample)
        a = tables.a[i, : i + 1].to(device, dtype)
        b = tables.b[i, : i + 1].to(device, dtype)
        prev = weighted_sum(a, self._xs) + weighted_sum(b, self._ds)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        t = timesteps.to(torch.float64).flatten()
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha = self.schedule.alpha(t).to(original_samples).reshape(shape)
        sigma = self.schedule.sigma(t).to(original_samples).reshape(shape)
        return alpha * original_samples + sigma * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
