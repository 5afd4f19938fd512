"""`worldmodel plot-train RUN [--out curves.png]`: a training run's curves, drawn with matplotlib.

RUN is a run folder (`worldmodel train --out RUN`, `worldmodel distill --out RUN`) or its log.jsonl
(`worldmodel.scalars`). One panel per kind of scalar the run logged: loss terms (log scale),
learning rate, validation PSNR, other validation scores, gradient norms, speed (steps/s). The
default output is RUN/curves.png.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from conventions.errors import UserError
from worldmodel.scalars import LOG_FILE, STEP_KEY, read_records, scalar_items
from tools.plot import GRID_ALPHA, new_figure, save_image_atomic

DEFAULT_OUT = "curves.png"
PANEL_WIDTH, PANEL_HEIGHT = 560, 320
"""Pixels per panel; panels are laid out COLUMNS wide."""
COLUMNS = 2
SKIPPED = re.compile(r"^(elapsed_s|final|val_frames)$")
"""Logged numbers that are bookkeeping, not curves."""


@dataclass(frozen=True)
class Panel:
    """A chart of the scalars whose tag matches `pattern` (the first matching panel takes a tag)."""

    title: str
    pattern: str
    ylabel: str
    log_y: bool = False


PANELS: tuple[Panel, ...] = (  # in matching order: validation scores before the losses they resemble
    Panel("validation PSNR", r"psnr", "dB"),
    Panel("validation", r"^val", "value", log_y=True),
    Panel("learning rate", r"(^|_)lr$", "lr", log_y=True),
    Panel("speed", r"^it(_per)?_s$", "steps/s"),
    Panel("gradient norm", r"grad_norm", "norm", log_y=True),
    Panel("loss terms", r"loss|mse|l1|l2|edge|bce|dmd", "value", log_y=True),
)
OTHER = Panel("other", r".", "value")
DISPLAY_ORDER = ("loss terms", "validation PSNR", "validation", "learning rate", "gradient norm", "speed", "other")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help=f"run folder (holding {LOG_FILE}) or the {LOG_FILE} file itself")
    p.add_argument("--out", type=Path, default=None, help=f"image to write (default: RUN/{DEFAULT_OUT})")


def log_path(run: Path) -> Path:
    """RUN/log.jsonl for a folder, the file itself otherwise; UserError when there is none."""
    path = run / LOG_FILE if run.is_dir() else run
    if not path.is_file():
        raise UserError(f"{path}: no training log here (a run folder of `worldmodel train` or "
                        f"`worldmodel distill` holds {LOG_FILE})")
    return path


def curves(records: list[dict]) -> dict[Panel, dict[str, tuple[list[float], list[float]]]]:
    """records -> panel -> tag -> (steps, values), panels in DISPLAY_ORDER."""
    out: dict[Panel, dict[str, tuple[list[float], list[float]]]] = {}
    for record in records:
        if not isinstance(record.get(STEP_KEY), (int, float)):
            continue
        for tag, value in scalar_items(record):
            if SKIPPED.match(tag):
                continue
            panel = next((p for p in PANELS if re.search(p.pattern, tag)), OTHER)
            steps, values = out.setdefault(panel, {}).setdefault(tag, ([], []))
            steps.append(float(record[STEP_KEY]))
            values.append(value)
    return dict(sorted(out.items(), key=lambda item: DISPLAY_ORDER.index(item[0].title)))


def plot_run(path: Path, out: Path) -> Path:
    """Draw the curves of the log at `path` into `out` (atomically); returns `out`."""
    records = read_records(path)
    panels = curves(records)
    if not panels:
        raise UserError(f"{path}: no scalar records to plot")
    rows = -(-len(panels) // COLUMNS)
    cols = min(COLUMNS, len(panels))
    fig = new_figure((PANEL_WIDTH * cols, PANEL_HEIGHT * rows))
    for i, (panel, tags) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for tag, (steps, values) in tags.items():
            ax.plot(steps, values, label=tag, marker="o" if len(values) == 1 else None)
        if panel.log_y and all(v > 0 for _, values in tags.values() for v in values):
            ax.set_yscale("log")
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=GRID_ALPHA)
        ax.legend(fontsize="small")
    fig.suptitle(str(path.parent.name or path))
    fig.tight_layout()
    return save_image_atomic(fig, out)


def run(args: argparse.Namespace) -> int:
    path = log_path(args.run)
    out = args.out if args.out is not None else path.parent / DEFAULT_OUT
    written = plot_run(path, out)
    print(f"wrote {written}", file=sys.stderr)
    return 0
