"""``s4s.learn``: teacher data + S4S / S4S-Alt learning in one call, the same for Python and the CLI.

``s4s learn --model DIR --nfe 5 --preset fast --steps 40`` is ``s4s.learn(s4s.load_model(DIR), nfe=5,
preset="fast", steps=40)``: the CLI parses its flags into the same :class:`LearnConfig` fields and calls
this function (tests/test_learn_api.py checks that both learn the same solver).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from s4s import distributed
from s4s.denoisers import clip_of, device_of, fingerprint_of
from s4s.baselines import baseline
from s4s.learning.config import LearnConfig, preset_config
from s4s.learning.family_check import check_between_scales
from s4s.family import anchor_scales, training_scales
from s4s.learning.trainer import Condition, LearnResult, check_range_aware, range_or_clip, save_run, train_family, train_solver
from s4s.models import LoadedModel
from s4s.schedules import Schedule
from s4s.teacher import TeacherData, default_cache_dir, make_teacher_data, validation_count

log = logging.getLogger(__name__)

__all__ = ["learn", "LEARN_SEED_OFFSET"]

LEARN_SEED_OFFSET = 1_000_003  # learning noise never overlaps evaluation noise of the same seed


def learn(model: LoadedModel | Callable[..., Tensor], schedule: Optional[Schedule] = None, nfe: Optional[int] = None,
          shape: Optional[tuple[int, ...]] = None, *, preset: str = "default", config: Optional[LearnConfig] = None,
          labels: Optional[Tensor] = None, feature_fn: Optional[Callable[[Tensor], Tensor]] = None,
          decode: Optional[Callable[[Tensor], Tensor]] = None, teacher_data: Optional[TeacherData] = None,
          cache: bool = True, cache_dir: Optional[Path] = None, run_dir: Optional[Path] = None, resume: bool = False,
          progress: bool = True, device: Optional[torch.device | str] = None, **options: Any) -> LearnResult:
    """Learn an ``nfe``-call solver (S4S / S4S-Alt, docs/design.md §5); returns a :class:`LearnResult`
    (``.solver``, ``.history``, ``.base`` / ``.grid`` it started from, ``.seconds``, ``.summary()``).

    ``model`` is a :class:`~s4s.models.LoadedModel` (``s4s.load_model(...)``: schedule, sample shape,
    class labels, device, decoder and declared data come from it) or any denoiser ``D(x, t, cond,
    guidance)`` with ``schedule`` and one sample's ``shape`` (e.g. ``(4, 64, 64)``).

    Settings: the ``preset`` (``"default"`` or ``"fast"``, :data:`s4s.learning.config.PRESETS`) or a
    whole ``config``, with any :class:`LearnConfig` field overridden by keyword (``method``,
    ``teacher``, ``num_samples``, ``steps``, ``loss``, ``guidance``, ``seed``, ...).

    Teacher samples are cached under ``cache_dir`` (default ``$S4S_CACHE/teacher``) unless
    ``cache=False``; ``teacher_data`` gives them directly. ``labels`` are the class labels of the
    teacher noises (a LoadedModel makes class-balanced ones when guiding). ``feature_fn`` is the
    network of a ``feature`` / ``perceptual`` loss; ``decode`` (a latent pipeline's decoder, with
    ``decode_loss=True``) makes the loss compare decoded images. ``run_dir`` keeps the checkpoint,
    config, history and curves; ``resume`` continues from its checkpoint.

    Under ``torchrun`` every process calls this with the same arguments (each with its model on its
    own GPU); teacher batches, mini-batches and validation are split over them, and every process
    returns the same result (docs/design.md §7).
    """
    base = config if config is not None else preset_config(preset)
    model_meta: dict[str, Any] = dict(model.metadata) if isinstance(model, LoadedModel) else {}
    data_range = model.data_range if isinstance(model, LoadedModel) else None
    config = base.with_options(**options)
    if nfe is not None:
        config = config.with_options(nfe=nfe)
    if isinstance(model, LoadedModel):
        if schedule is not None and schedule != model.schedule:
            raise ValueError(f"schedule {schedule!r} differs from the loaded model's {model.schedule!r}")
        schedule, shape = model.schedule, tuple(shape or model.sample_shape)
        model.check_guidance(config.guidance if config.guidance_range is None else config.guidance_range[0])
        device = device if device is not None else model.device
        if config.decode_loss and decode is None:
            if not model.is_latent:
                raise ValueError("decode_loss needs a latent pipeline (a folder with a vae/ or vqvae/ component)")
            decode = model.decode
        if feature_fn is None:
            from s4s.learning.model_losses import resolve_loss

            loss, feature_fn = resolve_loss(model, config.loss)
            config = config.with_options(loss=loss)
        if labels is None and teacher_data is None:
            labels = model.learning_labels(_noises_per_scale(config), config.val_fraction,
                                           guided=config.guidance is not None or config.guidance_range is not None)
        if model.prompts is not None and config.guidance is None and config.guidance_range is None \
                and not model.guidance_input:
            log.warning("learning for the conditional model alone (no classifier-free guidance); text-to-image "
                        "pipelines guide by default (e.g. guidance_scale=7.5): pass --guidance W to learn for the "
                        "scale you will sample at")
        denoiser: Callable[..., Tensor] = model.denoiser
    else:
        denoiser = model
        schedule = schedule if schedule is not None else getattr(model, "schedule", None)
        if schedule is None:
            raise ValueError("learn needs the model's schedule: pass schedule=, or a LoadedModel / s4s.Denoiser")
        if shape is None and teacher_data is None:
            raise ValueError("learn needs one sample's shape (e.g. shape=(4, 64, 64)) with a plain denoiser")
        device = device if device is not None else device_of(model)
        if decode is not None:
            config = config.with_options(decode_loss=True)
        elif config.decode_loss:
            raise ValueError("decode_loss needs decode= (the latent pipeline's decoder)")
    config.validate()
    check_range_aware(config, range_or_clip(data_range, denoiser), decode)
    distributed.setup()  # under torchrun: join the launcher's process group if the script has not
    guided = config.guidance is not None or config.guidance_range is not None
    if guided and labels is None and (teacher_data is None or teacher_data.cond is None):
        raise ValueError("guidance needs labels (a class-conditional model): without a condition there is nothing to "
                         "guide towards")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if config.guidance_range is not None:
        if teacher_data is not None:
            raise ValueError("teacher_data cannot be given for a guidance range: the teacher runs at each training scale")
        return _learn_family(denoiser, schedule, tuple(shape), config, labels, feature_fn, decode, cache, cache_dir,
                             run_dir, resume, progress, device, model_meta, data_range)
    teacher_seconds = 0.0
    if teacher_data is None:
        t0 = time.time()
        teacher_data = _teacher_data(denoiser, schedule, tuple(shape), config, labels, config.guidance,
                                     config.num_samples, cache, cache_dir, progress, device)
        teacher_seconds = time.time() - t0
    train, val = _split(teacher_data, config.val_fraction, "teacher samples")
    meta = _run_metadata(denoiser, decode, model_meta, teacher=teacher_data.meta.get("teacher", config.teacher),
                         num_samples=len(teacher_data))
    result = train_solver(denoiser, schedule, train, val, config, run_dir, resume, progress, feature_fn, meta, decode,
                          device=device, data_range=data_range)
    return _finish(result, teacher_seconds, run_dir)


def _teacher_data(denoiser: Callable[..., Tensor], schedule: Schedule, shape: tuple[int, ...], config: LearnConfig,
                  labels: Optional[Tensor], guidance: Optional[float], num_samples: int, cache: bool,
                  cache_dir: Optional[Path], progress: bool, device: torch.device) -> TeacherData:
    """The teacher's samples for this run's seeds (disjoint from evaluation seeds) at ``guidance``."""
    return make_teacher_data(
        denoiser, schedule, shape, num_samples=num_samples, teacher=config.teacher, seed=config.seed + LEARN_SEED_OFFSET,
        labels=labels, guidance=guidance, batch_size=config.teacher_batch_size,
        cache_dir=(cache_dir or default_cache_dir()) if cache else None, progress=progress, device=device)


def _split(data: TeacherData, val_fraction: float, what: str) -> tuple[TeacherData, TeacherData]:
    """(training, validation) parts: the last ``val_fraction`` (at least one sample) is held out."""
    n_val = validation_count(len(data), val_fraction)
    if len(data) - n_val < 1:
        raise ValueError(f"{len(data)} {what} leave none for training")
    return data.split(len(data) - n_val)


def _run_metadata(denoiser: Callable[..., Tensor], decode: Optional[Callable[[Tensor], Tensor]],
                  model_meta: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """What the learned solver records about its run: what the loaded model says of itself (a
    text-to-image pipeline: class, resolution, ``mu``, prompt hashes), ``fields``, the model's
    fingerprint and clamp, and whether the loss was measured on decoded images."""
    meta = {**model_meta, **fields, "model_fingerprint": fingerprint_of(denoiser), "denoiser_clip": clip_of(denoiser)}
    if decode is not None:
        meta["loss_space"] = "decoded"
    return meta


def _finish(result: LearnResult, teacher_seconds: float, run_dir: Optional[Path]) -> LearnResult:
    """Record the teacher time and write the run folder."""
    result.teacher_seconds = teacher_seconds
    if run_dir is not None:
        save_run(result, Path(run_dir))
    return result


def _noises_per_scale(config: LearnConfig) -> int:
    """Teacher noises per training scale: all of them for one scale; for a family the same
    ``num_samples // (2 anchors - 1)`` noises at every training scale (so the teacher costs what one
    scale's would)."""
    if config.guidance_range is None:
        return config.num_samples
    return config.num_samples // (2 * config.anchors - 1)


