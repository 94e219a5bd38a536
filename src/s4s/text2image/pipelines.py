r"""Text-to-image diffusers pipelines as s4s models: one small adapter per family.

Supported folders (``model_index.json`` ``_class_name``): ``StableDiffusionPipeline`` (SD 1.x / 2.x),
``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline`` and ``FluxPipeline``. Each adapter uses
the pipeline's own code for what it knows best: ``encode_prompt`` (and the pooled embeddings),
SDXL's ``_get_add_time_ids`` micro-conditioning, FLUX's ``_prepare_latent_image_ids`` /
``_unpack_latents`` and the resolution-dependent shift ``calculate_shift``; the network is called
with exactly the inputs the pipeline's denoising loop gives it.

**Conditioning by index.** The prompts are encoded once into a table (one row per prompt, the
negative prompt as the last row) and the text encoders are dropped. The model's condition is a
vector of row indices, like class labels: ``cond = k`` samples prompt ``k``, and classifier-free
guidance batches ``[rows; negative row]`` into one call, ``D = D_u + w (D_c - D_u)``. Teacher
batches, learning and evaluation then handle prompts exactly as they handle classes; the table's
digest enters the teacher cache key (other prompts, other negative prompt or other text encoder:
other teacher samples).

**Guidance-distilled FLUX** (``guidance_embeds: true``, FLUX.1-dev): the scale is an input of the
network, not a second branch; ``guidance=w`` reaches the transformer as its ``guidance`` embedding
and there is no unconditional call. FLUX without a guidance embedding (FLUX.1-schnell) samples
unguided (its "true CFG" is two calls a step, which s4s does not count as one).

**Latents.** The sample is the latent the pipeline's loop carries: ``(C, H/f, W/f)`` for SD / SDXL /
SD3 (``f`` the VAE scale factor) and FLUX's packed ``(H/2f * W/2f, 4C)``. ``decode`` maps it to
images in ``[-1, 1]`` as the pipeline does before post-processing (``latents / scaling_factor +
shift_factor``, unpacked first for FLUX). Flow schedulers with ``use_dynamic_shifting`` shift by
``mu`` from the image's token count; it is recorded in the learned solver's metadata, and
:class:`~s4s.S4SScheduler` refuses a pipeline call at another resolution.

**Embedding cache.** The table is cached under ``$S4S_CACHE/prompts`` keyed by the text encoders'
files (names, sizes and the first and last MiB of each), the prompts, the negative prompt, the
family's encoding settings and the dtype; a hit loads the pipeline without its text encoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["TEXT_TO_IMAGE_PIPELINES", "TextToImageOptions", "ENCODE_BATCH"]

ENCODE_BATCH = 16  # prompts per encode_prompt call


@dataclass(frozen=True)
class TextToImageOptions:
    """What a text-to-image model is loaded for: the prompts, the negative prompt (the unconditional
    branch; ``None``: the pipeline's default, an empty prompt, or zeros where SDXL says so), the image
    size (default: the pipeline's) and, for FLUX / SD3, the T5 sequence length (default: the pipeline's)."""

    prompts: tuple[str, ...]
    negative_prompt: Optional[str] = None
    height: Optional[int] = None
    width: Optional[int] = None
    max_sequence_length: Optional[int] = None


class _Family:
    """How one pipeline class encodes prompts, calls its network and decodes latents, at one image size."""

    pipeline: str = ""
    network: str = "unet"
    encoders: tuple[str, ...] = ("text_encoder", "tokenizer")
    negative: bool = True               # has an unconditional (negative-prompt) branch
    time_scale: Optional[float] = None  # None: the scheduler config's convention
    max_shift_default: float = 1.16     # the pipeline's default for calculate_shift

    def __init__(self, pipe: Any, height: Optional[int], width: Optional[int]):
        self.pipe = pipe
        self.net = getattr(pipe, self.network)
        size = self.default_size()
        self.height, self.width = int(height or size), int(width or size)
        m = self.multiple()
        for name, value in (("height", self.height), ("width", self.width)):
            if value < m or value % m:
                raise ValueError(f"--{name} {value}: {self.pipeline} needs a positive multiple of {m}")
        self.shape = self.latent_shape()

    @property
    def vae_scale(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def default_size(self) -> int:
        return int(self.pipe.default_sample_size * self.vae_scale)

    def multiple(self) -> int:
        return self.vae_scale

    def latent_shape(self) -> tuple[int, ...]:
        f = self.vae_scale
        return (int(self.net.config.in_channels), self.height // f, self.width // f)

    def seq_len(self) -> int:
        """Image tokens, for the resolution-dependent shift of flow schedulers."""
        patch = int(getattr(self.net.config, "patch_size", 1) or 1)
        return (self.shape[1] // patch) * (self.shape[2] // patch)

    def encode(self, prompts: list[str], negative: Optional[str], device: Any,
               options: TextToImageOptions) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(rows of ``prompts``, the negative row), each a dict of tensors with a leading batch dim."""
        raise NotImplementedError

    def extra_rows(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prompt-independent inputs stored beside the table (SDXL's time ids)."""
        return {}

    def call(self, x: Tensor, t: Tensor, rows: dict[str, Tensor], guidance: Optional[float]) -> Tensor:
        """The network's output for states ``x`` at network times ``t`` with the gathered ``rows``."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Images in ``[-1, 1]`` (unclamped), as the pipeline decodes before post-processing."""
        vae = self.pipe.vae
        z = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        return vae.decode(z.to(vae.dtype)).sample


class _SD(_Family):
    pipeline = "StableDiffusionPipeline"

    def default_size(self) -> int:
        return int(self.net.config.sample_size * self.vae_scale)

    def encode(self, prompts, negative, device, options):
        emb, neg = self.pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[negative or ""] * len(prompts))
        return {"encoder_hidden_states": emb}, {"encoder_hidden_states": neg[:1]}

    def call(self, x, t, rows, guidance):
        return self.net(x, t, encoder_hidden_states=rows["encoder_hidden_states"], return_dict=False)[0]


class _SDXL(_SD):
    pipeline = "StableDiffusionXLPipeline"
    encoders = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    def encode(self, prompts, negative, device, options):
        emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=None if negative is None else [negative] * len(prompts))
        return ({"encoder_hidden_states": emb, "text_embeds": pooled},
                {"encoder_hidden_states": neg[:1], "text_embeds": neg_pooled[:1]})

    def extra_rows(self, table):
        pooled = table["text_embeds"]
        size = (self.height, self.width)
        ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=pooled.dtype,
                                          text_encoder_projection_dim=int(pooled.shape[-1]))
        return {"time_ids": ids.to(pooled.device).expand(pooled.shape[0], -1).contiguous()}

    def call(self, x, t, rows, guidance):
        added = {"text_embeds": rows["text_embeds"], "time_ids": rows["time_ids"]}
        return self.net(x, t, encoder_hidden_states=rows["encoder_hidden_states"], added_cond_kwargs=added,
                        return_dict=False)[0]


