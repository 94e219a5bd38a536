r"""Noise schedules: ``x_t = alpha_t * x0 + sigma_t * eps``.

Every schedule exposes, for a time tensor ``t`` (its own time convention):

* ``alpha(t)``, ``sigma(t)``;
* ``lam(t) = log(alpha_t / sigma_t)``, the half log-SNR, increasing towards data;
* ``t_from_lambda(lam)``, the inverse of ``lam``;
* ``alpha_sigma_from_lambda(lam)`` (closed form where one exists);
* ``t_max`` / ``t_min``, the interval a grid may use (``t_max`` = noise end);
* ``to_config()`` / ``schedule_from_config(cfg)``, a JSON-able description.

All maps are written with torch ops, so they are differentiable in ``t`` and
``lam`` (the S4S-Alt learner moves the grid).

Schedules
---------
* :class:`VPDiscrete` - DDPM / LDM / Stable Diffusion: a table ``alphas_cumprod[n]``,
  ``n = 0..N-1``; time is the (fractional) training index ``t in [0, N-1]``, exactly
  what diffusers UNets take as ``timestep``. ``log alpha`` is interpolated linearly
  in ``t`` (as DPM-Solver does), ``sigma = sqrt(1 - alpha^2)``.
* :class:`VPLinear` - continuous VP-SDE with ``beta(t) = beta_0 + t (beta_1 - beta_0)``,
  ``log alpha_t = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2``.
* :class:`VPCosine` - continuous cosine schedule,
  ``alpha_t = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2)``.
* :class:`EDM` - EDM / VE: ``alpha = 1``, ``sigma = t``.
* :class:`Flow` - rectified flow / flow matching: ``alpha = 1 - t``, ``sigma = t``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VPDiscrete",
    "VPLinear",
    "VPCosine",
    "EDM",
    "Flow",
    "schedule_from_config",
    "schedule_from_diffusers",
    "is_flow_config",
    "same_process",
    "interp",
]


def _as_tensor(t: Any) -> Tensor:
    return t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation (``np.interp`` for torch, differentiable in ``x``).

    ``xp`` must be increasing. Outside ``[xp[0], xp[-1]]`` the end segments are extended linearly.
    """
    xp, fp = xp.to(x), fp.to(x)
    idx = torch.searchsorted(xp.detach(), x.detach().contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class Schedule:
    """Base class. Subclasses implement ``log_alpha``, ``lam`` (or ``sigma``) and ``t_from_lambda``."""

    kind: str = "abstract"
    t_max: float
    t_min: float

    # --- maps to implement -------------------------------------------------------------
    def alpha(self, t: Any) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Any) -> Tensor:
        raise NotImplementedError

    def t_from_lambda(self, lam: Any) -> Tensor:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------
    def lam(self, t: Any) -> Tensor:
        """Half log-SNR ``log(alpha_t / sigma_t)``."""
        t = _as_tensor(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def alpha_sigma_from_lambda(self, lam: Any) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)`` at the time whose half log-SNR is ``lam``."""
        t = self.t_from_lambda(_as_tensor(lam))
        return self.alpha(t), self.sigma(t)

    @property
    def sigma_max(self) -> float:
        """``sigma`` at ``t_max``: the standard deviation of the initial noise."""
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                    t: float | None = None) -> Tensor:
        """Initial state ``x_T = sigma(T) * N(0, I)`` (the ``alpha_T x0`` term is neglected as usual)."""
        sig = float(self.sigma(torch.tensor(self.t_max if t is None else t, dtype=torch.float64)))
        return sig * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def check_times(self, t: Tensor, what: str = "time") -> None:
        """Raise ``ValueError`` if any time lies outside ``[t_min, t_max]`` (relative tolerance 1e-9)."""
        lo, hi = min(self.t_min, self.t_max), max(self.t_min, self.t_max)
        tol = 1e-9 * max(1.0, abs(hi))
        tt = t.detach()
        if not bool(torch.isfinite(tt).all()):
            raise ValueError(f"{what} contains NaN or inf: {tt.tolist()}")
        bad = (tt < lo - tol) | (tt > hi + tol)
        if bool(bad.any()):
            raise ValueError(
                f"{what} {tt[bad].tolist()} outside the {self.kind} schedule's range [{lo}, {hi}]"
            )

    def __repr__(self) -> str:
        cfg = {k: v for k, v in self.to_config().items() if not isinstance(v, list)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items() if k != 'kind')})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(self))


def _vp_alpha_sigma_from_lambda(lam: Tensor) -> tuple[Tensor, Tensor]:
    """VP identity ``alpha^2 = sigmoid(2 lam)``, ``sigma^2 = sigmoid(-2 lam)``."""
    return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()


class _VP(Schedule):
    """Variance preserving: ``alpha^2 + sigma^2 = 1``; subclasses give ``log_alpha`` and its inverse."""

    def log_alpha(self, t: Any) -> Tensor:
        raise NotImplementedError

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha(self, t: Any) -> Tensor:
        return torch.exp(self.log_alpha(_as_tensor(t)))

    def sigma(self, t: Any) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(_as_tensor(t))))

    def lam(self, t: Any) -> Tensor:
        la = self.log_alpha(_as_tensor(t))
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_from_lambda(self, lam: Any) -> Tensor:
        lam = _as_tensor(lam)
        return self.t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * lam))

    def alpha_sigma_from_lambda(self, lam: Any) -> tuple[Tensor, Tensor]:
        return _vp_alpha_sigma_from_lambda(_as_tensor(lam))


def _betas_from_name(name: str, beta_start: float, beta_end: float, n: int) -> Tensor:
    """The beta tables diffusers names (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``)."""
    if name == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if name == "squaredcos_cap_v2":
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule {name!r}; expected 'linear', 'scaled_linear' or 'squaredcos_cap_v2'")


class VPDiscrete(_VP):
    """Discrete-time VP schedule (DDPM, LDM, Stable Diffusion), time = training index in ``[0, N-1]``.

    Give exactly one of ``alphas_cumprod``, ``betas``, or a named ``beta_schedule``
    (diffusers' names) with ``beta_start``, ``beta_end`` and ``num_train_timesteps``.
    """

    kind = "vp_discrete"

    def __init__(self, alphas_cumprod: Any = None, betas: Any = None, beta_schedule: str | None = None,
                 beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000):
        given = sum(v is not None for v in (alphas_cumprod, betas, beta_schedule))
        if given > 1:
            raise ValueError("give only one of alphas_cumprod, betas, beta_schedule")
        self._named = None
        if alphas_cumprod is None and betas is None:
            beta_schedule = beta_schedule or "linear"
            self._named = dict(beta_schedule=beta_schedule, beta_start=float(beta_start),
                               beta_end=float(beta_end), num_train_timesteps=int(num_train_timesteps))
            betas = _betas_from_name(beta_schedule, beta_start, beta_end, num_train_timesteps)
        if betas is not None:
            alphas_cumprod = torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0)
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().clone()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing values in (0, 1), at least two of them")
        self.alphas_cumprod = ac
        self._log_alpha = 0.5 * torch.log(ac)
        self._times = torch.arange(len(ac), dtype=torch.float64)
        self.t_min, self.t_max = 0.0, float(len(ac) - 1)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def log_alpha(self, t: Any) -> Tensor:
        t = _as_tensor(t)
        return interp(t, self._times, self._log_alpha)

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        return interp(log_alpha, self._log_alpha.flip(0), self._times.flip(0))

    def to_config(self) -> dict[str, Any]:
        if self._named is not None:
            return {"kind": self.kind, **self._named}
        return {"kind": self.kind, "alphas_cumprod": self.alphas_cumprod.tolist()}


class VPLinear(_VP):
    """Continuous VP-SDE with linear ``beta(t)`` on ``t in [t_min, 1]`` (DDPM++ / score-SDE)."""

    kind = "vp_linear"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        self.beta_0, self.beta_1, self.t_min, self.t_max = float(beta_0), float(beta_1), float(t_min), float(t_max)

    def log_alpha(self, t: Any) -> Tensor:
        t = _as_tensor(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # solve 0.25 d t^2 + 0.5 b0 t + la = 0 for t >= 0, written to avoid cancellation
        d, b0 = self.beta_1 - self.beta_0, self.beta_0
        c = -2.0 * log_alpha  # > 0
        return 2.0 * c / (b0 + torch.sqrt(b0**2 + 2.0 * d * c))

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "beta_0": self.beta_0, "beta_1": self.beta_1, "t_min": self.t_min, "t_max": self.t_max}


class VPCosine(_VP):
    """Continuous cosine VP schedule (Nichol & Dhariwal), ``t in [t_min, t_max]``, ``t_max < 1``."""

    kind = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s, self.t_min, self.t_max = float(s), float(t_min), float(t_max)
        self._log_alpha0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def log_alpha(self, t: Any) -> Tensor:
        t = _as_tensor(t)
        return torch.log(torch.cos((t + self.s) / (1 + self.s) * math.pi / 2)) - self._log_alpha0

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        return 2 * (1 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha + self._log_alpha0)) - self.s

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class EDM(Schedule):
    """EDM / variance exploding: ``alpha = 1``, ``sigma = t``, ``lam = -log t``."""

    kind = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("EDM schedule needs 0 < sigma_min < sigma_max")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def alpha(self, t: Any) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t: Any) -> Tensor:
        return _as_tensor(t) * 1.0

    def lam(self, t: Any) -> Tensor:
        return -torch.log(_as_tensor(t))

    def t_from_lambda(self, lam: Any) -> Tensor:
        return torch.exp(-_as_tensor(lam))

    def alpha_sigma_from_lambda(self, lam: Any) -> tuple[Tensor, Tensor]:
        sig = torch.exp(-_as_tensor(lam))
        return torch.ones_like(sig), sig

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "sigma_min": self.t_min, "sigma_max": self.t_max}


class Flow(Schedule):
    """Rectified flow / flow matching: ``alpha = 1 - t``, ``sigma = t``, ``t in [t_min, t_max]``.

    ``t_max`` must stay below 1: at ``t = 1`` the log-SNR is ``-inf`` and multistep
    coefficients (ratios of log-SNR steps) are undefined.
    """

    kind = "flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.999):
        if not 0 < t_min < t_max < 1:
            raise ValueError("Flow schedule needs 0 < t_min < t_max < 1")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def alpha(self, t: Any) -> Tensor:
        return 1 - _as_tensor(t)

    def sigma(self, t: Any) -> Tensor:
        return _as_tensor(t) * 1.0

    def t_from_lambda(self, lam: Any) -> Tensor:
        return torch.sigmoid(-_as_tensor(lam))

    def alpha_sigma_from_lambda(self, lam: Any) -> tuple[Tensor, Tensor]:
        t = torch.sigmoid(-_as_tensor(lam))
        return 1 - t, t

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "t_min": self.t_min, "t_max": self.t_max}


_KINDS: dict[str, type[Schedule]] = {c.kind: c for c in (VPDiscrete, VPLinear, VPCosine, EDM, Flow)}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Inverse of :meth:`Schedule.to_config`."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind](**cfg)


# Where an S4SScheduler's config keeps its solver (read here to tell a flow solver's config).
S4S_SOLVER_KEY = "_s4s_solver"


def is_flow_config(cfg: dict[str, Any]) -> bool:
    """A flow-matching config: a ``FlowMatch*`` class, ``use_flow_sigmas``, ``flow_prediction``, or an
    ``S4SScheduler`` config holding a flow solver."""
    stored = cfg.get(S4S_SOLVER_KEY)  # an S4SScheduler's config: its solver names the schedule
    stored_kind = (stored.get("schedule") or {}).get("kind") if isinstance(stored, dict) else None
    return ("FlowMatch" in str(cfg.get("_class_name", "")) or bool(cfg.get("use_flow_sigmas"))
            or cfg.get("prediction_type") == "flow_prediction" or stored_kind == "flow")


def schedule_from_diffusers(scheduler_or_config: Any) -> Schedule:
    """Build the schedule a diffusers scheduler (or its ``config``) describes.

    * ``FlowMatch*`` schedulers -> :class:`Flow`;
    * anything with ``beta_schedule`` / ``trained_betas`` (DDPM, DDIM, DPMSolver, UniPC, ...)
      -> :class:`VPDiscrete` with the same ``alphas_cumprod``.
    """
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    cfg = dict(config)
    name = cfg.get("_class_name") or type(scheduler_or_config).__name__
    if is_flow_config({"_class_name": name, **cfg}):
        return Flow()
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{name}: rescale_betas_zero_snr=True gives zero terminal SNR (infinite log-SNR at t = T), "
                         "which s4s's VP schedules do not represent")
    trained = cfg.get("trained_betas")
    if trained is not None:
        return VPDiscrete(betas=trained)
    if "beta_schedule" not in cfg:
        raise ValueError(f"cannot read a noise schedule from {name}: no beta_schedule/trained_betas in its config")
    return VPDiscrete(beta_schedule=cfg["beta_schedule"], beta_start=cfg.get("beta_start", 1e-4),
                      beta_end=cfg.get("beta_end", 0.02), num_train_timesteps=cfg.get("num_train_timesteps", 1000))


def same_process(a: Schedule, b: Schedule) -> bool:
    """Whether two schedules describe the same ``alpha_t``, ``sigma_t`` in the same time convention.

    Discrete VP schedules compare their ``alphas_cumprod`` (named betas and explicit tables of the
    same values agree); flow schedules always agree (``alpha = 1 - t``, ``sigma = t``, whatever
    ``[t_min, t_max]`` a grid may use); other kinds compare their configs.
    """
    if isinstance(a, VPDiscrete) and isinstance(b, VPDiscrete):
        return a.alphas_cumprod.shape == b.alphas_cumprod.shape and bool(
            torch.allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-9, atol=0))
    if isinstance(a, Flow) and isinstance(b, Flow):
        return True
    return a == b
