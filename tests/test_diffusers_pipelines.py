"""The diffusers paths against diffusers itself: its schedulers, and its pipelines with S4SScheduler inside.

Tiny random-weight networks (tests/tiny_pipelines.py) built offline. Each pipeline test compares
the pipeline's output with s4s's own loop (``Solver.sample`` on ``Denoiser.from_diffusers(pipe)``)
on the same noise, or checks a clear refusal.
"""

import logging

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       UNet2DModel)

import s4s
from s4s.integrations.diffusers_scheduler import S4SScheduler
from tiny_pipelines import tiny_sd, tiny_sd3


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _tiny_unet(seed=0, classes=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=classes or None).eval()


def _learned_like(schedule, nfe, corrector=True, seed=0):
    """Non-trivial multistep tables (as a learned solver has)."""
    base = s4s.baseline("unipc_bh2" if corrector else "dpmpp_3m", schedule, nfe, grid="time")
    g = torch.Generator().manual_seed(seed)
    t, n = base.tables, nfe
    noisy = lambda m, mask: None if m is None else m + 0.01 * torch.randn(m.shape, generator=g, dtype=m.dtype) * mask  # noqa: E731
    tables = s4s.Tables(t.a, noisy(t.b, torch.ones(n, n).tril()), t.ac,
                        None if t.bc is None else noisy(t.bc, torch.ones(n - 1, n).tril(1)))
    return s4s.Solver(base.grid, tables, base.input_times, schedule, {"source": "test"})


# --- Denoiser.from_diffusers against diffusers' own schedulers ---------------------------------------
def _ddim_trailing_solver(schedule, timesteps, steps):
    """diffusers' trailing DDIM: each row steps t -> t - 1000 // steps, the model called at the listed times."""
    timesteps = timesteps.double()
    targets = (timesteps - 1000 // steps).clamp(min=0)
    a, b = torch.zeros(steps, steps, dtype=torch.float64), torch.zeros(steps, steps, dtype=torch.float64)
    for i in range(steps):
        row = s4s.baseline("ddim", schedule, 1, grid=torch.stack([timesteps[i], targets[i]])).tables
        a[i, i], b[i, i] = row.a[0, 0], row.b[0, 0]
    return s4s.Solver(torch.cat([timesteps[:1], targets]), s4s.Tables(a, b), input_times=timesteps, schedule=schedule)


# DDIM with and without clip_sample; DPM-Solver++ has no clip_sample (only thresholding, which s4s refuses).
SCHEDULER_CASES = [(kind, pred, clip) for pred in ("epsilon", "v_prediction", "sample")
                   for kind, clip in (("ddim", False), ("ddim", True), ("dpmpp_3m", False))]


@pytest.mark.parametrize("kind,prediction,clip", SCHEDULER_CASES, ids=["-".join(map(str, c)) for c in SCHEDULER_CASES])
def test_from_diffusers_samples_as_diffusers_schedulers_do(kind, prediction, clip):
    unet, steps = _tiny_unet(), 6
    if kind == "ddim":
        scheduler = DDIMScheduler(prediction_type=prediction, clip_sample=clip, clip_sample_range=0.8,
                                  timestep_spacing="trailing", set_alpha_to_one=False)
    else:
        scheduler = DPMSolverMultistepScheduler(solver_order=3, prediction_type=prediction, final_sigmas_type="sigma_min")
    scheduler.set_timesteps(steps)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(ref, t).sample
            extra = {"use_clipped_model_output": True} if kind == "ddim" else {}
            ref = scheduler.step(out, t, ref, **extra).prev_sample
        den = s4s.Denoiser.from_diffusers(unet, scheduler)  # everything read from the scheduler
        assert den.clip_range == ((-0.8, 0.8) if clip else None)
        if kind == "ddim":
            solver = _ddim_trailing_solver(den.schedule, scheduler.timesteps, steps)
        else:
            solver = s4s.baseline("dpmpp_3m", den.schedule, steps,
                                  grid=torch.cat([scheduler.timesteps.double(), torch.zeros(1, dtype=torch.float64)]))
        out = solver.sample(den, x)
    assert _rel(out, ref) <= 1e-4


def test_from_diffusers_flow_model_samples_as_flow_match_euler():
    """A velocity UNet under FlowMatchEulerDiscreteScheduler: Euler on the flow schedule is DDIM there."""
    unet, sigmas = _tiny_unet(seed=2), [0.95, 0.8, 0.6, 0.4, 0.2, 0.1]
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=sigmas)  # diffusers appends the terminal 0; we stop one step before it
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps[:-1]:
            ref = scheduler.step(unet(ref, t).sample, t, ref).prev_sample
        den = s4s.Denoiser.from_diffusers(unet, scheduler)
        solver = s4s.baseline("ddim", den.schedule, len(sigmas) - 1, grid=torch.tensor(sigmas, dtype=torch.float64))
        out = solver.sample(den, x)
    assert isinstance(den.schedule, s4s.Flow)
    assert _rel(out, ref) <= 1e-4


