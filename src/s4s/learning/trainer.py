r"""The S4S / S4S-Alt training loop.

Objective (docs/design.md §5): ``E_i d(student(x_T'^i), x0_teacher^i)``, the student being the N-call
solver unrolled and differentiated end to end with the model frozen. With ``ball_radius = r > 0``
each training sample has its own input ``x_T'`` kept within RMS distance ``r * sigma_T`` of
``x_T`` (LD3's relaxed objective; ``r = 0`` is the plain one), updated by normalised gradient
steps and projection.

Methods:

* ``s4s``       - predictor coefficients (linear multistep), grid fixed; ``base="auto"`` picks among
  predictor-only solvers (DPM-Solver++(3M), UniP-bh1/bh2); a base with its own corrector
  (UniPC, when named) keeps it, recomputed from the grid but not learned;
* ``s4s-pc``    - predictor and corrector coefficients, grid fixed;
* ``s4s-alt``   - alternating rounds: coefficients (grid fixed), then grid + input times
  (coefficients fixed); ``s4s-alt-pc`` the same in predictor-corrector form;
* ``s4s-joint`` - coefficients, grid and input times together (to compare with alternating).

Adam with linear warm-up (or, with ``optimizer="lm"``, Levenberg-Marquardt steps on every learned group at
once: :mod:`s4s.learning.levenberg_marquardt`), mini-batches, validation every ``val_every`` steps on held-out noise
with the plain objective (``r = 0``, same distance; the RMSE is recorded too); the best-on-validation
solver is returned, and step 0 is the base
solver, so the result is never worse than the base on validation. The start is chosen by a probe:
the best-scored (base, grid) pair of each of the ``probe_starts`` best-scored grids learns
``probe_steps`` steps, and the one with the lower validation loss continues (docs/design.md §5.5).
With ``ema > 0`` the solver validated and kept is an exponential moving average of the parameters
(:class:`ParameterAverage`). A validation loss above ``backoff_ratio`` times the best so far sends the
run back to its best parameters with both learning rates halved (one default rate at every NFE;
:meth:`TrainState.back_off`). A checkpoint at every validation lets an interrupted run resume to the
same result. NaN/inf stops the run with a
clear message and keeps the best solver so far.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from s4s import distributed
from s4s.checks import first_line
from s4s.denoisers import clip_of
from s4s.teacher_distance import DataRange, excursion_sum, is_far_outside, squared_error_sum
from s4s.grids import GRIDS, make_grid
from s4s.io import atomic_write, atomic_write_text
from s4s.learning.config import LearnConfig
from s4s.learning.levenberg_marquardt import LevenbergMarquardt, learned_entries
from s4s.learning.objectives import make_distance, make_residual, range_aware, resolve_auto_loss
from s4s.learning.parametrization import GuidanceFamilyModule, LearnableSolver
from s4s.teacher import TeacherData
from s4s.plotting import line_plot
from s4s.schedules import Schedule
from s4s.solver import NonFiniteError, Solver, integrate

log = logging.getLogger(__name__)

__all__ = ["LearnResult", "Condition", "train_solver", "train_family", "choose_base", "probe_starts",
           "batched_validation", "save_run", "phase_at"]
# Bases "auto" chooses from. Linear-multistep methods start from predictor-only solvers (UniP, not
# UniPC): a base's own corrector, kept fixed under learned predictor rows, learned worse solvers on the
# bundled eps model (docs/ablations_mnist.md). The -pc methods learn a corrector and start from UniPC itself.
BASE_CANDIDATES = ("dpmpp_3m", "unip_bh1", "unip_bh2")
BASE_CANDIDATES_PC = ("dpmpp_3m", "unipc_bh1", "unipc_bh2")


@dataclass
class LearnResult:
    """What a learning run gives: the best-on-validation solver and how it got there.

    ``history`` holds one row per validation (step, training and validation loss, validation MSE, phase);
    ``base_losses`` the validation loss of every (base, grid) candidate; ``stopped`` why the run ended
    early (non-finite values), else None; ``seconds`` the learning time and ``teacher_seconds`` the
    teacher's (0 when its samples came from the cache or were given); ``config`` the resolved settings.
    """

    solver: Solver
    history: list[dict[str, Any]] = field(default_factory=list)
    base_losses: dict[str, float] = field(default_factory=dict)
    stopped: Optional[str] = None
    seconds: float = 0.0
    config: Optional[LearnConfig] = None
    teacher_seconds: float = 0.0
    seconds_per_step: Optional[float] = None  # mean wall time of one optimiser step (forward, backward, update)

    @property
    def base(self) -> str:
        """The base solver the run started from (chosen on validation when ``base="auto"``)."""
        return self.solver.metadata["base"]

    @property
    def grid(self) -> str:
        """The grid the run started from."""
        return self.solver.metadata["grid_init"]

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: method, NFE, base/grid, validation distances base -> kept, timings (a guidance
        family: also its check between the training scales)."""
        meta = self.solver.metadata
        family = {"between_scales": meta["between_scales"]} if "between_scales" in meta else {}
        return {"method": meta["method"], "nfe": self.solver.nfe, "base": self.base, "grid": self.grid,
                "loss": meta["loss"], "base_val_loss": meta["base_val_loss"], "val_loss": meta["val_loss"],
                "base_val_rmse": meta["base_val_rmse"], "val_rmse": meta["val_rmse"], "steps": meta["steps"],
                "lr_backoffs": meta.get("lr_backoffs", []), "probe_losses": meta.get("probe_losses", {}),
                "stopped": self.stopped, "seconds": self.seconds,
                "teacher_seconds": self.teacher_seconds, "seconds_per_step": self.seconds_per_step, **family}


@dataclass
class Validation:
    """A solver on held-out noise: the objective, the MSE to the teacher (the one definition of
    :mod:`s4s.teacher_distance`: clamped to the data range when there is one) and the range
    excursion (RMS distance of the samples to the data range)."""

    loss: float
    mse: float
    excursion: float = 0.0
    per_scale: dict[str, float] = field(default_factory=dict)


