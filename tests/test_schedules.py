import math

import pytest
import torch

import s4s

SCHEDULES = [
    s4s.VPDiscrete(),
    s4s.VPDiscrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    s4s.VPDiscrete(beta_schedule="squaredcos_cap_v2"),
    s4s.VPLinear(),
    s4s.VPCosine(),
    s4s.EDM(),
    s4s.Flow(),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: repr(s))
def test_lambda_inverse_and_closed_forms(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 97, dtype=torch.float64)
    lam = schedule.lam(t)
    assert bool((lam[1:] < lam[:-1]).all()), "lambda must decrease with t"
    torch.testing.assert_close(schedule.t_from_lambda(lam), t, rtol=1e-8, atol=1e-8 * schedule.t_max)
    alpha, sigma = schedule.alpha_sigma_from_lambda(lam)
    torch.testing.assert_close(alpha, schedule.alpha(t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sigma, schedule.sigma(t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lam, torch.log(schedule.alpha(t) / schedule.sigma(t)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s.kind.startswith("vp")], ids=repr)
def test_vp_is_variance_preserving(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 50, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))


def test_vp_discrete_matches_diffusers_table():
    from diffusers import DDPMScheduler

    for kw in [dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
               dict(beta_schedule="squaredcos_cap_v2")]:
        ref = DDPMScheduler(**kw)
        sched = s4s.schedule_from_diffusers(ref)
        n = torch.arange(1000, dtype=torch.float64)
        torch.testing.assert_close(sched.alpha(n) ** 2, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_vp_discrete_interpolates_log_alpha_linearly():
    sched = s4s.VPDiscrete()
    la = 0.5 * torch.log(sched.alphas_cumprod)
    t = torch.tensor([10.25, 500.5], dtype=torch.float64)
    expected = torch.stack([0.75 * la[10] + 0.25 * la[11], 0.5 * la[500] + 0.5 * la[501]])
    torch.testing.assert_close(torch.log(sched.alpha(t)), expected)


def test_vp_linear_matches_closed_form():
    sched = s4s.VPLinear(beta_0=0.1, beta_1=20.0)
    t = torch.tensor(0.5, dtype=torch.float64)
    assert math.isclose(float(sched.alpha(t)), math.exp(-0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1), rel_tol=1e-12)


def test_flow_schedule_recognised_from_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert isinstance(s4s.schedule_from_diffusers(FlowMatchEulerDiscreteScheduler()), s4s.Flow)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_config_round_trip(schedule):
    again = s4s.schedule_from_config(schedule.to_config())
    assert again == schedule
    t = torch.linspace(schedule.t_min, schedule.t_max, 7, dtype=torch.float64)
    torch.testing.assert_close(again.lam(t), schedule.lam(t))


def test_bad_schedules_fail_clearly():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        s4s.schedule_from_config({"kind": "nope"})
    with pytest.raises(ValueError, match="strictly decreasing"):
        s4s.VPDiscrete(alphas_cumprod=[0.5, 0.9])
    with pytest.raises(ValueError, match="only one"):
        s4s.VPDiscrete(betas=[0.1, 0.2], beta_schedule="linear")
    with pytest.raises(ValueError, match="t_max < 1"):
        s4s.Flow(t_max=1.0)
    with pytest.raises(ValueError, match="unknown beta_schedule"):
        s4s.VPDiscrete(beta_schedule="exotic")


def test_times_are_differentiable():
    sched = s4s.VPDiscrete()
    lam = torch.tensor([-3.0, 0.5, 4.0], dtype=torch.float64, requires_grad=True)
    sched.t_from_lambda(lam).sum().backward()
    assert bool(torch.isfinite(lam.grad).all()) and bool((lam.grad < 0).all())
