"""Text-to-image pipelines (Stable Diffusion 1.x / 2.x, SDXL, SD3, FLUX) as s4s models: prompts in,
latent-space denoiser and decoder out (:mod:`s4s.text2image.pipelines`, :mod:`s4s.text2image.loader`)."""

from s4s.text2image.loader import load_text_to_image
from s4s.text2image.pipelines import TEXT_TO_IMAGE_PIPELINES, TextToImageOptions
from s4s.text2image.prompts import read_prompts

__all__ = ["load_text_to_image", "TEXT_TO_IMAGE_PIPELINES", "TextToImageOptions", "read_prompts"]
