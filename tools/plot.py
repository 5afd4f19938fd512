"""The charts the project writes (eval PSNR curves, training curves), drawn with matplotlib.

Why matplotlib: axes, ticks, log scales, legends and file formats are what it does, and what readers
of the charts know. Figures are built with the object API (`matplotlib.figure.Figure`), not pyplot's
global state, so a long eval or a test run never accumulates open figures; every file is written
atomically (`conventions.atomic`), PNG unless the name says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # render to files only: no display, no GUI toolkit (must precede any pyplot import)
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from conventions.atomic import atomic_write  # noqa: E402

DPI = 100
"""Pixels per inch: a size in pixels (the callers' unit) is size / DPI inches."""
DEFAULT_SIZE = (720, 400)
LINE_WIDTH = 1.6
GRID_ALPHA = 0.3
IMAGE_FORMAT = "png"


def new_figure(size: tuple[int, int] = DEFAULT_SIZE) -> Figure:
    """An empty figure of `size` pixels (width, height) with an Agg canvas."""
    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def draw_lines(ax, series: dict[str, Sequence[float]], x_values: Sequence[float] | None = None,
               log_y: bool = False) -> None:
    """One line per series on `ax` (NaNs break a line; a series of one point is a marker)."""
    for name, ys in series.items():
        ys = [float(y) for y in ys]
        xs = list(x_values)[: len(ys)] if x_values is not None else list(range(1, len(ys) + 1))
        finite = sum(1 for y in ys if math.isfinite(y))
        ax.plot(xs, ys, label=name, linewidth=LINE_WIDTH, marker="o" if finite == 1 else None)
    if log_y and any(y > 0 for ys in series.values() for y in ys if math.isfinite(y)):
        ax.set_yscale("log")
    ax.grid(True, alpha=GRID_ALPHA)
    if series:
        ax.legend(fontsize="small")


def line_chart(series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str,
               size: tuple[int, int] = DEFAULT_SIZE, x_values: Sequence[float] | None = None,
               log_y: bool = False) -> Figure:
    """One chart with a line per series, axes, grid and a legend; `x_values` default to 1, 2, ..."""
    fig = new_figure(size)
    ax = fig.add_subplot()
    draw_lines(ax, series, x_values, log_y)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def save_image_atomic(img: Image.Image | Figure, path: Path) -> Path:
    """Write a chart (a matplotlib Figure) or a picture (a PIL image) to `path` atomically (PNG unless
    the suffix names another format matplotlib or Pillow knows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or IMAGE_FORMAT
    if isinstance(img, Figure):
        return atomic_write(path, lambda tmp: img.savefig(tmp, format=fmt, dpi=DPI))
    return atomic_write(path, lambda tmp: img.save(tmp, format=Image.registered_extensions().get(
        path.suffix.lower(), IMAGE_FORMAT.upper())))
