"""Evaluation wiring: bundled classifier/statistics, FD against torchmetrics-free references, `s4s eval`."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

import s4s
from s4s.cli import main
from s4s.bundled.classifier import load_mnist_classifier
from s4s.eval.features import FeatureNetwork, feature_network_for
from s4s.eval.frechet import FeatureStats, frechet_distance
from s4s.eval.runner import evaluate, generate
from s4s.models import load_model


def test_frechet_distance_matches_closed_form_for_gaussians():
    # diagonal covariances: FD = |mu1-mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    a = FeatureStats(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)), 100)
    b = FeatureStats(torch.tensor([2.0, 1.0], dtype=torch.float64), torch.diag(torch.tensor([9.0, 1.0], dtype=torch.float64)), 100)
    expected = 4.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_feature_stats_round_trip(tmp_path):
    f = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = FeatureStats.from_features(f)
    stats.save(tmp_path / "s.npz")
    again = FeatureStats.load(tmp_path / "s.npz")
    assert torch.equal(again.mean, stats.mean) and torch.equal(again.cov, stats.cov) and again.count == 50
    np.testing.assert_allclose(stats.cov.numpy(), np.cov(f.numpy().T), rtol=1e-12)


def test_bundled_classifier_and_reference_are_consistent():
    clf = load_mnist_classifier()
    net = feature_network_for((1, 28, 28), "mnist")
    assert net.reference.dim == clf.num_features == 128 and net.reference.count == 10000
    assert "MNIST classifier" in net.name
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert net.features(x).shape == (4, 128)


def test_inception_needs_local_weights_with_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        feature_network_for((3, 32, 32))
    with pytest.raises(FileNotFoundError, match="no Inception weights"):
        feature_network_for((3, 32, 32), inception_weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="no feature network fits"):
        feature_network_for((4, 16, 16))
    with pytest.raises(ValueError, match="no feature network fits"):  # the shape alone never picks the MNIST classifier
        feature_network_for((1, 28, 28))
    with pytest.raises(ValueError, match="whose networks take"):
        feature_network_for((3, 32, 32), "mnist")


def _tiny_model_folder(path, channels=1, size=28, classes=3):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 8),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       num_class_embeds=classes + 1 if classes else None)
    unet.save_pretrained(path)
    DDPMScheduler(beta_schedule="linear").save_pretrained(path)
    return path


def test_eval_json_has_the_documented_keys(tmp_path, capsys):
    folder = _tiny_model_folder(tmp_path / "tiny")
    rc = main(["eval", "--model", str(folder), "--data", "mnist", "--solver", "ddim", "--nfe", "2", "--num-samples", "24", "--batch-size",
               "12", "--metrics", "fd,teacher", "--teacher", "ddim:4", "--no-cache", "--json", "--guidance", "1.5",
               "--save-images", str(tmp_path / "grid.png")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("fd", "feature_space", "teacher_rmse", "solver", "nfe", "num_samples", "seed", "seconds"):
        assert key in out
    assert out["nfe"] == 2 and out["num_samples"] == 24 and out["fd"] > 0 and out["teacher_rmse"] > 0
    assert out["feature_space"] == "MNIST classifier features" and 0 <= out["accuracy"] <= 1
    assert (tmp_path / "grid.png").exists()


def test_teacher_fd_is_the_fd_of_the_teacher_evaluated_as_a_solver(tmp_path):
    """``teacher_fd`` / ``teacher_accuracy`` (the floor beside a solver's FD) are what evaluating the teacher
    itself on the same noises and labels gives."""
    model = load_model(_tiny_model_folder(tmp_path / "tiny"), data="mnist")
    kw = dict(num_samples=24, seed=3, guidance=2.0, batch_size=12, progress=False)
    r = evaluate(model, s4s.baseline("ddim", model.schedule, 2), metrics=["fd", "teacher"], teacher="dpmpp_2m:4", **kw)
    own = evaluate(model, s4s.baseline("dpmpp_2m", model.schedule, 4, grid="logsnr"), metrics=["fd"], **kw)
    assert r["teacher_fd"] == pytest.approx(own["fd"], rel=1e-6) and r["teacher_fd"] != pytest.approx(r["fd"], rel=1e-3)
    assert r["teacher_accuracy"] == own["accuracy"]
    alone = evaluate(model, s4s.baseline("ddim", model.schedule, 2), metrics=["teacher"], teacher="dpmpp_2m:4", **kw)
    assert alone["teacher_fd"] is None  # no FD asked for: no floor either


def test_eval_with_a_stand_in_feature_module_for_rgb(tmp_path):
    """The Inception code path's wiring, with a stand-in feature network (no weights here)."""
    model = load_model(_tiny_model_folder(tmp_path / "rgb", channels=3, size=16, classes=0))
    assert model.sample_shape == (3, 16, 16) and model.num_classes == 0
    pool = torch.nn.AdaptiveAvgPool2d(2)
    stand_in = FeatureNetwork("stand-in", lambda x: pool(x).flatten(1),
                              FeatureStats(torch.zeros(12, dtype=torch.float64), torch.eye(12, dtype=torch.float64), 100))
    sampler = s4s.baseline("dpmpp_2m", model.schedule, 3)
    r = evaluate(model, sampler, num_samples=16, metrics=["fd"], feature_net=stand_in, batch_size=8, progress=False)
    assert r["feature_space"] == "stand-in" and r["fd"] > 0 and r["teacher_rmse"] is None


def test_cli_fails_fast_with_one_clear_line(tmp_path, caplog):
    existing = tmp_path / "solver.json"
    existing.write_text("{}")
    assert main(["learn", "--nfe", "4", "--out", str(existing)]) == 2
    assert "--force" in caplog.text
    assert main(["learn", "--nfe", "0", "--out", str(tmp_path / "new.json")]) == 2
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--nfe", "3"]) == 2
    assert "model not found" in caplog.text
    with pytest.raises(SystemExit):
        main(["learn", "--nfe", "4", "--method", "magic", "--out", str(tmp_path / "x.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "s4s.solver", "format_version": 7}')
    assert main(["eval", "--solver", str(bad)]) == 2
    assert "format_version" in caplog.text
    assert main(["bench", "--baselines", "--methods", "--out", str(tmp_path / "b")]) == 2
    assert "nothing to run" in caplog.text


def test_bundled_model_loads_with_plain_diffusers_and_s4s():
    from s4s.models import bundled_model_path

    unet = UNet2DModel.from_pretrained(str(bundled_model_path()), subfolder="unet")
    assert unet.config.num_class_embeds == 11 and unet.config.sample_size == 28
    model = load_model(None)
    assert model.num_classes == 10 and model.null_label == 10 and model.denoiser.clip_range == (-1.0, 1.0)
    assert model.fingerprint == s4s.fingerprint_module(model.module)


def test_bundled_model_samples_the_same_named_by_path_or_by_default():
    """The clamp of D comes from the folder's scheduler config (``clip_sample``), not from how it is named."""
    from s4s.models import bundled_model_path

    by_default, by_path = load_model(None), load_model(bundled_model_path())
    assert by_default.denoiser.clip_range == by_path.denoiser.clip_range == (-1.0, 1.0)
    sampler = s4s.baseline("unipc_bh1", by_default.schedule, 4, grid="time")
    a, b = (generate(m, sampler, 8, seed=0, progress=False, labels=m.labels(8, guided=False)) for m in (by_default, by_path))
    assert torch.equal(a, b)
    assert load_model(None, clip_denoised=False).denoiser.clip_range is None


def test_a_solver_learned_with_another_clamp_is_flagged(tmp_path, caplog):
    from s4s.eval.runner import resolve_sampler

    model = load_model(None)
    solver = s4s.baseline("dpmpp_3m", model.schedule, 4)
    solver.metadata["denoiser_clip"] = None
    path = solver.save(tmp_path / "unclamped.json")
    resolve_sampler(str(path), model)
    assert "learned with D clamped to None" in caplog.text
    caplog.clear()
    solver.metadata["denoiser_clip"] = [-1.0, 1.0]
    resolve_sampler(str(solver.save(tmp_path / "clamped.json")), model)
    assert "clamped" not in caplog.text


def test_clip_sample_in_the_scheduler_config_sets_the_clamp(tmp_path):
    folder = _tiny_model_folder(tmp_path / "tiny", classes=0)
    for cfg, override, expected in [(dict(clip_sample=False), None, None), (dict(clip_sample=True), None, (-1.0, 1.0)),
                                    (dict(clip_sample=True, clip_sample_range=2.5), None, (-2.5, 2.5)),
                                    (dict(clip_sample=True), False, None), (dict(clip_sample=False), True, (-1.0, 1.0))]:
        DDPMScheduler(beta_schedule="linear", **cfg).save_pretrained(folder)
        assert load_model(folder, clip_denoised=override).denoiser.clip_range == expected, (cfg, override)


def test_bundled_flow_model_loads_as_a_rectified_flow():
    from s4s.models import bundled_model_path

    path = bundled_model_path("mnist-flow-unet")
    unet = UNet2DModel.from_pretrained(str(path), subfolder="unet")
    assert unet.config.num_class_embeds == 11
    model = load_model(path)
    assert isinstance(model.schedule, s4s.Flow) and model.num_classes == 10
    assert model.device == torch.device("cpu") and model.denoiser.device == torch.device("cpu")
    # D = x - t u: at t -> 0 the denoiser returns (nearly) its input
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    d = model.denoiser(x, torch.tensor(1e-3), torch.tensor([10, 10]))
    assert float((d - x).abs().max()) < 0.05


def test_bench_report_merges_results_later_files_win(tmp_path, capsys):
    from s4s.bench.model import BenchCell, load_cells

    def write(name, cells):
        path = tmp_path / name
        path.write_text(json.dumps([vars(c) for c in cells]))
        return path

    a = write("a.json", [BenchCell("unipc_bh1", "baseline", 5, "time", 50.0, None, 1.0),
                         BenchCell("s4s-alt", "learned", 5, "learned", 60.0, None, 1.0)])
    b = write("b.json", [BenchCell("s4s-alt", "learned", 5, "learned", 40.0, None, 1.0),
                         BenchCell("unipc_bh1", "baseline", 4, "time", 70.0, None, 1.0)])
    cells = load_cells([a, b])
    assert {(c.method, c.nfe): c.fd for c in cells} == {("unipc_bh1", 5): 50.0, ("s4s-alt", 5): 40.0,
                                                        ("unipc_bh1", 4): 70.0}
    assert main(["bench-report", str(a), str(b), "--out", str(tmp_path / "report"), "--title", "T"]) == 0
    table = (tmp_path / "report" / "bench.md").read_text()
    assert "| s4s-alt | – | **40.00** |" in table and "| unipc_bh1 | 70.00 (time) | 50.00 (time) |" in table
    assert json.loads((tmp_path / "report" / "results.json").read_text())[1]["fd"] == 40.0

    # an `s4s eval --json` output of a learned solver file becomes a learned cell
    solver = s4s.baseline("dpmpp_3m", s4s.VPDiscrete(), 3, grid="time")
    solver.metadata.update(method="s4s", base="dpmpp_3m", grid_init="time")
    path = solver.save(tmp_path / "learned.json")
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"solver": str(path), "nfe": 3, "fd": 12.5, "feature_space": "x", "seconds": 2.0,
                              "teacher_rmse": None}))
    (cell,) = load_cells([ev])
    assert (cell.method, cell.kind, cell.nfe, cell.fd, cell.grid) == ("s4s", "learned", 3, 12.5, "learned from dpmpp_3m/time")
