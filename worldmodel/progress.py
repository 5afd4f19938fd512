"""A dependency-free text progress bar on stderr, shared by every long-running command."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`with ProgressBar(total, "train") as bar: bar.update(1, loss=0.1)`; redraws at most 10x/s."""

    WIDTH = 28
    MIN_REDRAW_S = 0.1

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, start: int = 0) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.count = start
        self.start_count = start
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self.fields: dict[str, object] = {}

    def update(self, n: int = 1, **fields: object) -> None:
        self.count += n
        self.fields.update(fields)
        now = time.perf_counter()
        if now - self._last_draw >= self.MIN_REDRAW_S or self.count >= self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        frac = min(self.count / self.total, 1.0)
        filled = int(frac * self.WIDTH)
        rate = (self.count - self.start_count) / max(now - self.t0, 1e-9)
        eta = (self.total - self.count) / rate if rate > 0 else float("inf")
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())
        eta_text = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                          f"{self.count}/{self.total} {rate:.1f}/s eta {eta_text} {extra}  ")
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
