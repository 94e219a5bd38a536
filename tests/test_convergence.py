"""Global error against the exact ODE solution falls with the order each solver's theory predicts.

Test problem: one full-covariance Gaussian in 8-D on the EDM schedule (sigma 5 -> 0.05) and on the
rectified-flow schedule over the same noise levels (velocity model through ``from_flow``), whose ODE
solution is smooth; reference from DOP853 at rtol 1e-13. Slopes are fitted in log-log over
NFE 10..40 (median error over 64 samples) and must lie within +-0.5 of the expected order.
Lower-order warm-up steps stay in (as every multistep solver runs them); the last steps keep
full order (``lower_order_final=False``).

Expected orders: DDIM 1, DPM-Solver++ 2M 2 / 3M 3, DEIS-tAB3 3, UniP-3 (predictor only) 3,
UniPC-p (predictor + corrector) p + 1, Heun 2, and iPNDM 2: its fixed Adams-Bashforth weights
assume equal steps, and on a log-SNR grid (geometric steps in sigma) the step-ratio error term
limits it to second order.
"""

import numpy as np
import pytest
import torch

import s4s

NFES = [10, 14, 20, 28, 40]
CASES = [
    ("ddim", {}, "logsnr", 1),
    ("dpmpp_2m", {"lower_order_final": False}, "logsnr", 2),
    ("dpmpp_3m", {"lower_order_final": False}, "logsnr", 3),
    ("deis", {"lower_order_final": False}, "logsnr", 3),
    ("unipc_bh2", {"lower_order_final": False, "corrector": False}, "logsnr", 3),
    ("unipc_bh1", {"lower_order_final": False, "order": 2}, "logsnr", 3),
    ("unipc_bh2", {"lower_order_final": False, "order": 3}, "logsnr", 4),
    ("ipndm", {}, "logsnr", 2),
    ("heun", {}, "edm", 2),
]


SCHEDULES = {
    "edm": s4s.EDM(sigma_min=0.05, sigma_max=5.0),
    # the same noise-level range on the rectified-flow schedule: rho = t / (1 - t)
    "flow": s4s.Flow(t_min=0.05 / 1.05, t_max=5.0 / 6.0),
}


@pytest.fixture(scope="module", params=sorted(SCHEDULES))
def problem(request):
    schedule = SCHEDULES[request.param]
    model = s4s.GaussianMixture.random(dim=8, components=1, seed=0, spread=0.3)
    x = schedule.prior_noise((64, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = model.ode_solution(x, schedule, schedule.t_max, schedule.t_min, rtol=1e-13, atol=1e-13)
    if isinstance(schedule, s4s.Flow):  # the model as a flow-velocity network, through its adapter
        return schedule, s4s.Denoiser.from_flow(model.raw_model(schedule, "flow_prediction"), schedule), x, ref
    return schedule, model.denoiser(schedule), x, ref


@pytest.mark.parametrize("name,options,grid,order", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_convergence_order(problem, name, options, grid, order):
    schedule, denoiser, x, ref = problem
    nfes, errors = [], []
    for nfe in NFES:
        nfe = nfe - 1 if name == "heun" and nfe % 2 == 0 else nfe  # Heun's NFE is odd (2 calls a step, 1 last)
        solver = s4s.baseline(name, schedule, nfe, grid=grid, **options)
        out = solver.sample(denoiser, x)
        nfes.append(solver.nfe)
        errors.append(float((out - ref).norm(dim=1).median()))
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.5, f"{name}: slope {slope:.2f}, expected {order}; errors {errors}"


def test_exact_ode_solution_for_a_single_gaussian():
    """The reference itself: y(rho) = mu + sqrt((s + rho^2)/(s + rho0^2)) (y0 - mu) per eigen-direction."""
    mu, var = torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([0.04, 0.09], dtype=torch.float64)
    model = s4s.GaussianMixture(mu[None], var[None])
    vp = s4s.VPDiscrete()
    x = vp.prior_noise((4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0, t1 = torch.tensor(999.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    r0, r1 = vp.sigma(t0) / vp.alpha(t0), vp.sigma(t1) / vp.alpha(t1)
    exact = vp.alpha(t1) * (mu + torch.sqrt((var + r1**2) / (var + r0**2)) * (x / vp.alpha(t0) - mu))
    torch.testing.assert_close(model.ode_solution(x, vp, 999.0, 0.0), exact, rtol=1e-7, atol=1e-8)
