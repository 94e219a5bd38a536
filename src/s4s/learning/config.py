"""Everything that determines a learning run, in one frozen :class:`LearnConfig`, and the named presets.

``LearnConfig()`` *is* the default recipe: the Python API (:func:`s4s.learn`), the CLI (``s4s learn``),
the demo and the benchmarks all start from :data:`PRESETS` and override fields by name, so the same
settings learn the same solver wherever they are given (docs/design.md §5).

The teacher is UniPC-bh2 at 50 calls (``docs/ablations_mnist.md`` measures it against a 100-call
teacher); the state weights ``a`` are learned too (``learn_a``; the paper's parametrisation is
``learn_a=False``, compared in ``docs/ablations_gmm.md``). ``fast`` is the recipe ``make demo`` runs
on a 2-core CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from s4s.baselines import BASELINES
from s4s.family import anchor_scales
from s4s.grids import GRIDS
from s4s.learning.objectives import LOSSES, SQUARES_LOSSES
from s4s.teacher import DEFAULT_TEACHER, parse_teacher

__all__ = ["LearnConfig", "PRESETS", "preset_config", "DEFAULT_LR", "METHODS", "LR_DECAYS", "BACKOFF_SCOPES", "AUTO_LOSS",
           "OPTIMIZERS"]

METHODS = ("s4s", "s4s-pc", "s4s-alt", "s4s-alt-pc", "s4s-joint")
LR_DECAYS = ("constant", "cosine")
BACKOFF_SCOPES = ("all", "moved")
OPTIMIZERS = ("adam", "lm")
AUTO_LOSS = "auto"


# Adam learning rate of the coefficient residuals when none is given, the same at every NFE: a run whose
# validation loss climbs above ``backoff_ratio`` times its best goes back to its best parameters and
# halves its learning rates (TrainState.back_off in s4s.learning.trainer), so a step size too large for a
# model or an NFE is corrected by the run itself (docs/ablations_mnist.md, docs/generalization.md).
DEFAULT_LR = 1e-2


@dataclass(frozen=True)
class LearnConfig:
    """One learning run's settings; saved beside the result and compared on ``resume``.

    ``nfe`` may be left out of a preset and given when learning. ``lr=None`` means
    ``DEFAULT_LR``; ``loss="auto"`` is resolved when the model is known
    (:func:`s4s.learning.model_losses.resolve_loss`): a feature distance only where a network made
    for the model's data is declared, else ``l2``.
    """

    nfe: Optional[int] = None
    method: str = "s4s-alt-pc"
    # teacher data
    teacher: str = DEFAULT_TEACHER     # NAME:NFE (a baseline) or rk45:TOL
    num_samples: int = 1024            # teacher samples (noises), learning and validation together
    val_fraction: float = 0.25         # held out for validation and selection
    teacher_batch_size: int = 256
    # what is learned, from where, against what
    base: str = "auto"                 # a BASELINES name, or "auto": best on validation (docs/design.md §5.5)
    grid: str = "auto"                 # a GRIDS name, or "auto": best grid for the base on validation
    screen_samples: int = 64           # validation noises each (base, grid) pair is scored on before the probe
    probe_starts: int = 2              # starts learned for probe_steps each before the best continues (1: no probe)
    probe_steps: int = 25
    loss: str = AUTO_LOSS
    decode_loss: bool = False          # latent pipelines: measure the loss on decoded images
    range_aware: Optional[bool] = None  # pixel models: teacher values beyond the data range are targets only up to its
    #                                     edge; None: when the teacher's samples leave the range (s4s.learning.trainer)
    learn_a: bool = True               # also learn the state weights a
    # optimisation
    optimizer: str = "adam"            # or "lm": Levenberg-Marquardt, finite-difference Jacobian, every learned group
    #                                    at once (s4s.learning.levenberg_marquardt); a step is worth many Adam steps
    damping: float = 1e-3              # lm: initial damping mu (adapted every step)
    fd_step: float = 1e-3              # lm: finite-difference step of the Jacobian, in parameter units
    lm_memory: float = 0.0             # lm: weight of the earlier mini-batches' averaged Gauss-Newton model (0: none)
    lm_steps: int = 0                  # adam: the run's first lm_steps steps (each start's, in a probe) are
    #                                    Levenberg-Marquardt steps, then Adam goes on from where they ended
    steps: int = 400
    batch_size: int = 32
    micro_batch: Optional[int] = None  # samples per forward/backward pass (gradients summed: the same step); None: the
    #                                    whole batch, halved automatically when a pass runs out of GPU memory
    lr: Optional[float] = None         # coefficient residuals; None: DEFAULT_LR
    grid_lr: float = 2e-2              # grid logits and input-time shifts
    warmup: int = 10
    lr_decay: str = "constant"         # or "cosine": after warm-up, lr * (1 + cos(pi * step / steps)) / 2
    alt_round: int = 50                # steps per round for S4S-Alt
    val_every: int = 25
    backoff_ratio: float = 1.5         # validation loss > ratio x best: back to the best, halve the rates; inf: never
    backoff_scope: str = "all"         # which rates a back-off halves: "all", or "moved": the groups updated since the
    #                                    last validation (an S4S-Alt round's coefficients or grid; docs/generalization.md)
    ema: float = 0.0                   # decay of an exponential moving average of the parameters, the solver that is
    #                                    validated and kept (0: the raw parameters; s4s.learning.trainer.ParameterAverage)
    ball_radius: float = 0.0           # relaxed objective (LD3): RMS radius in units of sigma_T; 0 = plain
    ball_lr: float = 0.05
    guidance: Optional[float] = None   # classifier-free guidance scale learned for
    guidance_range: Optional[tuple[float, float]] = None   # or a range: one solver family for every scale in it
    anchors: int = 3                   # anchor scales of a family (learned at anchors and midpoints)
    shared_fraction: float = 0.5       # a family's first shared_fraction of the steps learn one solver shared by every
    #                                    anchor (their parameters set to their mean after each step), then each its own
    seed: int = 0
    checkpoint: Optional[bool] = None  # per-call activation checkpointing; None: on for samples >= 4096 values

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    def with_options(self, **options: Any) -> "LearnConfig":
        """A copy with ``options`` replaced; an unknown name is one ``ValueError`` listing the known ones."""
        unknown = sorted(set(options) - self.field_names())
        if unknown:
            raise ValueError(f"unknown learning option(s) {unknown}; known: {sorted(self.field_names())}")
        return replace(self, **options)

    @property
    def coefficient_lr(self) -> float:
        """The coefficient learning rate: ``lr``, or ``DEFAULT_LR``."""
        return self.lr if self.lr is not None else DEFAULT_LR

    @property
    def uses_lm(self) -> bool:
        """Whether any step is a Levenberg-Marquardt step (``optimizer="lm"``, or ``lm_steps > 0``)."""
        return self.optimizer == "lm" or self.lm_steps > 0

    @property
    def corrector(self) -> bool:
        return self.method.endswith("-pc")

    @property
    def learns_grid(self) -> bool:
        return self.method.startswith("s4s-alt") or self.method == "s4s-joint"

    def validate(self) -> None:
        """One ``ValueError`` for the first setting out of its range."""
        if self.nfe is None:
            raise ValueError("nfe is not set: give the number of model calls to learn a solver for")
        if self.nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {self.nfe}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.base != "auto" and self.base not in BASELINES:
            raise ValueError(f"unknown base {self.base!r}; choose 'auto' or one of {sorted(BASELINES)}")
        if self.grid != "auto" and self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; choose 'auto' or one of {sorted(GRIDS)}")
        if self.loss != AUTO_LOSS and self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose {AUTO_LOSS!r} or one of {list(LOSSES)}")
        if self.backoff_scope not in BACKOFF_SCOPES:
            raise ValueError(f"unknown backoff_scope {self.backoff_scope!r}; choose from {list(BACKOFF_SCOPES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {list(OPTIMIZERS)}")
        if self.lm_steps < 0:
            raise ValueError(f"lm_steps must be >= 0, got {self.lm_steps}")
        if self.lm_steps > 0 and self.optimizer == "lm":
            raise ValueError("lm_steps is the number of Levenberg-Marquardt steps before Adam (optimizer 'adam'); "
                             "optimizer 'lm' takes every step with Levenberg-Marquardt")
        if self.uses_lm:
            what = "optimizer 'lm'" if self.optimizer == "lm" else "lm_steps > 0"
            if self.ball_radius > 0:
                raise ValueError(f"{what} learns the plain objective; the relaxed one (ball_radius > 0) needs Adam alone")
            if self.ema > 0:
                raise ValueError(f"ema averages Adam's iterates from the start; {what} takes no average (use ema 0)")
            if self.loss not in (AUTO_LOSS, *SQUARES_LOSSES):
                raise ValueError(f"{what} needs a sum-of-squares loss ({', '.join(SQUARES_LOSSES)}, or "
                                 f"{AUTO_LOSS!r}); {self.loss!r} is not one (use Adam alone)")
            if self.guidance_range is not None:
                raise ValueError(f"{what}: Levenberg-Marquardt does not learn guidance families yet; use Adam alone "
                                 "for a guidance range")
            if not 0 <= self.lm_memory < 1:  # also refuses NaN
                raise ValueError(f"lm_memory must lie in [0, 1) (0: each step its own mini-batch), got {self.lm_memory}")
            for name in ("damping", "fd_step"):
                value = getattr(self, name)
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; choose from {list(LR_DECAYS)}")
        parse_teacher(self.teacher)
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (some for learning, some for validation), got {self.num_samples}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name in ("steps", "batch_size", "val_every", "alt_round", "teacher_batch_size", "screen_samples",
                     "probe_starts", "probe_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.backoff_ratio > 1:  # also refuses NaN
            raise ValueError(f"backoff_ratio must be > 1 (inf: never back off), got {self.backoff_ratio}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {self.micro_batch}")
        if not 0 <= self.shared_fraction <= 1:  # also refuses NaN
            raise ValueError(f"shared_fraction must lie in [0, 1] (0: every anchor its own solver from the start), got "
                             f"{self.shared_fraction}")
        if not 0 <= self.ema < 1:  # also refuses NaN
            raise ValueError(f"ema must lie in [0, 1) (0: no averaging), got {self.ema}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("lr", "grid_lr", "ball_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.ball_radius) and self.ball_radius >= 0):
            raise ValueError(f"ball_radius must be a finite number >= 0, got {self.ball_radius}")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {self.guidance}")
        if self.guidance_range is not None:
            if self.guidance is not None:
                raise ValueError("give either guidance (one scale) or guidance_range (a family), not both")
            lo, hi = self.guidance_range
            anchor_scales(float(lo), float(hi), self.anchors)
            if self.ball_radius > 0:
                raise ValueError("the relaxed objective (ball_radius > 0) is not available for guidance families")
            per = self.num_samples // (2 * self.anchors - 1)
            if per < 2:
                raise ValueError(f"num_samples {self.num_samples} gives {per} noises for each of the "
                                 f"{2 * self.anchors - 1} training scales; need >= 2 each")


PRESETS: dict[str, LearnConfig] = {
    "default": LearnConfig(),
    "fast": LearnConfig(teacher="unipc_bh2:40", num_samples=320, steps=80, batch_size=16, val_every=20, alt_round=10,
                        warmup=5, probe_steps=20),
    # Levenberg-Marquardt: each step solves the Gauss-Newton system of one mini-batch (docs/generalization.md)
    "lm": LearnConfig(optimizer="lm", steps=12, probe_steps=1, val_every=1),
}


def preset_config(name: str = "default", **options: Any) -> LearnConfig:
    """The preset ``name`` with ``options`` replaced (``None`` values are left as the preset has them)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].with_options(**{k: v for k, v in options.items() if v is not None})
