"""Progress on stderr for every long-running command: tqdm on a terminal, a few plain lines elsewhere.

Why a wrapper around tqdm rather than tqdm at every call site: on a terminal tqdm redraws one line
in place, but written to a pipe or a CI log every redraw becomes a line of its own, and tqdm's
`mininterval` / `miniters` only thin the redraws out by time or count, not by share of the work.
Off a terminal this writes one plain line (tqdm's own format: count, rate, ETA, fields) each time
another tenth of the work is done, so a 600-frame export prints 10 lines whatever its speed. The
call sites keep one small API:

    with ProgressBar(total, "train") as bar:
        bar.update(1, loss=0.1)
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm import tqdm

NON_TTY_LINES = 10
"""Lines a whole run writes off a terminal: one per tenth of the work (plus one on an early close)."""
MIN_REDRAW_S = 0.1
"""On a terminal the bar is redrawn at most this often."""
NON_TTY_COLUMNS = 100
"""Width of a plain line (tqdm's bar shrinks to fit it)."""
FIELD_DIGITS = 4
"""Significant digits of float fields (loss=0.01234)."""


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


class ProgressBar:
    """`with ProgressBar(total, "train") as bar: bar.update(1, loss=0.1)` on stderr (or `stream`).

    `start` is the count already done (a resumed run): rates and ETAs count only this run's work.
    Fields given to `update` are shown after the bar and keep their last value.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, start: int = 0) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.count = int(start)
        self.start_count = self.count
        self.fields: dict[str, object] = {}
        self._t0 = time.perf_counter()
        self._closed = False
        self._bar: tqdm | None = None
        if _is_terminal(self.stream):
            self._bar = tqdm(total=self.total, initial=self.count, desc=label or None, file=self.stream,
                             mininterval=MIN_REDRAW_S, dynamic_ncols=True, leave=True)
        self._written = self.count
        self._next_line = self._milestone_after(self.count)

    def _milestone_after(self, count: int) -> int:
        """The first count past `count` that completes another tenth of the work."""
        tenth = self.total / NON_TTY_LINES
        return min(self.total, math.ceil((math.floor(count / tenth) + 1) * tenth))

    def _postfix(self) -> str:
        return ", ".join(f"{k}={v:.{FIELD_DIGITS}g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.fields.items())

    def update(self, n: int = 1, **fields: object) -> None:
        self.count += n
        self.fields.update(fields)
        if self._bar is not None:
            if fields:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(n)
        elif self.count >= self._next_line:
            self._write_line()

    def _write_line(self) -> None:
        line = tqdm.format_meter(min(self.count, self.total), self.total, time.perf_counter() - self._t0,
                                 ncols=NON_TTY_COLUMNS, prefix=self.label, postfix=self._postfix() or None,
                                 initial=self.start_count, ascii=True)  # logs need not take unicode
        self.stream.write(line + "\n")
        self.stream.flush()
        self._written = self.count
        self._next_line = self._milestone_after(self.count)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.count != self._written:
            self._write_line()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
