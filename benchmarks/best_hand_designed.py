"""The best hand-designed solver of a model at one NFE and guidance scale, found in two stages.

Every baseline of ``s4s.BASELINES`` and Heun, on every grid, is scored by FD on ``--screen-samples`` samples
(evaluation seed ``--seed``, class-balanced labels when guided); then the best grid of each of the
``--top`` best-scored baselines is measured on ``--num-samples`` samples (same seed). Screening on
fewer samples ranks solvers by a biased FD (the bias is the same for every solver at one sample
count), so only the full-size FDs are comparable with other ``s4s eval`` results.

Writes, under ``--out``: ``screen_w<W>.json`` (every pair's screening FD and accuracy) and one
``eval_<name>_<grid>_w<W>.json`` per full-size cell, in the format of ``s4s eval --json``, so that
``s4s bench-report`` merges them with learned solvers' evaluations.

    python benchmarks/best_hand_designed.py --guidance 2 --nfe 5 --device cuda --out runs/guidance

Used by scripts/guidance_acceptance.sh; results and how to read them: docs/guidance.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch

import s4s
from s4s.baselines import BASELINES, HEUN, baseline, nfe_supported
from s4s.eval.features import feature_network_for
from s4s.eval.runner import evaluate
from s4s.io import atomic_write_text

GRIDS = ("time", "logsnr", "edm", "quadratic")
log = logging.getLogger("best_hand_designed")


def measure(model, name: str, grid: str, nfe: int, num_samples: int, seed: int, guidance: Optional[float],
            feature_net, batch_size: int) -> dict:
    """``s4s eval --json``'s result for baseline ``name`` on ``grid``."""
    result = evaluate(model, baseline(name, model.schedule, nfe, grid=grid), num_samples, seed, guidance, ["fd"],
                      batch_size=batch_size, feature_net=feature_net, progress=False, solver_label=name)
    return {**result, "grid": grid}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the bundled MNIST UNet)")
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: unguided)")
    p.add_argument("--baselines", nargs="+", default=[*BASELINES, HEUN])
    p.add_argument("--grids", nargs="+", default=list(GRIDS))
    p.add_argument("--screen-samples", type=int, default=2000)
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--top", type=int, default=3, help="baselines measured at full size (each on its best grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    model = s4s.load_model(args.model, device=args.device)
    feature_net = feature_network_for(model.image_shape, model.data, device=model.device)
    tag = "none" if args.guidance is None else f"{args.guidance:g}"
    screened = []
    t0 = time.time()
    for name in args.baselines:
        if not nfe_supported(name, args.nfe):
            continue
        for grid in args.grids:
            r = measure(model, name, grid, args.nfe, args.screen_samples, args.seed, args.guidance, feature_net,
                        args.batch_size)
            screened.append({"solver": name, "grid": grid, "fd": r["fd"], "accuracy": r["accuracy"]})
            log.info("w %s screen %s/%s: FD %.3f", tag, name, grid, r["fd"])
    screened.sort(key=lambda r: r["fd"])
    atomic_write_text(args.out / f"screen_w{tag}.json", json.dumps(
        {"guidance": args.guidance, "nfe": args.nfe, "screen_samples": args.screen_samples, "seed": args.seed,
         "seconds": time.time() - t0, "pairs": screened}, indent=1) + "\n")
    best_grid: dict[str, str] = {}
    for row in screened:  # sorted: the first row of a baseline is its best grid
        best_grid.setdefault(row["solver"], row["grid"])
    for name in list(best_grid)[:args.top]:
        grid = best_grid[name]
        r = measure(model, name, grid, args.nfe, args.num_samples, args.seed, args.guidance, feature_net,
                    args.batch_size)
        atomic_write_text(args.out / f"eval_{name}_{grid}_w{tag}.json", json.dumps(r, indent=1) + "\n")
        log.info("w %s %s/%s on %d samples: FD %.3f, accuracy %s", tag, name, grid, args.num_samples, r["fd"],
                 r["accuracy"])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
