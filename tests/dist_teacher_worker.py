"""Run by tests/test_distributed.py under torchrun: teacher data for the exact mixture, split over the ranks.

``python -m torch.distributed.run --nproc-per-node 2 dist_teacher_worker.py CACHE [DIE_AT]``: with
``DIE_AT = k`` rank 1 exits abruptly (``os._exit``) inside its k-th model call, as a crashed or killed
process would.
"""

import os
import sys

import s4s
from s4s import distributed
from s4s.teacher import make_teacher_data

cache = sys.argv[1]
die_at = int(sys.argv[2]) if len(sys.argv) > 2 else 0
distributed.setup()
gmm = s4s.GaussianMixture.random(dim=6, components=3, seed=0)
schedule = s4s.VPDiscrete()
inner = gmm.denoiser(schedule)
calls = {"n": 0}


def dying(x, t, cond=None, guidance=None):
    calls["n"] += 1
    if die_at and distributed.rank() == 1 and calls["n"] == die_at:
        os._exit(17)
    return inner(x, t, cond, guidance)


denoiser = s4s.Denoiser(dying, schedule, fingerprint=inner.fingerprint, name="dying mixture")
make_teacher_data(denoiser, schedule, (6,), num_samples=40, teacher="ddim:5", seed=3, batch_size=8, cache_dir=cache,
                  progress=False)
distributed.teardown()
