"""Small dependency-free line charts (Pillow) for eval reports: PSNR over ticks and the like."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 40


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = max(hi - lo, 1e-9)
    step = 10 ** math.floor(math.log10(span / count))
    for mult in (1, 2, 5, 10):
        if span / (step * mult) <= count:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def line_chart(series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str,
               size: tuple[int, int] = (720, 400), x_values: Sequence[float] | None = None) -> Image.Image:
    """One chart with a line per series (NaNs break the line), axes with ticks, and a legend."""
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    values = [v for s in series.values() for v in s if v == v and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(hi - lo, 1e-6) * 0.05
    lo, hi = lo - pad, hi + pad
    n = max((len(s) for s in series.values()), default=1)
    xs = list(x_values) if x_values is not None else list(range(1, n + 1))
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    x1 = x1 if x1 > x0 else x0 + 1
    pw, ph = w - MARGIN_LEFT - MARGIN_RIGHT, h - MARGIN_TOP - MARGIN_BOTTOM

    def px(x: float, y: float) -> tuple[float, float]:
        return (MARGIN_LEFT + (x - x0) / (x1 - x0) * pw, MARGIN_TOP + (1 - (y - lo) / (hi - lo)) * ph)

    d.rectangle([MARGIN_LEFT, MARGIN_TOP, w - MARGIN_RIGHT, h - MARGIN_BOTTOM], outline=(0, 0, 0))
    for yv in _nice_ticks(lo, hi):
        _, y = px(x0, yv)
        d.line([MARGIN_LEFT, y, w - MARGIN_RIGHT, y], fill=(225, 225, 225))
        d.text((4, y - 6), f"{yv:.4g}", fill=(0, 0, 0))
    for xv in _nice_ticks(x0, x1):
        x, _ = px(xv, lo)
        d.text((x - 8, h - MARGIN_BOTTOM + 4), f"{xv:.4g}", fill=(0, 0, 0))
    d.text((MARGIN_LEFT + 60, 6), title, fill=(0, 0, 0))
    d.text((w // 2 - 20, h - 16), xlabel, fill=(0, 0, 0))
    d.text((4, MARGIN_TOP - 16), ylabel, fill=(0, 0, 0))
    for i, (name, ys) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        segment: list[tuple[float, float]] = []
        for x, y in zip(xs, ys):
            if y == y and math.isfinite(y):
                segment.append(px(x, y))
            else:
                if len(segment) > 1:
                    d.line(segment, fill=colour, width=2)
                segment = []
        if len(segment) > 1:
            d.line(segment, fill=colour, width=2)
        elif len(segment) == 1:
            d.ellipse([segment[0][0] - 2, segment[0][1] - 2, segment[0][0] + 2, segment[0][1] + 2], fill=colour)
        ly = MARGIN_TOP + 6 + 14 * i
        d.line([w - MARGIN_RIGHT - 170, ly + 6, w - MARGIN_RIGHT - 150, ly + 6], fill=colour, width=3)
        d.text((w - MARGIN_RIGHT - 145, ly), name, fill=(0, 0, 0))
    return img


def save_image_atomic(img: Image.Image, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