def test_from_diffusers_never_guesses():
    unet, vp = _tiny_unet(), s4s.VPDiscrete()
    with pytest.raises(ValueError, match="needs prediction_type"):
        s4s.Denoiser.from_diffusers(unet, vp)
    with pytest.raises(ValueError, match="thresholding"):
        s4s.Denoiser.from_diffusers(unet, DDPMScheduler(thresholding=True))
    with pytest.raises(ValueError, match="conflicts"):
        s4s.Denoiser.from_diffusers(unet, DDPMScheduler(prediction_type="v_prediction"), prediction_type="epsilon")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        s4s.Denoiser.from_diffusers(unet, DDIMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match="unet or transformer"):
        s4s.Denoiser.from_diffusers(unet)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(300.0)
    den = s4s.Denoiser.from_diffusers(unet, DDPMScheduler(prediction_type="v_prediction", clip_sample=False))
    with torch.no_grad():
        v = unet(x, t).sample
        a, s = (f(t).float() for f in (vp.alpha, vp.sigma))
        torch.testing.assert_close(den(x, t), a * x - s * v, rtol=1e-5, atol=1e-5)


# --- the bundled model as a diffusers pipeline ---------------------------------------------------------
@pytest.fixture(scope="module")
def bundled_pipe():
    pipe = s4s.ClassConditionalPipeline.from_pretrained(s4s.bundled_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance", [None, 2.0])
def test_bundled_pipeline_with_s4s_scheduler_equals_the_generic_loop(bundled_pipe, guidance, tmp_path):
    den = s4s.Denoiser.from_diffusers(bundled_pipe, null_cond=10)
    assert den.clip_range == (-1.0, 1.0) and den.fingerprint == s4s.load_model().fingerprint
    solver = _learned_like(den.schedule, 5)
    bundled_pipe.scheduler = S4SScheduler.from_solver(solver, DDPMScheduler.from_config(bundled_pipe.scheduler.config))
    labels = [1, 3, 5, 7]
    kwargs = dict(class_labels=labels, guidance_scale=guidance) if guidance else dict(batch_size=4)
    images = bundled_pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images  # 5 steps
    noise = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    cond = torch.tensor(labels) if guidance else torch.full((4,), 10)
    with torch.no_grad():
        ref = solver.sample(den, noise * bundled_pipe.scheduler.init_noise_sigma, cond, guidance)
    assert _rel(images, (ref / 2 + 0.5).clamp(0, 1)) <= 1e-5
    bundled_pipe.save_pretrained(tmp_path / "pipe")
    loaded = s4s.ClassConditionalPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, S4SScheduler)
    again = loaded(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    assert torch.equal(again, images)


def test_bundled_pipeline_refuses_labels_it_cannot_use(bundled_pipe):
    with pytest.raises(ValueError, match="null class"):
        bundled_pipe(class_labels=[10], num_inference_steps=2)
    with pytest.raises(ValueError, match="needs class_labels"):
        bundled_pipe(guidance_scale=2.0, num_inference_steps=2)


# --- img2img: starting part-way -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("sd"))


def _sd_reference(pipe, solver, latents, strength, guidance=3.0):
    """s4s's own loop from the state the img2img pipeline starts at (same noise, same embeddings)."""
    n = solver.nfe
    k = n - min(int(n * strength), n)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    t_k = solver.grid[k]
    x_k = float(solver.schedule.alpha(t_k)) * latents + float(solver.schedule.sigma(t_k)) * noise
    emb, neg = pipe.encode_prompt("a cat", "cpu", 1, True)
    den = s4s.Denoiser.from_diffusers(pipe, null_cond={"encoder_hidden_states": neg})
    with torch.no_grad():
        return solver.from_step(k).sample(den, x_k, {"encoder_hidden_states": emb}, guidance)


def _sd_img2img(pipe, strength, guidance=3.0):
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    out = pipe("a cat", image=latents, strength=strength, num_inference_steps=pipe.scheduler.solver.nfe,
               guidance_scale=guidance, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    return latents, out


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img_pipeline_starts_a_single_step_solver_part_way(sd, strength):
    base = sd.scheduler
    solver = s4s.baseline("ddim", s4s.schedule_from_diffusers(base), 5, grid="time")
    sd.scheduler = S4SScheduler.from_solver(solver, base)
    try:
        latents, out = _sd_img2img(sd, strength)
        assert _rel(out, _sd_reference(sd, solver, latents, strength)) <= 1e-5
    finally:
        sd.scheduler = base


def test_img2img_refuses_a_multistep_solver_part_way_and_runs_it_whole(sd):
    base = sd.scheduler
    solver = _learned_like(s4s.schedule_from_diffusers(base), 5)
    sd.scheduler = S4SScheduler.from_solver(solver, base)
    try:
        with pytest.raises(ValueError, match="cannot start at step 2"):
            _sd_img2img(sd, 0.6)
        latents, out = _sd_img2img(sd, 1.0)
        assert _rel(out, _sd_reference(sd, solver, latents, 1.0)) <= 1e-5
    finally:
        sd.scheduler = base


def test_img2img_pipeline_round_trip_keeps_the_scheduler(sd, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    base = sd.scheduler
    solver = s4s.baseline("ddim", s4s.schedule_from_diffusers(base), 4, grid="time")
    sd.scheduler = S4SScheduler.from_solver(solver, base)
    try:
        latents, out = _sd_img2img(sd, 0.6)
        sd.save_pretrained(tmp_path / "sd")
        loaded = StableDiffusionImg2ImgPipeline.from_pretrained(tmp_path / "sd")
        loaded.set_progress_bar_config(disable=True)
        assert isinstance(loaded.scheduler, S4SScheduler)
        assert torch.equal(_sd_img2img(loaded, 0.6)[1], out)
    finally:
        sd.scheduler = base


def test_step_checks_its_timestep():
    vp = s4s.VPDiscrete()
    scheduler = S4SScheduler.from_solver(_learned_like(vp, 4), DDPMScheduler())
    scheduler.set_timesteps(4)
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="not one of this solver's timesteps"):
        scheduler.step(torch.zeros_like(x), 123.0, x)
    scheduler.set_timesteps(4)
    x = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="step 1 of this solver"):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[2], x)


