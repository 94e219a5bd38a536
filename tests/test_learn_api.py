"""One set of learning defaults: the Python API and the CLI start from the same presets and learn the same solver."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

import s4s
from s4s.cli import build_parser, learn_config_from_args, main
from s4s.learning.config import PRESETS, LearnConfig, preset_config


def test_the_default_config_is_the_default_preset_and_the_cli_default():
    assert LearnConfig() == PRESETS["default"]
    for preset in PRESETS:
        args = build_parser().parse_args(["learn", "--nfe", "5", "--out", "x.json", "--preset", preset])
        assert learn_config_from_args(args) == PRESETS[preset].with_options(nfe=5)
    args = build_parser().parse_args(["learn", "--nfe", "3", "--out", "x.json", "--preset", "fast", "--steps", "7",
                                      "--teacher-samples", "40", "--no-learn-a", "--loss", "l1", "--guidance", "2",
                                      "--no-range-aware", "--backoff-scope", "moved", "--screen-samples", "16",
                                      "--probe-starts", "3", "--probe-steps", "5", "--ema", "0.9"])
    assert learn_config_from_args(args) == preset_config("fast", nfe=3, steps=7, num_samples=40, learn_a=False, loss="l1",
                                                         guidance=2.0, range_aware=False, backoff_scope="moved",
                                                         screen_samples=16, probe_starts=3, probe_steps=5, ema=0.9)
    assert LearnConfig().range_aware is None  # auto: chosen from the teacher's samples
    args = build_parser().parse_args(["learn", "--nfe", "4", "--out", "x.json", "--preset", "lm", "--damping", "0.01",
                                      "--fd-step", "1e-4", "--lm-memory", "0.5", "--steps", "3"])
    assert learn_config_from_args(args) == preset_config("lm", nfe=4, damping=0.01, fd_step=1e-4, lm_memory=0.5, steps=3)
    assert learn_config_from_args(args).optimizer == "lm"
    args = build_parser().parse_args(["learn", "--nfe", "4", "--out", "x.json", "--optimizer", "lm"])
    assert learn_config_from_args(args) == LearnConfig(nfe=4, optimizer="lm")
    args = build_parser().parse_args(["learn", "--nfe", "4", "--out", "x.json", "--guidance", "1:6", "--anchors", "4",
                                      "--shared-fraction", "0.25"])
    assert learn_config_from_args(args) == LearnConfig(nfe=4, guidance_range=(1.0, 6.0), anchors=4, shared_fraction=0.25)


def test_unknown_options_and_presets_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown learning option"):
        preset_config("default", stepz=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("slow")
    with pytest.raises(ValueError, match="nfe is not set"):
        LearnConfig().validate()


def test_the_same_command_in_python_and_on_the_cli_learns_the_same_solver(tmp_path, capsys):
    from test_eval import _tiny_model_folder

    folder = _tiny_model_folder(tmp_path / "tiny")
    settings = dict(nfe=2, preset="fast", num_samples=16, steps=4, teacher="ddim:4", guidance=2.0)
    rc = main(["learn", "--model", str(folder), "--nfe", "2", "--preset", "fast", "--teacher-samples", "16", "--steps",
               "4", "--teacher", "ddim:4", "--guidance", "2", "--out", str(tmp_path / "cli.json"), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cli_solver = s4s.Solver.load(tmp_path / "cli.json")
    # the Python call computes its own teacher samples (no cache), so nothing is shared but the settings
    result = s4s.learn(s4s.load_model(folder), cache=False, progress=False, run_dir=tmp_path / "py-run", **settings)
    assert isinstance(result, s4s.LearnResult)
    py = result.solver
    assert torch.equal(py.grid, cli_solver.grid) and torch.equal(py.input_times, cli_solver.input_times)
    for name in ("a", "b", "ac", "bc"):
        assert torch.equal(getattr(py.tables, name), getattr(cli_solver.tables, name)), name
    assert py.metadata == cli_solver.metadata
    assert printed["val_rmse"] == pytest.approx(result.summary()["val_rmse"])
    assert (printed["base"], printed["grid"]) == (result.base, result.grid)
    run_config = json.loads((tmp_path / "py-run" / "config.json").read_text())
    assert run_config == json.loads((tmp_path / "cli-run" / "config.json").read_text()) == asdict(result.config)
    assert run_config["loss"] == "l2"  # a 1x28x28 model that declares no data set: no MNIST network by shape


def test_the_python_api_caches_teacher_samples_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("S4S_CACHE", str(tmp_path / "cache"))
    gmm = s4s.GaussianMixture.random(dim=4, components=2, seed=0)
    schedule = s4s.VPDiscrete()
    kw = dict(num_samples=16, steps=2, teacher="ddim:4", progress=False, base="ddim", grid="time")
    first = s4s.learn(gmm.denoiser(schedule), schedule, 2, (4,), **kw)
    assert list((tmp_path / "cache" / "teacher").glob("*/batch_*.pt")), "no teacher batch cached"
    assert first.teacher_seconds > 0
    again = s4s.learn(gmm.denoiser(schedule), schedule, 2, (4,), **kw)
    assert torch.equal(again.solver.tables.b, first.solver.tables.b)
    s4s.learn(gmm.denoiser(schedule), schedule, 2, (4,), cache=False, cache_dir=tmp_path / "elsewhere", **kw)
    assert not (tmp_path / "elsewhere").exists()


def test_help_shows_defaults_and_the_presets_values_and_version(capsys):
    for argv in (["eval", "--help"], ["learn", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "seed of the evaluation noise (default: 0)" in out
    assert (f"optimiser steps (default: the preset's: default {PRESETS['default'].steps}, fast {PRESETS['fast'].steps}, "
            f"lm {PRESETS['lm'].steps})") in out
    assert s4s.__version__ in out
