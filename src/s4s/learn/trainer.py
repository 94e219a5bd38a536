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

Adam with linear warm-up, mini-batches, validation every ``val_every`` steps on held-out noise
with the plain objective (``r = 0``, same distance; the RMSE is recorded too); the best-on-validation
solver is returned, and step 0 is the base
solver, so the result is never worse than the base on validation. A checkpoint at every
validation lets an interrupted run resume to the same result. NaN/inf stops the run with a
clear message and keeps the best solver so far.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from s4s.baselines import BASELINES
from s4s.checks import first_line
from s4s.grids import GRIDS, make_grid
from s4s.io import atomic_write, atomic_write_text
from s4s.learn.objectives import make_distance
from s4s.learn.parametrization import LearnableSolver
from s4s.teacher import TeacherData
from s4s.plotting import line_plot
from s4s.schedules import Schedule
from s4s.solver import NonFiniteError, Solver, integrate

log = logging.getLogger(__name__)

__all__ = ["LearnConfig", "LearnResult", "METHODS", "LR_DECAYS", "train_solver", "choose_base", "default_lr"]

LR_DECAYS = ("constant", "cosine")
METHODS = ("s4s", "s4s-pc", "s4s-alt", "s4s-alt-pc", "s4s-joint")
# Bases "auto" chooses from. Linear-multistep methods start from predictor-only solvers (UniP, not
# UniPC): on the stage-2 bundled eps MNIST UNet, S4S-Alt learned from UniPC with its corrector kept fixed
# scored FD 39.35 (NFE 5) and 35.43 (NFE 6) against 33.04 and 28.16 from UniP (docs/bench_mnist_stage2).
# The -pc methods learn a corrector and start from UniPC itself.
BASE_CANDIDATES = ("dpmpp_3m", "unip_bh1", "unip_bh2")
BASE_CANDIDATES_PC = ("dpmpp_3m", "unipc_bh1", "unipc_bh2")


def default_lr(nfe: int) -> float:
    """Adam learning rate of the coefficient residuals when none is given: 1e-2 up to NFE 6, 2e-3 above.

    Measured on the stage-2 bundled eps MNIST UNet (S4S, default preset, docs/bench_mnist_stage2): at
    NFE 3-6, 1e-2 learns steadily; at NFE 8 it made the validation loss jump by up to 7x between
    checks and the kept solver scored FD 38.97 against 32.93 with 2e-3 (base 32.23); at NFE 10 it
    never beat the base on validation.
    Why larger NFE needs smaller steps was not isolated (more coefficients act on each output is one
    candidate); NFE 7 and 9 were not measured.
    """
    return 1e-2 if nfe <= 6 else 2e-3


