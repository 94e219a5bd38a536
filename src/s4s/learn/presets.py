"""Learning presets: named sets of :class:`~s4s.learn.trainer.LearnConfig` options and teacher settings.

One source for the CLI (``s4s learn --preset``), the demo and the benchmarks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

# Learning presets: "fast" is the one `make demo` uses on a 2-core CPU; "default" is the CLI default.
# Both also learn the state weights `a` (learn_a): on the exact mixture model that halves the error
# of S4S-Alt at NFE 4-5 (docs/ablations_gmm.md); the paper's parametrisation is learn_a=False.
# The default teacher is UniPC-bh2 at 50 NFE: on the bundled eps model its samples are 0.015 RMSE from
# the 100-NFE teacher's (the learned NFE-5 students are 0.11-0.13 away), it halves the teacher cost
# (3 instead of 7 min on 2 CPU cores) and S4S-Alt learned from it scored FD 33.04 vs 36.32 at NFE 5.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": dict(teacher="unipc_bh2:40", num_samples=320, steps=80, batch_size=16, val_every=20, alt_round=10,
                 warmup=5, learn_a=True),
    "default": dict(teacher="unipc_bh2:50", num_samples=1024, steps=400, batch_size=32, val_every=25, alt_round=50,
                    learn_a=True),
}
