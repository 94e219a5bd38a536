"""One learned solver for a range of guidance scales (s4s.family), on the exact Gaussian mixture."""

from __future__ import annotations

import json

import pytest
import torch

import s4s
from s4s.adaptive import rk45_sample
from s4s.family import GuidanceFamily, load_solver, training_scales
from s4s.solver import SolverFileError

DIM = 8


def _anchor_solvers(vp) -> list[s4s.Solver]:
    return [s4s.baseline("ddim", vp, 4, grid="time"), s4s.baseline("dpmpp_3m", vp, 4, grid="logsnr")]


def test_the_family_interpolates_its_anchors_and_refuses_outside_its_range(vp):
    a, b = (s.__class__(s.grid, s.tables.__class__(s.tables.a, s.tables.b, None, None), s.input_times, s.schedule)
            for s in _anchor_solvers(vp))
    family = GuidanceFamily([1.0, 5.0], [a, b], {"source": "test"})
    assert torch.equal(family.at_guidance(1.0).tables.b, a.tables.b)
    assert torch.equal(family.at_guidance(5.0).grid, b.grid)
    mid = family.at_guidance(3.0)
    torch.testing.assert_close(mid.tables.b, (a.tables.b + b.tables.b) / 2, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(mid.grid, (a.grid + b.grid) / 2, rtol=1e-14, atol=0)
    assert mid.metadata["guidance"] == 3.0 and mid.nfe == 4
    with pytest.raises(ValueError, match=r"outside the range .*\[1, 5\]"):
        family.at_guidance(6.0)
    assert torch.equal(family.at_guidance(6.0, clamp=True).tables.b, b.tables.b)
    with pytest.raises(ValueError, match="give the scale"):
        family.sample(lambda x, t, c=None, g=None: x, torch.zeros(2, DIM))
    with pytest.raises(ValueError, match="at_guidance"):  # k-diffusion samplers take one solver
        s4s.sample_s4s(lambda x, sigma: x, torch.zeros(2, DIM), torch.ones(5), solver=family)


def test_a_family_file_round_trips_and_single_solver_files_still_load(vp, tmp_path):
    a, b = _anchor_solvers(vp)
    a = s4s.Solver(a.grid, s4s.Tables(a.tables.a, a.tables.b), a.input_times, vp)
    b = s4s.Solver(b.grid, s4s.Tables(b.tables.a, b.tables.b), b.input_times, vp)
    family = GuidanceFamily([1.0, 4.0], [a, b], {"method": "s4s"})
    path = family.save(tmp_path / "family.json")
    again = load_solver(path)
    assert isinstance(again, GuidanceFamily) and again.scales == [1.0, 4.0]
    for w in (1.0, 2.2, 4.0):
        assert torch.equal(again.at_guidance(w).tables.b, family.at_guidance(w).tables.b)
    with pytest.raises(SolverFileError, match="guidance family"):
        s4s.Solver.load(path)
    # version-1 files (before families) load as before
    old = a.to_dict()
    old["format_version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert torch.equal(s4s.Solver.load(tmp_path / "v1.json").tables.b, a.tables.b)
    assert isinstance(load_solver(tmp_path / "v1.json"), s4s.Solver)
    broken = json.loads(path.read_text())
    broken["scales"] = [4.0, 1.0]
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(SolverFileError, match="increasing"):
        load_solver(tmp_path / "bad.json")


def test_a_learned_family_beats_the_base_at_anchor_and_between_anchor_scales(vp):
    """Learned once for w in [1, 5]; checked against the exact guided ODE (RK45 to 1e-9) at an anchor (1),
    a training midpoint (2), a scale it never saw (2.5) and the top anchor (5)."""
    gmm = s4s.GaussianMixture.random(dim=DIM, components=4, seed=2)
    den = gmm.denoiser(vp)
    scales = training_scales(1.0, 5.0, 3)
    assert scales == [1.0, 2.0, 3.0, 4.0, 5.0]
    per = 48
    labels = torch.arange(per) % gmm.num_components
    result = s4s.learn(den, vp, 4, (DIM,), method="s4s-alt", base="dpmpp_3m", grid="time", guidance_range=(1.0, 5.0),
                       anchors=3, num_samples=per * len(scales), labels=labels, teacher="dpmpp_3m:60", steps=120,
                       batch_size=24, val_every=20, learn_a=False, cache=False, progress=False)
    family = result.solver
    assert isinstance(family, GuidanceFamily) and family.scales == [1.0, 3.0, 5.0]
    assert family.metadata["guidance_range"] == [1.0, 5.0] and "val_by_guidance" in result.history[-1]
    checks = family.metadata["between_scales"]  # measured halfway between the training scales
    assert list(checks) == ["1.5", "2.5", "3.5", "4.5"] and not any(c["worse"] for c in checks.values())
    base = s4s.baseline("dpmpp_3m", vp, 4, grid="time")
    x = vp.prior_noise((64, DIM), generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    test_labels = torch.arange(64) % gmm.num_components
    for w in (1.0, 2.0, 2.5, 5.0):
        ref, _ = rk45_sample(den, x, vp, test_labels, w, rtol=1e-9, atol=1e-9)
        e_family = float((family.sample(den, x, test_labels, w) - ref).pow(2).mean().sqrt())
        e_base = float((base.sample(den, x, test_labels, w) - ref).pow(2).mean().sqrt())
        assert e_family < 0.8 * e_base, (w, e_family, e_base)


@pytest.mark.parametrize("shared_fraction", [0.0, 0.5, 1.0])
def test_a_family_shares_one_solver_for_its_first_steps_then_each_anchor_learns_its_own(vp, shared_fraction):
    """The anchors equal each other (one solver for every scale) up to the shared steps; afterwards they move
    apart, and a wholly shared family is one solver at every scale."""
    from s4s.learning import trainer

    gmm = s4s.GaussianMixture.random(dim=DIM, components=4, seed=2)
    per, steps = 24, 12
    seen = []  # after each optimiser step: the step and whether the anchors' parameters are equal

    def watch(state, config, phase, original=trainer.TrainState.optimiser_step):
        original(state, config, phase)
        seen.append(state.step)

    members_equal = []
    share = trainer.GuidanceFamilyModule.share_

    def share_and_record(module):
        share(module)
        members_equal.append(all(torch.equal(p, q) for p, q in zip(module.members[0].parameters(),
                                                                     module.members[-1].parameters())))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer.TrainState, "optimiser_step", watch)
        mp.setattr(trainer.GuidanceFamilyModule, "share_", share_and_record)
        family = s4s.learn(gmm.denoiser(vp), vp, 3, (DIM,), method="s4s-alt-pc", base="dpmpp_3m", grid="time",
                           guidance_range=(1.0, 5.0), anchors=3, num_samples=per * 5, labels=torch.arange(per) % 4,
                           teacher="dpmpp_3m:30", steps=steps, batch_size=16, val_every=4, probe_starts=1,
                           shared_fraction=shared_fraction, cache=False, progress=False).solver
    shared = round(shared_fraction * steps)
    assert family.metadata["shared_fraction"] == shared_fraction
    assert seen == list(range(steps)) and members_equal == [True] * shared  # shared after each of the first steps
    first, last = family.solvers[0], family.solvers[-1]
    same = torch.equal(first.grid, last.grid) and torch.equal(first.tables.b, last.tables.b)
    assert same == (shared_fraction == 1.0)
    if same:
        w_solvers = [family.at_guidance(w) for w in (1.0, 2.5, 5.0)]
        assert all(torch.equal(s.tables.bc, first.tables.bc) for s in w_solvers)


def test_the_cli_learns_a_family_and_eval_and_the_scheduler_use_it_at_one_scale(tmp_path, caplog, capsys):
    from diffusers import DDPMScheduler
    from test_eval import _tiny_model_folder

    from s4s.cli import main

    folder = str(_tiny_model_folder(tmp_path / "tiny"))
    out = str(tmp_path / "family.json")
    assert main(["learn", "--model", folder, "--data", "mnist", "--nfe", "2", "--guidance", "1:3", "--anchors", "2",
                 "--preset", "fast", "--teacher", "ddim:4", "--teacher-samples", "24", "--steps", "4", "--out", out,
                 "--json"]) == 0
    learned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    family = load_solver(out)
    assert isinstance(family, GuidanceFamily) and family.scales == [1.0, 3.0] and family.nfe == 2
    assert list(learned["between_scales"]) == ["1.5", "2.5"] == list(family.metadata["between_scales"])
    assert family.metadata["training_scales"] == [1.0, 2.0, 3.0] and family.metadata["num_samples"] == 24
    probe = family.metadata["probe_losses"]   # two starts, each learned the whole (4-step) run, on one objective
    assert len(probe) == 2 and probe[f"{family.metadata['base']}/{family.metadata['grid_init']}"] == min(probe.values())
    evaluate = ["eval", "--model", folder, "--data", "mnist", "--solver", out, "--num-samples", "8", "--metrics",
                "teacher", "--teacher", "ddim:3", "--no-cache", "--json"]
    capsys.readouterr()
    assert main([*evaluate, "--guidance", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["guidance"] == 2.0
    assert main(evaluate) == 2 and "guidance family" in caplog.text
    assert main([*evaluate, "--guidance", "5"]) == 2 and "outside the range" in caplog.text
    assert main([*evaluate, "--guidance", "5", "--clamp-guidance"]) == 0
    assert main([*evaluate, "--guidance", "1:3"]) == 2 and "is for s4s learn" in caplog.text
    assert main(["learn", "--nfe", "2", "--guidance", "3:1", "--out", str(tmp_path / "x.json")]) == 2
    assert "LO < HI" in caplog.text
    # the diffusers scheduler runs the family at the pipeline's scale, which it must be told
    ddpm = DDPMScheduler(beta_schedule="linear", clip_sample=True)
    with pytest.raises(ValueError, match="guidance_scale"):
        s4s.S4SScheduler.from_solver(family, ddpm)
    scheduler = s4s.S4SScheduler.from_solver(family, ddpm, guidance=2.5)
    assert torch.equal(scheduler.solver.tables.b, family.at_guidance(2.5).tables.b)


def test_bench_report_merges_cells_at_several_scales_into_one_table_per_nfe(tmp_path, capsys):
    from s4s.bench.model import BenchCell, load_cells, save_cells
    from s4s.cli import main

    space = "MNIST classifier features"
    cells = [BenchCell("unipc_bh1", "baseline", 5, "time", 40.0 + w, None, 1.0, feature_space=space, guidance=w,
                       accuracy=0.9) for w in (1.0, 4.0)]
    cells += [BenchCell("s4s-alt-pc family 1:8", "learned", 5, "learned", 30.0 + w, None, 1.0, feature_space=space,
                        guidance=w, accuracy=0.95) for w in (1.0, 4.0)]
    save_cells(cells[:3], tmp_path / "a.json")
    save_cells(cells[3:], tmp_path / "b.json")
    assert len(load_cells([tmp_path / "a.json", tmp_path / "b.json"])) == 4  # (method, NFE, guidance) are distinct
    assert main(["bench-report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "r")]) == 0
    table = (tmp_path / "r" / "bench.md").read_text()
    assert "| solver | w = 1 | w = 4 |" in table
    assert "| best hand-designed (named) | unipc_bh1 41.00 / 0.900 | unipc_bh1 44.00 / 0.900 |" in table
    assert "| s4s-alt-pc family 1:8 | **31.00 / 0.950** | **34.00 / 0.950** |" in table
    assert (tmp_path / "r" / "fd_vs_guidance_nfe5.png").exists()


def test_a_family_is_checked_between_its_training_scales_against_hand_designed_solvers(vp, caplog):
    """Halfway between training scales the family is measured against the teacher there (RK45 on the exact
    mixture) beside hand-designed solvers; a family made of one of them everywhere is never worse than it, one
    with a broken middle anchor is flagged at every check scale, and the recorded RMSEs (the family's, the best
    candidate's) are the ones computed directly."""
    from s4s.learning.family_check import check_between_scales, check_scales

    gmm = s4s.GaussianMixture.random(dim=DIM, components=4, seed=2)
    den = gmm.denoiser(vp)
    base = s4s.baseline("dpmpp_3m", vp, 4, grid="logsnr")
    other = s4s.baseline("unipc_bh1", vp, 4, grid="time")
    plain = s4s.Solver(base.grid, s4s.Tables(base.tables.a, base.tables.b), base.input_times, vp)
    broken = s4s.Solver(base.grid, s4s.Tables(base.tables.a, 2 * base.tables.b), base.input_times, vp)
    x = vp.prior_noise((32, DIM), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels = torch.arange(32) % gmm.num_components
    training = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert check_scales(training) == [1.5, 2.5, 3.5, 4.5]

    same = GuidanceFamily([1.0, 3.0, 5.0], [plain] * 3)
    checks = check_between_scales(den, same, {"dpmpp_3m/logsnr": base}, training, x, labels, "rk45:1e-9", None,
                                  batch_size=16)
    assert list(checks) == ["1.5", "2.5", "3.5", "4.5"]
    assert all(c["family"] == c["best"] and not c["worse"] for c in checks.values())

    bad = GuidanceFamily([1.0, 3.0, 5.0], [plain, broken, plain])
    candidates = {"dpmpp_3m/logsnr": base, "unipc_bh1/time": other}
    with caplog.at_level("WARNING", logger="s4s.learning.family_check"):
        checks = check_between_scales(den, bad, candidates, training, x, labels, "rk45:1e-9", None, batch_size=16)
    assert all(c["worse"] for c in checks.values())
    assert "than a hand-designed solver at w = 1.5, 2.5, 3.5, 4.5" in caplog.text
    ref, _ = rk45_sample(den, x, vp, labels, 2.5, rtol=1e-9, atol=1e-9)
    rmse = {name: float((s.sample(den, x, labels, 2.5) - ref).pow(2).mean().sqrt()) for name, s in
            {"family": bad.at_guidance(2.5), **candidates}.items()}
    best = min(candidates, key=rmse.get)
    assert checks["2.5"]["best_solver"] == best
    assert checks["2.5"]["family"] == pytest.approx(rmse["family"], rel=1e-6)
    assert checks["2.5"]["best"] == pytest.approx(rmse[best], rel=1e-6)
