"""Learning solvers (S4S, S4S-Alt): settings, objectives, parametrisation, optimisation. Sampling lives apart.

The one entry point is :func:`s4s.learn` (:func:`s4s.learning.api.learn`); its settings are a
:class:`LearnConfig`, named recipes are in :data:`PRESETS`.
"""

from s4s.learning.api import learn
from s4s.learning.config import METHODS, PRESETS, LearnConfig, preset_config
from s4s.learning.parametrization import LearnableSolver
from s4s.learning.trainer import LearnResult, train_solver

__all__ = ["learn", "LearnConfig", "PRESETS", "preset_config", "METHODS", "LearnResult", "LearnableSolver",
           "train_solver"]
