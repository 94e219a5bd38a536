"""How close are the candidate teachers to the ODE solution on a bundled model?

Every teacher integrates the same noises; the reference is UniPC-bh2 at ``--ref-nfe`` calls
(log-SNR grid). Prints a Markdown table of model calls per sample and RMSE to the reference.

Usage: ``python benchmarks/teacher_convergence.py [--samples 32] [--model PATH] [--ref-nfe 200]``
"""

from __future__ import annotations

import argparse
import time

import torch

import s4s
from s4s.adaptive import rk45_sample
from s4s.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the bundled eps UNet)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ref-nfe", type=int, default=200)
    p.add_argument("--tolerances", default="1e-2,1e-3,1e-4,1e-5")
    args = p.parse_args()
    model = load_model(args.model, device="cpu")
    x = model.schedule.prior_noise((args.samples, *model.sample_shape), generator=torch.Generator().manual_seed(args.seed))
    cond = model.labels(args.samples, guided=False)
    ref = s4s.baseline("unipc_bh2", model.schedule, args.ref_nfe).sample(model.denoiser, x, cond)
    rows = []

    def add(name: str, run) -> None:
        t0 = time.time()
        with torch.no_grad():
            out, calls = run()
        rows.append((name, calls, float((out - ref).pow(2).mean().sqrt()), time.time() - t0))

    for name, nfe in [("unipc_bh2", 50), ("unipc_bh2", 100), ("dpmpp_3m", 400)]:
        solver = s4s.baseline(name, model.schedule, nfe)
        add(f"{name}:{nfe}", lambda: (solver.sample(model.denoiser, x, cond), solver.nfe))
    for tol in (float(v) for v in args.tolerances.split(",")):
        add(f"rk45:{tol:g}", lambda: rk45_sample(model.denoiser, x, model.schedule, cond, rtol=tol, atol=tol))
    print(f"| teacher | model calls per sample | RMSE to unipc_bh2:{args.ref_nfe} | seconds ({args.samples} samples) |")
    print("|---|---|---|---|")
    for name, calls, rmse, sec in rows:
        print(f"| {name} | {calls} | {rmse:.4f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