# --- flow matching: SD3 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3(tmp_path_factory.mktemp("sd3"))


def _flow_solver(nfe=4):
    return _learned_like(s4s.Flow(), nfe)


def _sd3_run(pipe, nfe, guidance=3.0):
    return pipe("a cat", height=8, width=8, num_inference_steps=nfe, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


def _sd3_reference(pipe, solver, guidance=3.0):
    emb, neg, pooled, neg_pooled = pipe.encode_prompt("a cat", None, None, device="cpu")
    den = s4s.Denoiser.from_diffusers(pipe, null_cond={"encoder_hidden_states": neg, "pooled_projections": neg_pooled})
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return solver.sample(den, noise, {"encoder_hidden_states": emb, "pooled_projections": pooled}, guidance)


def test_flow_match_pipeline_with_s4s_scheduler_equals_the_generic_loop(sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    base, solver = sd3.scheduler, _flow_solver()
    sd3.scheduler = S4SScheduler.from_solver(solver, base)
    try:
        assert torch.allclose(sd3.scheduler.timesteps.double(), 1000 * solver.input_times, rtol=1e-6)
        out = _sd3_run(sd3, solver.nfe)
        assert _rel(out, _sd3_reference(sd3, solver)) <= 1e-5
        sd3.save_pretrained(tmp_path / "sd3")
        loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", text_encoder_3=None, tokenizer_3=None)
        loaded.set_progress_bar_config(disable=True)
        assert isinstance(loaded.scheduler, S4SScheduler)
        assert torch.equal(_sd3_run(loaded, solver.nfe), out)
        with pytest.raises(ValueError, match="learned for 4 model calls"):
            _sd3_run(sd3, 28)
    finally:
        sd3.scheduler = base


def test_flow_match_pipeline_with_dynamic_shifting_needs_the_solver_s_mu(sd3):
    base = sd3.scheduler
    shifting = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    solver = _flow_solver()
    try:
        sd3.scheduler = S4SScheduler.from_solver(solver, shifting)
        with pytest.raises(ValueError, match="records no mu"):
            _sd3_run(sd3, solver.nfe)
        solver.metadata["mu"] = 1.5
        sd3.scheduler = S4SScheduler.from_solver(solver, shifting)
        with pytest.raises(ValueError, match="learned at mu=1.5"):
            _sd3_run(sd3, solver.nfe)
        # the tiny pipeline: 8x8 latents, patch 1 -> 64 tokens; mu = a * 64 + b with FLUX/SD3's linear rule
        seq = 64
        m = (shifting.config.max_shift - shifting.config.base_shift) / (
            shifting.config.max_image_seq_len - shifting.config.base_image_seq_len)
        solver.metadata["mu"] = seq * m + shifting.config.base_shift - m * shifting.config.base_image_seq_len
        sd3.scheduler = S4SScheduler.from_solver(solver, shifting)
        assert _rel(_sd3_run(sd3, solver.nfe), _sd3_reference(sd3, solver)) <= 1e-5
    finally:
        sd3.scheduler = base


def test_flow_solver_refuses_foreign_sigmas_and_takes_flux_default():
    solver = _flow_solver(5)
    scheduler = S4SScheduler.from_solver(solver, FlowMatchEulerDiscreteScheduler())
    scheduler.set_timesteps(sigmas=[1.0, 0.8, 0.6, 0.4, 0.2])  # FLUX's default linspace(1, 1/N, N): the solver's grid
    assert torch.allclose(scheduler.timesteps.double(), 1000 * solver.input_times, rtol=1e-6)
    scheduler.set_timesteps(sigmas=solver.grid[:-1].tolist())
    with pytest.raises(ValueError, match="differ from the solver's grid"):
        scheduler.set_timesteps(sigmas=[0.9, 0.7, 0.5, 0.3, 0.1])
    with pytest.raises(ValueError, match="built for Flow"):
        S4SScheduler.from_solver(solver, DDPMScheduler())


# --- scheduler idioms -------------------------------------------------------------------------------------
def test_from_config_needs_a_solver_and_takes_one():
    vp = s4s.VPDiscrete()
    solver = _learned_like(vp, 4)
    base = DDPMScheduler(prediction_type="v_prediction", clip_sample=False)
    with pytest.raises(ValueError, match="solver=s4s.Solver.load"):
        S4SScheduler.from_config(base.config)
    scheduler = S4SScheduler.from_config(base.config, solver=solver)
    assert scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(scheduler.solver.tables.b, solver.tables.b)
    with pytest.raises(ValueError, match="needs the network's prediction_type"):
        S4SScheduler.from_solver(solver)
    assert S4SScheduler.from_solver(solver, prediction_type="sample").config.prediction_type == "sample"
    names = {cls.__name__ for cls in scheduler.compatibles}
    assert {"DDIMScheduler", "DDPMScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"} <= names


def test_scheduler_folder_round_trip_and_switching_back_quietly(tmp_path, caplog):
    vp = s4s.VPDiscrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    solver = _learned_like(vp, 5)
    base = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler = S4SScheduler.from_solver(solver, base)
    scheduler.save_pretrained(tmp_path / "scheduler")
    loaded = S4SScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert torch.equal(loaded.solver.tables.bc, solver.tables.bc) and loaded.solver.metadata == solver.metadata
    with caplog.at_level(logging.WARNING):
        back = DDIMScheduler.from_config(loaded.config)
    assert "were passed to DDIMScheduler" not in caplog.text  # the solver's tables are not dumped as a warning
    assert back.config.beta_schedule == "scaled_linear" and back.config.clip_sample is False
    assert torch.equal(back.alphas_cumprod, base.alphas_cumprod)


# --- k-diffusion ----------------------------------------------------------------------------------------------
def test_k_diffusion_sigmas_must_be_the_solver_s(gmm, noise8, vp):
    from s4s.integrations.k_diffusion import sample_s4s

    solver = _learned_like(vp, 5)
    sigmas = solver.k_sigmas()
    assert sigmas[-1] == 0 and sigmas.numel() == 6

    def model(x, sigma):
        return gmm.posterior_mean(x, sigma.to(torch.float64))

    out = sample_s4s(model, noise8 * sigmas[0], sigmas, solver=solver, disable=True)
    ref = solver.sample(gmm.denoiser(vp), noise8 * sigmas[0] * vp.alpha(solver.grid[0])) / vp.alpha(solver.grid[-1])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    moved = sigmas.clone()
    moved[2] *= 1.1
    with pytest.raises(ValueError, match="differ from this solver's noise levels"):
        sample_s4s(model, noise8 * sigmas[0], moved, solver=solver, disable=True)


@pytest.mark.parametrize("name", ["mnist-unet", "mnist-flow-unet"])
def test_a_pipeline_saved_with_s4s_scheduler_loads_as_the_same_model(name, tmp_path):
    folder = s4s.bundled_model_path(name)
    original = s4s.load_model(folder)
    pipe = s4s.ClassConditionalPipeline.from_pretrained(folder)
    pipe.scheduler = S4SScheduler.from_solver(s4s.baseline("ddim", original.schedule, 3, grid="time"), pipe.scheduler)
    pipe.save_pretrained(tmp_path / name)
    again = s4s.load_model(tmp_path / name)
    assert s4s.schedules.same_process(again.schedule, original.schedule)
    assert again.fingerprint == original.fingerprint and again.denoiser.clip_range == original.denoiser.clip_range
    x = torch.randn(2, 1, 28, 28)
    t = torch.tensor(0.5 if name == "mnist-flow-unet" else 500.0)
    with torch.no_grad():
        assert torch.equal(again.denoiser(x, t, torch.tensor([1, 2])), original.denoiser(x, t, torch.tensor([1, 2])))
