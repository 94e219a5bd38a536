"""``s4s eval``: sample a model with a solver on fixed seeds and measure it.

Metrics (each ``None`` in the result when not asked for):

* ``fd`` - Fréchet distance of the samples' features to the real-data reference
  (``feature_space`` names the features; FID only with Inception);
* ``teacher_rmse`` - RMSE to a many-step teacher's samples from the *same* noise, the one definition
  of :mod:`s4s.teacher_distance` that learning validates with too: both clamped to ``data_range``
  for pixel models (what a user sees), raw for latents; ``teacher_rmse_raw`` without any clamp; for
  pixel models the range excursions (RMS distance of the samples to the data range) of the samples
  and the teacher's, ``range_excursion`` and ``teacher_range_excursion``;
  ``teacher_feature_l2`` - mean L2 distance between their features (a perceptual distance);
  with ``fd`` too, ``teacher_fd`` - the teacher's own FD on the same noises (and labels), the floor a
  solver that matched its teacher would reach, and, where ``accuracy`` is measured,
  ``teacher_accuracy``;
* ``accuracy`` - how often the bundled classifier recognises the requested class (guided
  class-conditional sampling only);
* ``clip_score`` - text-to-image models: the mean CLIP score of each image and its prompt
  (:mod:`s4s.eval.clip_score`, local CLIP weights).

For latent models the samples are decoded by the pipeline's VAE before features and images;
``teacher_rmse`` stays in latent space (no clamp: latents have no data range) and
``teacher_rmse_pixels`` compares the decoded images clamped to ``[-1, 1]``, what a pipeline shows.
For text-to-image models noise ``i`` is paired with prompt ``i mod K``; a learned solver refuses
evaluation prompts it was learned or validated on (it records their hashes).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from s4s import distributed
from s4s.baselines import HeunSampler, baseline
from s4s.eval.features import FeatureNetwork, feature_network_for
from s4s.eval.frechet import FeatureStats, frechet_distance
from s4s.eval.images import save_image_grid
from s4s.io import atomic_write_text
from s4s.denoisers import clip_of
from s4s.teacher import DEFAULT_TEACHER, make_teacher_data, sample_noise
from s4s.models import LoadedModel
from s4s.family import GuidanceFamily, load_solver
from s4s.solver import Solver, names_solver_file
from s4s.teacher_distance import excursion_sum, squared_error_sum
from s4s.text2image.prompts import prompt_hashes

log = logging.getLogger(__name__)

__all__ = ["resolve_sampler", "generate", "evaluate", "batched", "METRICS"]

Sampler = Union[Solver, HeunSampler, GuidanceFamily]
METRICS = ("fd", "teacher", "clip")


def resolve_sampler(spec: str, model: LoadedModel, nfe: Optional[int] = None, grid: str = "logsnr") -> Sampler:
    """A solver file (``*.json``) or a baseline name with ``nfe`` on ``grid``."""
    if names_solver_file(spec):
        solver = load_solver(spec)
        if nfe is not None and nfe != solver.nfe:
            raise ValueError(f"{spec} is a {solver.nfe}-NFE solver; --nfe {nfe} asks for another")
        if solver.schedule is not None and solver.schedule != model.schedule:
            raise ValueError(f"{spec} was built for schedule {solver.schedule!r}, the model uses {model.schedule!r}")
        fp = solver.metadata.get("model_fingerprint")
        if fp and model.fingerprint and fp != model.fingerprint:
            log.warning("%s was learned on model %s, evaluating on %s", spec, fp, model.fingerprint)
        _check_prompts_held_out(spec, solver.metadata, model)
        clip = clip_of(model.denoiser)
        if "denoiser_clip" in solver.metadata and solver.metadata["denoiser_clip"] != clip:
            log.warning("%s was learned with D clamped to %s, this model clamps to %s (load_model's clip_denoised)",
                        spec, solver.metadata["denoiser_clip"], clip)
        return solver
    if nfe is None:
        raise ValueError(f"--nfe is needed with a named solver ({spec!r})")
    return baseline(spec, model.schedule, nfe, grid=grid)


def _check_prompts_held_out(spec: str, metadata: dict[str, Any], model: LoadedModel) -> None:
    """Refuse evaluation prompts a learned solver saw (for learning or validation)."""
    seen = set(metadata.get("prompt_hashes") or ())
    if not seen or model.prompts is None:
        return
    used = [p for p, h in zip(model.prompts, prompt_hashes(model.prompts)) if h in seen]
    if used:
        raise ValueError(f"{len(used)} of the {len(model.prompts)} evaluation prompts were used to learn {spec} (e.g. "
                         f"{used[0]!r}); evaluate on prompts held out from learning")


def sampling_labels(model: LoadedModel, num_samples: int, guidance: Optional[float]) -> Optional[Tensor]:
    """Class-balanced labels when guiding a class-conditional model, the null label otherwise."""
    return model.labels(num_samples, guided=guidance is not None)


def generate(model: LoadedModel, sampler: Sampler, num_samples: int, seed: int = 0, guidance: Optional[float] = None,
             batch_size: int = 500, progress: bool = True, labels: Optional[Tensor] = None) -> Tensor:
    """``num_samples`` samples from the seeded noise of :func:`sample_noise` (float32, CPU). Under torchrun
    the batches are split over the ranks and every rank gets all samples."""
    x_T = sample_noise(model.schedule, num_samples, model.sample_shape, seed)
    device = model.device
    starts = list(range(0, num_samples, batch_size))
    bar = tqdm(total=len(starts), desc=f"sampling nfe={sampler.nfe}", disable=not (progress and distributed.is_main()))

    def sample_batch(k: int) -> Tensor:
        start, stop = starts[k], min(starts[k] + batch_size, num_samples)
        cond = None if labels is None else labels[start:stop].to(device)
        with torch.no_grad():
            out = sampler.sample(model.denoiser, x_T[start:stop].to(device), cond, guidance).float().cpu()
        bar.update(distributed.world_size())
        return out

    outs = distributed.map_batches(sample_batch, len(starts))
    bar.close()
    return torch.cat(outs)


def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 1000,
            device: Optional[torch.device] = None) -> Tensor:
    """``fn`` applied without gradients to ``x`` in batches along dim 0 (each batch moved to ``device``
    when given), concatenated on the CPU; under torchrun the batches are split over the ranks."""
    starts = list(range(0, x.shape[0], batch_size))

    def one(k: int) -> Tensor:
        part = x[starts[k]:starts[k] + batch_size]
        with torch.no_grad():
            return fn(part if device is None else part.to(device)).cpu()

    return torch.cat(distributed.map_batches(one, len(starts)))


def _decode(model: LoadedModel, samples: Tensor) -> Tensor:
    """Images from samples: the pipeline's decoder for latent models, identity otherwise."""
    if model.decode is None:
        return samples
    return batched(lambda z: model.decode(z).float(), samples, batch_size=100, device=model.device)


