"""Loading models: the bundled MNIST model and local diffusers folders (never a hub).

:func:`load_model` accepts

* ``None`` - the bundled class-conditional MNIST UNet (``s4s/assets/mnist-unet``, a pipeline
  folder of :class:`s4s.ClassConditionalPipeline`: ``unet/``, ``scheduler/``, ``model_index.json``);
* a diffusers model folder (``config.json`` + weights of a ``UNet2DModel`` /
  ``UNet2DConditionModel``) with its ``scheduler_config.json`` beside it, or
* a diffusers pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``), optionally
  latent (LDM / Stable Diffusion layout: a ``vae/`` (AutoencoderKL) or ``vqvae/`` (VQModel)
  component): sampling and learning then run in latent space, and ``decode`` maps latents to images
  (``decoder(latents / scaling_factor)``, as the pipelines do).

It returns a :class:`LoadedModel`: the denoiser, its schedule and what sampling needs to know.
Class-conditional UNets (``num_class_embeds = K + 1``) use the last class ``K`` as the null label
of classifier-free guidance, the convention of the bundled model.
The denoised output D is clamped to ``[-r, r]`` when the scheduler config says ``clip_sample: true``
(``r = clip_sample_range``), as diffusers' own schedulers do with it; the bundled eps model's says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from s4s.bundled import data_set
from s4s.checks import first_line
from s4s.denoisers import Denoiser, module_device
from s4s.diffusers_config import read_scheduler_config
from s4s.schedules import Schedule

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "bundled_model_path", "DEFAULT_MODEL"]

DEFAULT_MODEL = "mnist-unet"
DATA_KEY = "_s4s_data"  # model_index.json: the data set the pipeline's model was trained on (diffusers ignores "_" keys)


def bundled_model_path(name: str = DEFAULT_MODEL) -> Path:
    from s4s.bundled import assets_dir

    return assets_dir() / name


@dataclass
class LoadedModel:
    """A model ready for sampling."""

    denoiser: Denoiser
    schedule: Schedule
    sample_shape: tuple[int, ...]
    num_classes: int = 0
    name: str = "model"
    path: Optional[Path] = None
    module: Optional[torch.nn.Module] = field(default=None, repr=False)
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = field(default=None, repr=False)
    image_shape: tuple[int, ...] = ()
    data: Optional[str] = None    # the declared data set (s4s.bundled.DATA_SETS), which picks feature networks
    # text-to-image pipelines (s4s.text2image): conditions are indices into these prompts
    prompts: Optional[tuple[str, ...]] = None
    guidance_input: bool = False  # the network takes the guidance scale as an input (FLUX.1-dev)
    has_null: bool = True         # an unconditional branch exists (the null class / the negative prompt)
    metadata: dict[str, Any] = field(default_factory=dict)  # recorded in solvers learned on this model
    pipeline: Any = field(default=None, repr=False)          # the diffusers pipeline it came from, if any

    def __post_init__(self) -> None:
        if not self.image_shape:
            self.image_shape = tuple(self.sample_shape)

    @property
    def is_latent(self) -> bool:
        return self.decode is not None

    @property
    def data_range(self) -> Optional[tuple[float, float]]:
        """The range of the samples' data (:mod:`s4s.teacher_distance`): for a pixel model the range its
        denoiser clamps D to, else ``[-1, 1]`` (what pixel pipelines display); none for latents."""
        if self.is_latent:
            return None
        from s4s.denoisers import clip_of
        from s4s.teacher_distance import pixel_data_range

        return pixel_data_range(clip_of(self.denoiser))

    @property
    def null_label(self) -> Optional[int]:
        return self.num_classes if self.num_classes and self.has_null else None

    def labels(self, n: int, start: int = 0, guided: bool = True) -> Optional[torch.Tensor]:
        """Class-balanced labels ``(start + i) mod K`` (or the null label when not ``guided``); for a
        text-to-image model the prompt indices ``(start + i) mod K`` whether guided or not."""
        if not self.num_classes:
            return None
        if not guided and self.prompts is None:
            return torch.full((n,), self.num_classes, dtype=torch.long)
        return (torch.arange(n) + start) % self.num_classes

    def learning_labels(self, n: int, val_fraction: float, guided: bool) -> Optional[torch.Tensor]:
        """Labels of ``n`` teacher noises whose last :func:`~s4s.teacher.validation_count` are for
        validation. Prompts are split so
        that validation prompts are never learned on: the first ``n - n_val`` noises cycle over the
        learning prompts, the rest over the validation prompts (:func:`s4s.text2image.prompts.split_prompts`)."""
        if self.prompts is None:
            return self.labels(n, guided=guided)
        from s4s.teacher import validation_count
        from s4s.text2image.prompts import split_prompts

        n_val = validation_count(n, val_fraction)
        k = split_prompts(len(self.prompts), val_fraction)
        learn = torch.arange(n - n_val) % k
        val = k + torch.arange(n_val) % (len(self.prompts) - k)
        return torch.cat([learn, val])

    def check_guidance(self, guidance: Optional[float]) -> None:
        """Refuse a guidance scale where there is nothing to guide towards (no classes, no unconditional
        branch), and a missing one for a network that takes the scale as an input."""
        if self.guidance_input:
            if guidance is None:
                raise ValueError(f"{self.name} takes its guidance scale as an input (guidance-distilled, e.g. "
                                 "FLUX.1-dev): pass --guidance W (FluxPipeline's default is 3.5)")
            return
        if guidance is not None and not self.num_classes:
            raise ValueError(f"--guidance needs a class-conditional model; {self.name} has no class labels")
        if guidance is not None and not self.has_null:
            raise ValueError(f"{self.name} has no unconditional branch (no negative prompt): it samples unguided; "
                             "drop --guidance")

    @property
    def device(self) -> torch.device:
        """Where the network's weights live (CPU for a module-less callable)."""
        return module_device(self.module) or torch.device("cpu")

    @property
    def fingerprint(self) -> Optional[str]:
        return self.denoiser.fingerprint



