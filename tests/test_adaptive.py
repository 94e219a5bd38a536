"""The adaptive RK45 teacher against the exact Gaussian-mixture ODE solution (scipy DOP853)."""

import pytest
import torch

import s4s
from s4s.adaptive import rk45_sample
from s4s.teacher import make_teacher_data, parse_teacher


@pytest.mark.parametrize("schedule", [s4s.VPDiscrete(), s4s.EDM(), s4s.Flow()], ids=["vp", "edm", "flow"])
def test_rk45_converges_to_the_exact_ode_solution(schedule, gmm):
    den = gmm.denoiser(schedule)
    x = schedule.prior_noise((32, gmm.dim), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = gmm.ode_solution(x, schedule, schedule.t_max, schedule.t_min)
    errors, calls = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        out, n = rk45_sample(den, x, schedule, rtol=tol, atol=tol)
        errors.append(float((out - ref).pow(2).mean().sqrt()))
        calls.append(n)
    assert errors[0] > 10 * errors[1] > 100 * errors[2], errors
    assert errors[2] < 1e-6 and calls[0] < calls[1] < calls[2], (errors, calls)
    # a fixed 100-call UniPC is less accurate than RK45 at 1e-7 (the point of an adaptive teacher)
    unipc = s4s.baseline("unipc_bh2", schedule, 100).sample(den, x)
    assert float((unipc - ref).pow(2).mean().sqrt()) > errors[2]


def test_rk45_teacher_spec_in_teacher_data(vp, gmm):
    den = gmm.denoiser(vp)
    data = make_teacher_data(den, vp, (gmm.dim,), num_samples=24, teacher="rk45:1e-6", seed=5, batch_size=16, progress=False)
    ref = gmm.ode_solution(data.x_T.to(torch.float64), vp, vp.t_max, vp.t_min)
    assert data.meta["teacher"] == "rk45:1e-6"
    assert float((data.x0.to(torch.float64) - ref).pow(2).mean().sqrt()) < 1e-4  # float32 noise and outputs
    assert parse_teacher("rk45") == ("rk45", 1e-4) and parse_teacher("unipc_bh2:50") == ("unipc_bh2", 50)
    for bad in ("rk45:fast", "rk45:0", "rk45:2", "unipc_bh2", "unipc_bh2:0"):
        with pytest.raises(ValueError, match="rk45|NAME:NFE"):
            parse_teacher(bad)