def evaluate(model: LoadedModel, sampler: Sampler, num_samples: int = 10000, seed: int = 0,
             guidance: Optional[float] = None, metrics: Sequence[str] = ("fd",), teacher: str = DEFAULT_TEACHER,
             batch_size: int = 500, feature_net: Optional[FeatureNetwork] = None, cache_dir: Optional[Path] = None,
             save_images: Optional[Path] = None, progress: bool = True, solver_label: Optional[str] = None,
             clip_scorer: Any = None) -> dict[str, Any]:
    """Sample and measure; returns a JSON-able dict (see module doc for the keys). ``clip_scorer`` (a
    :class:`~s4s.eval.clip_score.ClipScorer`) is needed for the ``clip`` metric."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if "clip" in metrics and (clip_scorer is None or model.prompts is None):
        raise ValueError("the clip metric needs a text-to-image model (--prompts) and local CLIP weights (--clip-model)")
    model.check_guidance(guidance)
    distributed.setup()  # under torchrun: join the launcher's process group if the script has not
    t0 = time.time()
    if feature_net is None and ("fd" in metrics or model.data is not None):  # declared data: class accuracy too
        feature_net = feature_network_for(model.image_shape, model.data, device=model.device)
    labels = sampling_labels(model, num_samples, guidance)
    data_range = model.data_range
    samples = generate(model, sampler, num_samples, seed, guidance, batch_size, progress, labels)
    sample_seconds = time.time() - t0
    result: dict[str, Any] = {
        "solver": solver_label or sampler.metadata.get("source", "solver"), "nfe": sampler.nfe,
        "num_samples": num_samples, "seed": seed, "guidance": guidance, "model": model.name,
        "fd": None, "feature_space": None, "teacher_rmse": None, "teacher_feature_l2": None, "teacher": None,
        "accuracy": None, "clip_score": None, "teacher_rmse_pixels": None,
        "data_range": None if data_range is None else list(data_range), "teacher_rmse_raw": None,
        "range_excursion": None if data_range is None else math.sqrt(excursion_sum(samples, data_range) / num_samples),
        "teacher_range_excursion": None, "teacher_fd": None, "teacher_accuracy": None,
    }
    images = _decode(model, samples)
    feats = batched(feature_net.features, images, device=feature_net.device) if feature_net is not None else None

    def fd_of(features: Tensor) -> float:
        return frechet_distance(FeatureStats.from_features(features), feature_net.reference)

    def accuracy_of(shown: Tensor) -> float:
        """How often the bundled classifier recognises the requested label in ``shown``."""
        pred = batched(lambda x: feature_net.classifier(x).argmax(1), shown, device=feature_net.device)
        return float((pred == labels).float().mean())

    if "fd" in metrics:
        result["fd"] = fd_of(feats)
        result["feature_space"] = feature_net.name
        dim = feats.reshape(feats.shape[0], -1).shape[1]
        if num_samples <= dim:
            result["fd_warning"] = (f"FD from {num_samples} samples in {dim}-d features: the covariance is rank-deficient "
                                    f"and the value is dominated by estimation error; use well over {dim} samples")
            log.warning("%s", result["fd_warning"])
    if feature_net is not None and feature_net.classifier is not None and guidance is not None and labels is not None:
        result["accuracy"] = accuracy_of(images)
    if "teacher" in metrics:
        data = make_teacher_data(model.denoiser, model.schedule, model.sample_shape, num_samples=num_samples,
                                 teacher=teacher, seed=seed, labels=labels, guidance=guidance, batch_size=batch_size,
                                 cache_dir=cache_dir, progress=progress, device=model.device)
        result["teacher"] = teacher
        # what a user gets (clamped to the data range when there is one), as learning validates it
        result["teacher_rmse"] = math.sqrt(squared_error_sum(samples, data.x0, data_range) / num_samples)
        result["teacher_rmse_raw"] = math.sqrt(squared_error_sum(samples, data.x0) / num_samples)
        if data_range is not None:
            result["teacher_range_excursion"] = math.sqrt(excursion_sum(data.x0, data_range) / num_samples)
        teacher_images = _decode(model, data.x0) if model.is_latent or feats is not None else None
        if model.is_latent:
            result["teacher_rmse_pixels"] = float((images.clamp(-1, 1) - teacher_images.clamp(-1, 1)).pow(2).mean().sqrt())
        if feats is not None:
            teacher_feats = batched(feature_net.features, teacher_images, device=feature_net.device)
            result["teacher_feature_l2"] = float((feats - teacher_feats).norm(dim=1).mean())
            if "fd" in metrics:  # the floor: what the solver would score if it matched its teacher exactly
                result["teacher_fd"] = fd_of(teacher_feats)
            if result["accuracy"] is not None:
                result["teacher_accuracy"] = accuracy_of(teacher_images)
    prompts = None if model.prompts is None or labels is None else [model.prompts[int(k)] for k in labels]
    if "clip" in metrics:
        scores = torch.cat([clip_scorer.score(images[i:i + 64], prompts[i:i + 64]) for i in range(0, num_samples, 64)])
        result["clip_score"] = float(scores.mean())
    if save_images is not None:
        if distributed.is_main():
            save_image_grid(images[:100], save_images, nrow=10)
            if prompts is not None:  # which prompt each cell shows, row by row
                lines = [f"row {k // 10 + 1}, column {k % 10 + 1}: {p}" for k, p in enumerate(prompts[:100])]
                atomic_write_text(save_images.with_suffix(".prompts.txt"), "\n".join(lines) + "\n")
        result["images"] = str(save_images)
    result["sample_seconds"] = sample_seconds
    result["seconds"] = time.time() - t0
    return result
