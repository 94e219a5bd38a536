"""What the package ships beside the code: the bundled MNIST networks and where their files live.

Both learning (the perceptual loss) and evaluation (the FD classifier and its reference statistics)
use these networks, and the model loader finds the bundled diffusion models here, so they sit below
``s4s.learn`` and ``s4s.eval``, which never import each other's modules for them.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["assets_dir"]


def assets_dir() -> Path:
    """Folder of the files shipped inside the package (bundled models, networks, statistics)."""
    return Path(str(importlib.resources.files("s4s") / "assets"))
