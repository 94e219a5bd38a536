"""Train the bundled class-conditional MNIST diffusion model (reproduces the shipped weights).

Recipe (written into the model card): diffusers ``UNet2DModel`` (blocks 32/64/96,
one ResNet layer per block, self-attention only at 7x7), 11 class embeddings
(digits 0-9 and a null class 10 for classifier-free guidance, labels dropped
with probability ``--p-uncond``), Adam, linear warm-up, EMA of the weights.

Objectives:
  eps  - DDPM: linear betas 1e-4..0.02 over 1000 steps, x_t = sqrt(abar) x0 + sqrt(1-abar) eps,
         the network predicts eps from (x_t, t) with integer t in [0, 999].
  flow - rectified flow: x_t = (1-t) x0 + t eps, t ~ U(0, 1), the network predicts the
         velocity v = eps - x0 from (x_t, 1000 t).

Usage::

    python scripts/train_mnist_unet.py --objective eps --steps 6000 --out src/s4s/assets/mnist-unet
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

from s4s.data import load_mnist

log = logging.getLogger("train_mnist_unet")
NULL_CLASS = 10


def make_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=NULL_CLASS + 1,
        norm_num_groups=16,
        attention_head_dim=32,
    )


def training_pair(x0: torch.Tensor, objective: str, alphas_cumprod: torch.Tensor, gen: torch.Generator):
    """Return (x_t, model time, regression target) for one batch (on ``x0.device``)."""
    dev = x0.device
    eps = torch.randn(x0.shape, generator=gen, device=dev)
    n = x0.shape[0]
    if objective == "eps":
        t = torch.randint(0, len(alphas_cumprod), (n,), generator=gen, device=dev)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t, eps
    t = torch.rand(n, generator=gen, device=dev)
    tt = t.view(-1, 1, 1, 1)
    return (1 - tt) * x0 + tt * eps, t * 1000.0, eps - x0


def lr_factor(args: argparse.Namespace, step: int, elapsed: float) -> float:
    """Multiplier of the base learning rate after warm-up: 1, or the cosine 0.5 (1 + cos(pi p)) of progress p."""
    if args.lr_decay == "none":
        return 1.0
    p = step / args.steps
    if args.max_seconds is not None:
        p = max(p, elapsed / args.max_seconds)
    return 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=["eps", "flow"], default="eps")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--lr-decay", choices=["none", "cosine"], default="none",
                   help="cosine: lr follows 0.5 (1 + cos(pi p)) after warm-up, p = the larger of step / --steps and "
                        "elapsed / --max-seconds, so it reaches 0 when training stops")
    p.add_argument("--p-uncond", type=float, default=0.12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (random streams differ between devices)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="also stop after this much training time; training.json records the steps reached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init-from", type=Path, default=None,
                   help="start model and EMA from these diffusers weights (e.g. the bundled model) to train on")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True

    data = load_mnist()
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)

    model = make_unet().to(device)
    if args.init_from is not None:
        folder = args.init_from / "unet" if (args.init_from / "unet").is_dir() else args.init_from  # pipeline or model folder
        model.load_state_dict(UNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False).float().state_dict())
        log.info("initialised from %s", args.init_from)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    state_path = args.out.with_name(args.out.name + "-train-state.pt")
    step = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=device)
        model.load_state_dict(state["model"]), ema.load_state_dict(state["ema"]), opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())  # RNG states are CPU byte tensors, whatever the device
        step = state["step"]
        log.info("resumed at step %d", step)
    log.info("parameters: %d", sum(p.numel() for p in model.parameters()))
    t0 = t_start = time.time()
    running, last = None, False
    while step < args.steps and not last:
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen, device=device)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen, device=device) < args.p_uncond] = NULL_CLASS
        xt, t, target = training_pair(x0, args.objective, alphas_cumprod, gen)
        loss = torch.nn.functional.mse_loss(model(xt, t, class_labels=y).sample, target)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * lr_factor(args, step, time.time() - t_start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        if step % 50 == 0:
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            log.info("step %d loss %.4f (%.3f s/step)", step, running, (time.time() - t0) / 50)
            t0 = time.time()
        last = args.max_seconds is not None and time.time() - t_start > args.max_seconds
        if step % args.save_every == 0 or step == args.steps or last:
            ema.save_pretrained(args.out)
            (args.out / "training.json").write_text(
                json.dumps({**{k: str(v) for k, v in vars(args).items()}, "objective": args.objective, "trained_steps": step},
                           indent=1)
            )
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state(), "step": step}, state_path)


if __name__ == "__main__":
    main()
