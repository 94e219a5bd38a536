"""Measure the bundled model for its model card: metric floor, teacher quality, few-NFE gap.

Writes ``--out`` (JSON) and sample grids (teacher: unconditional and guided) under ``--docs``.
Every FD is in MNIST classifier features against MNIST-test statistics, with ``--num-samples``
samples on seed 0; the real-vs-real floor uses the same number of MNIST-train images.

Usage: ``python scripts/measure_bundled_model.py --num-samples 10000 --teacher unipc_bh2:100``
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


import s4s
from s4s.bench.model import real_data_floor
from s4s.data import load_mnist
from s4s.eval.features import feature_network_for
from s4s.eval.images import save_image_grid
from s4s.eval.runner import evaluate, generate
from s4s.teacher import parse_teacher
from s4s.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--teacher", default="unipc_bh2:100")
    p.add_argument("--grid", default="time", help="grid for the few-NFE baseline")
    p.add_argument("--out", type=Path, default=Path("src/s4s/assets/mnist-unet/measurements.json"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--model", default=None, help="model folder (default: the bundled MNIST UNet)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prefix", default="teacher", help="file name prefix of the sample grids under --docs")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = load_model(args.model, device=args.device)
    net = feature_network_for(model.image_shape, device=model.device)
    n = args.num_samples
    result: dict = {"num_samples": n, "feature_space": net.name, "seed": 0, "model": model.name,
                    "device": str(model.device)}
    result["fd_real_vs_real"] = real_data_floor(net, load_mnist().train_images[:n])
    name, nfe = parse_teacher(args.teacher)
    teacher = s4s.baseline(name, model.schedule, nfe, grid=args.grid)
    r = evaluate(model, teacher, n, metrics=["fd"], feature_net=net, solver_label=args.teacher)
    result["teacher"] = {"solver": args.teacher, "grid": args.grid, "fd": r["fd"], "seconds": r["seconds"]}
    r = evaluate(model, s4s.baseline("dpmpp_3m", model.schedule, 5, grid=args.grid), n, metrics=["fd"], feature_net=net)
    result["dpmpp_3m_nfe5"] = {"grid": args.grid, "fd": r["fd"], "seconds": r["seconds"]}
    r = evaluate(model, s4s.baseline("dpmpp_3m", model.schedule, 10, grid=args.grid), n, metrics=["fd"], feature_net=net)
    result["dpmpp_3m_nfe10"] = {"grid": args.grid, "fd": r["fd"], "seconds": r["seconds"]}
    result["ratio_nfe5_to_teacher"] = result["dpmpp_3m_nfe5"]["fd"] / result["teacher"]["fd"]
    result["ratio_teacher_to_floor"] = result["teacher"]["fd"] / result["fd_real_vs_real"]
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    labels = model.labels(100, guided=True)
    save_image_grid(generate(model, teacher, 100, seed=1, progress=False, labels=model.labels(100, guided=False)),
                    args.docs / f"{args.prefix}_unconditional.png", nrow=10)
    save_image_grid(generate(model, teacher, 100, seed=1, guidance=2.0, progress=False, labels=labels),
                    args.docs / f"{args.prefix}_guided.png", nrow=10)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
