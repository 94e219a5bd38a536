import pytest
import torch

import s4s


@pytest.mark.parametrize("kind", sorted(s4s.GRIDS))
@pytest.mark.parametrize("schedule", [s4s.VPDiscrete(), s4s.EDM(), s4s.Flow()], ids=repr)
def test_grid_shape_ends_monotone(kind, schedule):
    g = s4s.make_grid(kind, schedule, 7)
    assert g.shape == (8,) and g.dtype == torch.float64
    assert float(g[0]) == schedule.t_max and float(g[-1]) == schedule.t_min
    assert bool((g[1:] < g[:-1]).all())


def test_edm_grid_matches_karras_formula():
    sched = s4s.EDM(sigma_min=0.002, sigma_max=80.0)
    n, rho = 10, 7.0
    i = torch.arange(n + 1, dtype=torch.float64)
    expected = (80.0 ** (1 / rho) + i / n * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    torch.testing.assert_close(s4s.make_grid("edm", sched, n), expected, rtol=1e-10, atol=0)


def test_logsnr_grid_is_uniform_in_lambda():
    sched = s4s.VPDiscrete()
    lam = sched.lam(s4s.make_grid("logsnr", sched, 9))
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, steps.mean().expand(9), rtol=1e-7, atol=0)


def test_quadratic_and_time_grids():
    sched = s4s.VPLinear()
    torch.testing.assert_close(s4s.make_grid("time", sched, 4), torch.linspace(1.0, 1e-3, 5, dtype=torch.float64))
    q = s4s.make_grid("quadratic", sched, 4).sqrt()
    torch.testing.assert_close(q[1:] - q[:-1], (q[1] - q[0]).expand(4))


def test_explicit_grid_and_errors():
    sched = s4s.VPDiscrete()
    g = s4s.make_grid([999, 500, 100, 0], sched, 3)
    assert g.tolist() == [999.0, 500.0, 100.0, 0.0]
    with pytest.raises(ValueError, match="strictly decreasing"):
        s4s.make_grid([999, 100, 500, 0], sched, 3)
    with pytest.raises(ValueError, match="outside"):
        s4s.make_grid([1500, 100, 50, 0], sched, 3)
    with pytest.raises(ValueError, match="NaN"):
        s4s.make_grid([999, float("nan"), 50, 0], sched, 3)
    with pytest.raises(ValueError, match="need 4"):
        s4s.make_grid([999, 0], sched, 3)
    with pytest.raises(ValueError, match="unknown grid"):
        s4s.make_grid("karras-ish", sched, 3)
    with pytest.raises(ValueError, match=">= 1"):
        s4s.make_grid("logsnr", sched, 0)
