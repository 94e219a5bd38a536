"""One learned solver on one generalization-suite model, with any learning options, measured as
benchmarks/generalization_suite.py measures (RMSE to the 100-call teacher on the 1,000 evaluation noises):
for ablations and seed-to-seed variation that do not belong in the suite's table. Prints one JSON row and
appends it to ``--rows``.

    python benchmarks/suite_learn_one.py shapes16-x0-scaled 5 --options '{"seed": 1, "range_aware": false}' \\
        --threads 1 --rows rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import s4s
from generalization_suite import SUITE_DIR, add_measure_arguments, learned_fields, measure
from s4s.teacher import default_cache_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a folder name under benchmarks/suite/")
    p.add_argument("nfe", type=int)
    p.add_argument("--options", default="{}", help="JSON object of s4s.learn options (LearnConfig fields)")
    add_measure_arguments(p)
    p.add_argument("--rows", type=Path, required=True, help="JSON-lines file the row is appended to")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = json.loads(args.options)
    model = s4s.load_model(SUITE_DIR / args.model)
    t0 = time.time()
    result = s4s.learn(model, nfe=args.nfe, progress=False, **options)
    seconds = time.time() - t0
    row = {"model": args.model, "nfe": args.nfe, "options": options,
           **measure(model, result.solver, args, default_cache_dir()), **learned_fields(result, seconds),
           "threads": torch.get_num_threads(),
           # the learning curve: (step, validation RMSE to the learning teacher, phase) at every validation
           "val_rmse_history": [[h["step"], round(h["val_mse"] ** 0.5, 5), h["phase"]] for h in result.history]}
    print(json.dumps(row))
    with open(args.rows, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
