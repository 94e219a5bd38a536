"""Train one model of the generalization suite: small diffusion models that differ from the bundled MNIST
models in what matters to a solver (prediction type, noise schedule, resolution, channels, data), each
trained on this CPU in minutes on procedurally generated images (nothing downloaded).

=======================  ========  ==================  =====================  ===================  ==========
name                     data      size                prediction             schedule             condition
=======================  ========  ==================  =====================  ===================  ==========
shapes16-v-cosine        shapes    3 x 16 x 16         ``v_prediction``       cosine (squaredcos)  3 shapes
shapes16-x0-scaled       shapes    3 x 16 x 16         ``sample`` (x0)        scaled-linear (LDM)  none
textures32-eps-linear    textures  1 x 32 x 32         ``epsilon``            linear (DDPM)        none
textures32-flow          textures  1 x 32 x 32         ``flow_prediction``    rectified flow       none
=======================  ========  ==================  =====================  ===================  ==========

*shapes*: a disk, square or triangle of random size, position and colour on a random background colour
(the class is the shape). *textures*: the sum of two oriented sinusoidal gratings of random frequency,
phase and orientation, in a random colour (grayscale for one channel). Images lie in ``[-1, 1]``; every
training batch is freshly generated, so the model never sees an image twice.

The network is a small diffusers ``UNet2DModel`` (no attention); training is DDPM-style regression of the
prediction type's target (``eps``, ``v = alpha eps - sigma x0``, ``x0``, or the velocity ``eps - x0`` at
``t ~ U(0, 1)``), Adam with warm-up and an EMA of the weights, for ``--max-seconds``. The result is a
pipeline folder of :class:`s4s.ClassConditionalPipeline` (``unet/`` in float16, ``scheduler/`` with
``clip_sample: false``, ``model_index.json``), ``training.json`` and a model card.

Usage::

    python scripts/train_suite_model.py shapes16-v-cosine --max-seconds 600 --out benchmarks/suite/shapes16-v-cosine
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
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

from s4s.integrations.pipeline import ClassConditionalPipeline

log = logging.getLogger("train_suite_model")

SUITE = {
    "shapes16-v-cosine": dict(data="shapes", size=16, channels=3, prediction="v_prediction",
                              betas=dict(beta_schedule="squaredcos_cap_v2"), classes=3),
    "shapes16-x0-scaled": dict(data="shapes", size=16, channels=3, prediction="sample",
                               betas=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), classes=0),
    "textures32-eps-linear": dict(data="textures", size=32, channels=1, prediction="epsilon",
                                  betas=dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02), classes=0,
                                  blocks=(16, 32, 32)),
    "textures32-flow": dict(data="textures", size=32, channels=1, prediction="flow_prediction", betas=None, classes=0,
                            blocks=(16, 32, 32)),
}


def shapes(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of one disk, square or triangle (labels 0, 1, 2) on a plain background, in [-1, 1]."""
    coords = (torch.arange(size) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kind = torch.randint(0, 3, (n,), generator=gen)
    centre = 0.25 + 0.5 * torch.rand(n, 2, generator=gen)
    radius = 0.12 + 0.18 * torch.rand(n, generator=gen)
    dy, dx = yy[None] - centre[:, 0, None, None], xx[None] - centre[:, 1, None, None]
    r = radius[:, None, None]
    disk = dy ** 2 + dx ** 2 <= r ** 2
    square = (dy.abs() <= r * 0.85) & (dx.abs() <= r * 0.85)
    triangle = (dy <= r * 0.8) & (dy >= -r) & (dx.abs() <= (dy + r) * 0.6)
    mask = torch.where(kind[:, None, None] == 0, disk, torch.where(kind[:, None, None] == 1, square, triangle))
    fg, bg = torch.rand(n, 3, 1, 1, generator=gen), torch.rand(n, 3, 1, 1, generator=gen)
    img = torch.where(mask[:, None], fg, bg)
    return img * 2 - 1, kind


def textures(n: int, size: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` images of two summed oriented sinusoidal gratings in a random colour, in [-1, 1]."""
    coords = torch.arange(size) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    total = torch.zeros(n, size, size)
    for _ in range(2):
        angle = math.pi * torch.rand(n, 1, 1, generator=gen)
        freq = 1.0 + 5.0 * torch.rand(n, 1, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
        total = total + torch.sin(2 * math.pi * freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
    pattern = total / 2  # in [-1, 1]
    if channels == 1:
        return pattern[:, None]
    colour = torch.rand(n, channels, 1, 1, generator=gen) * 2 - 1
    return (pattern[:, None] * colour).clamp(-1, 1)


def make_batch(spec: dict, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    if spec["data"] == "shapes":
        x, y = shapes(n, spec["size"], gen)
        return x, (y if spec["classes"] else None)
    return textures(n, spec["size"], spec["channels"], gen), None


def make_unet(spec: dict) -> UNet2DModel:
    return UNet2DModel(sample_size=spec["size"], in_channels=spec["channels"], out_channels=spec["channels"],
                       block_out_channels=spec.get("blocks", (32, 64, 64)), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       num_class_embeds=(spec["classes"] + 1) if spec["classes"] else None, norm_num_groups=8)


def make_scheduler(spec: dict):
    if spec["prediction"] == "flow_prediction":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDPMScheduler(num_train_timesteps=1000, prediction_type=spec["prediction"], clip_sample=False, **spec["betas"])


def training_pair(spec: dict, x0: torch.Tensor, abar: torch.Tensor, gen: torch.Generator):
    """(x_t, network time, regression target) of the spec's prediction type."""
    n = x0.shape[0]
    eps = torch.randn(x0.shape, generator=gen)
    if spec["prediction"] == "flow_prediction":
        t = torch.rand(n, generator=gen).view(-1, 1, 1, 1)
        return (1 - t) * x0 + t * eps, t.flatten() * 1000.0, eps - x0
    t = torch.randint(0, len(abar), (n,), generator=gen)
    a, s = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
    target = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[spec["prediction"]]
    return a * x0 + s * eps, t, target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(SUITE))
    p.add_argument("--max-seconds", type=float, default=600.0, help="training time budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--p-uncond", type=float, default=0.15, help="label dropout (class-conditional models)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = SUITE[args.name]
    gen = torch.Generator().manual_seed(args.seed)
    sched = make_scheduler(spec)
    abar = getattr(sched, "alphas_cumprod", torch.ones(1)).float()
    model = make_unet(spec)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    params = sum(q.numel() for q in model.parameters())
    log.info("%s: %d parameters", args.name, params)
    t_start = t0 = time.time()
    step, running = 0, None
    while time.time() - t_start < args.max_seconds:
        x0, y = make_batch(spec, args.batch_size, gen)
        if y is not None:
            y = y.clone()
            y[torch.rand(len(y), generator=gen) < args.p_uncond] = spec["classes"]
        xt, t, target = training_pair(spec, x0, abar, gen)
        progress = (time.time() - t_start) / args.max_seconds
        for group in opt.param_groups:  # warm-up, then cosine to zero at the time budget
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1)))
        loss = torch.nn.functional.mse_loss(model(xt, t, class_labels=y).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - min(args.ema, (1 + step) / (10 + step)))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0:
            log.info("step %d loss %.4f (%.3f s/step)", step, running, (time.time() - t0) / 200)
            t0 = time.time()
    seconds = time.time() - t_start
    pipe = ClassConditionalPipeline(unet=ema.to(torch.float16), scheduler=sched)
    pipe.save_pretrained(str(args.out))
    info = {"name": args.name, **{k: v for k, v in spec.items() if k != "betas"}, "betas": spec["betas"],
            "parameters": params, "steps": step, "seconds": round(seconds, 1), "final_loss_ema": running,
            "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema, "seed": args.seed,
            "threads": args.threads,
            "command": f"python scripts/train_suite_model.py {args.name} --max-seconds {args.max_seconds:g} "
                       f"--threads {args.threads} --out {args.out}"}
    (args.out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    write_card(args.out, info)
    log.info("saved %s after %d steps in %.0f s (loss %.4f)", args.out, step, seconds, running)


def write_card(folder: Path, info: dict) -> None:
    """The model card (README.md) and 64 samples of a 50-call teacher (samples.png), from the saved folder."""
    import s4s
    from s4s.eval.images import save_image_grid

    model = s4s.load_model(folder)
    x = model.schedule.prior_noise((64, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        samples = s4s.baseline("unipc_bh2", model.schedule, 50, grid="logsnr").sample(
            model.denoiser, x, model.labels(64), None)
    save_image_grid(samples, folder / "samples.png", nrow=8)
    schedule = info["betas"]["beta_schedule"] if info["betas"] else "rectified flow (FlowMatchEulerDiscreteScheduler)"
    classes = f"{info['classes']} classes (the shape) + a null class" if info["classes"] else "unconditional"
    card = f"""# {info['name']} (generalization suite)

A small diffusion model for testing solvers on a model s4s was not tuned on; not a generative model of
anything that matters. Data: procedurally generated *{info['data']}* ({info['channels']} x {info['size']} x
{info['size']}, values in [-1, 1], fresh every batch; scripts/train_suite_model.py says how they are drawn).

| | |
|---|---|
| network | diffusers `UNet2DModel`, blocks {'/'.join(map(str, info.get('blocks', (32, 64, 64))))}, one ResNet layer each, no attention, {info['parameters']:,} parameters (float16 weights) |
| prediction type | `{info['prediction']}` |
| schedule | {schedule}, 1000 training steps, `clip_sample: false` |
| condition | {classes} |
| training | {info['steps']} steps of batch {info['batch_size']} in {info['seconds']:.0f} s with {info['threads']} CPU thread(s), Adam lr {info['lr']:g} (warm-up, cosine), EMA {info['ema']} |
| final training loss (EMA of the batch MSE) | {info['final_loss_ema']:.4f} |

`{info['command']}`

Samples of a 50-call UniPC solver (first 64 evaluation noises, class-balanced labels where there are
classes):

![samples](samples.png)
"""
    (folder / "README.md").write_text(card)


if __name__ == "__main__":
    main()