def _learn_family(denoiser: Callable[..., Tensor], schedule: Schedule, shape: tuple[int, ...], config: LearnConfig,
                  labels: Optional[Tensor], feature_fn: Optional[Callable[[Tensor], Tensor]],
                  decode: Optional[Callable[[Tensor], Tensor]], cache: bool, cache_dir: Optional[Path],
                  run_dir: Optional[Path], resume: bool, progress: bool, device: torch.device,
                  model_meta: dict[str, Any], data_range: Optional[tuple[float, float]]) -> LearnResult:
    """A guidance family: teacher data at every training scale (same noises and labels), then
    :func:`~s4s.learning.trainer.train_family`."""
    lo, hi = (float(v) for v in config.guidance_range)
    anchors, scales = anchor_scales(lo, hi, config.anchors), training_scales(lo, hi, config.anchors)
    per = _noises_per_scale(config)
    if labels is not None and labels.shape[0] != per:
        raise ValueError(f"a guidance family uses {per} noises at each of its {len(scales)} training scales "
                         f"(num_samples // {len(scales)}); give {per} labels, got {labels.shape[0]}")
    t0 = time.time()
    conditions = []
    for w in scales:
        data = _teacher_data(denoiser, schedule, shape, config, labels, w, per, cache, cache_dir, progress, device)
        conditions.append(Condition(w, *_split(data, config.val_fraction, "teacher samples per scale")))
    teacher_seconds = time.time() - t0
    meta = _run_metadata(denoiser, decode, model_meta, teacher=config.teacher, num_samples=per * len(scales),
                         guidance_range=[lo, hi], anchors=anchors, training_scales=scales,
                         shared_fraction=config.shared_fraction)
    result = train_family(denoiser, schedule, conditions, anchors, config, run_dir, resume, progress, feature_fn, meta,
                          decode, device=device, data_range=data_range)
    # the interpolation between the training scales, measured there on every noise and label the family learned
    # from (the same at every scale) against the hand-designed solvers screened as bases (docs/design.md §5.9)
    t0 = time.time()
    first = conditions[0]
    x_T = torch.cat([first.train.x_T, first.val.x_T]).to(device)
    cond = None if first.train.cond is None else torch.cat([first.train.cond, first.val.cond]).to(device)
    candidates = {f"{name}/{grid}": baseline(name, schedule, config.nfe, grid=grid)
                  for name, grid in (key.split("/") for key in result.base_losses)}
    result.solver.metadata["between_scales"] = check_between_scales(
        denoiser, result.solver, candidates, scales, x_T, cond, config.teacher, range_or_clip(data_range, denoiser),
        config.teacher_batch_size)
    return _finish(result, teacher_seconds + time.time() - t0, run_dir)
