"""Figure basics every stage's plots share: a pyplot-free matplotlib figure, PNG bytes, an atomic write.

Low in the layers (it needs only :mod:`mammolab.io.atomic`), so training draws its curves
(:mod:`mammolab.train.curves`) and evaluation its ROC and calibration figures
(:mod:`mammolab.evaluate.plots`) the same way without training importing evaluation. matplotlib is
imported when a figure is made, not with this module: ``import mammolab.train`` stays light.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mammolab.io.atomic import atomic_write_bytes

__all__ = ["DPI", "maybe_save", "new_figure", "render_png", "save_figure"]

#: Resolution of every figure MammoLab writes.
DPI = 110


def new_figure(size: tuple[float, float] = (5.0, 4.6)) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas (no pyplot global state: safe in threads and servers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a figure as PNG atomically and return its path."""
    path = Path(path)
    atomic_write_bytes(path, render_png(fig))
    return path


def maybe_save(fig: Any, path: str | Path | None) -> Any:
    """Write ``fig`` to ``path`` when one is given; return the figure either way."""
    if path is not None:
        save_figure(fig, path)
    return fig
