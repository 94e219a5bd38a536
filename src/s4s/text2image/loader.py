r"""Load a text-to-image pipeline folder as a :class:`~s4s.models.LoadedModel` (see
:mod:`s4s.text2image.pipelines` for what each family does).

Steps: read ``model_index.json``; look up the prompt-embedding table in the cache (key: the text
encoders' files, the prompts, the negative prompt, the family's encoding settings, the dtype); load
the pipeline (without its text encoders on a cache hit); otherwise encode the prompts in batches with
the pipeline's ``encode_prompt``, cache the table, and drop the text encoders and tokenizers from the
pipeline (and from memory) before anything else runs. The result is a latent-space denoiser whose
condition is a prompt index, the pipeline's decoder, and metadata the learned solver records
(pipeline class, resolution, ``mu``, dtype, prompt hashes).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from s4s.checks import first_line
from s4s.denoisers import Denoiser, fingerprint_module
from s4s.diffusers_config import read_scheduler_config
from s4s.io import atomic_write
from s4s.models import LoadedModel
from s4s.text2image.pipelines import ENCODE_BATCH, TEXT_TO_IMAGE_PIPELINES, TextToImageOptions, _Family
from s4s.text2image.prompts import prompt_hashes

log = logging.getLogger(__name__)

__all__ = ["load_text_to_image", "embedding_cache_dir", "table_digest"]

_SAMPLE_BYTES = 1 << 20  # bytes read from each end of a weights file for the text-encoder fingerprint


def embedding_cache_dir() -> Path:
    """``$S4S_CACHE/prompts`` (beside the teacher cache)."""
    from s4s.teacher import default_cache_dir

    return default_cache_dir().parent / "prompts"


def _files_fingerprint(folders: list[Path]) -> str:
    """SHA-256 over each file's relative name, size and first and last MiB: a copy of the same weights
    hashes the same, a changed file does not (without reading multi-GB text encoders whole)."""
    h = hashlib.sha256()
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = path.stat().st_size
            h.update(f"{path.relative_to(folder.parent)}:{size}".encode())
            with path.open("rb") as f:
                h.update(f.read(_SAMPLE_BYTES))
                if size > 2 * _SAMPLE_BYTES:
                    f.seek(size - _SAMPLE_BYTES)
                    h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()[:16]


def table_digest(table: dict[str, Tensor]) -> str:
    """Short SHA-256 of a prompt-embedding table (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name in sorted(table):
        t = table[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {folder / 'model_index.json'}: {err}") from None


def _load_pipeline(folder: Path, index: dict[str, Any], family: type[_Family], dtype: torch.dtype,
                   without: tuple[str, ...]) -> Any:
    """The pipeline class of ``model_index.json`` from the folder, with components listed as absent
    (``[null, null]``) or in ``without`` passed as None."""
    import diffusers

    cls = getattr(diffusers, family.pipeline)
    absent = {name: None for name, value in index.items()
              if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]}
    absent.update({name: None for name in without if name in index})
    if importlib.util.find_spec("accelerate") is None:  # say so to diffusers rather than have it warn
        absent["low_cpu_mem_usage"] = False
    try:
        pipe = cls.from_pretrained(str(folder), torch_dtype=dtype, **absent)
    except Exception as err:  # noqa: BLE001 - diffusers / transformers raise many types for a bad folder
        raise ValueError(f"{folder}: cannot load the {family.pipeline} ({type(err).__name__}: "
                         f"{first_line(err, 300)})") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _encode_all(family: _Family, prompts: list[str], negative: Optional[str], device: Any,
                options: TextToImageOptions) -> dict[str, Tensor]:
    """Rows of every prompt, then the negative row (when the family has one)."""
    parts: list[dict[str, Tensor]] = []
    neg_row: dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(prompts), ENCODE_BATCH):
            rows, neg = family.encode(prompts[start:start + ENCODE_BATCH], negative, device, options)
            parts.append({k: v.detach() for k, v in rows.items()})
            neg_row = neg_row or {k: v.detach() for k, v in neg.items()}
    table = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if family.negative:
        table = {k: torch.cat([v, neg_row[k].to(v.dtype)]) for k, v in table.items()}
    return table


def _drop_text_encoders(pipe: Any, family: type[_Family]) -> None:
    """Free the text encoders and tokenizers (they are not needed once the prompts are encoded)."""
    for name in family.encoders:
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _schedule_mu(pipe: Any, family: _Family) -> Optional[float]:
    """The resolution-dependent shift the pipeline will pass to ``set_timesteps``, or None."""
    cfg = pipe.scheduler.config
    if not cfg.get("use_dynamic_shifting", False):
        return None
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return float(calculate_shift(family.seq_len(), cfg.get("base_image_seq_len", 256),
                                 cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                 cfg.get("max_shift", family.max_shift_default)))


