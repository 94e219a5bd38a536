"""``s4s.learn``: teacher data + S4S / S4S-Alt training in one call."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from s4s.teacher import DEFAULT_TEACHER, TeacherData, clip_of, make_teacher_data
from s4s.learn.trainer import LearnConfig, LearnResult, save_run, train_solver
from s4s.schedules import Schedule
from s4s.solver import Solver

log = logging.getLogger(__name__)

__all__ = ["learn", "learn_with_result", "LEARN_SEED_OFFSET"]

LEARN_SEED_OFFSET = 1_000_003  # learning noise never overlaps evaluation noise of the same seed


def learn_with_result(denoiser: Callable[..., Tensor], schedule: Schedule, nfe: int, shape: tuple[int, ...],
                      method: str = "s4s-alt-pc", teacher: str = DEFAULT_TEACHER, num_samples: int = 512,
                      val_fraction: float = 0.25, labels: Optional[Tensor] = None, guidance: Optional[float] = None,
                      seed: int = 0, cache_dir: Optional[Path] = None, run_dir: Optional[Path] = None,
                      resume: bool = False, progress: bool = True, feature_fn: Optional[Callable[[Tensor], Tensor]] = None,
                      teacher_data: Optional[TeacherData] = None, teacher_batch_size: int = 256,
                      decode: Optional[Callable[[Tensor], Tensor]] = None,
                      device: Optional[torch.device | str] = None, **options: Any) -> LearnResult:
    """Like :func:`learn` but returns the :class:`LearnResult` (history, base losses, timing).

    ``device`` is where the model runs (teacher batches and the student's inputs go there); by
    default the device of the model's first parameter when ``denoiser`` wraps a module, else CPU.

    ``decode`` (a latent pipeline's decoder) makes the loss compare decoded images; by default a
    latent model learns with a latent-space loss.
    """
    known = {f.name for f in fields(LearnConfig)} - {"nfe", "method", "guidance", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown learning option(s) {unknown}; known: {sorted(known)}")
    config = LearnConfig(nfe=nfe, method=method, guidance=guidance, seed=seed, **options)
    config.validate()
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if teacher_data is None and num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 (some for learning, some for validation), got {num_samples}")
    if guidance is not None and labels is None and (teacher_data is None or teacher_data.cond is None):
        raise ValueError("guidance needs labels (a class-conditional model): without a condition there is nothing to "
                         "guide towards")
    device = torch.device(device) if device is not None else (getattr(denoiser, "device", None) or torch.device("cpu"))
    if teacher_data is None:
        teacher_data = make_teacher_data(denoiser, schedule, tuple(shape), num_samples, teacher, seed + LEARN_SEED_OFFSET,
                                         labels, guidance, teacher_batch_size, cache_dir,
                                         getattr(denoiser, "fingerprint", None), progress=progress, device=device)
    n_val = max(1, int(round(len(teacher_data) * val_fraction)))
    if len(teacher_data) - n_val < 1:
        raise ValueError(f"{len(teacher_data)} teacher samples leave none for training")
    train, val = teacher_data.split(len(teacher_data) - n_val)
    meta = {"teacher": teacher_data.meta.get("teacher", teacher), "num_samples": len(teacher_data),
            "model_fingerprint": getattr(denoiser, "fingerprint", None), "denoiser_clip": clip_of(denoiser)}
    if decode is not None:
        meta["loss_space"] = "decoded"
    result = train_solver(denoiser, schedule, train, val, config, run_dir, resume, progress, feature_fn, meta, decode,
                          device=device)
    if run_dir is not None:
        save_run(result, config, Path(run_dir))
    return result


def learn(denoiser: Callable[..., Tensor], schedule: Schedule, nfe: int, shape: tuple[int, ...], **kwargs: Any) -> Solver:
    """Learn an ``nfe``-call solver for ``denoiser`` (S4S / S4S-Alt; see :mod:`s4s.learn.trainer`).

    ``shape`` is one sample's shape (e.g. ``(4, 64, 64)``). Keyword arguments: ``method``
    (``s4s``, ``s4s-pc``, ``s4s-alt``, ``s4s-alt-pc`` (default), ``s4s-joint``), ``teacher`` (``NAME:NFE``),
    ``num_samples``, ``labels`` / ``guidance``, ``loss``, ``steps``, ``batch_size``, ``lr``, ``base``,
    ``grid``, ``ball_radius``, ``seed``, ``cache_dir``, ``run_dir``, ``resume``... Returns the
    best-on-validation :class:`~s4s.Solver`, which records the guidance scale it was learned for.
    """
    return learn_with_result(denoiser, schedule, nfe, shape, **kwargs).solver
