"""The Levenberg-Marquardt optimiser: residuals, finite-difference normal equations, learned entries, refusals."""

from dataclasses import replace

import pytest
import torch

import s4s
from s4s.learning import LearnableSolver, LearnConfig, train_solver
from s4s.learning.levenberg_marquardt import LevenbergMarquardt, learned_entries
from s4s.learning.objectives import make_distance, make_residual, range_aware
from s4s.solver import integrate
from test_learn import setup  # noqa: F401  the exact mixture's data: (schedule, denoiser, (train, val), test)


@pytest.mark.parametrize("name", ["l2", "feature", "perceptual"])
@pytest.mark.parametrize("data_range", [None, (-1.0, 1.0)])
def test_the_residual_squared_is_the_distance(name, data_range):
    gen = torch.Generator().manual_seed(0)
    x, y = 1.5 * torch.randn(6, 3, 4, 4, generator=gen), 1.5 * torch.randn(6, 3, 4, 4, generator=gen)
    features = torch.randn(48, 10, generator=gen)
    feature_fn = lambda v: torch.tanh(v.reshape(v.shape[0], -1) @ features)  # noqa: E731
    distance = make_distance(name, feature_fn)
    if data_range is not None:
        distance = range_aware(distance, data_range)
    r = make_residual(name, feature_fn, data_range)(x, y)
    assert r.shape[0] == 6
    torch.testing.assert_close(r.pow(2).sum(1), distance(x, y), rtol=1e-5, atol=1e-7)


def test_a_loss_that_is_not_a_sum_of_squares_is_refused():
    with pytest.raises(ValueError, match="not a sum of squares"):
        make_residual("l1")
    with pytest.raises(ValueError, match="sum-of-squares"):
        LearnConfig(nfe=4, optimizer="lm", loss="pseudo_huber").validate()
    with pytest.raises(ValueError, match="guidance families"):
        LearnConfig(nfe=4, optimizer="lm", guidance_range=(1.0, 4.0)).validate()
    with pytest.raises(ValueError, match="relaxed"):
        LearnConfig(nfe=4, optimizer="lm", ball_radius=0.1).validate()
    with pytest.raises(ValueError, match="unknown optimizer"):
        LearnConfig(nfe=4, optimizer="sgd").validate()


