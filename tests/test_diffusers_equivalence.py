"""Our tables against diffusers' schedulers on the same discrete VP schedule and timesteps."""

import pytest
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

import s4s

CASES = {
    "ddim": lambda **kw: DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False, **kw),
    "dpmpp_2m": lambda **kw: DPMSolverMultistepScheduler(solver_order=2, final_sigmas_type="sigma_min", **kw),
    "dpmpp_3m": lambda **kw: DPMSolverMultistepScheduler(solver_order=3, final_sigmas_type="sigma_min", **kw),
    "unipc_bh1": lambda **kw: UniPCMultistepScheduler(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min", **kw),
    "unipc_bh2": lambda **kw: UniPCMultistepScheduler(solver_order=3, solver_type="bh2", final_sigmas_type="sigma_min", **kw),
    "deis": lambda **kw: DEISMultistepScheduler(solver_order=3, **kw),
}
PREDICTIONS = {"eps": ("epsilon", s4s.Denoiser.from_eps), "v": ("v_prediction", s4s.Denoiser.from_v)}  # id -> (type, adapter)


def _run_diffusers(scheduler, steps, fn, x):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = fn(x, torch.full((x.shape[0],), float(t), dtype=torch.float64), None)
        x = scheduler.step(out, t, x).prev_sample
    return x, scheduler.timesteps


@pytest.mark.parametrize("pred", sorted(PREDICTIONS))
@pytest.mark.parametrize("steps", [4, 6, 16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_samples_as_diffusers(name, steps, pred, vp, gmm, noise8):
    prediction_type, adapter = PREDICTIONS[pred]
    fn = gmm.raw_model(vp, prediction_type)
    ref, timesteps = _run_diffusers(CASES[name](prediction_type=prediction_type), steps, fn, noise8.clone())
    timesteps = timesteps.double()
    if name == "ddim":
        # diffusers' DDIM steps from each listed timestep t to t - 1000 // steps and treats the
        # result as lying at the next listed timestep (833 vs 832 for 6 steps). Each row is the
        # one-step DDIM table from t to t - 1000 // steps; the model is called at the listed times.
        targets = (timesteps - 1000 // steps).clamp(min=0)
        a, b = torch.zeros(steps, steps, dtype=torch.float64), torch.zeros(steps, steps, dtype=torch.float64)
        for i in range(steps):
            row = s4s.baseline("ddim", vp, 1, grid=torch.stack([timesteps[i], targets[i]])).tables
            a[i, i], b[i, i] = row.a[0, 0], row.b[0, 0]
        grid = torch.cat([timesteps[:1], targets])
        solver = s4s.Solver(grid, s4s.Tables(a, b), input_times=timesteps, schedule=vp)
    else:
        grid = torch.cat([timesteps, torch.zeros(1, dtype=torch.float64)])  # ends at t = 0 (sigma_min)
        solver = s4s.baseline(name, vp, steps, grid=grid)
    assert solver.nfe == steps
    out = solver.sample(adapter(fn, vp), noise8.clone())
    rel = float((out - ref).norm() / ref.norm())
    assert rel <= 1e-4, f"{name} {steps} steps {pred}: relative difference {rel:.2e}"
