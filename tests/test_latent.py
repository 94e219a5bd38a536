"""A tiny randomly initialised latent pipeline (LDM layout: vqvae + unet + scheduler) end to end."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel, VQModel

from s4s.cli import main
from s4s.models import load_model


@pytest.fixture(scope="module")
def latent_pipeline(tmp_path_factory):
    from diffusers import LDMPipeline

    torch.manual_seed(0)
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(8,), layers_per_block=1,
                    norm_num_groups=4, num_vq_embeddings=16, vq_embed_dim=2)
    unet = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    path = tmp_path_factory.mktemp("ldm") / "pipe"
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDPMScheduler(beta_schedule="linear", clip_sample=False)).save_pretrained(path)
    return path


def test_latent_pipeline_loads_in_latent_space(latent_pipeline):
    model = load_model(latent_pipeline)
    assert model.is_latent and model.sample_shape == (2, 8, 8)
    assert model.decode(torch.zeros(1, 2, 8, 8)).shape == (1, 3, 8, 8)
    assert model.denoiser.clip_range is None


@pytest.mark.parametrize("decode_loss", [False, True])
def test_latent_pipeline_learns_and_samples_end_to_end(tmp_path, latent_pipeline, decode_loss, capsys):
    out = tmp_path / "solver.json"
    args = ["learn", "--model", str(latent_pipeline), "--nfe", "3", "--method", "s4s-alt", "--preset", "fast",
            "--teacher", "ddim:8", "--teacher-samples", "16", "--steps", "4", "--batch-size", "4", "--grid", "time",
            "--base", "dpmpp_3m", "--out", str(out), "--no-cache"] + (["--decode-loss", "--no-learn-a"] if decode_loss else [])
    assert main(args) == 0
    config = json.loads((tmp_path / "solver-run" / "config.json").read_text())
    assert config["learn_a"] is not decode_loss  # the preset's learn_a, or the flag's
    assert "learned s4s-alt NFE 3" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["nfe"] == 3 and saved["metadata"].get("loss_space") == ("decoded" if decode_loss else None)
    assert main(["eval", "--model", str(latent_pipeline), "--solver", str(out), "--num-samples", "8", "--metrics",
                 "teacher", "--teacher", "ddim:8", "--no-cache", "--json", "--save-images", str(tmp_path / "g.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["teacher_rmse"] > 0 and result["fd"] is None and (tmp_path / "g.png").exists()