@pytest.fixture(scope="module")
def problem():
    """A learnable S4S-Alt-PC solver on the exact mixture, its batch and teacher (the exact ODE solution)."""
    schedule = s4s.VPDiscrete()
    gmm = s4s.GaussianMixture.random(dim=16, components=6, seed=0)
    den = gmm.denoiser(schedule)
    x = schedule.prior_noise((24, 16), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = gmm.ode_solution(x, schedule, schedule.t_max, schedule.t_min)
    model = LearnableSolver(schedule, "unipc_bh2", s4s.make_grid("logsnr", schedule, 5), corrector=True, learn_a=True)
    with torch.no_grad():  # away from the base, and input times off the clamp (a kink of the first one at 0)
        for p in model.coefficient_parameters() + [model.grid_logits]:
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
        model.input_shift.fill_(0.005)
    residual = make_residual("l2")

    def residuals(part):
        _, s, tables = model()
        return residual(integrate(lambda xx, ss: den(xx, ss), x[part], s, tables), ref[part])

    return model, residuals, x, ref, den


def test_learned_entries_leave_out_the_masked_table_entries(problem):
    schedule = s4s.VPDiscrete()
    model = LearnableSolver(schedule, "unipc_bh2", s4s.make_grid("logsnr", schedule, 5), corrector=True, learn_a=True)
    n = 5
    coef = learned_entries(model, model.coefficient_parameters(), [None])
    # b and a: lower-triangular n x n (15 each); corrector rows (n - 1) x n: bc with one diagonal above
    # (2 + 3 + 4 + 5 = 14), ac lower-triangular (1 + 2 + 3 + 4 = 10)
    assert len(coef) == 15 + 15 + 14 + 10
    grid = learned_entries(model, model.grid_parameters(), [None])
    assert len(grid) == 2 * n   # every grid logit and input-time shift moves the solver, at the start too


def test_finite_difference_normal_equations_give_the_autograd_gradient(problem):
    model, residuals, x, _, _ = problem
    params = model.coefficient_parameters() + model.grid_parameters()
    lm = LevenbergMarquardt(learned_entries(model, params, [None]), fd_step=1e-6)
    parts = [slice(0, 10), slice(10, 24)]
    jtj, jtr, loss = lm.normal_equations(residuals, parts, batch_size=24)
    for p in params:
        p.grad = None
    with torch.enable_grad():
        autograd_loss = residuals(slice(0, 24)).pow(2).sum() / 24
        autograd_loss.backward()
    grad = torch.stack([p.grad.reshape(-1)[i] for p, i in lm.entries])
    assert loss == pytest.approx(float(autograd_loss.detach()), rel=1e-12)
    # J^T r is half the gradient of (1/B) sum ||r||^2
    torch.testing.assert_close(2 * jtr, grad.double(), rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(jtj, jtj.T)
    assert float(torch.linalg.eigvalsh(jtj).min()) > -1e-9 * float(jtj.diag().max())


def test_a_step_lowers_the_loss_of_the_batch_that_judges_it_or_keeps_the_parameters(problem):
    model, residuals, *_ = problem
    params = model.coefficient_parameters() + model.grid_parameters()
    lm = LevenbergMarquardt(learned_entries(model, params, [None]))
    start = [p.detach().clone() for p in params]
    before, after = lm.step(residuals, [slice(0, 12)], 12, residuals, [slice(12, 24)])
    assert after < before
    assert any(not torch.equal(p, q) for p, q in zip(params, start))
    # a judge that no step can please: the parameters come back exactly
    start = [p.detach().clone() for p in params]
    calls = iter(range(1000))
    judge = lambda part: torch.full((1, 1), float(next(calls)), dtype=torch.float64)  # noqa: E731  rises every call
    damping = lm.damping
    before, after = lm.step(residuals, [slice(0, 12)], 12, judge, [slice(0, 1)])
    assert after == before
    assert all(torch.equal(p, q) for p, q in zip(params, start))
    assert lm.damping == pytest.approx(4 * damping)  # one increase, not the last of the tries


def _lm_config(**kw):
    return LearnConfig(**{**dict(nfe=4, method="s4s-alt", base="dpmpp_3m", grid="quadratic", batch_size=384,
                                 val_every=1, optimizer="lm", probe_starts=1, learn_a=False), **kw})


def test_levenberg_marquardt_learns_a_solver_closer_to_the_exact_ode(setup):
    # the exact mixture's errors are dominated by a few noises, so a step needs large mini-batches here
    schedule, den, (train, val), (x_test, ref_test) = setup
    result = train_solver(den, schedule, train, val, _lm_config(steps=6), progress=False)
    base = s4s.baseline("dpmpp_3m", schedule, 4, grid="quadratic")
    rmse = lambda solver: float((solver.sample(den, x_test) - ref_test).pow(2).mean().sqrt())  # noqa: E731
    assert rmse(result.solver) < 0.8 * rmse(base), (rmse(base), rmse(result.solver))
    assert result.history[-1]["phase"] == "joint" and len(result.history) == 7
    assert result.solver.metadata["optimizer"] == "lm"  # the solver file says how it was learned


@pytest.mark.parametrize("memory", [0.0, 0.5])
def test_levenberg_marquardt_resumes_to_the_uninterrupted_run(tmp_path, setup, memory):
    schedule, den, (train, val), _ = setup
    kw = dict(batch_size=64, lm_memory=memory)
    full = train_solver(den, schedule, train, val, _lm_config(steps=6, **kw), run_dir=tmp_path / "a", progress=False)
    train_solver(den, schedule, train, val, _lm_config(steps=3, **kw), run_dir=tmp_path / "b", progress=False)
    resumed = train_solver(den, schedule, train, val, _lm_config(steps=6, **kw), run_dir=tmp_path / "b", resume=True,
                           progress=False)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert torch.equal(resumed.solver.tables.b, full.solver.tables.b)


def test_running_out_of_gpu_memory_redoes_the_step_in_smaller_passes(setup, caplog):
    """A pass over more samples than fit raises OutOfMemoryError: the step is redone from the same state in
    halves, and the run equals one with that micro-batch from the start."""
    schedule, den, (train, val), _ = setup

    def small_gpu(x, t, cond=None, guidance=None):
        if x.shape[0] in (32, 16):  # the training passes; validation runs its 128 noises at once
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return den(x, t, cond, guidance)

    kw = dict(batch_size=32, steps=3, lm_memory=0.5)
    with caplog.at_level("WARNING"):
        squeezed = train_solver(small_gpu, schedule, train, val, _lm_config(**kw), progress=False)
    assert "continuing with 16" in caplog.text and "continuing with 8" in caplog.text
    planned = train_solver(den, schedule, train, val, _lm_config(micro_batch=8, **kw), progress=False)
    assert [h["val_loss"] for h in squeezed.history] == pytest.approx([h["val_loss"] for h in planned.history],
                                                                      rel=1e-9)
    assert torch.allclose(squeezed.solver.tables.b, planned.solver.tables.b, rtol=1e-9, atol=1e-12)


def test_lm_steps_are_levenberg_marquardt_steps_then_adam_goes_on(tmp_path, setup):
    """``lm_steps=k`` with Adam: the first k steps are the pure Levenberg-Marquardt run's, the rest Adam's
    rounds from where they ended; a run resumed after the switch equals the uninterrupted one."""
    schedule, den, (train, val), _ = setup
    kw = dict(batch_size=64, val_every=1)
    pure = train_solver(den, schedule, train, val, _lm_config(steps=2, **kw), progress=False)
    hybrid_config = _lm_config(optimizer="adam", lm_steps=2, steps=6, **kw)
    hybrid = train_solver(den, schedule, train, val, hybrid_config, run_dir=tmp_path / "a", progress=False)
    assert [h["val_loss"] for h in hybrid.history[:3]] == [h["val_loss"] for h in pure.history]
    assert [h["phase"] for h in hybrid.history[1:]] == ["joint"] * 2 + ["coefficients"] * 4  # S4S-Alt's first round
    assert hybrid.history[3]["val_loss"] != hybrid.history[2]["val_loss"]  # Adam moved the solver
    assert hybrid.solver.metadata["optimizer"] == "adam" and hybrid.solver.metadata["lm_steps"] == 2
    train_solver(den, schedule, train, val, replace(hybrid_config, steps=4), run_dir=tmp_path / "b", progress=False)
    resumed = train_solver(den, schedule, train, val, hybrid_config, run_dir=tmp_path / "b", resume=True,
                           progress=False)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in hybrid.history]


def test_lm_steps_are_refused_where_levenberg_marquardt_cannot_go():
    with pytest.raises(ValueError, match="lm_steps must be >= 0"):
        LearnConfig(nfe=4, lm_steps=-1).validate()
    with pytest.raises(ValueError, match="before Adam"):
        LearnConfig(nfe=4, optimizer="lm", lm_steps=2).validate()
    with pytest.raises(ValueError, match="sum-of-squares"):
        LearnConfig(nfe=4, lm_steps=2, loss="pseudo_huber").validate()
    with pytest.raises(ValueError, match="takes no average"):
        LearnConfig(nfe=4, lm_steps=2, ema=0.9).validate()
    LearnConfig(nfe=4, lm_steps=2).validate()


def test_a_jacobian_too_large_for_its_memory_budget_is_made_in_smaller_passes(problem, caplog):
    model, residuals, *_ = problem
    params = model.coefficient_parameters() + model.grid_parameters()
    whole = LevenbergMarquardt(learned_entries(model, params, [None]), fd_step=1e-6)
    n = len(whole.entries)
    # a budget of 5 samples' rows (16 residuals x n entries of 8 bytes each): passes of 5, 5, 2 in a part of 12
    split = LevenbergMarquardt(whole.entries, fd_step=1e-6, jacobian_bytes=5 * 8 * 16 * n)
    parts = [slice(0, 12), slice(12, 24)]
    with caplog.at_level("INFO"):
        jtj, jtr, loss = split.normal_equations(residuals, parts, batch_size=24)
    assert "5 sample(s) at a time" in caplog.text
    ref = whole.normal_equations(residuals, parts, batch_size=24)
    # equal up to the finite differences' rounding (a pass of another size rounds differently)
    torch.testing.assert_close(jtj, ref[0], rtol=0, atol=1e-6 * float(ref[0].abs().max()))
    torch.testing.assert_close(jtr, ref[1], rtol=0, atol=1e-6 * float(ref[1].abs().max()))
    assert loss == pytest.approx(ref[2], rel=1e-12)
