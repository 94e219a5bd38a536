"""s4s: learned few-step solvers for pretrained diffusion models (S4S / S4S-Alt, Frankel et al. 2025).

The flat public API::

    import s4s
    denoiser = s4s.Denoiser.from_diffusers(pipe)                    # schedule, prediction type, clamp: from pipe.scheduler
    solver = s4s.baseline("dpmpp_3m", denoiser.schedule, nfe=5, grid="logsnr")
    x0 = solver.sample(denoiser, denoiser.schedule.prior_noise((4, 3, 64, 64)))
    solver.save("dpmpp3m-5.json"); solver = s4s.Solver.load("dpmpp3m-5.json")
"""

__version__ = "0.1.0"

from s4s.baselines import BASELINES, GridPoints, HeunSampler, baseline, build_tables
from s4s.denoisers import Denoiser, fingerprint_module
from s4s.grids import GRIDS, make_grid, validate_grid
from s4s.schedules import EDM, Flow, Schedule, VPCosine, VPDiscrete, VPLinear, schedule_from_config, schedule_from_diffusers
from s4s.solver import Solver, SolverFileError, Tables, integrate
from s4s.family import GuidanceFamily, load_solver
from s4s.testbed import GaussianMixture
from s4s.teacher import TeacherData
from s4s.learning import PRESETS, LearnConfig, LearnResult, learn

__all__ = [
    "__version__",
    "BASELINES", "GRIDS", "baseline", "build_tables", "GridPoints", "HeunSampler",
    "Denoiser", "fingerprint_module",
    "make_grid", "validate_grid",
    "Schedule", "VPDiscrete", "VPLinear", "VPCosine", "EDM", "Flow", "schedule_from_config", "schedule_from_diffusers",
    "Solver", "SolverFileError", "Tables", "integrate", "GuidanceFamily", "load_solver",
    "GaussianMixture",
    "learn", "LearnConfig", "LearnResult", "PRESETS", "TeacherData",
    "S4SScheduler", "ClassConditionalPipeline", "sample_s4s", "load_model", "bundled_model_path",
    "TextToImageOptions", "read_prompts",
]


def __getattr__(name: str):
    """Lazy exports of the parts that need optional dependencies (diffusers)."""
    if name == "S4SScheduler":
        from s4s.integrations.diffusers_scheduler import S4SScheduler

        return S4SScheduler
    if name == "ClassConditionalPipeline":
        from s4s.integrations.pipeline import ClassConditionalPipeline

        return ClassConditionalPipeline
    if name == "sample_s4s":
        from s4s.integrations.k_diffusion import sample_s4s

        return sample_s4s
    if name in ("load_model", "bundled_model_path"):
        from s4s import models

        return getattr(models, name)
    if name in ("TextToImageOptions", "read_prompts"):
        from s4s import text2image

        return getattr(text2image, name)
    raise AttributeError(f"module 's4s' has no attribute {name!r}")