def batched_validation(solver_fn: Callable[[Tensor, Optional[Tensor]], Tensor], distance, data: TeacherData,
                       batch_size: int, data_range: DataRange = None) -> Validation:
    """Mean ``distance`` over ``data``, with the MSE to the teacher and the range excursion. Under
    torchrun the batches are split over the ranks; the per-batch sums are added in batch order on every
    rank, as one process adds them."""
    n = len(data)
    if distributed.active():  # at least one batch per rank
        batch_size = min(batch_size, -(-n // distributed.world_size()))
    starts = list(range(0, n, batch_size))

    def sums(k: int) -> tuple[float, float, float]:
        i = starts[k]
        with torch.no_grad():
            cond = None if data.cond is None else data.cond[i:i + batch_size]
            out, ref = solver_fn(data.x_T[i:i + batch_size], cond), data.x0[i:i + batch_size]
            return (float(distance(out, ref).sum()), squared_error_sum(out, ref, data_range),
                    excursion_sum(out, data_range))

    total, mse, outside = 0.0, 0.0, 0.0
    for batch_total, batch_mse, batch_outside in distributed.map_batches(sums, len(starts)):
        total += batch_total
        mse += batch_mse
        outside += batch_outside
    return Validation(total / n, mse / n, math.sqrt(outside / n))


@dataclass
class Condition:
    """One guidance scale a run learns at, with its teacher data (a single-scale run has one)."""

    guidance: Optional[float]
    train: TeacherData
    val: TeacherData


def choose_base(denoiser, schedule: Schedule, config: LearnConfig, val: Optional[TeacherData], distance,
                conditions: Optional[list[Condition]] = None) -> tuple[str, str, dict[str, float]]:
    """The (base, grid) pair with the lowest validation loss at this NFE (docs/design.md §5.5), with every
    pair's loss; over several ``conditions`` (guidance scales), the lowest mean. Each pair is scored on
    the first ``config.screen_samples`` validation noises (all of them when there are fewer): the scores
    only rank the starts the probe learns from (how many noises rank them as all do: docs/generalization.md)."""
    conditions = conditions or [Condition(config.guidance, val, val)]
    bases = (BASE_CANDIDATES_PC if config.corrector else BASE_CANDIDATES) if config.base == "auto" else (config.base,)
    grids = tuple(GRIDS) if config.grid == "auto" else (config.grid,)
    losses: dict[str, float] = {}
    for base in bases:
        for grid in grids:
            solver = _learnable(schedule, config, base, grid, learn_a=False).to_solver()
            total = 0.0
            for c in conditions:
                fn = lambda x, cond, w=c.guidance: solver.sample(denoiser, x, cond, w, check_finite=False)  # noqa: E731
                screen = c.val if len(c.val) <= config.screen_samples else c.val.split(config.screen_samples)[0]
                total += batched_validation(fn, distance, screen, 4 * (config.micro_batch or config.batch_size)).loss
            losses[f"{base}/{grid}"] = total / len(conditions)
    finite = {k: v for k, v in losses.items() if math.isfinite(v)}
    if not finite:
        raise NonFiniteError(f"every base solver gives NaN/inf on the validation noise ({', '.join(losses)}): "
                             "the model returns non-finite values")
    best = min(finite, key=finite.get)
    log.info("base candidates (validation %s): %s -> %s", config.loss,
             ", ".join(f"{k} {v:.4g}" for k, v in losses.items()), best)
    base, grid = best.split("/")
    return base, grid, losses


def scale_weights(base_per_scale: dict[str, float]) -> dict[str, float]:
    """Each guidance scale's loss weight, ``(mean base loss) / (its base loss)``: every scale counts by its
    relative improvement, and the weighted mean of the base losses is their plain mean."""
    mean = sum(base_per_scale.values()) / len(base_per_scale)
    return {k: mean / v for k, v in base_per_scale.items() if v > 0}


def probe_starts(losses: dict[str, float], k: int) -> list[str]:
    """The ``k`` starts (``"base/grid"``) a probe learns from, best first: the best-scored base of each of the
    ``k`` best-scored grids (the grid is what the scores before learning predict worst), then, where there
    are fewer grids than ``k``, the next best starts. Non-finite scores are never chosen."""
    ranked = sorted((key for key, v in losses.items() if math.isfinite(v)), key=losses.get)
    chosen: list[str] = []
    for key in ranked:
        if len(chosen) < k and key.split("/")[1] not in {c.split("/")[1] for c in chosen}:
            chosen.append(key)
    chosen += [key for key in ranked if key not in chosen][:k - len(chosen)]
    return chosen


def _learnable(schedule: Schedule, config: LearnConfig, base: str, grid: str,
               learn_a: Optional[bool] = None) -> LearnableSolver:
    """A learnable solver of ``config``'s NFE and form starting as ``base`` on the named ``grid``
    (``learn_a`` defaults to the config's)."""
    return LearnableSolver(schedule, base, make_grid(grid, schedule, config.nfe), corrector=config.corrector,
                           learn_a=config.learn_a if learn_a is None else learn_a)


def _lr_factor(phase_step: int, warmup: int, step: int = 0, steps: int = 1, decay: str = "constant") -> float:
    """Linear warm-up over a parameter group's first ``warmup`` updates (``phase_step``), times the decay
    at the run's global ``step`` of ``steps``: 1 (constant) or ``(1 + cos(pi * step / steps)) / 2`` (cosine)."""
    factor = min(1.0, (phase_step + 1) / max(warmup, 1))
    if decay == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    return factor


# Settings a resumed run may change: it can run longer than the interrupted one planned.
RESUMABLE_CHANGES = frozenset({"steps"})


def _data_digest(train: TeacherData, val: TeacherData) -> str:
    """A short digest of the teacher data (how it was made, its size, its first and last samples)."""
    h = hashlib.sha256(json.dumps(train.meta, sort_keys=True, default=str).encode())
    for part in (train, val):
        h.update(f"{len(part)}:{tuple(part.x_T.shape)}".encode())
        for t in (part.x_T[:1], part.x_T[-1:], part.x0[:1], part.x0[-1:]):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_checkpoint(path: Path, config: LearnConfig, data_digest: str) -> Optional[dict[str, Any]]:
    """The checkpoint at ``path`` (None if absent) if it was made with these settings and this teacher
    data; otherwise one ``ValueError`` listing what differs. Loaded without unpickling code."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: say so in one line
        raise ValueError(f"cannot read the checkpoint {path} ({type(err).__name__}: {first_line(err, 200)}); "
                         "delete it or run without --resume") from None
    # a setting newer than the checkpoint was, when it was written, at its default
    saved, now = {**asdict(LearnConfig()), **(state.get("config") or {})}, asdict(config)
    diff = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in sorted(now)
            if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if state.get("data") != data_digest:
        diff.append("teacher data (model, teacher, seeds or samples) differs")
    if diff:
        raise ValueError(f"the checkpoint {path} was made with other settings ({'; '.join(diff)}); resume with the "
                         "same settings, or start afresh without --resume")
    return state


# the parameter groups each phase updates (what a back-off with backoff_scope="moved" slows down)
PARAMETER_GROUPS = ("coefficients", "grid")
PHASE_GROUPS = {"coefficients": ("coefficients",), "grid": ("grid",), "joint": PARAMETER_GROUPS}


def phase_at(config: LearnConfig, step: int) -> str:
    """Which parameter groups step ``step`` updates: ``coefficients``, ``grid`` (grid and input times) or
    ``joint``. S4S-Alt alternates rounds of ``alt_round`` steps, starting with the coefficients."""
    if config.method.startswith("s4s-alt"):
        return "coefficients" if (step // config.alt_round) % 2 == 0 else "grid"
    return "joint" if config.method == "s4s-joint" else "coefficients"


def ball_step(x_in: Tensor, origin: Tensor, radius: float, lr: float, sigma_T: float) -> Tensor:
    r"""One relaxed-objective update of the training inputs (LD3): a gradient step normalised per sample,
    ``x' <- x' - lr sigma_T g / rms(g)``, then projection onto the ball ``||x' - x_T|| <= r sigma_T sqrt(d)``
    (RMS distance ``r sigma_T``). ``x_in`` carries the gradient; returns the new inputs."""
    n = x_in.shape[0]
    grad = x_in.grad.reshape(n, -1)
    new = x_in.detach().reshape(n, -1) - lr * sigma_T * grad / (grad.pow(2).mean(1, keepdim=True).sqrt() + 1e-12)
    flat_origin = origin.reshape(n, -1)
    delta = new - flat_origin
    limit = radius * sigma_T * math.sqrt(delta.shape[1])
    delta = delta * (limit / delta.norm(dim=1, keepdim=True).clamp(min=limit))
    return (flat_origin + delta).reshape(x_in.shape)


class ParameterAverage:
    r"""Exponential moving average of the learnable parameters (Polyak averaging), the solver that is validated
    and kept when ``config.ema = beta > 0``.

    After each optimiser step, for the parameters of the groups it updated,
    ``theta_bar <- beta theta_bar + (1 - beta) theta``; the parameters it did not update (fixed in this phase)
    are copied, so the averaged coefficients are always paired with the grid they were learned on. When an
    S4S-Alt round ends, the group it learned is set to its average (:meth:`commit`): the next round learns
    against the solver that was validated. Averaging the iterates of a constant-rate run removes most of
    their step-to-step jitter without slowing the descent, as a smaller rate would."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        group_of = {id(p): "coefficients" for p in model.coefficient_parameters()}
        group_of.update({id(p): "grid" for p in model.grid_parameters()})
        self.groups = {name: group_of.get(id(p)) for name, p in model.named_parameters()}
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, groups: Collection[str]) -> None:
        """Average the parameters of ``groups`` (the ones this step updated); copy the others."""
        for name, p in model.named_parameters():
            if self.groups[name] in groups:
                self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[name].copy_(p.detach())

    @torch.no_grad()
    def commit(self, model: nn.Module, groups: Collection[str]) -> None:
        """Set the parameters of ``groups`` to their averages (the end of the round that learned them)."""
        for name, p in model.named_parameters():
            if self.groups[name] in groups:
                p.copy_(self.shadow[name])

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average afresh at the model's parameters (after a back-off)."""
        for name, p in model.named_parameters():
            self.shadow[name].copy_(p.detach())

    @contextmanager
    def swapped_in(self, model: nn.Module):
        """The model holds the averaged parameters inside the block, its own again after it."""
        with torch.no_grad():
            raw = {name: p.detach().clone() for name, p in model.named_parameters()}
            for name, p in model.named_parameters():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(raw[name])


@dataclass
class TrainState:
    """Everything a run needs to continue: the learnable solver, both optimisers, the sampling generator,
    the relaxed inputs, counters, history and the best-on-validation parameters so far."""

    model: nn.Module   # a LearnableSolver, or a GuidanceFamilyModule of them
    coef_opt: torch.optim.Optimizer
    grid_opt: Optional[torch.optim.Optimizer]
    gen: torch.Generator
    x_prime: Optional[Tensor]
    base: str
    grid: str
    base_losses: dict[str, float]
    step: int = 0
    coef_steps: int = 0
    grid_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    best_mse: float = math.inf
    best_state: Optional[dict[str, Tensor]] = None
    guarded: int = 0   # validations whose lower loss the RMSE guard refused
    lr_scale: float = 1.0   # multiplies the coefficients' learning rate; halved when they diverged
    grid_lr_scale: float = 1.0   # multiplies the grid's learning rate; halved when it diverged
    backoffs: list[int] = field(default_factory=list)   # the steps at which the run backed off
    scale_weights: dict[str, float] = field(default_factory=dict)   # several scales: each one's loss weight
    probe_losses: dict[str, float] = field(default_factory=dict)   # "base/grid" -> best validation after the probe
    average: Optional[ParameterAverage] = None   # config.ema > 0: the averaged parameters, validated and kept
    damping: Optional[float] = None   # optimizer "lm": the Levenberg-Marquardt damping after the last step
    lm_model: Optional[tuple[Tensor, Tensor]] = None   # optimizer "lm" with lm_memory: the averaged model (A, c)

    @classmethod
    def start(cls, model: nn.Module, config: LearnConfig, base: str, grid: str, base_losses: dict[str, float],
              train: TeacherData) -> "TrainState":
        """A fresh state for ``model`` (a :class:`LearnableSolver` or a family of them)."""
        coef_opt = torch.optim.Adam(model.coefficient_parameters(), lr=config.coefficient_lr)
        grid_opt = torch.optim.Adam(model.grid_parameters(), lr=config.grid_lr) if config.learns_grid else None
        return cls(model, coef_opt, grid_opt, torch.Generator().manual_seed(config.seed),
                   train.x_T.clone() if config.ball_radius > 0 else None, base, grid, base_losses,
                   average=ParameterAverage(model, config.ema) if config.ema > 0 else None)

    def record(self, config: LearnConfig, data_digest: str) -> dict[str, Any]:
        """The checkpoint: plain tensors and containers only (loaded with ``weights_only=True``)."""
        return {"model": self.model.state_dict(), "coef_opt": self.coef_opt.state_dict(),
                "grid_opt": None if self.grid_opt is None else self.grid_opt.state_dict(), "gen": self.gen.get_state(),
                "x_prime": self.x_prime, "step": self.step, "history": self.history, "best_val": self.best_val,
                "best_state": self.best_state, "best_mse": self.best_mse, "guarded": self.guarded,
                "lr_scale": self.lr_scale, "grid_lr_scale": self.grid_lr_scale, "backoffs": self.backoffs,
                "coef_steps": self.coef_steps, "grid_steps": self.grid_steps, "scale_weights": self.scale_weights,
                "probe_losses": self.probe_losses, "damping": self.damping, "lm_model": self.lm_model,
                "average": None if self.average is None else self.average.shadow,
                "base": self.base, "grid": self.grid, "base_losses": self.base_losses, "config": asdict(config),
                "data": data_digest}

    def save(self, path: Path, config: LearnConfig, data_digest: str) -> None:
        """Write the checkpoint (rank 0 only: every rank holds the same state)."""
        if not distributed.is_main():
            return
        record = self.record(config, data_digest)
        atomic_write(path, lambda tmp: torch.save(record, tmp))

    @classmethod
    def resume(cls, record: dict[str, Any], model: nn.Module, config: LearnConfig, train: TeacherData) -> "TrainState":
        """The state saved in ``record`` (a checkpoint :func:`_load_checkpoint` accepted), into ``model``."""
        if not {"best_mse", "guarded", "lr_scale", "backoffs"} <= set(record):
            raise ValueError("the checkpoint was written by an older s4s (without the RMSE guard or the learning-rate "
                             "back-off); start the run afresh (without --resume)")
        state = cls.start(model, config, record["base"], record["grid"], record["base_losses"], train)
        state.model.load_state_dict(record["model"])
        state.coef_opt.load_state_dict(record["coef_opt"])
        if state.grid_opt is not None:
            state.grid_opt.load_state_dict(record["grid_opt"])
        state.gen.set_state(record["gen"])
        state.x_prime = record["x_prime"]
        for name in ("step", "history", "best_val", "best_state", "coef_steps", "grid_steps", "best_mse", "guarded",
                     "lr_scale", "backoffs"):
            setattr(state, name, record[name])
        state.grid_lr_scale = record.get("grid_lr_scale", record["lr_scale"])  # older runs halved both rates
        state.scale_weights = record.get("scale_weights", {})
        state.probe_losses = record.get("probe_losses", {})
        state.damping = record.get("damping")
        state.lm_model = None if record.get("lm_model") is None else tuple(record["lm_model"])
        if state.average is not None:
            state.average.shadow = {name: t.clone() for name, t in record["average"].items()}
        return state

    def keep_if_best(self, val: "Validation") -> bool:
        """Selection: remember the parameters when the validation loss is the lowest so far *and* the
        RMSE to the teacher is no worse than the base's (step 0's): a distance that rewards moving away
        from the teacher (a feature network that does not fit the data) cannot select such a solver.
        Returns False when a lower loss was refused by that guard."""
        base_mse = self.history[0]["val_mse"] if self.history else math.inf
        if val.loss < self.best_val:
            if val.mse > base_mse:
                return False
            self.best_val, self.best_mse = val.loss, val.mse
            self.best_state = copy.deepcopy(self.model.state_dict())
        return True

    def diverged(self, val: "Validation", config: LearnConfig) -> bool:
        """Whether the validation loss has climbed above ``config.backoff_ratio`` times the best kept one."""
        return math.isfinite(self.best_val) and val.loss > config.backoff_ratio * self.best_val

    def back_off(self, groups: Collection[str] = PARAMETER_GROUPS) -> None:
        """Learning-rate back-off: return to the best parameters so far, halve the learning rate of each of
        ``groups`` (``coefficients``, ``grid``; by default both), and start the optimisers afresh (their
        moments belong to the path that diverged; warm-up again).

        A step size is too large for a model or an NFE when the loss climbs well above its best; going
        back and halving finds a step size that works, so the default rate needs no NFE threshold."""
        self.model.load_state_dict(self.best_state)
        if self.average is not None:
            self.average.reset(self.model)
        if "coefficients" in groups:
            self.lr_scale *= 0.5
        if "grid" in groups:
            self.grid_lr_scale *= 0.5
        self.backoffs.append(self.step)
        for opt in (self.coef_opt, self.grid_opt):
            if opt is not None:
                opt.state.clear()
        self.coef_steps = self.grid_steps = 0

    def optimiser_step(self, config: LearnConfig, phase: str) -> None:
        """Adam on the groups ``phase`` updates (``PHASE_GROUPS``), each with its own warm-up (and the run's
        decay), times its back-off scale."""
        def rate(base_lr: float, group_steps: int, scale: float) -> float:
            return scale * base_lr * _lr_factor(group_steps, config.warmup, self.step, config.steps, config.lr_decay)

        groups = PHASE_GROUPS[phase]
        if "coefficients" in groups:
            for g in self.coef_opt.param_groups:
                g["lr"] = rate(config.coefficient_lr, self.coef_steps, self.lr_scale)
            self.coef_opt.step()
            self.coef_steps += 1
        if "grid" in groups and self.grid_opt is not None:
            for g in self.grid_opt.param_groups:
                g["lr"] = rate(config.grid_lr, self.grid_steps, self.grid_lr_scale)
            self.grid_opt.step()
            self.grid_steps += 1


def train_solver(denoiser, schedule: Schedule, train: TeacherData, val: TeacherData, config: LearnConfig,
                 run_dir: Optional[Path] = None, resume: bool = False, progress: bool = True,
                 feature_fn: Optional[Callable[[Tensor], Tensor]] = None,
                 metadata: Optional[dict[str, Any]] = None,
                 transform: Optional[Callable[[Tensor], Tensor]] = None,
                 device: Optional[torch.device | str] = None, data_range: DataRange = None) -> LearnResult:
    """Learn a solver (see module doc). ``run_dir`` holds ``checkpoint.pt`` for ``resume``.

    ``device``: where the model runs; the teacher data is moved there (default: where it is).
    ``data_range``: the range of the model's data, for the out-of-range fraction (default: the range
    the denoiser clamps D to, if any).
    The learnable tables stay on the CPU (a few hundred numbers); the stepping loop moves them.

    ``transform`` is applied to student and teacher outputs before the distance (e.g. a latent
    pipeline's VAE decoder, to measure the loss in pixel space). ``config.loss = "auto"`` is L2 here
    (a feature distance is chosen by :func:`s4s.learn`, which knows the model's data).
    """
    return _train(denoiser, schedule, [Condition(config.guidance, train, val)], config,
                  lambda base, grid: _learnable(schedule, config, base, grid), run_dir, resume, progress, feature_fn,
                  metadata, transform, device, data_range)


def train_family(denoiser, schedule: Schedule, conditions: list[Condition], anchors: list[float], config: LearnConfig,
                 run_dir: Optional[Path] = None, resume: bool = False, progress: bool = True,
                 feature_fn: Optional[Callable[[Tensor], Tensor]] = None,
                 metadata: Optional[dict[str, Any]] = None,
                 transform: Optional[Callable[[Tensor], Tensor]] = None,
                 device: Optional[torch.device | str] = None, data_range: DataRange = None) -> LearnResult:
    """Learn a :class:`~s4s.family.GuidanceFamily`: one learnable solver per anchor scale, all started from
    the same base (chosen on the mean validation loss over the scales), trained on mini-batches of one
    condition (guidance scale) at a time, drawn at random, the anchors one shared solver for the first
    ``config.shared_fraction`` of the steps; validation and selection on the mean over the scales
    (docs/design.md §5.9)."""
    def family(base: str, grid: str) -> GuidanceFamilyModule:
        return GuidanceFamilyModule(anchors, [_learnable(schedule, config, base, grid) for _ in anchors])

    if config.ball_radius > 0:
        raise ValueError("the relaxed objective (ball_radius > 0) is not available for guidance families")
    return _train(denoiser, schedule, conditions, config, family, run_dir, resume, progress, feature_fn, metadata,
                  transform, device, data_range)


def _train(denoiser, schedule: Schedule, conditions: list[Condition], config: LearnConfig,
           make_model: Callable[[str, str], nn.Module], run_dir: Optional[Path], resume: bool, progress: bool,
           feature_fn: Optional[Callable[[Tensor], Tensor]], metadata: Optional[dict[str, Any]],
           transform: Optional[Callable[[Tensor], Tensor]], device: Optional[torch.device | str],
           data_range: DataRange) -> LearnResult:
    """The loop behind :func:`train_solver` (one condition) and :func:`train_family` (several)."""
    data_range = range_or_clip(data_range, denoiser)
    config = replace(config, loss=resolve_auto_loss(config.loss, feature_fn), lr=config.coefficient_lr)
    config.validate()
    t_start = time.time()
    if device is not None:
        conditions = [Condition(c.guidance, c.train.to(device), c.val.to(device)) for c in conditions]
    single = len(conditions) == 1
    shared_steps = 0 if single else round(config.shared_fraction * config.steps)  # a family's steps with one solver
    train = conditions[0].train
    distance = make_distance(config.loss, feature_fn)
    aware_targets = _use_range_aware(config, data_range, transform, conditions)
    if aware_targets:
        distance = range_aware(distance, data_range)
    # Levenberg-Marquardt: the same distance as a residual vector, ||r||^2 = distance
    residual = (make_residual(config.loss, feature_fn, data_range if aware_targets else None)
                if config.uses_lm else None)
    if transform is not None:
        inner_distance = distance
        distance = lambda x, y: inner_distance(transform(x), transform(y))  # noqa: E731
        if residual is not None:
            inner_residual = residual
            residual = lambda x, y: inner_residual(transform(x), transform(y))  # noqa: E731
    ckpt_path = None if run_dir is None else Path(run_dir) / "checkpoint.pt"
    data_digest = (_data_digest(train, conditions[0].val) if single else hashlib.sha256(":".join(
        f"{c.guidance}={_data_digest(c.train, c.val)}" for c in conditions).encode()).hexdigest()[:16])
    record = _load_checkpoint(ckpt_path, config, data_digest) if resume and ckpt_path is not None else None
    if resume and record is None:
        log.warning("no checkpoint to resume from in %s; starting afresh", run_dir)
    sample_numel = math.prod(train.x_T.shape[1:])
    use_ckpt = config.checkpoint if config.checkpoint is not None else sample_numel >= 4096

    def key(c: Condition) -> str:
        return "none" if c.guidance is None else f"{c.guidance:g}"

    # Several scales: each scale's loss is weighted (scale_weights) so that the large errors at high guidance do
    # not drown the small ones at low guidance. One scale: weight 1.
    def validate_now(model: nn.Module, weights: dict[str, float]) -> Validation:
        """The current solver on held-out noise; over several scales, the mean of the objective weighted by
        ``weights`` (scale key -> weight, 1 where absent) and the mean MSE and range excursion."""
        parts = {}
        for c in conditions:
            solver = model.solver_at(c.guidance)
            parts[key(c)] = batched_validation(
                lambda x, cond: solver.sample(denoiser, x, cond, c.guidance, check_finite=False), distance, c.val,
                4 * (config.micro_batch or config.batch_size), data_range)
        n = len(conditions)
        return Validation(sum(weights.get(k, 1.0) * v.loss for k, v in parts.items()) / n,
                          sum(v.mse for v in parts.values()) / n, sum(v.excursion for v in parts.values()) / n,
                          {k: v.loss for k, v in parts.items()})

    def row(step: int, train_loss: Optional[float], val: Validation, phase: str) -> dict[str, Any]:
        out = {"step": step, "train_loss": train_loss, "val_loss": val.loss, "val_mse": val.mse,
               "val_range_excursion": val.excursion, "phase": phase}
        return out if single else {**out, "val_by_guidance": val.per_scale}

    def start_state(base: str, grid: str, base_losses: dict[str, float], shared_weights: Optional[dict[str, float]]
                    ) -> TrainState:
        """A fresh run from ``base`` on ``grid``, its step 0 validated. Several scales weight their losses by
        ``shared_weights`` when given (so that the starts a probe compares share one objective), else by this
        start's own base losses."""
        state = TrainState.start(make_model(base, grid), config, base, grid, base_losses, train)
        val = validate_now(state.model, shared_weights or {})
        if not single:  # its own weights weigh its step 0 as the plain mean
            state.scale_weights = dict(shared_weights) if shared_weights is not None else scale_weights(val.per_scale)
        state.history.append(row(0, None, val, "base"))
        state.keep_if_best(val)
        log.info("step 0 (base %s on %s grid): validation %s %.5g, RMSE to the teacher %.5f", base, grid, config.loss,
                 val.loss, math.sqrt(val.mse))
        return state

    def student(model: nn.Module, x: Tensor, cond: Optional[Tensor], guidance: Optional[float]) -> Tensor:
        t, s, tables = model.at(guidance)
        return integrate(lambda xx, ss: denoiser(xx, ss, cond, guidance), x, s, tables, checkpoint=use_ckpt)

    if distributed.world_size() > config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the number of processes "
                         f"({distributed.world_size()}): every rank needs a share of each batch")
    step_seconds, steps_timed = 0.0, 0
    micro = config.micro_batch  # halved when a pass runs out of GPU memory

    def validation_point(state: TrainState, train_loss: Optional[float], phase: str, moved_groups: set[str], bar,
                         save: bool, adam: bool = True) -> Optional[str]:
        """Validate, select (the RMSE guard), back off when Adam (``adam``) diverged, checkpoint; why to stop,
        else None."""
        model = state.model
        distributed.check_same_on_all_ranks(list(model.parameters()), "learned solver parameters")
        with state.average.swapped_in(model) if state.average is not None else nullcontext():
            val = validate_now(model, state.scale_weights)
            val_loss = val.loss
            if not math.isfinite(val_loss):
                stopped = (f"non-finite validation loss at step {state.step}; kept the best solver "
                           f"(validation {state.best_val:.5g})")
                log.error("%s", stopped)
                return stopped
            kept = state.keep_if_best(val)   # the averaged parameters, when averaging
        state.history.append(row(state.step, train_loss, val, phase))
        if not kept:
            state.guarded += 1
            log.info("step %d: validation %s %.5g is the lowest so far, but its RMSE to the teacher %.5f is "
                     "worse than the base's %.5f: not kept", state.step, config.loss, val_loss,
                     math.sqrt(val.mse), math.sqrt(state.history[0]["val_mse"]))
        if adam and state.diverged(val, config):
            state.back_off(PARAMETER_GROUPS if config.backoff_scope == "all" else moved_groups)
            log.info("step %d: validation %s %.5g is above %g x the best (%.5g): back to the best solver, "
                     "learning rates x %g (coefficients), x %g (grid)", state.step, config.loss, val_loss,
                     config.backoff_ratio, state.best_val, state.lr_scale, state.grid_lr_scale)
        bar.set_postfix(val=f"{val_loss:.4g}", best=f"{state.best_val:.4g}",
                        val_rmse=f"{math.sqrt(val.mse):.4f}")
        if save and ckpt_path is not None:
            state.save(ckpt_path, config, data_digest)
        return None

    def advance(state: TrainState, until: int, bar, save: bool) -> Optional[str]:
        """Learning steps on ``state`` up to step ``until`` (validating every ``val_every`` steps and at
        ``until``; a checkpoint at each validation when ``save``). Returns why it stopped early, else None."""
        nonlocal micro, step_seconds, steps_timed
        model = state.model
        sigma_T = float(schedule.sigma(torch.tensor(float(model.t_ends[0]), dtype=torch.float64)))
        running, count = 0.0, 0
        moved_groups: set[str] = set()   # the parameter groups updated since the last validation
        while state.step < until:
            t_step = time.time()
            phase = phase_at(config, state.step)
            previous = phase_at(config, state.step - 1) if state.step > 0 else phase
            if state.average is not None and previous != phase:  # a round ended: its group becomes its average
                state.average.commit(model, PHASE_GROUPS[previous])
            # one guidance scale per mini-batch, drawn at random (a single-scale run draws nothing extra)
            condition = conditions[0] if single else conditions[int(torch.randint(0, len(conditions), (1,),
                                                                                     generator=state.gen))]
            train, guidance = condition.train, condition.guidance
            idx = torch.randint(0, len(train), (config.batch_size,), generator=state.gen).to(train.x_T.device)
            if distributed.active():  # every rank drew the same idx; each takes its share of the batch
                idx_all, idx = idx, idx[distributed.shard_slice(config.batch_size)]
            cond = None if train.cond is None else train.cond[idx]
            x_in = train.x_T[idx] if state.x_prime is None else state.x_prime[idx].clone().requires_grad_(True)
            state.coef_opt.zero_grad(set_to_none=True)
            if state.grid_opt is not None:
                state.grid_opt.zero_grad(set_to_none=True)
            # this process's share in micro-batches: each backward adds its part of the global batch mean,
            # sum(distance) / batch_size, so the gradient is the whole batch's whatever the micro-batch
            scale = state.scale_weights.get(key(condition), 1.0) if not single else 1.0
            while True:
                try:
                    loss_value = 0.0
                    for part in _micro_slices(len(idx), micro):
                        c_part = None if cond is None else cond[part]
                        per_sample = distance(student(model, x_in[part], c_part, guidance), train.x0[idx[part]])
                        loss = per_sample.sum() * (scale / config.batch_size)
                        loss.backward()
                        loss_value += loss.item()
                    break
                except torch.cuda.OutOfMemoryError:  # the same step in smaller passes (gradients are summed anyway)
                    micro = _smaller_micro_batch(micro, len(idx), config)
                    _reset_grads(model, x_in)
            if distributed.active():
                loss_value = distributed.all_reduce_sum([loss_value])[0]
            if not math.isfinite(loss_value):
                stopped = (f"non-finite loss at step {state.step} ({loss_value}); kept the best solver (validation "
                           f"{state.best_val:.5g})")
                log.error("%s", stopped)
                return stopped
            distributed.all_reduce_([p.grad for p in model.parameters()])  # the same step on every rank
            state.optimiser_step(config, phase)
            if not single and state.step < shared_steps:  # a family's anchors are one solver for now (§5.9)
                model.share_()
            if state.average is not None:
                state.average.update(model, PHASE_GROUPS[phase])
            moved_groups.update(PHASE_GROUPS[phase])
            if state.x_prime is not None:
                with torch.no_grad():
                    moved = ball_step(x_in, train.x_T[idx], config.ball_radius, config.ball_lr, sigma_T)
                    if distributed.active():  # every rank needs every moved input of the batch
                        rows = torch.zeros((config.batch_size, *moved.shape[1:]), dtype=moved.dtype,
                                           device=moved.device)
                        rows[distributed.shard_slice(config.batch_size)] = moved
                        distributed.all_reduce_([rows])
                        idx, moved = idx_all, rows
                    state.x_prime[idx] = moved
            running += loss_value
            count += 1
            state.step += 1
            step_seconds, steps_timed = step_seconds + time.time() - t_step, steps_timed + 1
            bar.update(1)
            if state.step % config.val_every == 0 or state.step == until:
                stopped = validation_point(state, running / max(count, 1), phase, moved_groups, bar, save)
                if stopped is not None:
                    return stopped
                running, count = 0.0, 0
                moved_groups = set()
        return None

    def residuals_of(model: nn.Module, data: TeacherData, guidance: Optional[float], gen: torch.Generator
                     ) -> tuple[Callable[[slice], Tensor], int]:
        """A mini-batch drawn from ``data``: this process's share of it as ``part -> residual rows``, and the
        share's size."""
        idx = torch.randint(0, len(data), (config.batch_size,), generator=gen).to(data.x_T.device)
        if distributed.active():  # every rank drew the same idx; each takes its share of the batch
            idx = idx[distributed.shard_slice(config.batch_size)]
        cond = None if data.cond is None else data.cond[idx]
        x_in, target = data.x_T[idx], data.x0[idx]

        def residuals(part: slice) -> Tensor:
            return residual(student(model, x_in[part], None if cond is None else cond[part], guidance), target[part])

        return residuals, len(idx)

    def advance_lm(state: TrainState, until: int, bar, save: bool) -> Optional[str]:
        """Levenberg-Marquardt steps on ``state`` up to step ``until`` (one mini-batch each, every learned
        group at once; validating every ``val_every`` steps and at ``until``). Returns why it stopped early."""
        nonlocal micro, step_seconds, steps_timed
        model = state.model
        params = model.coefficient_parameters() + (model.grid_parameters() if config.learns_grid else [])
        lm = LevenbergMarquardt(learned_entries(model, params, [c.guidance for c in conditions]),
                                state.damping if state.damping is not None else config.damping, config.fd_step,
                                config.lm_memory, state.lm_model)
        condition = conditions[0]
        data, guidance = condition.train, condition.guidance
        while state.step < until:
            t_step = time.time()
            # the step's mini-batch and the independent one that judges it (LevenbergMarquardt.step)
            (step_fn, share), (check_fn, _) = (residuals_of(model, data, guidance, state.gen) for _ in range(2))
            damping, averaged = lm.damping, lm.model
            while True:
                try:
                    with torch.no_grad():
                        parts = _micro_slices(share, micro)
                        before, after = lm.step(step_fn, parts, config.batch_size, check_fn, parts)
                    break
                except torch.cuda.OutOfMemoryError:  # the same step in smaller passes, from the same state
                    lm.damping, lm.model = damping, averaged
                    micro = _smaller_micro_batch(micro, share, config)
            state.damping, state.lm_model = lm.damping, lm.model
            if not math.isfinite(before):
                stopped = (f"non-finite loss at step {state.step} ({before}); kept the best solver (validation "
                           f"{state.best_val:.5g})")
                log.error("%s", stopped)
                return stopped
            state.step += 1
            step_seconds, steps_timed = step_seconds + time.time() - t_step, steps_timed + 1
            bar.update(1)
            if state.step % config.val_every == 0 or state.step == until:
                stopped = validation_point(state, after, "joint", set(PARAMETER_GROUPS), bar, save, adam=False)
                if stopped is not None:
                    return stopped
                last = state.history[-1]
                log.info("step %d: check batch %s %.5g -> %.5g, validation %.5g (RMSE to the teacher %.5f), damping "
                         "%.3g", state.step, config.loss, before, after, last["val_loss"], math.sqrt(last["val_mse"]),
                         lm.damping)
        return None

    def advance_lm_then_adam(state: TrainState, until: int, bar, save: bool) -> Optional[str]:
        """``config.lm_steps`` Levenberg-Marquardt steps, then Adam up to step ``until`` (Adam's moments and
        warm-up start at its first step)."""
        if state.step < config.lm_steps:
            stopped = advance_lm(state, min(until, config.lm_steps), bar, save)
            if stopped is not None or state.step >= until:
                return stopped
        return advance(state, until, bar, save)

    run_steps = (advance_lm if config.optimizer == "lm" else
                 advance_lm_then_adam if config.lm_steps > 0 else advance)
    stopped = None
    show = progress and distributed.is_main()
    if record is not None:
        state = TrainState.resume(record, make_model(record["base"], record["grid"]), config, train)
        if not single and not state.scale_weights:  # older checkpoints: the weights of the run's own base
            state.scale_weights = scale_weights(state.history[0]["val_by_guidance"])
        log.info("resumed at step %d (best validation %.5g)", state.step, state.best_val)
        bar = tqdm(total=config.steps, initial=state.step, desc=f"learn {config.method} nfe={config.nfe}",
                   disable=not show)
    else:
        base_losses = choose_base(denoiser, schedule, config, None, distance, conditions)[2]
        starts = probe_starts(base_losses, config.probe_starts)
        probe_steps = min(config.probe_steps, config.steps) if len(starts) > 1 else 0
        bar = tqdm(total=config.steps + (len(starts) - 1) * probe_steps, desc=f"learn {config.method} nfe={config.nfe}",
                   disable=not show)
        states, probe = [], {}
        for start in starts:
            base, grid = start.split("/")
            state = start_state(base, grid, base_losses, states[0].scale_weights if states else None)
            why = run_steps(state, probe_steps, bar, save=False) if probe_steps else None
            states.append(state)
            probe[start] = state.best_val if why is None else math.inf
        if probe_steps:  # the lowest best validation; the first start when every one stopped
            state = min(states, key=lambda s: probe[f"{s.base}/{s.grid}"])
            log.info("probe (%d steps from each start, best validation %s): %s -> %s/%s", probe_steps, config.loss,
                     ", ".join(f"{k} {v:.5g}" for k, v in probe.items()), state.base, state.grid)
            if not any(math.isfinite(v) for v in probe.values()):
                stopped = f"every start of the probe stopped on non-finite values ({', '.join(probe)})"
        # JSON-able: a start that stopped on non-finite values is recorded as None
        state.probe_losses = {k: (v if math.isfinite(v) else None) for k, v in probe.items()} if probe_steps else {}
        del states  # the other starts (their relaxed inputs can be large)
        if stopped is None and ckpt_path is not None and probe_steps:
            state.save(ckpt_path, config, data_digest)
    if stopped is None:
        stopped = run_steps(state, config.steps, bar, save=True)
    bar.close()
    if steps_timed:
        log.info("%.3g s per learning step (batch %d, NFE %d)%s", step_seconds / steps_timed, config.batch_size,
                 config.nfe, _gpu_peak(device))
    result = _result(state, config, {**(metadata or {}), "range_aware": aware_targets}, time.time() - t_start,
                     stopped, data_range)
    result.seconds_per_step = step_seconds / steps_timed if steps_timed else None
    return result