class _SD3(_Family):
    pipeline = "StableDiffusion3Pipeline"
    network = "transformer"
    encoders = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")

    def encode(self, prompts, negative, device, options):
        kw = {} if options.max_sequence_length is None else {"max_sequence_length": options.max_sequence_length}
        emb, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=True,
            negative_prompt=[negative or ""] * len(prompts), **kw)
        return ({"encoder_hidden_states": emb, "pooled_projections": pooled},
                {"encoder_hidden_states": neg[:1], "pooled_projections": neg_pooled[:1]})

    def call(self, x, t, rows, guidance):
        return self.net(hidden_states=x, timestep=t, encoder_hidden_states=rows["encoder_hidden_states"],
                        pooled_projections=rows["pooled_projections"], return_dict=False)[0]


class _Flux(_Family):
    pipeline = "FluxPipeline"
    network = "transformer"
    encoders = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    negative = False
    time_scale = 1.0  # the transformer takes sigma itself (the pipeline passes timestep / 1000)
    max_shift_default = 1.15

    def __init__(self, pipe: Any, height: Optional[int], width: Optional[int]):
        super().__init__(pipe, height, width)
        self._ids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def multiple(self) -> int:
        return self.vae_scale * 2

    def latent_shape(self):
        f = self.vae_scale
        self.latent_hw = (2 * (self.height // (f * 2)), 2 * (self.width // (f * 2)))
        h, w = self.latent_hw
        return ((h // 2) * (w // 2), int(self.net.config.in_channels))

    def seq_len(self):
        return int(self.shape[0])

    @property
    def guidance_input(self) -> bool:
        return bool(self.net.config.guidance_embeds)

    def encode(self, prompts, negative, device, options):
        kw = {} if options.max_sequence_length is None else {"max_sequence_length": options.max_sequence_length}
        emb, pooled, _ = self.pipe.encode_prompt(prompts, None, device=device, **kw)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}, {}

    def _position_ids(self, text_len: int, device, dtype):
        """The (text, image) position ids the pipeline passes: the same at every call of one resolution,
        so they are built once per (text length, device, dtype)."""
        key = (text_len, device, dtype)
        if key not in self._ids:
            h, w = self.latent_hw
            self._ids[key] = (torch.zeros(text_len, 3, device=device, dtype=dtype),
                              self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype))
        return self._ids[key]

    def call(self, x, t, rows, guidance):
        txt_ids, img_ids = self._position_ids(rows["encoder_hidden_states"].shape[1], x.device, x.dtype)
        g = None
        if self.guidance_input:
            if guidance is None:
                raise ValueError("this FLUX transformer takes its guidance scale as an input (guidance-distilled, e.g. "
                                 "FLUX.1-dev): pass --guidance W (FluxPipeline's default is 3.5)")
            g = torch.full((x.shape[0],), float(guidance), device=x.device, dtype=torch.float32)
        return self.net(hidden_states=x, timestep=t, guidance=g, pooled_projections=rows["pooled_projections"],
                        encoder_hidden_states=rows["encoder_hidden_states"], txt_ids=txt_ids, img_ids=img_ids,
                        return_dict=False)[0]

    def decode(self, latents):
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.vae_scale)
        return super().decode(unpacked)


TEXT_TO_IMAGE_PIPELINES: dict[str, type[_Family]] = {f.pipeline: f for f in (_SD, _SDXL, _SD3, _Flux)}
