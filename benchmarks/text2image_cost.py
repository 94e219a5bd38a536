"""Cost of learning a solver for text-to-image models at their real sizes, with random weights.

For each network (``sd15``: the Stable Diffusion 1.5 UNet at 64x64x4 latents, 77x768 text tokens;
``sd3-medium``: an SD3-medium-sized transformer at 128x128x16 latents, 1024 px, 333x4096 text tokens),
each batch size and activation checkpointing on / off, it times s4s learning steps exactly as
``s4s learn`` takes them: the learnable S4S-Alt-PC solver's tables, the student unrolled over NFE
classifier-free-guided calls (one batched call each) with per-call checkpointing, an L2 loss, the
backward pass to the solver parameters only and an Adam step. It reports seconds per step (after one
warm-up step) and peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU each
configuration runs in its own process and reports its peak resident memory minus the memory after the
network was built.

``--flops`` counts the floating-point operations of one guided call per sample
(``torch.utils.flop_counter`` on the meta device: nothing is computed) and the network calls of the
default recipe (:class:`s4s.LearnConfig`), to extrapolate a measured per-call time to a whole run.

    python benchmarks/text2image_cost.py --networks sd15 --batch 1 2 4 --dtype bf16 --out runs/t2i_cost.json
    python benchmarks/text2image_cost.py --flops

Results and how they were extrapolated: docs/text2image.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import s4s
from s4s.learning.config import LearnConfig
from s4s.learning.parametrization import LearnableSolver
from s4s.solver import integrate

log = logging.getLogger("text2image_cost")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GUIDANCE = 7.5


def build(name: str, device: Any, dtype: torch.dtype) -> tuple[torch.nn.Module, dict, tuple[int, ...], dict, dict]:
    """(network, scheduler config, latent shape, one sample's condition, the null condition)."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    with torch.device(device):
        if name == "sd15":
            net = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
            sched = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                     "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
            shape, cond = (4, 64, 64), {"encoder_hidden_states": (77, 768)}
        elif name == "sd3-medium":
            net = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                        attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                        caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
            sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "num_train_timesteps": 1000}
            shape, cond = (16, 128, 128), {"encoder_hidden_states": (333, 4096), "pooled_projections": (2048,)}
        else:
            raise ValueError(f"unknown network {name!r}")
    net = net.to(dtype).eval().requires_grad_(False)
    make = {k: torch.randn((1, *v), device=device, dtype=dtype) for k, v in cond.items()}
    null = {k: torch.zeros_like(v) for k, v in make.items()}
    return net, sched, shape, make, null


def one_config(name: str, batch: int, nfe: int, dtype: str, checkpoint: bool, steps: int, device: str) -> dict:
    """Seconds per learning step and peak memory of one configuration."""
    torch.manual_seed(0)
    net, sched, shape, cond1, null = build(name, device, DTYPES[dtype])
    params = sum(p.numel() for p in net.parameters())
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    den = s4s.Denoiser.from_diffusers(net, sched, null_cond=null, fingerprint="random-weights")
    schedule = den.schedule
    solver = LearnableSolver(schedule, "unipc_bh1", s4s.make_grid("time", schedule, nfe), corrector=True,
                             learn_a=True).to(device)
    opt = torch.optim.Adam(solver.parameters(), lr=1e-3)
    cond = {k: v.expand(batch, *v.shape[1:]) for k, v in cond1.items()}
    x = schedule.prior_noise((batch, *shape)).to(device)
    target = torch.randn_like(x)
    cuda = torch.device(device).type == "cuda"

    def step() -> None:
        t, s, tables = solver()
        out = integrate(lambda xx, ss: den(xx, ss, cond, GUIDANCE), x, s, tables, checkpoint=checkpoint)
        loss = (out - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (kernel selection, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    row = {"network": name, "params_M": params / 1e6, "batch": batch, "nfe": nfe, "dtype": dtype,
           "checkpoint": checkpoint, "seconds_per_step": seconds, "device": device}
    if cuda:
        row["peak_gpu_memory_GB"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu"] = torch.cuda.get_device_name()
    else:
        row["peak_rss_over_model_GB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss) / 1024
        row["model_rss_GB"] = base_rss / 1024
    return row


def flops() -> dict:
    """FLOPs of one guided call per sample, on the meta device, and the default recipe's call counts."""
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, Any] = {}
    for name in ("sd15", "sd3-medium"):
        net, sched, shape, cond1, null = build(name, "meta", torch.float32)
        den = s4s.Denoiser.from_diffusers(net, sched, null_cond=null, fingerprint="random-weights")
        x = torch.zeros((1, *shape), device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            den(x, torch.tensor(0.5 if name != "sd15" else 500.0), cond1, GUIDANCE)
        out[name] = {"guided_call_TFLOP_per_sample": counter.get_total_flops() / 1e12,
                     "params_M": sum(p.numel() for p in net.parameters()) / 1e6}
    cfg = LearnConfig(nfe=5)
    n_val = max(1, round(cfg.num_samples * cfg.val_fraction))
    teacher_calls = int(cfg.teacher.split(":")[1])
    # guided calls x samples: teacher; base candidates (3 bases x 4 grids) and validations at NFE 5; training
    # steps at about 4 forward-equivalents per call (forward, recomputed forward under checkpointing, backward ~2x)
    out["default_recipe_nfe5"] = {
        "teacher_sample_calls": cfg.num_samples * teacher_calls,
        "base_candidate_sample_calls": 12 * n_val * 5,
        "validation_sample_calls": (cfg.steps // cfg.val_every) * n_val * 5,
        "training_forward_equivalents": cfg.steps * cfg.batch_size * 5 * 4,
        "config": {"num_samples": cfg.num_samples, "teacher": cfg.teacher, "steps": cfg.steps,
                   "batch_size": cfg.batch_size, "val_every": cfg.val_every},
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="+", default=["sd15", "sd3-medium"], choices=["sd15", "sd3-medium"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--checkpoint", choices=["on", "off", "both"], default="both")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--flops", action="store_true", help="only count FLOPs and the default recipe's calls")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one CPU configuration per process
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.flops:
        result: Any = flops()
        print(json.dumps(result, indent=1))
    elif args.one:
        name, batch, ckpt = args.one.split(",")
        print(json.dumps(one_config(name, int(batch), args.nfe, args.dtype, ckpt == "on", args.steps, args.device)))
        return
    else:
        result = []
        ckpts = {"on": [True], "off": [False], "both": [True, False]}[args.checkpoint]
        for name in args.networks:
            for batch in args.batch:
                for ckpt in ckpts:
                    try:
                        if torch.device(args.device).type == "cuda":
                            row = one_config(name, batch, args.nfe, args.dtype, ckpt, args.steps, args.device)
                            torch.cuda.empty_cache()
                        else:  # a fresh process: peak resident memory is per process
                            cmd = [sys.executable, __file__, "--one", f"{name},{batch},{'on' if ckpt else 'off'}",
                                   "--nfe", str(args.nfe), "--dtype", args.dtype, "--steps", str(args.steps),
                                   "--device", args.device]
                            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                                             .stdout.strip().splitlines()[-1])
                    except (torch.cuda.OutOfMemoryError, subprocess.CalledProcessError) as err:
                        row = {"network": name, "batch": batch, "checkpoint": ckpt, "error": type(err).__name__}
                    log.info("%s", json.dumps(row))
                    result.append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
