r"""What a diffusers scheduler config says about a model, read in one place.

:func:`read_scheduler_config` turns a diffusers scheduler (or its ``config`` dict) into a
:class:`SchedulerSpec`: the noise schedule, the prediction type, the clamp of D and the
timestep convention of the network. The denoiser adapters (:meth:`s4s.Denoiser.from_diffusers`),
the model loader and :class:`~s4s.integrations.diffusers_scheduler.S4SScheduler` all use it, so
they cannot disagree on what a config means.

* **Schedule**: :func:`s4s.schedules.schedule_from_diffusers` (discrete VP from the betas, or
  :class:`~s4s.schedules.Flow` for flow-matching configs).
* **Prediction type**: ``prediction_type`` (default ``epsilon``); flow-matching configs
  (``FlowMatch*`` classes, ``use_flow_sigmas``) predict the velocity: ``flow_prediction``.
* **Clamp**: ``clip_sample: true`` clamps D to ``[-r, r]``, ``r = clip_sample_range`` (as
  diffusers' DDPM / DDIM schedulers do); absent or false: no clamp.
* **Timestep convention**: a discrete VP network takes the (fractional) training index ``t``
  itself; a flow network takes ``num_train_timesteps * t`` (diffusers' ``timesteps = 1000 sigma``).
* **Refused**: ``thresholding: true`` (dynamic thresholding is a per-sample quantile clamp s4s
  does not implement) raises one ``ValueError`` instead of sampling without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from s4s.prediction import check_prediction_type
from s4s.schedules import Flow, Schedule, VPDiscrete, is_flow_config, schedule_from_diffusers

__all__ = ["SchedulerSpec", "read_scheduler_config", "spec_for_schedule", "config_dict", "clip_range_from_config"]


def config_dict(scheduler_or_config: Any) -> dict[str, Any]:
    """The config of a diffusers scheduler as a plain dict naming its class (a dict is returned as a copy)."""
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    try:
        cfg = dict(config)
    except (TypeError, ValueError):
        raise ValueError(f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}") from None
    if config is not scheduler_or_config:  # a live scheduler: its config does not name its class
        cfg.setdefault("_class_name", type(scheduler_or_config).__name__)
    return cfg


def clip_range_from_config(cfg: dict[str, Any]) -> Optional[tuple[float, float]]:
    """diffusers' ``clip_sample`` / ``clip_sample_range`` as a clamp of the denoised output:
    ``D <- clamp(D, -range, range)`` when ``clip_sample`` is true, no clamp when it is false or absent."""
    if not cfg.get("clip_sample"):
        return None
    r = float(cfg.get("clip_sample_range", 1.0))
    return (-r, r)


@dataclass(frozen=True)
class SchedulerSpec:
    """What sampling needs from a diffusers scheduler config (see the module doc)."""

    schedule: Schedule
    prediction_type: str
    clip_range: Optional[tuple[float, float]]
    timestep_scale: float
    num_train_timesteps: int

    def model_time(self, t: Any) -> Any:
        """The network's ``timestep`` for s4s time ``t``: ``t`` (discrete VP) or ``num_train_timesteps * t`` (flow)."""
        return t * self.timestep_scale if self.timestep_scale != 1.0 else t


def read_scheduler_config(scheduler_or_config: Any, prediction_type: Optional[str] = None) -> SchedulerSpec:
    """Read a diffusers scheduler (or config dict); ``prediction_type`` must agree with the config's if both are given.

    An :class:`~s4s.S4SScheduler` answers with the spec it was built from.
    """
    own = getattr(scheduler_or_config, "spec", None)
    if isinstance(own, SchedulerSpec):
        if prediction_type is not None and check_prediction_type(prediction_type) != own.prediction_type:
            raise ValueError(f"prediction_type={prediction_type!r} conflicts with the scheduler's {own.prediction_type!r}")
        return own
    cfg = config_dict(scheduler_or_config)
    if cfg.get("thresholding"):
        raise ValueError("the scheduler config sets thresholding: true (dynamic thresholding), which s4s does not "
                         "implement; set it to false or use clip_sample")
    schedule = schedule_from_diffusers(cfg)
    flow = isinstance(schedule, Flow)
    stated = "flow_prediction" if flow and "prediction_type" not in cfg else cfg.get("prediction_type", "epsilon")
    stated = check_prediction_type(stated)
    if prediction_type is not None and check_prediction_type(prediction_type) != stated:
        raise ValueError(f"prediction_type={prediction_type!r} conflicts with the scheduler config's {stated!r}")
    if flow != (stated == "flow_prediction"):
        raise ValueError(f"prediction_type {stated!r} does not fit the {schedule.kind} schedule of this config "
                         "(flow_prediction goes with flow-matching schedules only)")
    return _spec(schedule, stated, clip_range_from_config(cfg), int(cfg.get("num_train_timesteps", 1000)))


def _spec(schedule: Schedule, prediction_type: str, clip_range: Optional[tuple[float, float]],
          num_train_timesteps: int) -> SchedulerSpec:
    """The spec with diffusers' timestep convention: the training index, or ``num_train_timesteps * t`` for flow."""
    scale = float(num_train_timesteps) if isinstance(schedule, Flow) else 1.0
    return SchedulerSpec(schedule, prediction_type, clip_range, scale, num_train_timesteps)


def spec_for_schedule(schedule: Schedule, prediction_type: str) -> SchedulerSpec:
    """The spec of a diffusers network on an s4s ``schedule`` (no clamp, 1000 training steps for flow)."""
    if not isinstance(schedule, (VPDiscrete, Flow)):
        raise ValueError(f"diffusers models use a discrete VP or a flow schedule, got {schedule!r}")
    return _spec(schedule, check_prediction_type(prediction_type), None, 1000)
