"""Bad inputs, faults and interrupts: every case gets one clear answer (a table of cases, run as tests).

Each row: what is run (a CLI command line or a Python call), the expected exit code or exception,
and a fragment of the one-line message. CLI rows also check that no traceback was printed. Classes
(``CLASS_COUNTS`` at the end) follow the issue that asked for them: non-finite values, bad model
outputs, failures mapped to one line, lost work, overwritten results, resume mismatches, teacher
cache faults, guidance, argument ranges and FD from few samples.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import multiprocessing as mp
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

import s4s
from s4s.checks import NonFiniteError
from s4s.cli import main
from s4s.eval.frechet import FeatureStats, frechet_distance
from s4s.teacher import make_teacher_data
from s4s.learning.trainer import LearnConfig, train_solver


# --- the files the cases use -------------------------------------------------------------------------
def _unet(classes: int) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=classes + 1 if classes else None).eval()


def _model_folder(path: Path, classes: int = 3, **sched: Any) -> Path:
    _unet(classes).save_pretrained(path)
    DDPMScheduler(beta_schedule="linear", **sched).save_pretrained(path)
    return path


class Env:
    """Model folders and solver files, good and damaged, made once for the module."""

    def __init__(self, root: Path):
        self.root = root
        self.cond = _model_folder(root / "cond")
        self.uncond = _model_folder(root / "uncond", classes=0)
        self.nan_model = root / "nan-model"
        unet = _unet(3)
        with torch.no_grad():
            unet.conv_out.weight.fill_(float("nan"))
        unet.save_pretrained(self.nan_model)
        DDPMScheduler(beta_schedule="linear").save_pretrained(self.nan_model)
        self.trunc = self._copy("trunc", lambda f: (f / "diffusion_pytorch_model.safetensors").write_bytes(
            (f / "diffusion_pytorch_model.safetensors").read_bytes()[:1000]))
        self.garbage_weights = self._copy("garbage", lambda f: (f / "diffusion_pytorch_model.safetensors").write_bytes(
            b"\x00not a safetensors file" * 10))
        self.mismatch = self._copy("mismatch", lambda f: self._edit_json(f / "config.json", block_out_channels=[16, 16]))
        self.bad_class = self._copy("badclass", lambda f: self._edit_json(f / "config.json", _class_name="NoSuchModel"))
        self.no_sched = self._copy("nosched", lambda f: (f / "scheduler_config.json").unlink())
        self.thresh = _model_folder(root / "thresh", thresholding=True)
        self.zero_snr = _model_folder(root / "zerosnr", rescale_betas_zero_snr=True)
        self.bad_config = self._copy("badconfig", lambda f: (f / "config.json").write_text("{not json"))
        self.a_file = root / "a-file.txt"
        self.a_file.write_text("x")
        schedule = s4s.load_model(self.cond).schedule
        self.schedule = schedule
        self.solver = s4s.baseline("ddim", schedule, 2, grid="time").save(root / "ddim2.json")
        guided = s4s.baseline("ddim", schedule, 2, grid="time")
        guided.metadata.update(method="s4s", guidance=2.0)
        self.guided_solver = guided.save(root / "guided2.json")
        self.flow_solver = s4s.baseline("ddim", s4s.Flow(), 2).save(root / "flow2.json")
        (root / "dir.json").mkdir()
        self.dir_json = root / "dir.json"
        self.existing_png = root / "exists.png"
        self.existing_png.write_bytes(b"png")
        self.bench_out = root / "bench-out"
        self.bench_out.mkdir()
        (self.bench_out / "results.json").write_text("[]")

    def _copy(self, name: str, damage: Callable[[Path], Any]) -> Path:
        folder = self.root / name
        shutil.copytree(self.cond, folder)
        damage(folder)
        return folder

    @staticmethod
    def _edit_json(path: Path, **changes: Any) -> None:
        cfg = json.loads(path.read_text())
        cfg.update(changes)
        path.write_text(json.dumps(cfg))

    def solver_file(self, name: str, edit: Callable[[dict], Any]) -> Path:
        data = json.loads(Path(self.solver).read_text())
        edit(data)
        path = self.root / f"{name}.json"
        path.write_text(json.dumps(data))
        return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("bad-inputs"))


# --- the table -------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    cls: str
    run: Callable[[Env], Any]                    # CLI: returns argv; API: does the call
    expect: Union[int, type[BaseException]]      # exit code (CLI) or exception type (API)
    fragment: str

    @property
    def is_cli(self) -> bool:
        return isinstance(self.expect, int)


CASES: list[Case] = []


def cli(cls: str, id: str, argv: Callable[[Env], list], code: int, fragment: str) -> None:
    CASES.append(Case(id, cls, argv, code, fragment))


def api(cls: str, id: str, fn: Callable[[Env], Any], exc: type[BaseException], fragment: str) -> None:
    CASES.append(Case(id, cls, fn, exc, fragment))


def _eval(e: Env, *extra: Any, model: Any = None, data: Optional[str] = "mnist") -> list:
    """``s4s eval`` of a tiny model; the 1x28x28 test models stand in for MNIST ones (``--data mnist``)."""
    declared = [] if data is None else ["--data", data]
    return ["eval", "--model", str(model or e.cond), *declared, "--solver", "ddim", "--nfe", "2", "--num-samples",
            "8", "--batch-size", "8", "--no-cache", "--metrics", "teacher", "--teacher", "ddim:3", *map(str, extra)]


def _eval_solver(e: Env, solver: Any, *extra: Any, model: Any = None) -> list:
    return ["eval", "--model", str(model or e.cond), "--solver", str(solver), "--num-samples", "8", "--batch-size", "8",
            "--no-cache", "--metrics", "teacher", "--teacher", "ddim:3", *map(str, extra)]


def _learn(e: Env, *extra: Any, model: Any = None, out: Any = None) -> list:
    return ["learn", "--model", str(model or e.cond), "--nfe", "2", "--teacher-samples", "8", "--steps", "1", "--teacher",
            "ddim:3", "--no-cache", "--out", str(out or (e.root / "never-written.json")), *map(str, extra)]


def _bench(e: Env, *extra: Any) -> list:
    return ["bench", "--model", str(e.cond), "--nfe", "2", "--baselines", "ddim", "--methods", "--grids", "time",
            "--num-samples", "8", "--out", str(e.root / "bench-new"), *map(str, extra)]


# 9. argument ranges: checked before any work, the valid range in the message
for flag, values, valid in [("--num-samples", ["0", "-5", "1"], "an integer >= 2"), ("--batch-size", ["0", "-1"], "an integer >= 1"),
                            ("--nfe", ["0", "-1"], "an integer >= 1"), ("--seed", ["-1"], "an integer >= 0"),
                            ("--guidance", ["nan", "inf", "-inf"], "a finite number")]:
    for v in values:
        cli("argument range", f"eval {flag} {v}", lambda e, f=flag, v=v: [*_eval(e), f"{f}={v}"], 2, f"{flag} must be {valid}")
for flag, values, valid in [("--nfe", ["0", "-1"], "an integer >= 1"), ("--teacher-samples", ["0", "-4", "1"], "an integer >= 2"),
                            ("--steps", ["0", "-1"], "an integer >= 1"), ("--batch-size", ["0", "-1"], "an integer >= 1"),
                            ("--lr", ["0", "-1", "nan", "inf"], "a finite number > 0"),
                            ("--ball-radius", ["-1", "nan", "inf"], "a finite number >= 0"),
                            ("--guidance", ["nan", "inf"], "a finite number"), ("--seed", ["-3"], "an integer >= 0")]:
    for v in values:
        cli("argument range", f"learn {flag} {v}", lambda e, f=flag, v=v: [*_learn(e), f, v], 2, f"{flag} must be {valid}")
cli("argument range", "learn --guidance none", lambda e: [*_learn(e), "--guidance", "none"], 2, "for s4s eval")
for flag, v, valid in [("--num-samples", "0", "an integer >= 2"), ("--num-samples", "-5", "an integer >= 2"),
                       ("--nfe", "0", "an integer >= 1"), ("--guidance", "nan", "a finite number"), ("--seed", "-2", "an integer >= 0")]:
    cli("argument range", f"bench {flag} {v}", lambda e, f=flag, v=v: [*_bench(e), f, v], 2, f"{flag} must be {valid}")
cli("argument range", "bench unknown baseline", lambda e: [*_bench(e), "--baselines", "rk99"], 2, "unknown baseline")
cli("argument range", "bench unknown grid", lambda e: [*_bench(e), "--grids", "spiral"], 2, "grid(s)")
cli("argument range", "bench-baselines --num-samples 0", lambda e: ["bench-baselines", "--num-samples", "0"], 2, "--num-samples must be")
cli("argument range", "bench-baselines --nfe 0", lambda e: ["bench-baselines", "--nfe", "0"], 2, "--nfe must be")
cli("argument range", "demo --nfe 0", lambda e: ["demo", "--nfe", "0"], 2, "--nfe must be")
cli("argument range", "demo --num-samples 1", lambda e: ["demo", "--num-samples", "1"], 2, "--num-samples must be")
cli("argument range", "eval --save-images x.json", lambda e: [*_eval(e), "--save-images", e.root / "x.json"], 2, ".png file")
cli("argument range", "eval --metrics bogus", lambda e: [*_eval(e), "--metrics", "bogus"], 2, "unknown or no metric")
cli("argument range", "eval --metrics empty", lambda e: [*_eval(e), "--metrics", ","], 2, "unknown or no metric")
cli("argument range", "eval --teacher bad", lambda e: [*_eval(e), "--teacher", "unipc"], 2, "NAME:NFE")
cli("argument range", "eval --teacher rk45:2", lambda e: [*_eval(e), "--teacher", "rk45:2"], 2, "tolerance")
cli("argument range", "eval --grid bogus", lambda e: [*_eval(e), "--grid", "spiral"], 2, "spiral")
cli("argument range", "eval named solver without --nfe", lambda e: ["eval", "--model", str(e.cond), "--solver", "ddim"],
    2, "--nfe is needed")
cli("argument range", "eval unknown solver name", lambda e: _eval_solver(e, "rk99", "--nfe", "2"), 2,
    "unknown solver")
cli("argument range", "eval --nfe against a solver file", lambda e: _eval_solver(e, e.solver, "--nfe", "5"), 2,
    "asks for another")
cli("argument range", "learn --method magic (argparse)", lambda e: [*_learn(e), "--method", "magic"], 2, "invalid choice")
cli("argument range", "learn --nfe abc (argparse)", lambda e: ["learn", "--nfe", "abc", "--out", "x.json"], 2, "invalid int")
cli("argument range", "learn --teacher bad", lambda e: [*_learn(e), "--teacher", "ddim:x"], 2, "NAME:NFE")
cli("argument range", "learn --base bogus", lambda e: [*_learn(e), "--base", "rk99"], 2, "unknown base")
cli("argument range", "learn --grid bogus", lambda e: [*_learn(e), "--grid", "spiral"], 2, "unknown grid")
cli("argument range", "learn --decode-loss on a pixel model", lambda e: [*_learn(e), "--decode-loss"], 2, "latent pipeline")
api("argument range", "baseline order=99", lambda e: s4s.baseline("unipc_bh2", e.schedule, 5, order=99), ValueError,
    "order must be an integer in 1..4")
api("argument range", "baseline order=0", lambda e: s4s.baseline("deis", e.schedule, 5, order=0), ValueError, "1..4")
api("argument range", "baseline order=2.5", lambda e: s4s.baseline("unipc_bh1", e.schedule, 5, order=2.5), ValueError, "1..4")
api("argument range", "dpm order 4", lambda e: s4s.baseline("dpmpp_3m", e.schedule, 5, lower_order_final=True, grid="time",
                                                              **{}) if False else s4s.build_tables(
    "dpmpp_2m", s4s.GridPoints.from_grid(e.schedule, s4s.make_grid("time", e.schedule, 3)), order=4), ValueError, "order")
api("argument range", "heun with even NFE", lambda e: s4s.baseline("heun", e.schedule, 4), ValueError, "NFE is odd")
api("argument range", "baseline nfe 0", lambda e: s4s.baseline("ddim", e.schedule, 0), ValueError, "nfe must be >= 1")
api("argument range", "baseline unknown option", lambda e: s4s.baseline("ddim", e.schedule, 3, order=2), ValueError,
    "does not take option")
for kw, frag in [(dict(ball_radius=-1.0), "ball_radius"), (dict(ball_radius=math.nan), "ball_radius"),
                 (dict(lr=0.0), "lr must be"), (dict(lr=math.inf), "lr must be"), (dict(grid_lr=-1.0), "grid_lr"),
                 (dict(warmup=-1), "warmup"), (dict(steps=0), "steps must be"), (dict(batch_size=0), "batch_size"),
                 (dict(val_every=0), "val_every"), (dict(guidance=math.nan), "guidance must be")]:
    api("argument range", f"LearnConfig {kw}", lambda e, kw=kw: LearnConfig(nfe=3, **kw).validate(), ValueError, frag)
api("argument range", "learn num_samples=1", lambda e: s4s.learn(lambda x, t, c=None, g=None: x, e.schedule, 3, (4,),
                                                                  num_samples=1), ValueError, "num_samples must be >= 2")
api("argument range", "learn val_fraction=1", lambda e: s4s.learn(lambda x, t, c=None, g=None: x, e.schedule, 3, (4,),
                                                                   val_fraction=1.0), ValueError, "val_fraction")

# 1. non-finite values: stopped with one line naming where, before any linear algebra; JSON always valid
cli("non-finite", "eval NaN weights, FD", lambda e: [*_eval(e, model=e.nan_model)[:-4], "--metrics", "fd"], 2,
    "model call 1 of 2")
cli("non-finite", "eval NaN weights, teacher JSON", lambda e: [*_eval(e, model=e.nan_model), "--json"], 2, "NaN or inf")
cli("non-finite", "learn NaN weights", lambda e: _learn(e, model=e.nan_model), 2, "NaN")
for name, value in [("1e300", 1e300), ("-1e300", -1e300), ("2e6", 2e6)]:
    cli("non-finite", f"eval solver coefficient {name}", lambda e, n=name, v=value: _eval_solver(
        e, e.solver_file(f"big{n}", lambda d: d["predictor"]["b"][0].__setitem__(0, v))), 2,
        "exceeds the sane magnitude")
cli("non-finite", "eval solver NaN entry", lambda e: _eval_solver(e, e.solver_file(
    "nanentry", lambda d: d["predictor"]["b"][0].__setitem__(0, float("nan")))), 2, "NaN or inf")
cli("non-finite", "eval solver NaN grid", lambda e: _eval_solver(e, e.solver_file(
    "nangrid", lambda d: d["grid"].__setitem__(1, float("nan")))), 2, "NaN")
api("non-finite", "Solver(1e300 table)", lambda e: s4s.Solver(
    torch.tensor([999.0, 0.0]), s4s.Tables(torch.tensor([[1e300]], dtype=torch.float64),
                                            torch.tensor([[1.0]], dtype=torch.float64)), schedule=e.schedule),
    s4s.SolverFileError, "sane magnitude")
api("non-finite", "FD of NaN features", lambda e: FeatureStats.from_features(torch.full((4, 3), float("nan"))),
    NonFiniteError, "features")
api("non-finite", "FD of inf statistics", lambda e: frechet_distance(
    FeatureStats(torch.full((2,), math.inf, dtype=torch.float64), torch.eye(2, dtype=torch.float64), 5),
    FeatureStats(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), 5)), NonFiniteError, "NaN or inf")
api("non-finite", "guidance nan through the API", lambda e: s4s.baseline("ddim", e.schedule, 3).sample(
    s4s.load_model(e.cond).denoiser, torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), float("nan")), NonFiniteError,
    "model call 1 of 3")

# 2. model outputs that are not what a denoiser must return
_X = torch.randn(2, 4)
for name, fn, exc, frag in [
        ("a tuple", lambda x, t, c=None, g=None: (x,), TypeError, "returned a tuple"),
        ("a list", lambda x, t, c=None, g=None: [x], TypeError, "returned a list"),
        ("None", lambda x, t, c=None, g=None: None, TypeError, "returned a NoneType"),
        ("no batch dimension", lambda x, t, c=None, g=None: x[0], ValueError, "returned shape (4,)"),
        ("an extra dimension", lambda x, t, c=None, g=None: x[None], ValueError, "returned shape (1, 2, 4)"),
        ("half the batch", lambda x, t, c=None, g=None: x[:1], ValueError, "returned shape (1, 4)"),
        ("NaN", lambda x, t, c=None, g=None: x * float("nan"), NonFiniteError, "model call 1 of 3"),
        ("inf at the last call", lambda x, t, c=None, g=None: x / 0 if float(t.flatten()[0]) < 400 else x, NonFiniteError,
         "model call 3 of 3")]:
    api("bad model output", f"sample: denoiser returns {name}",
        lambda e, fn=fn: s4s.baseline("ddim", e.schedule, 3, grid="time").sample(fn, _X), exc, frag)
    api("bad model output", f"Denoiser: network returns {name}",
        lambda e, fn=fn: s4s.baseline("ddim", e.schedule, 3, grid="time").sample(s4s.Denoiser.from_eps(
            lambda x, t, c: fn(x, t), e.schedule, name="my net"), _X), exc, frag)
api("bad model output", "learn: NaN denoiser", lambda e: s4s.learn(
    lambda x, t, c=None, g=None: x * float("nan"), e.schedule, 2, (4,), num_samples=8, teacher="ddim:3", steps=1,
    progress=False), NonFiniteError, "NaN")
api("bad model output", "learn: tuple denoiser", lambda e: s4s.learn(
    lambda x, t, c=None, g=None: (x,), e.schedule, 2, (4,), num_samples=8, teacher="ddim:3", steps=1, progress=False),
    TypeError, "returned a tuple")

# 3. expected failures as one line (exit 2), never a traceback
for what, model, frag in [("missing folder", lambda e: e.root / "nowhere", "model not found"),
                          ("a file", lambda e: e.a_file, "not a diffusers model folder"),
                          ("truncated weights", lambda e: e.trunc, "cannot load the UNet2DModel weights"),
                          ("garbage weights", lambda e: e.garbage_weights, "cannot load the UNet2DModel weights"),
                          ("config not matching weights", lambda e: e.mismatch, "cannot load the UNet2DModel weights"),
                          ("unknown model class", lambda e: e.bad_class, "unknown diffusers model class"),
                          ("no scheduler config", lambda e: e.no_sched, "no scheduler_config.json"),
                          ("config not JSON", lambda e: e.bad_config, "cannot read"),
                          ("thresholding", lambda e: e.thresh, "thresholding"),
                          ("zero terminal SNR", lambda e: e.zero_snr, "zero terminal SNR")]:
    cli("one-line failure", f"eval --model {what}", lambda e, m=model: _eval(e, model=m(e)), 2, frag)
    cli("one-line failure", f"learn --model {what}", lambda e, m=model: _learn(e, model=m(e)), 2, frag)
for dev in ["cuda", "cuda:3", "banana", "xpu"]:
    for cmd, argv in [("eval", _eval), ("learn", _learn), ("bench", _bench)]:
        cli("one-line failure", f"{cmd} --device {dev}", lambda e, a=argv, d=dev: [*a(e), "--device", d], 2, "--device")
for name, edit, frag in [
        ("wrong format", lambda d: d.__setitem__("format", "other"), "not an s4s solver"),
        ("version 7", lambda d: d.__setitem__("format_version", 7), "format_version"),
        ("missing grid", lambda d: d.pop("grid"), "missing field"),
        ("ragged table", lambda d: d["predictor"].__setitem__("a", [[1.0], [1.0, 2.0]]), "regular shape"),
        ("wrong table shape", lambda d: d["predictor"].__setitem__("a", [[1.0]]), "shape"),
        ("rising grid", lambda d: d.__setitem__("grid", sorted(d["grid"])), "grid"),
        ("metadata a list", lambda d: d.__setitem__("metadata", [1, 2]), "metadata"),
        ("nfe mismatch", lambda d: d.__setitem__("nfe", 9), "does not match"),
        ("bad schedule", lambda d: d.__setitem__("schedule", {"kind": "warp"}), "bad schedule"),
        ("input times outside", lambda d: d.__setitem__("input_times", [5000.0, 10.0]), "outside")]:
    cli("one-line failure", f"eval solver file: {name}", lambda e, n=name, ed=edit: _eval_solver(
        e, e.solver_file(n.replace(" ", "-"), ed)), 2, frag)
cli("one-line failure", "eval solver file truncated", lambda e: _eval_solver(e, _truncated(e)), 2,
    "not valid JSON")
cli("one-line failure", "eval solver file not UTF-8", lambda e: _eval_solver(e, _binary(e)), 2,
    "cannot read the solver file")
cli("one-line failure", "eval solver file missing", lambda e: _eval_solver(e, e.root / "gone.json"), 2,
    "no such solver file")
cli("one-line failure", "eval solver is a folder", lambda e: _eval_solver(e, e.dir_json), 2, "is a folder")
cli("one-line failure", "eval solver of another schedule", lambda e: _eval_solver(e, e.flow_solver), 2,
    "was built for schedule")
cli("one-line failure", "eval --inception-weights missing on RGB", lambda e: [
    *_eval(e, model=_rgb(e), data=None)[:-4], "--metrics", "fd", "--inception-weights", e.root / "none.pth"], 2, "Inception")
cli("one-line failure", "bench-report of a missing file", lambda e: ["bench-report", str(e.root / "none.json"), "--out",
                                                                      str(e.root / "rep")], 2, "cannot read bench results")
cli("one-line failure", "bench-report of a non-JSON file", lambda e: ["bench-report", str(e.a_file), "--out",
                                                                       str(e.root / "rep")], 2, "cannot read bench results")


def _truncated(e: Env) -> Path:
    path = e.root / "truncated.json"
    path.write_text(Path(e.solver).read_text()[:200])
    return path


def _binary(e: Env) -> Path:
    path = e.root / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    return path


def _rgb(e: Env) -> Path:
    folder = e.root / "rgb"
    if not folder.exists():
        torch.manual_seed(0)
        UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    norm_num_groups=4).save_pretrained(folder)
        DDPMScheduler().save_pretrained(folder)
    return folder


# 4. lost work: outputs checked before any work, written atomically
cli("lost work", "learn --out under a file", lambda e: _learn(e, out=e.a_file / "s.json"), 2, "is not a folder")
cli("lost work", "learn --out is a folder", lambda e: [*_learn(e, out=e.dir_json), "--force"], 2, "is a folder")
cli("lost work", "learn --run-dir under a file", lambda e: [*_learn(e), "--run-dir", e.a_file / "run"], 2, "--run-dir")
cli("lost work", "learn --out exists", lambda e: _learn(e, out=e.solver), 2, "--force")
cli("lost work", "eval --save-images under a file", lambda e: [*_eval(e), "--save-images", e.a_file / "g.png"], 2,
    "is not a folder")
api("lost work", "Solver.save onto a folder", lambda e: s4s.Solver.load(e.solver).save(e.dir_json), ValueError,
    "is a folder")
api("lost work", "Solver.save of non-JSON metadata", lambda e: _with_meta(e, {"x": object()}).save(e.root / "m.json"),
    s4s.SolverFileError, "cannot be written as JSON")


def _with_meta(e: Env, meta: dict) -> s4s.Solver:
    solver = s4s.Solver.load(e.solver)
    solver.metadata.update(meta)
    return solver


# 5. overwritten results
cli("overwritten results", "bench --out with results", lambda e: [*_bench(e)[:-2], "--out", e.bench_out], 2, "--merge")
cli("overwritten results", "eval --save-images exists", lambda e: [*_eval(e), "--save-images", e.existing_png], 2,
    "--force")

# 8. guidance that would mean nothing
cli("guidance", "learn --guidance on an unconditional model", lambda e: [*_learn(e, model=e.uncond), "--guidance", "2"],
    2, "class-conditional model")
cli("guidance", "eval --guidance on an unconditional model", lambda e: [*_eval(e, model=e.uncond), "--guidance", "2"],
    2, "class-conditional model")
cli("guidance", "bench --guidance on an unconditional model", lambda e: [
    "bench", "--model", str(e.uncond), "--nfe", "2", "--baselines", "ddim", "--methods", "--grids", "time",
    "--num-samples", "8", "--out", str(e.root / "b-unc"), "--guidance", "2"], 2, "class-conditional model")
cli("guidance", "eval a guided solver on an unconditional model", lambda e: _eval_solver(
    e, e.guided_solver, model=e.uncond), 2, "class-conditional model")
api("guidance", "learn guidance without labels", lambda e: s4s.learn(
    lambda x, t, c=None, g=None: x, e.schedule, 3, (4,), guidance=2.0), ValueError, "guidance needs labels")
api("guidance", "Denoiser guidance without null_cond", lambda e: s4s.Denoiser(lambda x, t, c: x, e.schedule)(
    _X, 500.0, torch.tensor([0, 1]), 2.0), ValueError, "null_cond")


# 6. --resume with other settings: refused, listing what differs
def _checkpointed(e: Env) -> tuple:
    """A GMM learning run stopped at step 10 (its checkpoint in a run folder), made once."""
    if not hasattr(e, "_ckpt"):
        gmm, vp = s4s.GaussianMixture.random(dim=4, components=2, seed=0), s4s.VPDiscrete()
        data = make_teacher_data(gmm.denoiser(vp), vp, (4,), num_samples=48, teacher="unipc_bh2:10", seed=0, progress=False)
        train, val = data.split(36)
        run = e.root / "resume-run"
        kw = dict(nfe=3, method="s4s", base="dpmpp_3m", grid="time", steps=10, val_every=5, batch_size=8)
        train_solver(gmm.denoiser(vp), vp, train, val, LearnConfig(**kw), run_dir=run, progress=False)
        e._ckpt = (gmm.denoiser(vp), vp, train, val, run, kw)
    return e._ckpt


def _resume(e: Env, train_edit: Callable = lambda d: d, **changes: Any) -> Any:
    den, vp, train, val, run, kw = _checkpointed(e)
    cfg = LearnConfig(**{**kw, "steps": 20, **changes})
    return train_solver(den, vp, train_edit(train), val, cfg, run_dir=run, resume=True, progress=False)


for change, frag in [(dict(loss="l1"), "loss: 'l2' -> 'l1'"), (dict(seed=1), "seed: 0 -> 1"), (dict(nfe=4), "nfe: 3 -> 4"),
                     (dict(method="s4s-alt"), "method: 's4s' -> 's4s-alt'"), (dict(batch_size=4), "batch_size: 8 -> 4"),
                     (dict(lr=0.5), "lr:"), (dict(base="unip_bh2"), "base:"), (dict(ball_radius=0.1), "ball_radius")]:
    api("resume mismatch", f"resume with {change}", lambda e, c=change: _resume(e, **c), ValueError, frag)
api("resume mismatch", "resume on other teacher data", lambda e: _resume(
    e, train_edit=lambda d: s4s.TeacherData(d.x_T, d.cond, d.x0 + 0.01, d.meta)), ValueError, "teacher data")
api("resume mismatch", "resume from a damaged checkpoint", lambda e: (
    (_checkpointed(e)[4] / "checkpoint.pt").write_bytes(b"garbage"), _resume(e)), ValueError, "cannot read the checkpoint")


# --- running the table -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_answer(case: Case, env: Env, caplog, capsys):
    caplog.set_level(logging.INFO)
    if not case.is_cli:
        with pytest.raises(case.expect) as info:
            case.run(env)
        assert case.fragment in str(info.value), str(info.value)
        return
    try:
        code = main([str(a) for a in case.run(env)])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    text = caplog.text + err
    assert code == case.expect, text
    assert case.fragment in text, text
    assert "Traceback" not in text
    assert not (env.root / "never-written.json").exists()


# --- faults that must be survived (not refused): the teacher cache, interrupts, concurrency ------------------
DAMAGES: dict[str, Callable[[Path], Any]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "empty": lambda p: p.write_bytes(b""),
    "random bytes": lambda p: p.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes()),
    "old format (a bare tensor)": lambda p: torch.save(torch.load(p, weights_only=True)["x0"], p),
    "another request's batch": lambda p: torch.save({**torch.load(p, weights_only=True), "key": "0" * 16}, p),
    "wrong shape": lambda p: torch.save({**(r := torch.load(p, weights_only=True)), "x0": r["x0"][:3]}, p),
    "flipped values (checksum)": lambda p: torch.save({**(r := torch.load(p, weights_only=True)), "x0": r["x0"] + 1}, p),
    "NaN values": lambda p: torch.save({**(r := torch.load(p, weights_only=True)), "x0": r["x0"] * float("nan")}, p),
}


def _gmm_teacher(cache: Path, **kw: Any):
    gmm, vp = s4s.GaussianMixture.random(dim=4, components=2, seed=0), s4s.VPDiscrete()
    return make_teacher_data(gmm.denoiser(vp), vp, (4,), num_samples=40, teacher="unipc_bh2:10", seed=3, batch_size=16, cache_dir=cache,
                             fingerprint="gmm-test", progress=False, **kw)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_teacher_cache_batch_is_regenerated(damage, tmp_path, caplog):
    fresh = _gmm_teacher(tmp_path / "cache")
    batch = sorted((tmp_path / "cache").glob("*/batch_0000016.pt"))[0]
    DAMAGES[damage](batch)
    with caplog.at_level(logging.WARNING):
        again = _gmm_teacher(tmp_path / "cache")
    assert "regenerating" in caplog.text and batch.name in caplog.text
    assert torch.equal(again.x0, fresh.x0)
    assert torch.equal(_gmm_teacher(tmp_path / "cache").x0, fresh.x0)  # and the repaired batch is read back


def test_teacher_generation_interrupted_resumes_to_the_same_data(tmp_path, monkeypatch):
    teacher = importlib.import_module("s4s.teacher")

    fresh = _gmm_teacher(tmp_path / "fresh")
    real, calls = teacher.teacher_sampler, {"n": 0}

    def dying(*a: Any, **k: Any):
        inner = real(*a, **k)

        def run(*args: Any):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return inner(*args)
        return run

    monkeypatch.setattr(teacher, "teacher_sampler", dying)
    with pytest.raises(KeyboardInterrupt):
        _gmm_teacher(tmp_path / "cache")
    monkeypatch.setattr(teacher, "teacher_sampler", real)
    assert len(list((tmp_path / "cache").glob("*/batch_*.pt"))) == 1  # the finished batch is kept, nothing half-written
    assert not list((tmp_path / "cache").glob("*/*.tmp*"))
    assert torch.equal(_gmm_teacher(tmp_path / "cache").x0, fresh.x0)


def _stress_worker(cache: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.save(_gmm_teacher(Path(cache)).x0, out)


def test_concurrent_teacher_runs_on_one_cache_agree(tmp_path):
    """Four processes make the same teacher data into one cache at once (bounded: a few seconds)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_stress_worker, args=(str(tmp_path / "cache"), str(tmp_path / f"out{i}.pt")))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outs = [torch.load(tmp_path / f"out{i}.pt") for i in range(4)]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert torch.equal(_gmm_teacher(tmp_path / "cache").x0, outs[0])
    assert not list((tmp_path / "cache").glob("*/*.tmp*"))


