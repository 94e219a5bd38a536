"""S4S / S4S-Alt on the exact Gaussian-mixture model (teacher = exact ODE solution)."""

import math

import pytest
import torch

import s4s
from s4s.learning import LearnableSolver, LearnConfig, train_solver
from s4s.teacher import TeacherData


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    schedule = s4s.VPDiscrete()
    model = s4s.GaussianMixture.random(dim=16, components=6, seed=0)
    x = schedule.prior_noise((512, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = TeacherData(x, None, model.ode_solution(x, schedule, schedule.t_max, schedule.t_min))
    x_test = schedule.prior_noise((256, 16), generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    ref_test = model.ode_solution(x_test, schedule, schedule.t_max, schedule.t_min)
    return schedule, model.denoiser(schedule), data.split(384), (x_test, ref_test)


def _rmse(solver, den, test):
    x, ref = test
    return float((solver.sample(den, x) - ref).pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def learned(setup):
    schedule, den, (train, val), test = setup
    out = {}
    for method in ("s4s", "s4s-alt"):  # the paper's parametrisation (no learned state weights), short rounds
        cfg = LearnConfig(nfe=4, method=method, base="dpmpp_3m", grid="quadratic", steps=150, batch_size=64, val_every=15,
                          learn_a=False, alt_round=25)
        out[method] = train_solver(den, schedule, train, val, cfg, progress=False)
    return out


def test_s4s_beats_its_base_and_alt_beats_s4s_on_held_out_noise(setup, learned):
    schedule, den, _, test = setup
    base = s4s.baseline("dpmpp_3m", schedule, 4, grid="quadratic")
    e_base, e_s4s, e_alt = (_rmse(s, den, test) for s in (base, learned["s4s"].solver, learned["s4s-alt"].solver))
    assert e_s4s < 0.97 * e_base, (e_base, e_s4s)
    assert e_alt < 0.97 * e_s4s, (e_s4s, e_alt)


def test_step_zero_is_the_base_solver(setup):
    schedule, den, _, test = setup
    # every method starts from the base exactly as `s4s.baseline` runs it: UniPC keeps its UniC
    # corrector even when only the predictor is learned
    for base, corrector in [("dpmpp_3m", False), ("dpmpp_3m", True), ("unipc_bh2", False), ("unipc_bh2", True),
                            ("unipc_bh1", False), ("unip_bh2", False), ("unip_bh1", True)]:
        grid = s4s.make_grid("logsnr", schedule, 5)
        learnable = LearnableSolver(schedule, base, grid, corrector=corrector)
        solver = learnable.to_solver()
        ref = s4s.baseline(base, schedule, 5, grid=grid)
        torch.testing.assert_close(solver.sample(den, test[0]), ref.sample(den, test[0]), rtol=1e-9, atol=1e-9)
        assert solver.tables.has_corrector == (corrector or base.startswith("unipc"))
        assert (learnable.dbc is not None) == corrector


def test_learned_solver_save_load_sample_identical(tmp_path, setup, learned):
    _, den, _, test = setup
    solver = learned["s4s-alt"].solver
    again = s4s.Solver.load(solver.save(tmp_path / "alt.json"))
    assert torch.equal(again.sample(den, test[0]), solver.sample(den, test[0]))
    assert again.metadata["method"] == "s4s-alt" and again.metadata["nfe"] == 4
    assert bool((again.grid[1:] < again.grid[:-1]).all())


def test_checkpointed_and_plain_gradients_match(setup):
    schedule, den, (train, _), _ = setup
    grads = []
    for ckpt in (False, True):
        model = LearnableSolver(schedule, "unipc_bh2", s4s.make_grid("logsnr", schedule, 4), corrector=True)
        t, s, tables = model()
        out = s4s.integrate(lambda x, ss: den(x, ss), train.x_T[:32], s, tables, checkpoint=ckpt)
        (out - train.x0[:32]).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("ema", [0.0, 0.8])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, setup, ema):
    # with averaging the interrupted run stops at a round's end: the resumed one must commit the average as the
    # uninterrupted one did
    schedule, den, (train, val), _ = setup
    kw = dict(nfe=3, method="s4s-alt", base="dpmpp_3m", grid="time", batch_size=32, val_every=10, alt_round=10,
              ball_radius=0.1, ema=ema)
    full = train_solver(den, schedule, train, val, LearnConfig(steps=40, **kw), run_dir=tmp_path / "a", progress=False)
    train_solver(den, schedule, train, val, LearnConfig(steps=20, **kw), run_dir=tmp_path / "b", progress=False)
    resumed = train_solver(den, schedule, train, val, LearnConfig(steps=40, **kw), run_dir=tmp_path / "b",
                           resume=True, progress=False)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert torch.equal(resumed.solver.tables.b, full.solver.tables.b)
    assert torch.equal(resumed.solver.grid, full.solver.grid)


def test_parameter_average_averages_the_updated_group_and_pairs_it_with_the_fixed_one(setup):
    from s4s.learning.trainer import ParameterAverage

    schedule = setup[0]
    model = LearnableSolver(schedule, "unipc_bh2", s4s.make_grid("logsnr", schedule, 4), corrector=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    avg = ParameterAverage(model, 0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update(model, ("coefficients",))   # a coefficient step: the grid did not move in it
    coef = {id(p) for p in model.coefficient_parameters()}
    for name, p in model.named_parameters():
        expected = start[name] + (0.25 if id(p) in coef else 1.0)
        torch.testing.assert_close(avg.shadow[name], expected)
    with avg.swapped_in(model):
        assert all(torch.equal(p, avg.shadow[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, start[n] + 1.0) for n, p in model.named_parameters())   # the raw ones again
    avg.commit(model, ("coefficients",))   # the round ended: the coefficients become their average
    assert all(torch.equal(p, avg.shadow[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="ema must lie in"):
        LearnConfig(nfe=4, ema=1.0).validate()


def test_nan_stops_with_message_and_keeps_best(setup):
    schedule, den, (train, val), _ = setup
    calls = {"n": 0}

    def flaky(x, t, cond=None, guidance=None):
        calls["n"] += 1
        out = den(x, t, cond, guidance)
        return out * float("nan") if calls["n"] > 400 else out

    cfg = LearnConfig(nfe=4, method="s4s", base="dpmpp_3m", grid="quadratic", steps=500, batch_size=32, val_every=5)
    res = train_solver(flaky, schedule, train, val, cfg, progress=False)
    assert res.stopped is not None and "non-finite" in res.stopped
    assert math.isfinite(res.solver.metadata["val_loss"])
    assert bool(torch.isfinite(res.solver.tables.b).all())


def test_pc_and_joint_variants_improve_on_their_start(setup):
    schedule, den, (train, val), _ = setup
    for method in ("s4s-pc", "s4s-joint"):
        cfg = LearnConfig(nfe=4, method=method, base="unipc_bh2", grid="quadratic", steps=60, batch_size=64, val_every=20)
        res = train_solver(den, schedule, train, val, cfg, progress=False)
        assert res.solver.metadata["val_loss"] < res.solver.metadata["base_val_loss"]
        assert res.solver.tables.has_corrector  # UniPC's corrector is kept (and learned only by -pc)


def test_bad_arguments_fail_fast(setup):
    schedule, den, (train, val), _ = setup
    for kw, msg in [(dict(nfe=0), "nfe"), (dict(nfe=4, method="magic"), "unknown method"),
                    (dict(nfe=4, base="rk4"), "unknown base"), (dict(nfe=4, grid="weird"), "unknown grid"),
                    (dict(nfe=4, lr_decay="linear"), "unknown lr_decay")]:
        with pytest.raises(ValueError, match=msg):
            train_solver(den, schedule, train, val, LearnConfig(**kw), progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        train_solver(den, schedule, train, val, LearnConfig(nfe=4, loss="ssim", base="ddim", grid="time"), progress=False)
    with pytest.raises(ValueError, match="unknown learning option"):
        s4s.learn(den, schedule, 4, (16,), teacher_data=TeacherData(train.x_T, None, train.x0), stepz=3)


def test_learn_api_with_baseline_teacher_and_guidance(tmp_path, setup):
    schedule, den, _, _ = setup
    labels = torch.arange(96) % 6
    res = s4s.learn(den, schedule, 3, (16,), method="s4s", teacher="dpmpp_3m:40", num_samples=96,
                            labels=labels, guidance=2.0, steps=20, batch_size=16, val_every=10, base="dpmpp_3m",
                            grid="quadratic", cache_dir=tmp_path / "cache", run_dir=tmp_path / "run", progress=False)
    assert res.solver.metadata["guidance"] == 2.0 and res.solver.nfe == 3
    assert res.solver.metadata["denoiser_clip"] is None  # recorded; the mixture's denoiser is not clamped
    assert (tmp_path / "run" / "curves.png").exists() and (tmp_path / "run" / "config.json").exists()
    # the cache is reused for the same request...
    cached = list((tmp_path / "cache").glob("*/batch_*.pt"))
    assert cached
    # ...and a corrupted/mismatched one is refused, not silently reused
    meta = next((tmp_path / "cache").glob("*/meta.json"))
    meta.write_text(meta.read_text().replace('"dpmpp_3m:40"', '"dpmpp_3m:41"'))
    with pytest.raises(ValueError, match="different request"):
        s4s.learn(den, schedule, 3, (16,), method="s4s", teacher="dpmpp_3m:40", num_samples=96, labels=labels,
                          guidance=2.0, steps=2, batch_size=16, base="dpmpp_3m", grid="quadratic",
                          cache_dir=tmp_path / "cache", progress=False)


def test_learning_on_the_rectified_flow_schedule():
    """The whole pipeline on a flow-velocity model (alpha = 1 - t, sigma = t)."""
    flow = s4s.Flow(t_min=1e-3, t_max=0.995)
    model = s4s.GaussianMixture.random(dim=16, components=6, seed=1)
    den = s4s.Denoiser.from_flow(model.raw_model(flow, "flow_prediction"), flow)
    x = flow.prior_noise((320, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    train, val = TeacherData(x, None, model.ode_solution(x, flow, flow.t_max, flow.t_min)).split(240)
    cfg = LearnConfig(nfe=4, method="s4s-alt", base="dpmpp_3m", grid="time", steps=60, batch_size=32, val_every=20,
                      alt_round=10)
    res = train_solver(den, flow, train, val, cfg, progress=False)
    assert res.solver.metadata["val_rmse"] < 0.8 * res.solver.metadata["base_val_rmse"]


def test_explicit_device_gives_the_same_run(setup):
    """``device`` moves teacher data and batch indices; on the data's own device nothing changes."""
    schedule, den, (train, val), _ = setup
    cfg = dict(nfe=3, method="s4s-alt", base="dpmpp_3m", grid="time", steps=20, batch_size=32, val_every=10, alt_round=10)
    plain = train_solver(den, schedule, train, val, LearnConfig(**cfg), progress=False)
    moved = train_solver(den, schedule, train, val, LearnConfig(**cfg), progress=False, device="cpu")
    assert [h["val_loss"] for h in moved.history] == [h["val_loss"] for h in plain.history]
    assert torch.equal(moved.solver.tables.b, plain.solver.tables.b)


def test_learning_rate_warm_up_and_cosine_decay():
    from s4s.learning.trainer import _lr_factor

    assert [_lr_factor(k, 4) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert _lr_factor(10, 4, step=50, steps=100, decay="cosine") == pytest.approx(0.5)
    assert _lr_factor(10, 4, step=25, steps=100, decay="cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert _lr_factor(0, 4, step=100, steps=100, decay="cosine") == pytest.approx(0.0)
    assert _lr_factor(10, 4, step=50, steps=100) == 1.0


def test_default_learning_rate_is_one_number_and_an_explicit_one_wins():
    """No lr given: the same rate at every NFE (no threshold); the back-off corrects it per run."""
    from s4s.learning.config import DEFAULT_LR

    assert {LearnConfig(nfe=n).coefficient_lr for n in (3, 6, 7, 10, 20)} == {DEFAULT_LR}
    assert LearnConfig(nfe=10, lr=5e-2).coefficient_lr == 5e-2
    for bad in (1.0, 0.5, float("nan")):
        with pytest.raises(ValueError, match="backoff_ratio"):
            LearnConfig(nfe=4, backoff_ratio=bad).validate()
    LearnConfig(nfe=4, backoff_ratio=float("inf")).validate()


def test_back_off_restores_the_best_parameters_and_halves_the_rates_of_the_groups_that_moved(setup):
    """TrainState.back_off: the parameters return to the best kept ones exactly, the learning rates of
    the next step are half what they were, the optimisers start afresh (no Adam moments)."""
    from s4s.learning.trainer import TrainState, Validation

    schedule, den, (train, _), _ = setup
    cfg = LearnConfig(nfe=4, method="s4s-alt", warmup=0)
    model = LearnableSolver(schedule, "dpmpp_3m", s4s.make_grid("time", schedule, 4))
    state = TrainState.start(model, cfg, "dpmpp_3m", "time", {}, train)
    state.history.append({"step": 0, "val_loss": 1.0, "val_mse": 1.0})
    assert state.keep_if_best(Validation(1.0, 1.0))
    best = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    state.optimiser_step(cfg, "coefficients")
    state.optimiser_step(cfg, "grid")
    assert any(not torch.equal(best[k], v) for k, v in model.state_dict().items())
    assert state.diverged(Validation(1.6, 1.0), cfg) and not state.diverged(Validation(1.4, 1.0), cfg)
    assert not state.diverged(Validation(1e9, 1.0), cfg.with_options(backoff_ratio=float("inf")))
    state.step = 25
    state.back_off()
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    assert state.backoffs == [25] and state.lr_scale == 0.5 and not state.coef_opt.state and not state.grid_opt.state
    state.optimiser_step(cfg, "coefficients")
    state.optimiser_step(cfg, "grid")
    assert state.coef_opt.param_groups[0]["lr"] == 0.5 * cfg.coefficient_lr
    assert state.grid_opt.param_groups[0]["lr"] == 0.5 * cfg.grid_lr
    # one group at a time (backoff_scope="moved"): the other keeps its rate
    state.step = 50
    state.back_off({"grid"})
    assert (state.lr_scale, state.grid_lr_scale) == (0.5, 0.25)
    state.back_off({"coefficients"})
    assert (state.lr_scale, state.grid_lr_scale) == (0.25, 0.25) and state.backoffs == [25, 50, 50]
    state.optimiser_step(cfg, "coefficients")
    state.optimiser_step(cfg, "grid")
    assert state.coef_opt.param_groups[0]["lr"] == 0.25 * cfg.coefficient_lr
    assert state.grid_opt.param_groups[0]["lr"] == 0.25 * cfg.grid_lr
    state.back_off(("coefficients", "grid"))
    assert (state.lr_scale, state.grid_lr_scale) == (0.125, 0.125)


def test_a_learning_rate_far_too_large_backs_off_and_still_beats_the_base(setup):
    """At lr 0.2 (20x the default) validation climbs above 1.5x its best; the run backs off (recorded in the
    metadata), keeps learning at the smaller rates and ends better than its base on held-out noise, and
    better than the same run without the back-off (worse than its base there)."""
    schedule, den, (train, val), test = setup
    kw = dict(nfe=4, method="s4s", base="dpmpp_3m", grid="quadratic", steps=120, batch_size=64, val_every=10,
              learn_a=False, lr=0.2)
    res = train_solver(den, schedule, train, val, LearnConfig(**kw), progress=False)
    never = train_solver(den, schedule, train, val, LearnConfig(backoff_ratio=float("inf"), **kw), progress=False)
    meta = res.solver.metadata
    assert len(meta["lr_backoffs"]) >= 1 and never.solver.metadata["lr_backoffs"] == []
    base = s4s.baseline("dpmpp_3m", schedule, 4, grid="quadratic")
    e_base, e_res, e_never = (_rmse(s, den, test) for s in (base, res.solver, never.solver))
    assert e_res < 0.97 * e_base and e_res < 0.97 * e_never, (e_base, e_res, e_never)
    assert meta["val_loss"] < never.solver.metadata["val_loss"]


def test_a_grid_rate_far_too_large_backs_off_both_rates_or_with_scope_moved_the_grid_alone(setup, tmp_path):
    """S4S-Alt with a grid learning rate 100x the default and the default coefficient rate: validation
    climbs after grid rounds. By default each back-off halves both rates; with backoff_scope="moved" it
    halves the grid's and leaves the coefficients' alone (both read from the run's checkpoint), and that
    run still ends better than its base on held-out noise."""
    from s4s.learning.trainer import phase_at

    schedule, den, (train, val), test = setup
    cfg = LearnConfig(nfe=4, method="s4s-alt", base="dpmpp_3m", grid="quadratic", steps=80, batch_size=64,
                      val_every=10, alt_round=10, warmup=0, grid_lr=2.0)
    for scope in ("all", "moved"):
        run_dir = tmp_path / scope
        res = train_solver(den, schedule, train, val, cfg.with_options(backoff_scope=scope), run_dir=run_dir,
                           progress=False)
        backoffs = res.solver.metadata["lr_backoffs"]
        assert backoffs and all(phase_at(cfg, s - 1) == "grid" for s in backoffs), (scope, backoffs)
        record = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        halved = 0.5 ** len(backoffs)
        assert (record["lr_scale"], record["grid_lr_scale"]) == ((halved, halved) if scope == "all" else (1.0, halved))
    base = s4s.baseline("dpmpp_3m", schedule, 4, grid="quadratic")
    assert _rmse(res.solver, den, test) < 0.97 * _rmse(base, den, test)
    with pytest.raises(ValueError, match="unknown backoff_scope"):
        cfg.with_options(backoff_scope="grid").validate()


def test_auto_base_is_predictor_only_for_lms_methods_and_unipc_for_pc(setup):
    from s4s.learning.objectives import make_distance
    from s4s.learning.trainer import choose_base

    schedule, den, (_, val), _ = setup
    for method, expected in [("s4s-alt", {"dpmpp_3m", "unip_bh1", "unip_bh2"}),
                             ("s4s-pc", {"dpmpp_3m", "unipc_bh1", "unipc_bh2"})]:
        base, grid, losses = choose_base(den, schedule, LearnConfig(nfe=4, method=method, grid="time"), val,
                                         make_distance("l2"))
        assert {k.split("/")[0] for k in losses} == expected and losses[f"{base}/{grid}"] == min(losses.values())


def test_teacher_cache_separates_a_clamped_denoiser_from_the_plain_one(tmp_path):
    """Same weights (fingerprint), other clamp of D: other teacher outputs, so another cache entry."""
    from s4s.teacher import make_teacher_data

    schedule = s4s.VPDiscrete()
    model = s4s.GaussianMixture.random(dim=16, components=6, seed=0)
    plain, clamped = model.denoiser(schedule), model.denoiser(schedule)
    clamped.clip_range = (-0.5, 0.5)
    kw = dict(teacher="dpmpp_3m:20", seed=3, cache_dir=tmp_path, fingerprint=plain.fingerprint, progress=False)
    a = make_teacher_data(plain, schedule, (16,), num_samples=32, **kw)
    b = make_teacher_data(clamped, schedule, (16,), num_samples=32, **kw)
    assert len(list(tmp_path.glob("*/meta.json"))) == 2
    assert b.x0.abs().max() < 0.6 < a.x0.abs().max()  # ends at t_min > 0: within 0.5 up to the last noise
    assert torch.equal(make_teacher_data(clamped, schedule, (16,), num_samples=32, **kw).x0, b.x0)  # reused from its own entry


def test_micro_batches_take_the_same_step(setup):
    """Gradients summed over micro-batches are the whole batch's: the same run with less memory (float64,
    so only summation order differs); the relaxed objective's moved inputs too."""
    schedule, den, (train, val), _ = setup
    cfg = dict(nfe=3, method="s4s-alt-pc", base="unipc_bh1", grid="time", steps=20, batch_size=32, val_every=10,
               alt_round=10, ball_radius=0.1)
    whole = train_solver(den, schedule, train, val, LearnConfig(**cfg), progress=False)
    parts = train_solver(den, schedule, train, val, LearnConfig(micro_batch=5, **cfg), progress=False)
    assert [h["val_loss"] for h in parts.history] == pytest.approx([h["val_loss"] for h in whole.history], rel=1e-9)
    assert torch.allclose(parts.solver.tables.b, whole.solver.tables.b, rtol=1e-9, atol=1e-12)
    assert torch.allclose(parts.solver.grid, whole.solver.grid, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        LearnConfig(micro_batch=0, **cfg).validate()


def test_running_out_of_gpu_memory_halves_the_micro_batch(setup, caplog):
    """A pass over more samples than fit raises OutOfMemoryError: the step is redone in halves, and the
    run equals one with that micro-batch from the start."""
    schedule, den, (train, val), _ = setup

    def small_gpu(x, t, cond=None, guidance=None):
        if x.shape[0] > 8 and torch.is_grad_enabled():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return den(x, t, cond, guidance)

    cfg = dict(nfe=3, method="s4s-alt", base="dpmpp_3m", grid="time", steps=10, batch_size=32, val_every=5, alt_round=5)
    with caplog.at_level("WARNING"):
        squeezed = train_solver(small_gpu, schedule, train, val, LearnConfig(**cfg), progress=False)
    assert "continuing with 16" in caplog.text and "continuing with 8" in caplog.text
    planned = train_solver(den, schedule, train, val, LearnConfig(micro_batch=8, **cfg), progress=False)
    assert torch.allclose(squeezed.solver.tables.b, planned.solver.tables.b, rtol=1e-12, atol=1e-14)


def test_a_distance_that_rewards_leaving_the_teacher_cannot_select_a_worse_solver(setup):
    """A saturating feature distance (tanh of the samples: values far out cost nothing more, like a feature
    network applied to data it was not made for) finds lower losses at higher RMSE to the teacher; the
    guard keeps only solvers no worse than the base on RMSE, and the metadata says how often it refused."""
    schedule, den, (train, val), _ = setup
    cfg = LearnConfig(nfe=3, method="s4s-alt", base="dpmpp_3m", grid="time", steps=60, batch_size=32, val_every=5,
                      alt_round=10, loss="feature", lr=0.2, backoff_ratio=float("inf"))  # the guard alone
    result = train_solver(den, schedule, train, val, cfg, feature_fn=lambda y: torch.tanh(4 * y), progress=False)
    meta, history = result.solver.metadata, result.history
    lowest = min(history, key=lambda h: h["val_loss"])
    assert lowest["val_mse"] > history[0]["val_mse"]  # without the guard this would have been kept
    assert meta["rmse_guard_refusals"] >= 1
    assert meta["val_rmse"] <= meta["base_val_rmse"]
    kept = next(h for h in history if h["step"] == meta["kept_step"])
    assert math.sqrt(kept["val_mse"]) == pytest.approx(meta["val_rmse"]) and kept["val_loss"] == meta["val_loss"]
    assert _rmse(result.solver, den, setup[3]) <= _rmse(s4s.baseline("dpmpp_3m", schedule, 3, grid="time"), den,
                                                        setup[3]) * 1.05


def test_range_aware_targets_learn_a_solver_closer_to_the_teacher_after_the_clamp(setup):
    """With a data range that clamps part of the mixture's values (|x| > 0.5), the range-aware loss spends
    nothing on values the clamp removes: on held-out noise its solver is closer to the exact solution after
    clamping than the same run on the raw values (and the run records that range)."""
    schedule, den, (train, val), (x_test, ref_test) = setup
    lo, hi = -0.5, 0.5
    assert 0.2 < float((ref_test.abs() > hi).double().mean()) < 0.8  # the range matters for this data
    kw = dict(nfe=3, method="s4s-alt", base="dpmpp_3m", grid="time", steps=80, batch_size=64, val_every=10,
              learn_a=False, alt_round=20)
    runs = {aware: train_solver(den, schedule, train, val, LearnConfig(range_aware=aware, **kw), progress=False,
                                data_range=(lo, hi)) for aware in (True, False)}

    def clamped_rmse(solver) -> float:
        return float((solver.sample(den, x_test).clamp(lo, hi) - ref_test.clamp(lo, hi)).pow(2).mean().sqrt())

    base = clamped_rmse(s4s.baseline("dpmpp_3m", schedule, 3, grid="time"))
    aware, raw = clamped_rmse(runs[True].solver), clamped_rmse(runs[False].solver)
    assert aware < 0.9 * raw and aware < base, (base, aware, raw)  # measured 0.088 vs 0.111 (base 0.199)
    assert runs[True].solver.metadata["data_range"] == [lo, hi]


def test_auto_range_aware_targets_follow_whether_the_teacher_leaves_the_range(setup, tmp_path):
    """``range_aware=None`` turns range-aware targets on only when the teacher's samples leave the data range by
    more than 2.5 % of its width; without a range there is nothing to be aware of."""
    schedule, den, (train, val), _ = setup
    kw = dict(nfe=2, method="s4s", base="ddim", grid="time", steps=1, batch_size=8, val_every=1)
    chosen = {rng: train_solver(den, schedule, train, val, LearnConfig(**kw), progress=False, data_range=rng)
              .solver.metadata["range_aware"] for rng in [(-0.5, 0.5), (-10.0, 10.0), None]}
    assert chosen == {(-0.5, 0.5): True, (-10.0, 10.0): False, None: False}
    with pytest.raises(ValueError, match="range-aware targets need samples with a data range"):
        train_solver(den, schedule, train, val, LearnConfig(range_aware=True, **kw), progress=False)
    with pytest.raises(ValueError, match="range-aware targets need samples with a data range"):  # before any teacher
        s4s.learn(den, schedule, 2, (16,), range_aware=True, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_probe_starts_are_the_best_base_of_each_of_the_best_grids():
    from s4s.learning.trainer import probe_starts

    losses = {"a/time": 1.0, "b/time": 0.5, "a/logsnr": 2.0, "b/logsnr": math.nan, "c/edm": 3.0}
    assert probe_starts(losses, 1) == ["b/time"]
    assert probe_starts(losses, 2) == ["b/time", "a/logsnr"]
    assert probe_starts(losses, 4) == ["b/time", "a/logsnr", "c/edm", "a/time"]   # then the next best starts
    assert probe_starts(losses, 9) == ["b/time", "a/logsnr", "c/edm", "a/time"]   # never a non-finite one
    assert probe_starts({"a/time": 1.0, "b/time": 0.5}, 2) == ["b/time", "a/time"]   # one grid: two bases


def test_the_probe_continues_the_start_that_learned_best_exactly_as_a_run_from_it(setup, tmp_path):
    """base and grid "auto": the best-scored starts of two grids learn ``probe_steps`` each; the one with the
    lower validation loss continues, and the result is the run started from it without a probe, step for
    step (each start draws the same batches); a run interrupted after the probe resumes to the same result."""
    from s4s.learning.trainer import probe_starts

    schedule, den, (train, val), test = setup
    cfg = LearnConfig(nfe=4, method="s4s-alt", steps=40, batch_size=32, val_every=10, alt_round=10, probe_steps=10)
    assert cfg.probe_starts == 2 and cfg.base == cfg.grid == "auto"
    probed = train_solver(den, schedule, train, val, cfg, run_dir=tmp_path / "a", progress=False)
    probe = probed.solver.metadata["probe_losses"]
    assert list(probe) == probe_starts(probed.base_losses, 2) and len({k.split("/")[1] for k in probe}) == 2
    assert probe[f"{probed.base}/{probed.grid}"] == min(probe.values())
    assert probed.history[1]["step"] == 10 and probed.history[1]["val_loss"] == min(probe.values())
    direct = train_solver(den, schedule, train, val, cfg.with_options(base=probed.base, grid=probed.grid,
                                                                      probe_starts=1), progress=False)
    assert direct.solver.metadata["probe_losses"] == {}
    assert [h["val_loss"] for h in direct.history] == [h["val_loss"] for h in probed.history]
    assert torch.equal(direct.solver.tables.b, probed.solver.tables.b)
    assert torch.equal(direct.solver.grid, probed.solver.grid)
    train_solver(den, schedule, train, val, cfg.with_options(steps=20), run_dir=tmp_path / "b", progress=False)
    resumed = train_solver(den, schedule, train, val, cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed.solver.metadata["probe_losses"] == probe
    assert torch.equal(resumed.solver.tables.b, probed.solver.tables.b)
    base = s4s.baseline(probed.base, schedule, 4, grid=probed.grid)
    assert _rmse(probed.solver, den, test) < 0.97 * _rmse(base, den, test)