@dataclass
class LearnConfig:
    """Everything that determines a learning run (saved beside the result)."""

    nfe: int
    method: str = "s4s-alt-pc"
    base: str = "auto"            # a BASELINES name, or "auto": best on validation of BASE_CANDIDATES(_PC)
    grid: str = "auto"            # a GRIDS name, or "auto": best grid for the base on validation
    loss: str = "l2"
    steps: int = 200
    batch_size: int = 32
    lr: Optional[float] = None    # coefficient residuals; None: default_lr(nfe)
    grid_lr: float = 2e-2         # grid logits and input-time shifts
    warmup: int = 10
    lr_decay: str = "constant"    # or "cosine": after warm-up, lr * (1 + cos(pi * step / steps)) / 2
    alt_round: int = 25           # steps per round for S4S-Alt
    val_every: int = 25
    ball_radius: float = 0.0
    ball_lr: float = 0.05
    learn_a: bool = False
    guidance: Optional[float] = None
    seed: int = 0
    checkpoint: Optional[bool] = None   # per-call activation checkpointing; None: on for samples >= 4096 values

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = default_lr(self.nfe)

    def validate(self) -> None:
        if self.nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {self.nfe}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.base != "auto" and self.base not in BASELINES:
            raise ValueError(f"unknown base {self.base!r}; choose 'auto' or one of {sorted(BASELINES)}")
        if self.grid != "auto" and self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; choose 'auto' or one of {sorted(GRIDS)}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; choose from {list(LR_DECAYS)}")
        for name in ("steps", "batch_size", "val_every", "alt_round"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("lr", "grid_lr", "ball_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.ball_radius) and self.ball_radius >= 0):
            raise ValueError(f"ball_radius must be a finite number >= 0, got {self.ball_radius}")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {self.guidance}")

    @property
    def corrector(self) -> bool:
        return self.method.endswith("-pc")

    @property
    def learns_grid(self) -> bool:
        return self.method.startswith("s4s-alt") or self.method == "s4s-joint"


@dataclass
class LearnResult:
    solver: Solver
    history: list[dict[str, Any]] = field(default_factory=list)
    base_losses: dict[str, float] = field(default_factory=dict)
    stopped: Optional[str] = None
    seconds: float = 0.0


def _batched_loss(solver_fn: Callable[[Tensor, Optional[Tensor]], Tensor], distance, data: TeacherData,
                  batch_size: int, also_mse: bool = False, clip: Optional[tuple[float, float]] = None):
    """Mean ``distance`` over ``data`` (and the mean squared error too with ``also_mse``, of the outputs
    clamped to ``clip`` when given: the model's data range, i.e. the images a user gets)."""
    total, mse, n = 0.0, 0.0, len(data)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            cond = None if data.cond is None else data.cond[i:i + batch_size]
            out = solver_fn(data.x_T[i:i + batch_size], cond)
            total += float(distance(out, data.x0[i:i + batch_size]).sum())
            shown = out if clip is None else out.clamp(*clip)
            mse += float((shown - data.x0[i:i + batch_size]).pow(2).reshape(out.shape[0], -1).mean(1).sum())
    return (total / n, mse / n) if also_mse else total / n


def choose_base(denoiser, schedule: Schedule, config: LearnConfig, val: TeacherData, distance) -> tuple[str, str, dict[str, float]]:
    """The (base, grid) pair with the lowest validation loss at this NFE (docs/design.md §5.5)."""
    bases = (BASE_CANDIDATES_PC if config.corrector else BASE_CANDIDATES) if config.base == "auto" else (config.base,)
    grids = tuple(GRIDS) if config.grid == "auto" else (config.grid,)
    losses: dict[str, float] = {}
    for base in bases:
        for grid in grids:
            model = LearnableSolver(schedule, base, make_grid(grid, schedule, config.nfe), corrector=config.corrector)
            solver = model.to_solver()
            fn = lambda x, c: solver.sample(denoiser, x, c, config.guidance, check_finite=False)  # noqa: E731
            losses[f"{base}/{grid}"] = _batched_loss(fn, distance, val, 4 * config.batch_size)
    finite = {k: v for k, v in losses.items() if math.isfinite(v)}
    if not finite:
        raise NonFiniteError(f"every base solver gives NaN/inf on the validation noise ({', '.join(losses)}): "
                             "the model returns non-finite values")
    best = min(finite, key=finite.get)
    log.info("base candidates (validation %s): %s -> %s", config.loss,
             ", ".join(f"{k} {v:.4g}" for k, v in losses.items()), best)
    base, grid = best.split("/")
    return base, grid, losses


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
    saved, now = state.get("config") or {}, asdict(config)
    diff = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in sorted(now)
            if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if state.get("data") != data_digest:
        diff.append("teacher data (model, teacher, seeds or samples) differs")
    if diff:
        raise ValueError(f"the checkpoint {path} was made with other settings ({'; '.join(diff)}); resume with the "
                         "same settings, or start afresh without --resume")
    return state


def train_solver(denoiser, schedule: Schedule, train: TeacherData, val: TeacherData, config: LearnConfig,
                 run_dir: Optional[Path] = None, resume: bool = False, progress: bool = True,
                 feature_fn: Optional[Callable[[Tensor], Tensor]] = None,
                 metadata: Optional[dict[str, Any]] = None,
                 transform: Optional[Callable[[Tensor], Tensor]] = None,
                 device: Optional[torch.device | str] = None) -> LearnResult:
    """Learn a solver (see module doc). ``run_dir`` holds ``checkpoint.pt`` for ``resume``.

    ``device``: where the model runs; the teacher data is moved there (default: where it is).
    The learnable tables stay on the CPU (a few hundred numbers); the stepping loop moves them.

    ``transform`` is applied to student and teacher outputs before the distance (e.g. a latent
    pipeline's VAE decoder, to measure the loss in pixel space).
    """
    config.validate()
    t_start = time.time()
    if device is not None:
        train, val = train.to(device), val.to(device)
    distance = make_distance(config.loss, feature_fn)
    if transform is not None:
        inner_distance = distance
        distance = lambda x, y: inner_distance(transform(x), transform(y))  # noqa: E731
    ckpt_path = None if run_dir is None else Path(run_dir) / "checkpoint.pt"
    data_digest = _data_digest(train, val)
    state = _load_checkpoint(ckpt_path, config, data_digest) if resume and ckpt_path is not None else None
    if resume and state is None:
        log.warning("no checkpoint to resume from in %s; starting afresh", run_dir)
    if state is not None:
        base, grid, base_losses = state["base"], state["grid"], state["base_losses"]
    else:
        base, grid, base_losses = choose_base(denoiser, schedule, config, val, distance)
    model = LearnableSolver(schedule, base, make_grid(grid, schedule, config.nfe), corrector=config.corrector,
                            learn_a=config.learn_a)
    coef_opt = torch.optim.Adam(model.coefficient_parameters(), lr=config.lr)
    grid_opt = torch.optim.Adam(model.grid_parameters(), lr=config.grid_lr) if config.learns_grid else None
    gen = torch.Generator().manual_seed(config.seed)
    x_prime = train.x_T.clone() if config.ball_radius > 0 else None
    sample_numel = math.prod(train.x_T.shape[1:])
    use_ckpt = config.checkpoint if config.checkpoint is not None else sample_numel >= 4096
    sigma_T = float(schedule.sigma(torch.tensor(float(model.t_ends[0]), dtype=torch.float64)))
    meta = {"method": config.method, "base": base, "grid_init": grid, "nfe": config.nfe, "loss": config.loss,
            "guidance": config.guidance, "source": config.method, **(metadata or {})}

    def student(x: Tensor, cond: Optional[Tensor]) -> Tensor:
        t, s, tables = model()
        return integrate(lambda xx, ss: denoiser(xx, ss, cond, config.guidance), x, s, tables, checkpoint=use_ckpt)

    def validate_now() -> tuple[float, float]:
        """(validation objective, validation MSE) of the current solver on held-out noise."""
        solver = model.to_solver()
        return _batched_loss(lambda x, c: solver.sample(denoiser, x, c, config.guidance, check_finite=False), distance, val,
                             4 * config.batch_size, also_mse=True, clip=getattr(denoiser, "clip_range", None))

    step, history = 0, []
    best_val, best_state = math.inf, None
    coef_steps = grid_steps = 0
    if state is not None:
        model.load_state_dict(state["model"])
        coef_opt.load_state_dict(state["coef_opt"])
        if grid_opt is not None:
            grid_opt.load_state_dict(state["grid_opt"])
        gen.set_state(state["gen"])
        x_prime = state["x_prime"]
        step, history, best_val, best_state = state["step"], state["history"], state["best_val"], state["best_state"]
        coef_steps, grid_steps = state["coef_steps"], state["grid_steps"]
        log.info("resumed at step %d (best validation %.5g)", step, best_val)
    else:
        best_val, val_mse = validate_now()
        best_state = copy.deepcopy(model.state_dict())
        history.append({"step": 0, "train_loss": None, "val_loss": best_val, "val_mse": val_mse, "phase": "base"})
        log.info("step 0 (base %s on %s grid): validation %s %.5g, RMSE %.5f", base, grid, config.loss, best_val,
                 math.sqrt(val_mse))

    stopped = None
    running, count = 0.0, 0
    bar = tqdm(total=config.steps, initial=step, desc=f"learn {config.method} nfe={config.nfe}", disable=not progress)
    while step < config.steps:
        if config.method.startswith("s4s-alt"):
            phase = "coefficients" if (step // config.alt_round) % 2 == 0 else "grid"
        elif config.method == "s4s-joint":
            phase = "joint"
        else:
            phase = "coefficients"
        idx = torch.randint(0, len(train), (config.batch_size,), generator=gen).to(train.x_T.device)
        cond = None if train.cond is None else train.cond[idx]
        x_in = train.x_T[idx] if x_prime is None else x_prime[idx].clone().requires_grad_(True)
        loss = distance(student(x_in, cond), train.x0[idx]).mean()
        if not bool(torch.isfinite(loss)):
            stopped = f"non-finite loss at step {step} ({loss.item()}); kept the best solver (validation {best_val:.5g})"
            log.error("%s", stopped)
            break
        coef_opt.zero_grad(set_to_none=True)
        if grid_opt is not None:
            grid_opt.zero_grad(set_to_none=True)
        loss.backward()
        if phase in ("coefficients", "joint"):
            for g in coef_opt.param_groups:
                g["lr"] = config.lr * _lr_factor(coef_steps, config.warmup, step, config.steps, config.lr_decay)
            coef_opt.step()
            coef_steps += 1
        if phase in ("grid", "joint") and grid_opt is not None:
            for g in grid_opt.param_groups:
                g["lr"] = config.grid_lr * _lr_factor(grid_steps, config.warmup, step, config.steps, config.lr_decay)
            grid_opt.step()
            grid_steps += 1
        if x_prime is not None:
            with torch.no_grad():
                grad = x_in.grad.reshape(len(idx), -1)
                new = x_in.detach().reshape(len(idx), -1) - config.ball_lr * sigma_T * grad / (
                    grad.pow(2).mean(1, keepdim=True).sqrt() + 1e-12)
                origin = train.x_T[idx].reshape(len(idx), -1)
                delta = new - origin
                limit = config.ball_radius * sigma_T * math.sqrt(delta.shape[1])
                delta = delta * (limit / delta.norm(dim=1, keepdim=True).clamp(min=limit))
                x_prime[idx] = (origin + delta).reshape(x_in.shape)
        running += loss.item()
        count += 1
        step += 1
        bar.update(1)
        if step % config.val_every == 0 or step == config.steps:
            val_loss, val_mse = validate_now()
            if not math.isfinite(val_loss):
                stopped = f"non-finite validation loss at step {step}; kept the best solver (validation {best_val:.5g})"
                log.error("%s", stopped)
                break
            history.append({"step": step, "train_loss": running / max(count, 1), "val_loss": val_loss, "val_mse": val_mse,
                            "phase": phase})
            running, count = 0.0, 0
            if val_loss < best_val:
                best_val, best_state = val_loss, copy.deepcopy(model.state_dict())
            bar.set_postfix(val=f"{val_loss:.4g}", best=f"{best_val:.4g}", val_rmse=f"{math.sqrt(val_mse):.4f}")
            if ckpt_path is not None:
                record = {"model": model.state_dict(), "coef_opt": coef_opt.state_dict(),
                          "grid_opt": None if grid_opt is None else grid_opt.state_dict(), "gen": gen.get_state(),
                          "x_prime": x_prime, "step": step, "history": history, "best_val": best_val,
                          "best_state": best_state, "coef_steps": coef_steps, "grid_steps": grid_steps,
                          "base": base, "grid": grid, "base_losses": base_losses, "config": asdict(config),
                          "data": data_digest}
                atomic_write(ckpt_path, lambda tmp: torch.save(record, tmp))
    bar.close()
    model.load_state_dict(best_state)
    best_mse = next(h["val_mse"] for h in history if h["val_loss"] == best_val)
    meta.update({"val_loss": best_val, "base_val_loss": history[0]["val_loss"], "val_rmse": math.sqrt(best_mse),
                 "base_val_rmse": math.sqrt(history[0]["val_mse"]), "steps": step})
    solver = model.to_solver(meta)
    return LearnResult(solver, history, base_losses, stopped, time.time() - t_start)


def save_run(result: LearnResult, config: LearnConfig, run_dir: Path) -> None:
    """Resolved config, history (JSON) and training/validation curves (PNG) in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(asdict(config), indent=1) + "\n")
    atomic_write_text(run_dir / "history.json", json.dumps({"history": result.history, "base_losses": result.base_losses,
                                                            "stopped": result.stopped, "seconds": result.seconds},
                                                           indent=1) + "\n")
    train_points = [(h["step"], h["train_loss"]) for h in result.history if h["train_loss"] is not None]
    line_plot({f"train ({config.loss})": train_points,
               f"validation ({config.loss})": [(h["step"], h["val_loss"]) for h in result.history]},
              run_dir / "curves.png", "step", "loss", f"{config.method}, NFE {config.nfe}")
