"""Data sets used by the bundled model's training and evaluation scripts."""

from s4s.data.mnist import MnistSplits, load_mnist

__all__ = ["MnistSplits", "load_mnist"]
