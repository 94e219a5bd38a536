"""Do fewer validation noises rank the same starts first? For each ``MODEL:NFE`` (a suite model, or ``bundled``
for the bundled eps model), the two probe starts (docs/design.md §5.5) that the (base, grid) scores give on the
first ``K`` validation noises, for each ``K`` of ``--screen-samples``. Prints one JSON line per cell.

    python benchmarks/screening_samples.py shapes16-v-cosine:4 bundled:5 --screen-samples 64 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

import s4s
from generalization_suite import SUITE_DIR
from s4s.learning.trainer import probe_starts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cells", nargs="+", help="MODEL:NFE, MODEL a folder under benchmarks/suite/ or 'bundled'")
    p.add_argument("--screen-samples", type=int, nargs="+", default=[64, 256])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    for cell in args.cells:
        name, nfe = cell.rsplit(":", 1)
        model = s4s.load_model() if name == "bundled" else s4s.load_model(SUITE_DIR / name)
        starts = {}
        for k in args.screen_samples:  # one learning step: the scores are what is wanted (teacher from the cache)
            result = s4s.learn(model, nfe=int(nfe), steps=1, probe_starts=1, screen_samples=k, progress=False)
            starts[k] = probe_starts(result.base_losses, 2)
        print(json.dumps({"model": name, "nfe": int(nfe), "starts": starts,
                          "same": len({tuple(v) for v in starts.values()}) == 1}), flush=True)


if __name__ == "__main__":
    main()
