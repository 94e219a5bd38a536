"""torch.distributed with real processes (torchrun, gloo on CPU): 2 processes give what 1 gives.

Every run is ``python -m torch.distributed.run --standalone --nproc-per-node K -m s4s ...``, the
command users type, on a tiny 1x28x28 UNet (declared MNIST so that the perceptual loss and the FD
classifier run too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s4s

HERE = Path(__file__).resolve().parent


def _run(nproc: int, args: list, cache: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "S4S_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", "s4s", *map(str, args)] if args and args[0] != "script" else list(map(str, args[1:]))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=HERE)


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from test_eval import _tiny_model_folder

    return _tiny_model_folder(tmp_path_factory.mktemp("dist") / "tiny")


def _learn_args(tiny: Path, out: Path, steps: int, *extra) -> list:
    return ["learn", "--model", tiny, "--data", "mnist", "--nfe", "3", "--preset", "fast", "--teacher", "ddim:6",
            "--teacher-samples", "40", "--teacher-batch-size", "8", "--batch-size", "8", "--val-every", "4",
            "--steps", steps, "--ball-radius", "0.05", "--out", out, "--json", *extra]


def _close(a: s4s.Solver, b: s4s.Solver, rtol: float = 1e-6) -> None:
    torch.testing.assert_close(a.grid, b.grid, rtol=rtol, atol=0)
    torch.testing.assert_close(a.input_times, b.input_times, rtol=rtol, atol=0)
    for name in ("a", "b", "ac", "bc"):
        x, y = getattr(a.tables, name), getattr(b.tables, name)
        assert float((x - y).abs().max()) <= rtol * float(x.abs().max()), name


def test_two_processes_learn_what_one_learns_and_resume_with_another_world_size(tiny, tmp_path):
    one = _ok(_run(1, _learn_args(tiny, tmp_path / "one.json", 8), tmp_path / "cache1"))
    two = _ok(_run(2, _learn_args(tiny, tmp_path / "two.json", 8), tmp_path / "cache2"))
    # teacher cache: the same files, byte for byte, whoever computed each batch
    files1 = sorted(p.relative_to(tmp_path / "cache1") for p in (tmp_path / "cache1").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp_path / "cache2") for p in (tmp_path / "cache2").rglob("*") if p.is_file())
    assert files1 == files2 and len([f for f in files1 if f.name.startswith("batch_")]) == 5
    for f in files1:
        assert (tmp_path / "cache1" / f).read_bytes() == (tmp_path / "cache2" / f).read_bytes(), f
    _close(s4s.Solver.load(tmp_path / "one.json"), s4s.Solver.load(tmp_path / "two.json"))
    # the validation loss (a small difference of float32 perceptual features) amplifies the ~1e-8 table differences
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4) and two["base"] == one["base"]
    # only rank 0 wrote the run folder and printed
    assert sorted(p.name for p in (tmp_path / "two-run").iterdir()) == sorted(
        p.name for p in (tmp_path / "one-run").iterdir())
    # a 2-process run stopped at step 4, resumed by 1 process to step 8: the uninterrupted result
    _ok(_run(2, _learn_args(tiny, tmp_path / "part.json", 4), tmp_path / "cache2"))
    _ok(_run(1, _learn_args(tiny, tmp_path / "part.json", 8, "--resume"), tmp_path / "cache2"))
    _close(s4s.Solver.load(tmp_path / "one.json"), s4s.Solver.load(tmp_path / "part.json"))


def test_two_processes_take_the_levenberg_marquardt_steps_one_takes(tiny, tmp_path):
    # the perceptual residuals of each rank's share, their normal equations summed over the ranks
    args = lambda out: ["learn", "--model", tiny, "--data", "mnist", "--nfe", "3", "--preset", "lm",  # noqa: E731
                        "--teacher", "ddim:6", "--teacher-samples", "40", "--teacher-batch-size", "8", "--batch-size",
                        "8", "--steps", "2", "--out", out, "--json"]
    one = _ok(_run(1, args(tmp_path / "one.json"), tmp_path / "cache"))
    two = _ok(_run(2, args(tmp_path / "two.json"), tmp_path / "cache"))
    assert one["val_loss"] < one["base_val_loss"]
    _close(s4s.Solver.load(tmp_path / "one.json"), s4s.Solver.load(tmp_path / "two.json"), rtol=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-3)


def test_two_processes_evaluate_what_one_evaluates(tiny, tmp_path):
    args = ["eval", "--model", tiny, "--data", "mnist", "--solver", "dpmpp_3m", "--nfe", "3", "--num-samples", "40",
            "--batch-size", "8", "--metrics", "fd,teacher", "--teacher", "ddim:6", "--guidance", "1.5", "--json"]
    one = _ok(_run(1, args, tmp_path / "cache1"))
    two = _ok(_run(2, args, tmp_path / "cache2"))
    for key in ("fd", "teacher_rmse", "teacher_feature_l2", "accuracy"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_a_rank_that_dies_leaves_no_corrupt_batch_and_the_rerun_completes(tmp_path):
    from s4s.teacher import _read_batch, make_teacher_data

    worker = HERE / "dist_teacher_worker.py"
    crashed = _run(2, ["script", worker, tmp_path / "cache", 8], tmp_path, timeout=180)
    assert crashed.returncode != 0
    folder = next((tmp_path / "cache").iterdir())
    written = sorted(folder.glob("batch_*.pt"))
    assert 0 < len(written) < 5  # rank 1 died inside its second batch: that batch (and any after) is missing
    key = folder.name
    for path in written:  # every file that exists is whole and belongs to the request
        start = int(path.stem.split("_")[1])
        assert _read_batch(path, key, start, (8, 6)) is not None, path
    assert not list(folder.glob(".*tmp*")), "a temporary file was left behind"
    # the rerun (here: this process) reuses what is there, computes the rest, and equals a clean run
    gmm, schedule = s4s.GaussianMixture.random(dim=6, components=3, seed=0), s4s.VPDiscrete()
    kw = dict(num_samples=40, teacher="ddim:5", seed=3, batch_size=8, progress=False)
    rerun = make_teacher_data(gmm.denoiser(schedule), schedule, (6,), cache_dir=tmp_path / "cache", **kw)
    clean = make_teacher_data(gmm.denoiser(schedule), schedule, (6,), cache_dir=tmp_path / "clean", **kw)
    assert torch.equal(rerun.x0, clean.x0)
    clean_folder = next((tmp_path / "clean").iterdir())
    assert clean_folder.name == key
    for path in sorted(clean_folder.glob("batch_*.pt")):
        assert (folder / path.name).read_bytes() == path.read_bytes(), path.name
