r"""``S4SScheduler``: any :class:`~s4s.Solver` as a diffusers scheduler.

Build it from the pipeline's own scheduler, which says what the network predicts and how it
takes time (:mod:`s4s.diffusers_config`)::

    pipe.scheduler = s4s.S4SScheduler.from_solver(solver, pipe.scheduler)
    images = pipe(..., num_inference_steps=solver.nfe).images

One ``step()`` per model call, with the same stepping recurrence as
:meth:`s4s.Solver.sample` (:class:`s4s.solver.Recurrence`): the output at call ``i`` becomes
``D_i`` (:mod:`s4s.prediction`, at the input time ``s_i``, clamped when the config says
``clip_sample``); the state is corrected with it if the solver has a corrector, then the predictor
gives the point of the next call. Classifier-free guidance done by the pipeline is one call a step.

Conventions, as diffusers pipelines expect them:

* ``timesteps`` are the solver's input times in the network's convention: the training index for
  discrete VP models, ``num_train_timesteps * t`` for flow models (``1000 sigma``).
* The initial noise is the solver's first state ``x_0`` as the pipeline hands it over: VP pipelines
  multiply unit noise by ``init_noise_sigma = sigma(t_0)`` (``solver.sample`` from
  ``schedule.prior_noise`` with the same draw); flow pipelines pass unit noise, the state at
  ``t = 1``, and the first call already sees it, so the solver starts from it at its first grid
  point ``t_0 = t_max < 1`` (0.999 by default; the prior there is ``t_0 * noise``, a 1e-3 relative
  difference). s4s's own loop gives the same result from ``solver.sample(denoiser, noise)``.
* Starting part-way (img2img / inpainting, ``strength < 1``): ``set_begin_index(k)`` (or the first
  ``timestep`` given to ``step``) picks step ``k``; ``add_noise`` / ``scale_noise`` at a listed
  timestep put the image at that step's *grid* time. A solver whose later steps use the history of
  earlier ones (every multistep table) cannot start there and refuses with one ``ValueError``;
  single-step tables (DDIM) can.
* ``step()`` checks each ``timestep`` against the solver's; a mismatch raises.
* Flow pipelines with resolution-dependent shifting pass ``mu`` to ``set_timesteps``: it must equal
  the ``mu`` recorded in the solver's metadata (the resolution it was learned for), or it is refused.
  The solver's own grid replaces the pipeline's default ``sigmas`` (FLUX's ``linspace(1, 1/N, N)``);
  other explicit ``sigmas`` or ``timesteps`` must equal the solver's.

The solver is stored in the config under a private key (``_s4s_solver``), so it survives
``save_pretrained`` / ``from_pretrained`` and another scheduler built from this config
(``DDIMScheduler.from_config(pipe.scheduler.config)``) ignores it without a warning.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from s4s.diffusers_config import config_dict, read_scheduler_config
from s4s.prediction import to_denoised
from s4s.schedules import S4S_SOLVER_KEY, Flow, Schedule, VPDiscrete, same_process
from s4s.solver import Recurrence, Solver

log = logging.getLogger(__name__)

__all__ = ["S4SScheduler", "SOLVER_KEY"]

SOLVER_KEY = S4S_SOLVER_KEY

# Schedulers whose configs describe a schedule S4SScheduler can take (discrete VP or flow).
COMPATIBLES = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
               "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
               "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
               "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
               "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]


def _config_for_schedule(schedule: Schedule) -> dict[str, Any]:
    """A diffusers-style config describing ``schedule`` (discrete VP or flow only)."""
    if isinstance(schedule, Flow):
        return {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
    if isinstance(schedule, VPDiscrete):
        cfg = schedule.to_config()
        if "alphas_cumprod" in cfg:
            ac = schedule.alphas_cumprod
            betas = 1 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
            return {"trained_betas": betas.tolist(), "num_train_timesteps": len(ac)}
        return {k: cfg[k] for k in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")}
    raise ValueError(f"S4SScheduler serves diffusers pipelines, whose schedules are discrete VP or flow; "
                     f"this solver's is {schedule!r}")


def _check_same_schedule(solver: Solver, schedule: Schedule) -> None:
    if solver.schedule is None or not same_process(schedule, solver.schedule):
        raise ValueError(f"the solver was built for {solver.schedule!r}; the scheduler config describes "
                         f"another schedule ({schedule!r})")


def _as_float(timestep: Union[float, Tensor]) -> float:
    return float(timestep.flatten()[0]) if isinstance(timestep, Tensor) else float(timestep)


def _steps_at(times: Tensor, value: float) -> Tensor:
    """Indices of ``times`` equal to ``value`` (to 1e-5 relative, 1e-3 absolute: timesteps pass through float32)."""
    return torch.isclose(times.detach().double().cpu(), torch.tensor(value, dtype=torch.float64),
                         rtol=1e-5, atol=1e-3).nonzero().flatten()


class S4SScheduler(SchedulerMixin, ConfigMixin):
    """A fixed-NFE solver (learned or classic) as a diffusers scheduler; build it with :meth:`from_solver`."""

    order = 1
    _compatibles = list(COMPATIBLES)

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Optional[list[float]] = None,
                 prediction_type: Optional[str] = None, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 use_flow_sigmas: bool = False, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float = 0.5, max_shift: float = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, time_shift_type: str = "exponential",
                 solver: Union[Solver, dict[str, Any], None] = None):
        if solver is None:
            raise ValueError("S4SScheduler needs a solver: S4SScheduler.from_solver(solver, pipe.scheduler), or "
                             "S4SScheduler.from_config(pipe.scheduler.config, solver=s4s.Solver.load('solver.json'))")
        self.solver = solver if isinstance(solver, Solver) else Solver.from_dict(solver)
        if self.solver.schedule is None:
            raise ValueError("the solver must record its noise schedule to be used as a diffusers scheduler")
        self.flow = isinstance(self.solver.schedule, Flow)
        if self.flow:  # diffusers' flow schedulers: velocity output, no clamp, these keys only
            config: dict[str, Any] = dict(num_train_timesteps=num_train_timesteps, shift=shift,
                                          use_dynamic_shifting=use_dynamic_shifting, base_shift=base_shift,
                                          max_shift=max_shift, base_image_seq_len=base_image_seq_len,
                                          max_image_seq_len=max_image_seq_len, time_shift_type=time_shift_type)
            if prediction_type not in (None, "flow_prediction") or clip_sample:
                raise ValueError(f"a flow solver serves velocity models without a clamp; got prediction_type="
                                 f"{prediction_type!r}, clip_sample={clip_sample!r}")
            spec = read_scheduler_config({**config, "prediction_type": "flow_prediction"})
        else:
            if prediction_type is None:
                raise ValueError("S4SScheduler needs the network's prediction_type: build it with "
                                 "S4SScheduler.from_solver(solver, pipe.scheduler), or pass prediction_type=")
            config = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                          beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type,
                          clip_sample=clip_sample, clip_sample_range=clip_sample_range)
            spec = read_scheduler_config(config)
        _check_same_schedule(self.solver, spec.schedule)
        self.register_to_config(**config)
        self.register_to_config(**{SOLVER_KEY: self.solver.to_dict()})
        self.spec = spec
        self.schedule: Schedule = self.solver.schedule
        grid = self.solver.grid
        self.init_noise_sigma = 1.0 if self.flow else float(self.schedule.sigma(grid[0]))
        # diffusers' sigmas: the noise level of each state (VE sigma for VP, t itself for flow), ending at t_N
        self.sigmas = (grid if self.flow else self.solver.noise_levels()).float()
        self.num_inference_steps = self.solver.nfe
        self._model_t = self.spec.model_time(self.solver.input_times)  # exact (float64) network timesteps
        self.timesteps = self._model_t.float()
        self._begin_index: Optional[int] = None
        self._reset()

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_solver(cls, solver: Solver, base_scheduler: Any = None, guidance: Optional[float] = None,
                    **overrides: Any) -> "S4SScheduler":
        """Wrap ``solver``. ``base_scheduler`` (the pipeline's scheduler or its config) gives the
        prediction type, clamp and timestep convention, and must describe the solver's schedule.
        Without it, a flow solver is taken as a velocity model; a VP solver needs ``prediction_type=``.

        A :class:`~s4s.family.GuidanceFamily` needs ``guidance=``: the ``guidance_scale`` the pipeline will
        be called with (a scheduler never sees it); the scheduler then runs ``family.at_guidance(w)``.
        Changing the pipeline's scale means a new scheduler: ``from_solver(family, pipe.scheduler,
        guidance=new_w)``."""
        from s4s.family import GuidanceFamily

        if isinstance(solver, GuidanceFamily):
            if guidance is None:
                lo, hi = solver.guidance_range
                raise ValueError(f"a guidance family needs the pipeline's guidance_scale: from_solver(family, "
                                 f"pipe.scheduler, guidance=w) with w in [{lo:g}, {hi:g}]")
            solver = solver.at_guidance(guidance)
        elif guidance is not None and solver.metadata.get("guidance") not in (None, guidance):
            log.warning("this solver was learned for guidance %g; the pipeline will use %g (a guidance family, "
                        "s4s learn --guidance LO:HI, serves a range)", solver.metadata["guidance"], guidance)
        if solver.schedule is None:
            raise ValueError("the solver must record its noise schedule")
        if base_scheduler is None and not isinstance(solver.schedule, Flow) and overrides.get("prediction_type") is None:
            raise ValueError("S4SScheduler.from_solver(solver) needs the network's prediction_type: pass the "
                             "pipeline's scheduler, from_solver(solver, pipe.scheduler), or prediction_type=")
        config = config_dict(base_scheduler) if base_scheduler is not None else _config_for_schedule(solver.schedule)
        return cls.from_config(config, solver=solver, **overrides)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' ``from_config``, which also takes ``solver=``; the config of another scheduler is
        read for its prediction type, clamp and schedule (which must be the solver's)."""
        config = config_dict(config if config is not None else kwargs.pop("pretrained_model_name_or_path", {}))
        solver = kwargs.pop("solver", None)
        stored = config.pop(SOLVER_KEY, None) or config.pop("solver", None)
        solver = solver if solver is not None else stored
        if solver is None:
            raise ValueError(f"{config.get('_class_name', 'this')} config holds no s4s solver: use "
                             "S4SScheduler.from_config(config, solver=s4s.Solver.load('solver.json')) or "
                             "S4SScheduler.from_solver(solver, pipe.scheduler)")
        if stored is None and config.get("_class_name") != cls.__name__:  # another scheduler's config
            solver = solver if isinstance(solver, Solver) else Solver.from_dict(solver)
            try:  # refuses thresholding, zero-SNR rescaling, ...
                spec = read_scheduler_config(config)
            except ValueError as err:
                raise ValueError(f"the solver was built for {solver.schedule!r}; the scheduler config does not "
                                 f"describe it: {err}") from None
            _check_same_schedule(solver, spec.schedule)
            if kwargs.get("prediction_type") is None and not isinstance(spec.schedule, Flow):
                kwargs["prediction_type"] = spec.prediction_type
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, solver=solver, **kwargs)

    # --- times -----------------------------------------------------------------------------
    def _reset(self) -> None:
        self._state: Optional[Recurrence] = None
        self._start = 0
        self._step_index: Optional[int] = None

    @property
    def step_index(self) -> Optional[int]:
        """The index of the next step (None before the first ``step`` call)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """The step the loop starts at, when set by :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at step ``begin_index`` (pipelines call this for img2img / inpainting)."""
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: Union[float, Tensor], schedule_timesteps: Optional[Tensor] = None) -> int:
        """The step whose model time is ``timestep``; one ``ValueError`` when no step has it."""
        times = self._model_t if schedule_timesteps is None else schedule_timesteps
        value = _as_float(timestep)
        close = _steps_at(times, value)
        if close.numel() == 0:
            raise ValueError(f"timestep {value:g} is not one of this solver's timesteps "
                             f"{[round(t, 3) for t in times.tolist()]}")
        return int(close[0])

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[list[float]] = None, sigmas: Optional[list[float]] = None,
                      mu: Optional[float] = None, **_: Any) -> None:
        """Accepts what pipelines pass; refuses anything but the solver's own NFE, times and resolution shift."""
        nfe = self.solver.nfe
        if num_inference_steps is not None and num_inference_steps != nfe:
            raise ValueError(f"this S4SScheduler holds a solver learned for {nfe} model calls; "
                             f"num_inference_steps={num_inference_steps} is not supported (pass num_inference_steps={nfe})")
        if timesteps is not None:
            given = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
            if given.numel() != nfe or not torch.allclose(given, self._model_t, rtol=1e-5, atol=1e-3):
                raise ValueError(f"custom timesteps differ from the solver's {self._model_t.tolist()}")
        if sigmas is not None:
            self._check_sigmas(torch.as_tensor(np.asarray(sigmas, dtype=np.float64)).flatten())
        if mu is not None:
            self._check_mu(float(mu))
        self.timesteps = self._model_t.float().to(device)
        self.sigmas = self.sigmas.to(device)
        self._begin_index = None
        self._reset()

    def _check_sigmas(self, given: Tensor) -> None:
        nfe = self.solver.nfe
        if given.numel() not in (nfe, nfe + 1):
            raise ValueError(f"sigmas describe {given.numel()} steps; this solver makes {nfe} model calls "
                             f"(pass num_inference_steps={nfe})")
        own = self.sigmas[: given.numel()].double().cpu()
        if torch.allclose(given, own, rtol=1e-4, atol=1e-6):
            return
        default = torch.as_tensor(np.linspace(1.0, 1 / nfe, nfe), dtype=torch.float64)
        if self.flow and given.numel() == nfe and torch.allclose(given, default, rtol=0, atol=1e-9):
            log.info("the pipeline's default sigmas linspace(1, 1/%d, %d) are replaced by the solver's grid", nfe, nfe)
            return
        raise ValueError(f"custom sigmas {given.tolist()} differ from the solver's grid {own.tolist()}")

    def _check_mu(self, mu: float) -> None:
        recorded = self.solver.metadata.get("mu")
        if recorded is None:
            raise ValueError(f"the pipeline shifts the time grid by resolution (mu={mu:.4g}), but this solver records "
                             "no mu: learn it at the pipeline's resolution, or, if its grid was made for this "
                             "resolution, set solver.metadata['mu'] before building the scheduler")
        if abs(float(recorded) - mu) > 1e-4 * max(1.0, abs(mu)):
            raise ValueError(f"this solver was learned at mu={float(recorded):.4g} (resolution-dependent shift); the "
                             f"pipeline asks for mu={mu:.4g}, another resolution: learn a solver for it")

    # --- sampling --------------------------------------------------------------------------
    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return sample

    def _to_denoised(self, output: Tensor, sample: Tensor, s: Tensor) -> Tensor:
        alpha = self.schedule.alpha(s).to(sample.dtype)
        sigma = self.schedule.sigma(s).to(sample.dtype)
        d = to_denoised(self.spec.prediction_type, output, sample, alpha, sigma)
        if self.spec.clip_range is not None:
            d = d.clamp(*self.spec.clip_range)
        return d

    def step(self, model_output: Tensor, timestep: Union[int, float, Tensor], sample: Tensor,
             return_dict: bool = True, **_: Any) -> Union[SchedulerOutput, tuple[Tensor]]:
        """One model call's worth of the solver; ``timestep`` must be the current step's."""
        dtype = torch.promote_types(sample.dtype, torch.float32)
        x = sample.to(dtype)
        if self._state is None:
            self._start = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            self._state = Recurrence(self.solver.from_step(self._start).tables, dtype, sample.device)
        i = self._start + self._state.index
        if i >= self.solver.nfe:
            raise RuntimeError(f"step() called {i + 1} times for a {self.solver.nfe}-call solver; "
                               "call set_timesteps() first")
        value = _as_float(timestep)
        if _steps_at(self._model_t[i:i + 1], value).numel() == 0:
            raise ValueError(f"step() got timestep {value:g}, but step {i} of this solver is at "
                             f"{float(self._model_t[i]):g}")
        d = self._to_denoised(model_output.to(dtype), x, self.solver.input_times[i].to(sample.device))
        prev = self._state.push(d, x).to(sample.dtype)
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _grid_times(self, timesteps: Tensor) -> Tensor:
        """s4s times of the states at ``timesteps``: a listed timestep means its step's grid time."""
        out = []
        for value in timesteps.detach().double().flatten().cpu().tolist():
            idx = _steps_at(self._model_t, value)
            out.append(float(self.solver.grid[int(idx[0])]) if idx.numel() else value / self.spec.timestep_scale)
        return torch.tensor(out, dtype=torch.float64)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``alpha_t x0 + sigma_t noise`` at the state time of each timestep (see the module doc)."""
        t = self._grid_times(torch.as_tensor(timesteps).reshape(-1))
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha = self.schedule.alpha(t).to(original_samples).reshape(shape)
        sigma = self.schedule.sigma(t).to(original_samples).reshape(shape)
        return alpha * original_samples + sigma * noise

    def scale_noise(self, sample: Tensor, timestep: Union[float, Tensor], noise: Optional[Tensor] = None) -> Tensor:
        """Flow pipelines' name for :meth:`add_noise` (``(1 - t) x0 + t noise``)."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        return self.add_noise(sample, noise, torch.as_tensor(timestep))

    def __len__(self) -> int:
        return self.config.num_train_timesteps
