r"""CLIP score of text-to-image samples, with CLIP weights from a local folder (never a hub).

``CLIPScore(I, C) = max(100 cos(E_I, E_C), 0)``, averaged over the samples (Hessel et al. 2021, the
definition torchmetrics uses): ``E_I`` the CLIP image embedding of the sample as a user sees it
(the decoded image in ``[-1, 1]`` mapped to 8-bit RGB, as pipelines post-process it) and ``E_C``
the text embedding of its prompt. The folder is a ``transformers`` ``CLIPModel`` saved with its
processor (``config.json``, weights, tokenizer files, ``preprocessor_config.json``), e.g. a local
copy of ``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from s4s.checks import first_line

__all__ = ["ClipScorer", "to_uint8"]

CLIP_HELP = ("--clip-model needs a local transformers CLIP folder (CLIPModel.save_pretrained and "
             "CLIPProcessor.save_pretrained into one folder, e.g. a copy of openai/clip-vit-large-patch14)")


def to_uint8(images: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` as 8-bit RGB, ``round(255 clamp(x / 2 + 0.5, 0, 1))`` (diffusers' post-processing)."""
    return (images.float().div(2).add(0.5).clamp(0, 1) * 255).round().to(torch.uint8)


class ClipScorer:
    """A local CLIP model and processor; :meth:`score` gives the per-sample CLIP scores."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu"):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model at {folder}: {CLIP_HELP}")
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as err:
            raise ImportError(f"the CLIP score needs transformers (pip install 's4s[text]'): {err}") from None
        try:
            self.model = CLIPModel.from_pretrained(str(folder)).to(device).eval().requires_grad_(False)
            self.processor = CLIPProcessor.from_pretrained(str(folder))
        except Exception as err:  # noqa: BLE001 - transformers raises many types for a bad folder
            raise ValueError(f"{folder}: cannot load a CLIP model and processor ({type(err).__name__}: "
                             f"{first_line(err, 200)}); {CLIP_HELP}") from err
        self.device = torch.device(device)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``max(100 cos(E_I, E_C), 0)`` for each image (B, 3, H, W) in ``[-1, 1]`` and its prompt."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the CLIP score needs RGB images (B, 3, H, W), got {tuple(images.shape)}")
        pixels = self.processor(images=[im for im in to_uint8(images).cpu()], return_tensors="pt")["pixel_values"]
        text = self.processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_length)
        image_emb = _as_tensor(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        text_emb = _as_tensor(self.model.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                           attention_mask=text["attention_mask"].to(self.device)))
        cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
        return (100 * cos).clamp(min=0).cpu()


def _as_tensor(out: object) -> Tensor:
    """``get_*_features`` returns a tensor (or, in some transformers versions, an output with ``pooler_output``)."""
    return out if isinstance(out, Tensor) else out.pooler_output  # type: ignore[attr-defined]
