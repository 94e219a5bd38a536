r"""``ClassConditionalPipeline``: a diffusers pipeline for class-conditional pixel UNets.

diffusers' ``DDPMPipeline`` calls ``unet(x, t)`` without class labels, which a UNet with class
embeddings refuses. This pipeline takes ``class_labels`` and a classifier-free ``guidance_scale``,
with the convention of the bundled models: ``num_class_embeds = K + 1`` and the last class ``K`` is
the null label (unconditional). Guidance is one batched call a step (``[labels; null]``) combined
as ``out = out_u + w (out_c - out_u)``, which is the same as guiding D (the conversions to D are
affine in the output). Any diffusers scheduler works, :class:`~s4s.S4SScheduler` included.

The bundled models ship as pipeline folders of this class::

    pipe = s4s.ClassConditionalPipeline.from_pretrained(s4s.models.bundled_model_path())
    pipe.scheduler = s4s.S4SScheduler.from_solver(solver, pipe.scheduler)
    images = pipe(class_labels=[3, 7], guidance_scale=2.0).images

(``DiffusionPipeline.from_pretrained`` resolves pipeline classes inside diffusers only, so load the
folder through this class.)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["ClassConditionalPipeline"]


class ClassConditionalPipeline(DiffusionPipeline):
    """``unet`` (a ``UNet2DModel``, optionally with ``num_class_embeds = K + 1``) and a ``scheduler``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: Any, scheduler: Any):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def null_label(self) -> Optional[int]:
        """The unconditional class (the last embedding), or None for an unconditional UNet."""
        n = self.unet.config.get("num_class_embeds") or 0
        return n - 1 if n > 1 else None

    @torch.no_grad()
    def __call__(self, class_labels: Union[Sequence[int], torch.Tensor, None] = None, batch_size: Optional[int] = None,
                 guidance_scale: Optional[float] = None, num_inference_steps: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, output_type: str = "pil",
                 return_dict: bool = True) -> Union[ImagePipelineOutput, tuple]:
        """Sample images.

        ``class_labels``: one label per image (``None``: unconditional, the null label); ``batch_size``
        defaults to their number (or 1). ``guidance_scale`` ``w``: classifier-free guidance (``None``: the
        scale an :class:`~s4s.S4SScheduler`'s solver was learned with, else the conditional model alone). ``num_inference_steps``: default the scheduler's solver NFE for an
        :class:`~s4s.S4SScheduler`, else 50. The initial noise is ``randn * scheduler.init_noise_sigma``.
        """
        null = self.null_label
        if class_labels is not None:
            if null is None:
                raise ValueError("class_labels given, but this UNet has no class embeddings")
            labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
            if batch_size is not None and batch_size != labels.numel():
                raise ValueError(f"batch_size={batch_size} but {labels.numel()} class_labels")
            if bool(((labels < 0) | (labels >= null)).any()):
                raise ValueError(f"class_labels must lie in 0..{null - 1} (label {null} is the null class)")
        else:
            if guidance_scale is not None:
                raise ValueError("guidance_scale needs class_labels (guidance of the unconditional model is meaningless)")
            labels = None if null is None else torch.full((batch_size or 1,), null, dtype=torch.long)
        if guidance_scale is None and class_labels is not None:
            recorded = getattr(getattr(self.scheduler, "solver", None), "metadata", {}).get("guidance")
            guidance_scale = recorded  # an S4SScheduler's solver samples at the scale it was learned for
        n = labels.numel() if labels is not None else (batch_size or 1)
        if num_inference_steps is None:
            solver = getattr(self.scheduler, "solver", None)
            num_inference_steps = solver.nfe if solver is not None else 50
        device = self._execution_device
        size = self.unet.config.sample_size
        hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        shape = (n, self.unet.config.in_channels) + hw
        x = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if labels is not None:
            labels = labels.to(device)
        guided = guidance_scale is not None and labels is not None
        both = torch.cat([labels, torch.full_like(labels, null)]) if guided else None
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(x, t)
            if guided:
                out = self.unet(torch.cat([model_in, model_in]), t, class_labels=both).sample
                out_c, out_u = out.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)
            else:
                out = self.unet(model_in, t, class_labels=labels).sample
            x = self.scheduler.step(out, t, x).prev_sample
        image = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=image) if return_dict else (image,)
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
