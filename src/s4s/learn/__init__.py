"""Learning solvers (S4S, S4S-Alt): teacher data, objectives, optimisation. Sampling lives apart."""

from s4s.learn.api import learn, learn_with_result
from s4s.learn.parametrization import LearnableSolver
from s4s.teacher import TeacherData, make_teacher_data, parse_teacher, sample_noise
from s4s.learn.trainer import METHODS, LearnConfig, LearnResult, train_solver

__all__ = ["learn", "learn_with_result", "LearnableSolver", "TeacherData", "make_teacher_data", "parse_teacher",
           "sample_noise", "METHODS", "LearnConfig", "LearnResult", "train_solver"]
