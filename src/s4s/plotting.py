"""One small line-plot helper for the PNGs the benchmarks and the learner write (needs matplotlib)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from s4s.io import atomic_write

log = logging.getLogger(__name__)

__all__ = ["line_plot"]


def line_plot(series: dict[str, Sequence[tuple[float, float]]], path: Path, xlabel: str, ylabel: str, title: str,
              logy: bool = True, styles: Optional[dict[str, dict[str, Any]]] = None) -> Optional[Path]:
    """Plot ``{label: [(x, y), ...]}`` to ``path``; returns None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional dependency
        log.warning("matplotlib not installed: %s not written (pip install 's4s[eval]')", path)
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        if points:
            ax.plot(*zip(*points), label=label, **{"marker": "o", **(styles or {}).get(label, {})})
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, yscale="log" if logy else "linear")
    ax.grid(True, which="both", alpha=0.3)
    if all(float(x).is_integer() for points in series.values() for x, _ in points):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # NFE, steps: whole numbers
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)
