"""Image grids as PNG (no torchvision needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from s4s.io import atomic_write

__all__ = ["image_grid", "save_image_grid", "save_labelled_rows"]


def image_grid(images: Tensor, nrow: Optional[int] = None, pad: int = 2, value_range: tuple[float, float] = (-1, 1)) -> np.ndarray:
    """(B, C, H, W) images in ``value_range`` -> uint8 array (H', W', C) tiled ``nrow`` per row."""
    x = images.detach().float().cpu()
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    canvas = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for k in range(b):
        r, q = divmod(k, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[k]
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return arr


def save_image_grid(images: Tensor, path: str | Path, nrow: Optional[int] = None, scale: int = 2) -> Path:
    """Write a PNG grid (nearest-neighbour upscaled by ``scale``). Needs matplotlib (``eval`` extra)."""
    import matplotlib.image

    arr = image_grid(images, nrow)
    arr = arr.repeat(scale, 0).repeat(scale, 1)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return atomic_write(path, lambda tmp: matplotlib.image.imsave(tmp, arr))


def save_labelled_rows(rows: Sequence[Tensor], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Several equally sized image batches as labelled rows (e.g. solvers side by side) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [image_grid(r, nrow=r.shape[0]) for r in rows]
    fig, axes = plt.subplots(len(grids), 1, figsize=(grids[0].shape[1] / 40, 0.9 * len(grids) + 0.4), squeeze=False)
    for ax, grid, label in zip(axes[:, 0], grids, labels):
        ax.imshow(grid.squeeze(-1) if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
