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


def t5_tokenizer(folder: Path, max_length: int = 8):
    """A T5 (Unigram) tokenizer over letters, with and without the word-start mark, built offline."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("\u2581" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=56, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                                   pad_token_id=0, eos_token_id=1)).eval()


def tiny_sd_text(tmp: Path, seed: int = 0):
    """A ``StableDiffusionPipeline`` with the components of :func:`tiny_sd`."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd(tmp, seed=seed).components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl(tmp: Path, seed: int = 0):
    """A ``StableDiffusionXLPipeline`` (8x8 latents, 4 channels, two CLIP encoders, micro-conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4, addition_embed_type="text_time",
                                addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4,
                                transformer_layers_per_block=1).eval()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(_clip_config()).eval(),
                                     text_encoder_2=CLIPTextModelWithProjection(_clip_config()).eval(),
                                     tokenizer=clip_tokenizer(tmp / "tokenizer"),
                                     tokenizer_2=clip_tokenizer(tmp / "tokenizer_2"), unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(tmp: Path, guidance_embeds: bool = True, seed: int = 0):
    """A ``FluxPipeline`` (16x16 latents of 4 channels packed into 64 tokens of 16; CLIP and T5 encoders)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=4, num_attention_heads=2, joint_attention_dim=8,
                                         pooled_projection_dim=8, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(0, 2, 2)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_vae(), text_encoder=CLIPTextModel(_clip_config()).eval(),
                        tokenizer=clip_tokenizer(tmp / "tokenizer"), text_encoder_2=tiny_t5(),
                        tokenizer_2=t5_tokenizer(tmp / "tokenizer_2"), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip(folder: Path) -> Path:
    """A random-weight ``CLIPModel`` with its ``CLIPProcessor`` (8x8 images), saved to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    text = _clip_config().to_dict()
    vision = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                  patch_size=4)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    images = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    processor = CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer(folder / "tok"))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
