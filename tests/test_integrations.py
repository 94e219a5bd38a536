"""diffusers scheduler and k-diffusion-signature sampling against the generic loop."""

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

import s4s
from s4s.integrations.diffusers_scheduler import S4SScheduler
from s4s.integrations.k_diffusion import sample_s4s
from s4s.models import load_model


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


def _learned_like(schedule, nfe, corrector):
    """A solver with non-trivial tables, grid and input times (as a learned one has)."""
    base = s4s.baseline("unipc_bh2" if corrector else "dpmpp_3m", schedule, nfe, grid="time")
    g = torch.Generator().manual_seed(nfe)
    t = base.tables
    noisy = lambda m, mask: None if m is None else m + 0.01 * torch.randn(m.shape, generator=g, dtype=m.dtype) * mask  # noqa: E731
    n = nfe
    tables = s4s.Tables(t.a, noisy(t.b, torch.ones(n, n).tril()), t.ac, noisy(t.bc, torch.ones(n - 1, n).tril(1)))
    input_times = (base.input_times - 7.0).clamp(min=0)
    return s4s.Solver(base.grid, tables, input_times, schedule, {"source": "test"})


@pytest.mark.parametrize("nfe", [4, 5])
@pytest.mark.parametrize("guidance", [None, 2.0])
def test_scheduler_equals_generic_loop_on_bundled_model(bundled, nfe, guidance):
    solver = _learned_like(bundled.schedule, nfe, corrector=nfe == 5)
    scheduler = S4SScheduler.from_solver(solver, DDPMScheduler(beta_schedule="linear", clip_sample=True))
    unet = bundled.module
    x = bundled.schedule.prior_noise((4, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 3, 5, 7]) if guidance else torch.full((4,), 10)
    with torch.no_grad():
        ref = solver.sample(bundled.denoiser, x, labels, guidance)
        scheduler.set_timesteps(nfe)
        sample = x * (scheduler.init_noise_sigma / bundled.schedule.sigma_max)
        calls = 0
        for t in scheduler.timesteps:
            if guidance:
                eps = unet(torch.cat([sample, sample]), t, class_labels=torch.cat([labels, torch.full((4,), 10)])).sample
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = unet(sample, t, class_labels=labels).sample
            calls += 1
            sample = scheduler.step(eps, t, sample).prev_sample
    assert calls == nfe
    assert _rel(sample, ref) <= 1e-5


def test_scheduler_refuses_other_nfe_and_times(vp):
    solver = s4s.baseline("dpmpp_3m", vp, 5)
    scheduler = S4SScheduler.from_solver(solver, DDPMScheduler())
    with pytest.raises(ValueError, match="learned for 5 model calls"):
        scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="custom timesteps"):
        scheduler.set_timesteps(timesteps=[999, 800, 600, 400, 200])
    scheduler.set_timesteps(timesteps=solver.input_times.tolist())
    with pytest.raises(ValueError, match="another schedule"):
        S4SScheduler.from_solver(solver, DDPMScheduler(beta_schedule="scaled_linear"))


def test_pipeline_save_load_round_trip_keeps_the_learned_solver(tmp_path, vp):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    solver = _learned_like(vp, 4, corrector=True)
    pipe = DDPMPipeline(unet=unet, scheduler=S4SScheduler.from_solver(solver, DDPMScheduler(clip_sample=False)))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, S4SScheduler)
    again = loaded.scheduler.solver
    assert torch.equal(again.tables.b, solver.tables.b) and torch.equal(again.input_times, solver.input_times)
    out = loaded(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(3), output_type="np").images
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    den = s4s.Denoiser.from_diffusers(unet, vp, prediction_type="epsilon")
    with torch.no_grad():
        ref = (solver.sample(den, noise) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(out - ref).max() <= 1e-5


def test_k_diffusion_signature_equals_generic_loop(gmm, noise8):
    edm = s4s.EDM(sigma_min=0.002, sigma_max=80.0)
    solver = s4s.baseline("unipc_bh2", edm, 6, grid="edm")
    den = gmm.denoiser(edm)
    seen = []

    def model(x, sigma, **extra):  # k-diffusion convention: VE input, per-sample sigma, returns D
        assert extra == {"cond": "ok"}
        return gmm.posterior_mean(x, sigma.to(torch.float64))

    sigmas = torch.cat([s4s.make_grid("edm", edm, 6), torch.zeros(1, dtype=torch.float64)])[:7]
    x = noise8 * 80.0
    out = sample_s4s(model, x, sigmas, extra_args={"cond": "ok"}, callback=lambda d: seen.append(d["i"]), disable=True,
                     solver=solver)
    torch.testing.assert_close(out, solver.sample(den, x), rtol=1e-10, atol=1e-10)
    assert seen == list(range(6))
    with pytest.raises(ValueError, match="makes 6 model calls"):
        sample_s4s(model, x, sigmas[:4], solver=solver, disable=True)


def test_k_diffusion_with_a_vp_solver_runs_in_ve_coordinates(gmm, noise8, vp):
    solver = s4s.baseline("dpmpp_3m", vp, 5)
    ve = vp.sigma(solver.grid) / vp.alpha(solver.grid)
    out = sample_s4s(lambda x, s: gmm.posterior_mean(x, s.to(torch.float64)), noise8 * ve[0], ve, disable=True,
                     solver=solver)
    x_vp = noise8 * ve[0] * vp.alpha(solver.grid[0])
    ref = solver.sample(gmm.denoiser(vp), x_vp) / vp.alpha(solver.grid[-1])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