def test_an_interrupted_command_says_so_in_one_line(monkeypatch, caplog, capsys):
    import s4s.cli as cli_module

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    parser = cli_module.build_parser()
    monkeypatch.setattr(cli_module, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["bench-baselines"].set_defaults(func=interrupted)
    assert main(["bench-baselines"]) == 130
    assert "interrupted" in caplog.text and "Traceback" not in caplog.text + capsys.readouterr().err


def test_json_is_always_valid_and_few_sample_fd_is_flagged(env, capsys, caplog):
    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"invalid JSON {c}")))

    assert main(["eval", "--model", str(env.cond), "--data", "mnist", "--solver", "ddim", "--nfe", "2", "--num-samples",
                 "8", "--no-cache", "--json"]) == 0
    out = strict(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["fd"] is not None and "rank-deficient" in out["fd_warning"] and "rank-deficient" in caplog.text


def test_eval_uses_the_solver_s_guidance_unless_told_otherwise(env, capsys, caplog):
    caplog.set_level(logging.INFO)
    base = ["eval", "--model", str(env.cond), "--solver", str(env.guided_solver), "--num-samples", "6", "--no-cache",
            "--metrics", "teacher", "--teacher", "ddim:3", "--json"]
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["guidance"] == 2.0
    assert "the scale the solver was learned with" in caplog.text
    assert main([*base, "--guidance", "none"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["guidance"] is None


def test_bench_merges_or_overwrites_only_when_asked(env, capsys):
    out = env.root / "bench-merge"
    argv = ["bench", "--model", str(env.cond), "--data", "mnist", "--baselines", "ddim", "--methods", "--grids", "time", "--num-samples",
            "4", "--out", str(out)]
    assert main([*argv, "--nfe", "2"]) == 0
    assert main([*argv, "--nfe", "3"]) == 2  # refuses to overwrite
    assert main([*argv, "--nfe", "3", "--merge"]) == 0
    cells = json.loads((out / "results.json").read_text())
    assert sorted(c["nfe"] for c in cells) == [2, 3]
    assert main([*argv, "--nfe", "4", "--force"]) == 0
    assert [c["nfe"] for c in json.loads((out / "results.json").read_text())] == [4]


def test_learn_refuses_a_bad_output_before_any_teacher_work(env, monkeypatch):
    api_module = importlib.import_module("s4s.learning.api")
    monkeypatch.setattr(api_module, "make_teacher_data", lambda *a, **k: pytest.fail("teacher work started"))
    assert main(_learn(env, out=env.a_file / "s.json")) == 2


CLASS_COUNTS = Counter(c.cls for c in CASES)
# the stateful tests above: 8 cache damages + interrupted teacher + concurrency + interrupt + JSON/FD + guidance + bench
CLASS_COUNTS.update({"teacher cache": len(DAMAGES) + 2, "interrupt": 1, "non-finite": 1, "guidance": 1,
                     "overwritten results": 1, "lost work": 1})


def test_the_table_covers_every_class_with_at_least_150_cases():
    assert sum(CLASS_COUNTS.values()) >= 150, CLASS_COUNTS
    assert set(CLASS_COUNTS) >= {"argument range", "non-finite", "bad model output", "one-line failure", "lost work",
                                 "overwritten results", "resume mismatch", "teacher cache", "guidance", "interrupt"}