def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def _unet_class(config: dict[str, Any]):
    import diffusers

    name = config.get("_class_name", "UNet2DModel")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(f"unknown diffusers model class {name!r} in config.json")
    return cls


def _load_module(cls: Any, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``cls.from_pretrained(folder)``; a damaged, truncated or mismatched folder gives one ``ValueError``."""
    try:
        return cls.from_pretrained(str(folder), torch_dtype=dtype, low_cpu_mem_usage=False)
    except Exception as err:  # noqa: BLE001 - diffusers / safetensors raise many types for a bad folder
        raise ValueError(f"{folder}: cannot load the {cls.__name__} weights (damaged, truncated or not matching "
                         f"config.json?): {type(err).__name__}: {first_line(err, 300)}") from err


def _scheduler_config(folder: Path) -> dict[str, Any]:
    for candidate in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    raise ValueError(f"{folder}: no scheduler_config.json beside the model; it is needed to know the noise schedule")


def load_model(path: Optional[str | Path] = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, clip_denoised: Optional[bool] = None,
               data: Optional[str] = None, text: Any = None, cache: bool = True) -> LoadedModel:
    """Load a model for sampling (see module doc). ``data`` names the data set the model was trained on
    when it is one s4s ships networks for (:data:`s4s.bundled.DATA_SETS`); by default the pipeline
    folder's declaration (``"_s4s_data"`` in ``model_index.json``), else none. ``clip_denoised`` clamps D to the data range
    ``[-r, r]`` (the true posterior mean of data in that range lies there); default (``None``): as the
    folder's scheduler config says (``clip_sample``, ``clip_sample_range``; the bundled model's is on,
    r = 1), so a folder samples the same whether it is named by path or is the default; ``True``
    forces it (r from the config, else 1), ``False`` turns it off.

    Text-to-image pipeline folders (Stable Diffusion 1.x / 2.x, SDXL, SD3, FLUX) need ``text``, a
    :class:`s4s.text2image.TextToImageOptions` with the prompts; they load through
    :func:`s4s.text2image.load_text_to_image` (``cache``: the prompt-embedding cache)."""
    bundled = path is None
    folder = bundled_model_path() if bundled else Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"model not found: {folder}")
    decode = None
    pipeline_name = None
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        from s4s.text2image.pipelines import TEXT_TO_IMAGE_PIPELINES

        if index.get("_class_name") in TEXT_TO_IMAGE_PIPELINES:
            if text is None:
                raise ValueError(f"{folder} is a text-to-image pipeline ({index['_class_name']}): give prompts "
                                 "(--prompts FILE)")
            if clip_denoised or data is not None:
                raise ValueError("clip_denoised / --data do not apply to text-to-image pipelines")
            from s4s.text2image.loader import load_text_to_image

            return load_text_to_image(folder, text, device=device, dtype=dtype, cache=cache)
        if "unet" not in index:
            raise ValueError(f"{folder}: pipeline {index.get('_class_name')} is not supported (no 'unet' component); "
                             f"text-to-image pipelines supported: {', '.join(TEXT_TO_IMAGE_PIPELINES)}; others: the "
                             "Python API, Denoiser.from_diffusers / from_flow with your module")
        decode = _load_decoder(folder, index, device, dtype)
        declared = index.get(DATA_KEY)
        if data is None and declared is not None:
            data = str(declared)
        pipeline_name = folder.name
        folder = folder / "unet"
    if text is not None:
        raise ValueError(f"--prompts is for text-to-image pipeline folders; {folder} is not one")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: not a diffusers model folder (no config.json)")
    config = _read_json(folder / "config.json")
    sched_cfg = _scheduler_config(folder)
    spec = read_scheduler_config(sched_cfg)  # refuse an unusable scheduler config before loading any weights
    unet = _load_module(_unet_class(config), folder, dtype).to(device).eval().requires_grad_(False)
    if config.get("cross_attention_dim") is not None and "Condition" in str(config.get("_class_name")):
        raise ValueError(f"{folder}: text-conditioned UNets need prompt embeddings; use the Python API: "
                         "Denoiser.from_diffusers(pipe, null_cond={'encoder_hidden_states': negative_emb}) with "
                         "cond={'encoder_hidden_states': emb} (README, Integrations)")
    n_embeds = config.get("num_class_embeds") or 0
    num_classes = max(n_embeds - 1, 0)
    sample_size = config.get("sample_size")
    if not sample_size:
        raise ValueError(f"{folder}/config.json has no sample_size: the sample shape is unknown")
    hw = tuple(sample_size) if isinstance(sample_size, (list, tuple)) else (sample_size, sample_size)
    clip = spec.clip_range
    if clip_denoised is not None:
        clip = (clip or (-1.0, 1.0)) if clip_denoised else None
    denoiser = Denoiser.from_diffusers(unet, sched_cfg, null_cond=num_classes if num_classes else None, clip_range=clip)
    schedule = spec.schedule
    name = "bundled MNIST UNet" if bundled else (pipeline_name or folder.name)
    log.info("loaded %s (%s, %s, %d classes)", name, type(unet).__name__, schedule.kind, num_classes)
    shape = (config.get("in_channels", 3),) + hw
    image_shape = shape
    if decode is not None:
        with torch.no_grad():
            image_shape = tuple(decode(torch.zeros((1,) + shape, device=device, dtype=dtype)).shape[1:])
    data_set(data, image_shape, name)  # an unknown data set, or one whose networks do not fit: refused here
    return LoadedModel(denoiser, schedule, shape, num_classes, name, folder, unet, decode, image_shape, data)


def _load_decoder(folder: Path, index: dict[str, Any], device: torch.device | str,
                  dtype: torch.dtype) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The pipeline's latent decoder (``vae`` or ``vqvae`` component), or None for pixel pipelines."""
    import diffusers

    for name in ("vae", "vqvae"):
        if name in index and (folder / name / "config.json").is_file():
            cfg = _read_json(folder / name / "config.json")
            cls = getattr(diffusers, cfg.get("_class_name", "AutoencoderKL"))
            vae = _load_module(cls, folder / name, dtype)
            vae = vae.to(device).eval().requires_grad_(False)
            scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)

            def decode(latents: torch.Tensor) -> torch.Tensor:
                return vae.decode(latents.to(dtype) / scale).sample.to(latents.dtype)

            return decode
    return None