# range_aware=None ("auto") uses range-aware targets when the teacher's samples lie outside the data range by an RMS
# distance above this fraction of the range's width (the measurements behind it: docs/generalization.md)
AUTO_RANGE_AWARE_EXCURSION = 0.025


def range_or_clip(data_range: DataRange, denoiser) -> DataRange:
    """The data range learning uses: the one given, else the range the denoiser clamps D to (None: neither)."""
    return data_range if data_range is not None else clip_of(denoiser)


def check_range_aware(config: LearnConfig, data_range: DataRange, transform) -> None:
    """One ``ValueError`` when ``range_aware=True`` is asked for where it cannot apply: samples without a data
    range (latents) or a loss through a transform (decoded images). :func:`s4s.learn` calls it before the
    teacher runs; :func:`_use_range_aware` again for direct callers of :func:`train_solver`."""
    if config.range_aware and (data_range is None or transform is not None):
        raise ValueError("range-aware targets need samples with a data range (a pixel model); this model's "
                         f"{'loss compares decoded images' if transform is not None else 'samples have no range'}: "
                         "leave range_aware unset")


def _use_range_aware(config: LearnConfig, data_range: DataRange, transform, conditions: list[Condition]) -> bool:
    """Whether the distance compares with range-aware targets (:func:`s4s.learning.objectives.range_aware`): never
    without a data range or through a transform (latents); ``config.range_aware`` when set; for ``None``, when
    the teacher's own samples leave the range (``AUTO_RANGE_AWARE_EXCURSION``). Logs the choice and why."""
    check_range_aware(config, data_range, transform)
    if data_range is None or transform is not None:
        return False
    lo, hi = data_range
    n = sum(c.train.x0.shape[0] for c in conditions)
    excursion = math.sqrt(sum(excursion_sum(c.train.x0, data_range) for c in conditions) / n)
    if config.range_aware is None:
        use = excursion > AUTO_RANGE_AWARE_EXCURSION * (hi - lo)
        why = (f"the teacher's samples lie outside the data range {list(data_range)} by RMS {excursion:.4f}, "
               f"{'above' if use else 'not above'} {AUTO_RANGE_AWARE_EXCURSION:g} x its width")
    else:
        use, why = config.range_aware, f"as set; teacher's RMS distance to the data range {excursion:.4f}"
    log.info("%s targets (%s)", "range-aware" if use else "raw", why)
    return use


