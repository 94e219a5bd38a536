"""Tiny random-weight diffusers pipelines, built offline from configs (nothing is downloaded).

The tokenizer is a CLIP BPE tokenizer over a 54-entry vocabulary (letters, with and without the
end-of-word mark) and no merges, written to a temporary folder; the networks are the smallest
configs their classes accept. Fast enough to build in every test that needs one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def clip_tokenizer(folder: Path, max_length: int = 8):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def _clip_config(hidden: int = 8, projection: int = 8):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=54, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=8, projection_dim=projection,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8,),
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         layers_per_block=1, norm_num_groups=4, sample_size=8).eval()


def tiny_sd(tmp: Path, scheduler=None, seed: int = 0):
    """A ``StableDiffusionImg2ImgPipeline`` (8x8 latents, 4 channels; VAE scale factor 1)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2, norm_num_groups=4).eval()
    scheduler = scheduler or DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(_clip_config()).eval(),
                                          tokenizer=clip_tokenizer(tmp / "tokenizer"), unet=unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(tmp: Path, scheduler=None, seed: int = 0):
    """A ``StableDiffusion3Pipeline`` without its T5 encoder (8x8 latents, 4 channels, patch 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                        caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8).eval()
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
                                    vae=tiny_vae(), text_encoder=CLIPTextModelWithProjection(_clip_config()).eval(),
                                    tokenizer=clip_tokenizer(tmp / "tokenizer"),
                                    text_encoder_2=CLIPTextModelWithProjection(_clip_config()).eval(),
                                    tokenizer_2=clip_tokenizer(tmp / "tokenizer_2"), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe
