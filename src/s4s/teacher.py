"""Teacher data, data-free: noise draws ``x_T`` and a strong solver's outputs ``x0_teacher``.

Noise is a pure function of ``(seed, num_samples, shape)`` so student and teacher always see the same
draws. Results are cached per batch under ``cache_dir/<key>/`` where ``key`` hashes everything
that determines them (model fingerprint, the clamp of D, schedule, teacher, guidance, labels, seed, count,
shape):
an interrupted run resumes from its last finished batch, and a cache whose ``meta.json`` does not
match the request is refused with an error, never reused silently. Each batch file carries the
request's key, its position and a SHA-256 of its values: a truncated, damaged or foreign batch is
regenerated with a warning. Files are written under unique temporary names and renamed, so
concurrent runs on one cache never see each other's half-written files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from s4s import distributed
from s4s.adaptive import rk45_sample
from s4s.baselines import baseline
from s4s.checks import NonFiniteError
from s4s.denoisers import clip_of, condition_digest_of, fingerprint_of
from s4s.io import atomic_write, atomic_write_text, check_writable_dir
from s4s.schedules import Schedule

log = logging.getLogger(__name__)

__all__ = ["TeacherData", "make_teacher_data", "parse_teacher", "teacher_sampler", "sample_noise", "DEFAULT_TEACHER",
           "default_cache_dir", "validation_count"]

DEFAULT_TEACHER = "unipc_bh2:50"


RK45_DEFAULT_TOL = 1e-4


def default_cache_dir() -> Path:
    """Where teacher samples are cached by default, by the Python API and the CLI alike:
    ``$S4S_CACHE/teacher``, or ``~/.cache/s4s/teacher``."""
    return Path(os.environ.get("S4S_CACHE", Path.home() / ".cache" / "s4s")) / "teacher"


def parse_teacher(spec: str) -> tuple[str, float]:
    """``"NAME:NFE"`` -> ``(name, nfe)`` for a baseline (e.g. ``"unipc_bh2:100"``), or ``"rk45[:TOL]"``
    -> ``("rk45", tol)`` for the adaptive Dormand-Prince teacher (default tolerance 1e-4)."""
    name, sep, value = spec.partition(":")
    if name == "rk45":
        try:
            tol = float(value) if sep else RK45_DEFAULT_TOL
        except ValueError:
            tol = -1.0
        if not (0 < tol < 1):
            raise ValueError(f"rk45 teacher tolerance must be a number in (0, 1), e.g. 'rk45:1e-4'; got {spec!r}")
        return name, tol
    if not sep or not value.isdigit() or int(value) < 1:
        raise ValueError(f"teacher must look like NAME:NFE (e.g. {DEFAULT_TEACHER!r}) or rk45:TOL, got {spec!r}")
    return name, int(value)


def teacher_sampler(spec: str, schedule: Schedule, grid: str = "logsnr"
                    ) -> Callable[[Callable[..., Tensor], Tensor, Any, Optional[float]], tuple[Tensor, int]]:
    """``sample(denoiser, x_T, cond, guidance) -> (x0, model_calls)`` for a teacher spec (see
    :func:`parse_teacher`): a baseline on ``grid`` at a fixed NFE, or RK45 to a tolerance."""
    name, value = parse_teacher(spec)
    if name == "rk45":
        return lambda den, x, cond, guidance: rk45_sample(den, x, schedule, cond, guidance, rtol=value, atol=value)
    solver = baseline(name, schedule, int(value), grid=grid)
    return lambda den, x, cond, guidance: (solver.sample(den, x, cond, guidance), solver.nfe)


def sample_noise(schedule: Schedule, num_samples: int, shape: tuple[int, ...], seed: int,
                 t: Optional[float] = None) -> Tensor:
    """The ``num_samples`` initial states for ``seed``: ``sigma(T) * N(0, I)``, float32, on CPU."""
    gen = torch.Generator().manual_seed(int(seed))
    return schedule.prior_noise((num_samples, *shape), generator=gen, t=t)


@dataclass
class TeacherData:
    """``x_T`` (n, ...), condition (n,) or None, teacher outputs ``x0`` (n, ...), and how they were made."""

    x_T: Tensor
    cond: Optional[Tensor]
    x0: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x_T.shape[0]

    def to(self, device: torch.device | str) -> "TeacherData":
        """The same data on ``device``."""
        return TeacherData(self.x_T.to(device), None if self.cond is None else self.cond.to(device), self.x0.to(device),
                           self.meta)

    def split(self, num_train: int) -> tuple["TeacherData", "TeacherData"]:
        """First ``num_train`` samples for training, the rest for validation."""
        def part(sl: slice) -> TeacherData:
            return TeacherData(self.x_T[sl], None if self.cond is None else self.cond[sl], self.x0[sl], self.meta)
        return part(slice(0, num_train)), part(slice(num_train, None))


def validation_count(num_samples: int, val_fraction: float) -> int:
    """How many of ``num_samples`` teacher samples are held out for validation: the last
    ``round(num_samples * val_fraction)``, at least one."""
    return max(1, int(round(num_samples * val_fraction)))


def _key(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def _digest(x: Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _serialise(record: dict[str, Any]) -> bytes:
    """``torch.save`` bytes of a cache record; saved to memory, not to the temporary file, because the
    archive inside names the file it was written to."""
    buf = io.BytesIO()
    torch.save(record, buf)
    return buf.getvalue()


def _read_batch(path: Path, key: str, start: int, shape: tuple[int, ...]) -> Optional[Tensor]:
    """A cached teacher batch if it is intact and belongs to this request; else None (with a warning)."""
    try:
        record = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, empty, random bytes, ...: regenerate
        problem = f"unreadable ({type(err).__name__})"
    else:
        if not isinstance(record, dict) or not isinstance(record.get("x0"), Tensor):
            problem = "not a teacher batch of this s4s version"
        elif record.get("key") != key or record.get("start") != start:
            problem = "made for another request"
        elif tuple(record["x0"].shape) != shape:
            problem = f"of shape {tuple(record['x0'].shape)}, expected {shape}"
        elif record.get("sha256") != _digest(record["x0"]):
            problem = "damaged (checksum mismatch)"
        elif not bool(torch.isfinite(record["x0"]).all()):
            problem = "non-finite"
        else:
            return record["x0"]
    log.warning("teacher cache batch %s is %s; regenerating it", path, problem)
    return None


def make_teacher_data(denoiser: Callable[..., Tensor], schedule: Schedule, shape: tuple[int, ...], *, num_samples: int,
                      teacher: str = DEFAULT_TEACHER, seed: int = 0, labels: Optional[Tensor] = None,
                      guidance: Optional[float] = None, batch_size: int = 256, cache_dir: Optional[Path] = None,
                      fingerprint: Optional[str] = None, grid: str = "logsnr", progress: bool = True,
                      device: torch.device | str = "cpu") -> TeacherData:
    """Run the teacher on ``num_samples`` seeded noises (batched, cached and resumable when ``cache_dir``).

    The cache key holds the model's ``fingerprint`` (by default the :class:`~s4s.Denoiser`'s own); a
    plain callable has none, so its samples are computed without the cache (said in the log).
    """
    fingerprint = fingerprint if fingerprint is not None else fingerprint_of(denoiser)
    sampler = teacher_sampler(teacher, schedule, grid)
    x_T = sample_noise(schedule, num_samples, shape, seed)
    if labels is not None and labels.shape[0] != num_samples:
        raise ValueError(f"{labels.shape[0]} labels for {num_samples} samples")
    meta = {"model": fingerprint, "schedule": schedule.to_config(), "teacher": teacher, "teacher_grid": grid,
            "seed": seed, "num_samples": num_samples, "shape": list(shape), "guidance": guidance,
            "labels": None if labels is None else hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16],
            "batch_size": batch_size, "clip": clip_of(denoiser)}
    if condition_digest_of(denoiser) is not None:  # conditions index prompt embeddings: which ones
        meta["conditions"] = condition_digest_of(denoiser)
    folder = None
    if cache_dir is not None and fingerprint is None:
        log.info("teacher samples not cached: the denoiser has no fingerprint (s4s.Denoiser(..., fingerprint=...) "
                 "names the weights)")
        cache_dir = None
    if cache_dir is not None:
        key = _key(meta)
        folder = check_writable_dir(Path(cache_dir) / key, "teacher cache folder")
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True), all_ranks=True)
        try:
            stored = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"teacher cache {meta_path} is unreadable ({err}); delete the folder") from None
        if stored != meta:
            raise ValueError(f"teacher cache {folder} was made for a different request; delete it or use another cache_dir")
    starts = list(range(0, num_samples, batch_size))
    counts = {"calls": 0, "computed": 0}
    values = num_samples * math.prod(shape)
    log.info("teacher %s: %d samples of shape %s in %d batches; %.1f MB of float32 %s", teacher, num_samples,
             tuple(shape), len(starts), values * 4 / 2**20, f"on disk in {folder}" if folder else "in memory")
    t0 = time.time()
    bar = tqdm(total=len(starts), desc=f"teacher {teacher}", disable=not (progress and distributed.is_main()))

    def make_batch(index: int) -> Tensor:
        """Batch ``index`` of the request: from the cache when intact, else computed (and cached)."""
        start = starts[index]
        stop = min(start + batch_size, num_samples)
        path = None if folder is None else folder / f"batch_{start:07d}.pt"
        try:
            if path is not None and path.exists():
                cached = _read_batch(path, key, start, (stop - start, *shape))
                if cached is not None:
                    return cached
            cond = None if labels is None else labels[start:stop].to(device)
            t_batch = time.time()
            try:
                with torch.no_grad():
                    x0, batch_calls = sampler(denoiser, x_T[start:stop].to(device), cond, guidance)
            except torch.cuda.OutOfMemoryError as err:
                raise RuntimeError(f"out of GPU memory running the teacher on {stop - start} samples at a time: lower "
                                   "--teacher-batch-size (teacher_batch_size)") from err
            x0 = x0.cpu()
            counts["calls"] += batch_calls
            counts["computed"] += 1
            if counts["computed"] == 1 and len(starts) > 1:
                took = time.time() - t_batch
                log.info("teacher: one batch took %.1f s; the whole request about %.0f s on %d process(es)", took,
                         took * len(starts) / distributed.world_size(), distributed.world_size())
            if not bool(torch.isfinite(x0).all()):
                raise NonFiniteError(f"teacher {teacher} produced NaN/inf in samples {start}..{stop}")
            if path is not None:  # atomic, unique temporary name: an interrupted batch is redone, never half-read
                record = {"x0": x0, "key": key, "start": start, "stop": stop, "sha256": _digest(x0)}
                data = _serialise(record)  # the same bytes whichever rank or temporary name writes it
                atomic_write(path, lambda tmp: tmp.write_bytes(data), all_ranks=True)
            return x0
        finally:
            bar.update(distributed.world_size())

    outs = distributed.map_batches(make_batch, len(starts))  # split over the ranks under torchrun
    bar.close()
    calls, computed = counts["calls"], counts["computed"]
    log.info("teacher %s: %d samples in %.1f s%s%s", teacher, num_samples, time.time() - t0,
             f", {calls / computed:.0f} model calls per batch" if computed else "",
             f" (cache {folder})" if folder else "")
    return TeacherData(x_T, labels, torch.cat(outs), meta)