def _micro_slices(n: int, micro_batch: Optional[int]) -> list[slice]:
    """``n`` samples as consecutive slices of at most ``micro_batch`` (one slice when None)."""
    size = n if micro_batch is None else max(1, int(micro_batch))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _smaller_micro_batch(micro: Optional[int], share: int, config: LearnConfig) -> int:
    """Half the samples per pass after running out of GPU memory; at one sample a pass, one clear error."""
    current = share if micro is None else min(micro, share)
    if current <= 1:
        raise RuntimeError(f"out of GPU memory learning one sample at a time (NFE {config.nfe}): use a smaller "
                           "model precision (--dtype bf16), a smaller resolution, or a GPU with more memory")
    smaller = (current + 1) // 2
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.warning("out of GPU memory at %d samples per forward/backward pass; continuing with %d (--micro-batch: the "
                "step is the same)", current, smaller)
    return smaller


def _reset_grads(model: nn.Module, x_in: Tensor) -> None:
    """Drop the gradients of a step that ran out of memory part-way, before it is redone."""
    for p in model.parameters():
        p.grad = None
    if x_in.requires_grad:
        x_in.grad = None


def _gpu_peak(device: Optional[torch.device | str]) -> str:
    """``", peak GPU memory N MB"`` on a CUDA device, else empty."""
    if device is None or torch.device(device).type != "cuda":
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"


