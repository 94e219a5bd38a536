"""Export a trained UNet (``scripts/train_mnist_unet.py --out DIR``) as the bundled model folder.

Writes a diffusers pipeline folder of :class:`s4s.ClassConditionalPipeline`: ``unet/`` (config and
float16 weights, half the size; loaded as float32), ``scheduler/`` (the training schedule: DDPM
linear betas for ``eps``, ``FlowMatchEulerDiscreteScheduler`` for ``flow``) and ``model_index.json``.

Usage: ``python scripts/export_bundled_model.py /work/train/mnist-unet src/s4s/assets/mnist-unet``
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

from s4s.models import DATA_KEY

from s4s.integrations.pipeline import ClassConditionalPipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args()
    info = json.loads((args.src / "training.json").read_text())
    unet = UNet2DModel.from_pretrained(str(args.src)).to(torch.float16)
    if info["objective"] == "eps":
        sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              prediction_type="epsilon", clip_sample=True)  # D clamped to the data range [-1, 1]
    else:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    ClassConditionalPipeline(unet=unet, scheduler=sched).save_pretrained(str(args.dst))
    index_path = args.dst / "model_index.json"  # declare the data set: it picks the bundled feature networks
    index = json.loads(index_path.read_text())
    index[DATA_KEY] = "mnist"
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    shutil.copy(args.src / "training.json", args.dst / "training.json")
    print(f"exported step {info.get('trained_steps', info.get('steps'))} to {args.dst}")


if __name__ == "__main__":
    main()