def load_text_to_image(folder: Path, options: TextToImageOptions, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, cache: bool = True) -> LoadedModel:
    """A text-to-image pipeline folder as a latent-space :class:`LoadedModel` whose conditions are
    indices into ``options.prompts`` (the negative prompt is index ``len(prompts)``)."""
    folder = Path(folder)
    index = _read_index(folder)
    name = str(index.get("_class_name"))
    if name not in TEXT_TO_IMAGE_PIPELINES:
        raise ValueError(f"{folder}: {name} is not a supported text-to-image pipeline; supported: "
                         f"{', '.join(TEXT_TO_IMAGE_PIPELINES)}")
    kind = TEXT_TO_IMAGE_PIPELINES[name]
    prompts = list(options.prompts)
    if not prompts:
        raise ValueError(f"{folder} is a text-to-image pipeline ({name}): give prompts (--prompts FILE)")
    if options.negative_prompt is not None and not kind.negative:
        raise ValueError(f"{name} has no unconditional branch: --negative-prompt does not apply")
    encoder_files = _files_fingerprint([folder / n for n in kind.encoders])
    key_fields = {"pipeline": name, "encoders": encoder_files, "prompts": hashlib.sha256(
        json.dumps(prompts).encode()).hexdigest()[:16], "negative": options.negative_prompt,
        "max_sequence_length": options.max_sequence_length, "dtype": str(dtype)}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    cache_file = embedding_cache_dir() / f"{key}.safetensors"
    table = _read_table(cache_file) if cache else None
    pipe = _load_pipeline(folder, index, kind, dtype, kind.encoders if table is not None else ())
    pipe.to(device)
    family = kind(pipe, options.height, options.width)
    if table is None:
        log.info("encoding %d prompts with %s's text encoders", len(prompts), name)
        table = _encode_all(family, prompts, options.negative_prompt, device, options)
        if cache:
            _write_table(cache_file, table, key_fields)
    else:
        log.info("prompt embeddings from the cache %s", cache_file)
    _drop_text_encoders(pipe, kind)
    table = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in table.items()}
    table.update(family.extra_rows(table))
    return _loaded_model(folder, pipe, family, table, prompts, options, dtype)


def _read_table(path: Path) -> Optional[dict[str, Tensor]]:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed
        log.warning("prompt-embedding cache %s is unreadable (%s); encoding again", path, type(err).__name__)
        return None


def _write_table(path: Path, table: dict[str, Tensor], fields: dict[str, Any]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in table.items()},
                metadata={k: json.dumps(v) for k, v in fields.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    log.info("cached the prompt embeddings: %s (%.1f MB)", path, len(data) / 2**20)


def _loaded_model(folder: Path, pipe: Any, family: _Family, table: dict[str, Tensor], prompts: list[str],
                  options: TextToImageOptions, dtype: torch.dtype) -> LoadedModel:
    spec = read_scheduler_config(pipe.scheduler)
    net = family.net.eval().requires_grad_(False)
    scale = family.time_scale if family.time_scale is not None else spec.timestep_scale
    guidance_input = bool(getattr(family, "guidance_input", False))
    num_rows = next(iter(table.values())).shape[0]

    def fn(x: Tensor, t: Tensor, cond: Any) -> Tensor:
        guidance = None
        if guidance_input:
            cond, guidance = cond
        if cond is None:
            raise ValueError(f"{family.pipeline}: sampling needs prompt indices as the condition")
        # checked on the labels' own device (s4s makes them on the CPU: no GPU sync per call)
        index = torch.as_tensor(cond).long().flatten()
        if bool(((index < 0) | (index >= num_rows)).any()):
            raise ValueError(f"prompt index out of range 0..{num_rows - 1}")
        rows = {k: v.index_select(0, index.to(v.device)) for k, v in table.items()}
        out = family.call(x.to(dtype), t.to(dtype), rows, guidance)
        return out.to(x.dtype)

    denoiser = Denoiser.from_prediction(
        fn, spec.schedule, spec.prediction_type, time_fn=(lambda t: t * scale) if scale != 1.0 else None,
        null_cond=len(prompts) if family.negative else None, fingerprint=fingerprint_module(net),
        name=type(net).__name__, clip_range=spec.clip_range, module=net, guidance_input=guidance_input,
        condition_digest=table_digest(table))
    mu = _schedule_mu(pipe, family)
    metadata: dict[str, Any] = {"pipeline": family.pipeline, "height": family.height, "width": family.width,
                                "model_dtype": str(dtype).replace("torch.", ""),
                                "negative_prompt": options.negative_prompt, "prompt_hashes": prompt_hashes(prompts)}
    if options.max_sequence_length is not None:
        metadata["max_sequence_length"] = options.max_sequence_length
    if mu is not None:
        metadata["mu"] = mu

    def decode(latents: Tensor) -> Tensor:
        return family.decode(latents).to(latents.dtype)

    with torch.no_grad():
        probe = torch.zeros((1,) + family.shape, device=next(net.parameters()).device, dtype=dtype)
        image_shape = tuple(family.decode(probe).shape[1:])
    log.info("loaded %s (%s, %s, %d prompts, latents %s, images %s)", folder.name, family.pipeline, spec.schedule.kind,
             len(prompts), family.shape, image_shape)
    return LoadedModel(denoiser, spec.schedule, family.shape, num_classes=len(prompts), name=folder.name, path=folder,
                       module=net, decode=decode, image_shape=image_shape, prompts=tuple(prompts),
                       guidance_input=guidance_input, has_null=family.negative, metadata=metadata, pipeline=pipe)