def _result(state: TrainState, config: LearnConfig, metadata: Optional[dict[str, Any]], seconds: float,
            stopped: Optional[str], data_range: DataRange) -> LearnResult:
    """The best-on-validation solver, with what it was learned from and how it scored, as a result."""
    state.model.load_state_dict(state.best_state)
    history = state.history
    kept = next(h for h in history if h["val_loss"] == state.best_val and h["val_mse"] == state.best_mse)
    meta = {"method": config.method, "base": state.base, "grid_init": state.grid, "nfe": config.nfe, "loss": config.loss,
            "guidance": config.guidance, "source": config.method, "optimizer": config.optimizer,
            "lm_steps": config.lm_steps, **(metadata or {}),
            "val_loss": state.best_val, "base_val_loss": history[0]["val_loss"], "val_rmse": math.sqrt(state.best_mse),
            "base_val_rmse": math.sqrt(history[0]["val_mse"]), "steps": state.step, "kept_step": kept["step"],
            "rmse_guard_refusals": state.guarded, "lr_backoffs": list(state.backoffs),
            "probe_losses": dict(state.probe_losses),
            "data_range": None if data_range is None else list(data_range),
            "val_range_excursion": kept["val_range_excursion"],
            "base_val_range_excursion": history[0]["val_range_excursion"]}
    if data_range is not None and is_far_outside(kept["val_range_excursion"], history[0]["val_range_excursion"]):
        log.warning("the learned solver's samples leave the data range %s far more than the base's (RMS distance to "
                    "the range %.4f against %.4f): what a pipeline shows is clamped, but check the samples before use",
                    list(data_range), kept["val_range_excursion"], history[0]["val_range_excursion"])
    return LearnResult(state.model.to_solver(meta), history, state.base_losses, stopped, seconds, config)


def save_run(result: LearnResult, run_dir: Path) -> None:
    """Resolved config, history (JSON) and training/validation curves (PNG) in ``run_dir``."""
    config = result.config
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(asdict(config), indent=1) + "\n")
    atomic_write_text(run_dir / "history.json", json.dumps({"history": result.history, "base_losses": result.base_losses,
                                                            "stopped": result.stopped, "seconds": result.seconds,
                                                            "teacher_seconds": result.teacher_seconds},
                                                           indent=1) + "\n")
    train_points = [(h["step"], h["train_loss"]) for h in result.history if h["train_loss"] is not None]
    line_plot({f"train ({config.loss})": train_points,
               f"validation ({config.loss})": [(h["step"], h["val_loss"]) for h in result.history]},
              run_dir / "curves.png", "step", "loss", f"{config.method}, NFE {config.nfe}")
