"""Training scalars where people look for them: a JSON-lines file always, TensorBoard when installed.

Every training stage (`worldmodel train --stage ae|depth|world`, `worldmodel distill`) writes its
records through one `ScalarLog`:
- RUN/log.jsonl, beside the run's checkpoint: one JSON object per record ({"step": ..., "loss": ...,
  "lr": ..., "val_tf_psnr": ...}), appended and flushed as it is written, so a run can be watched
  while it trains and compared after it (`worldmodel plot-train RUN` draws it);
- RUN/tensorboard/: the same numbers as TensorBoard event files (`tensorboard --logdir RUN`), when the
  optional `tensorboard` package is installed (`pip install -e '.[tensorboard]'`); nested records
  ({"val": {"abs_rel": ...}}) become tags like "val/abs_rel".

Resuming at step S keeps the records up to S and drops later ones (a run stopped after its last
checkpoint logged steps that it trains again); TensorBoard is told the same (`purge_step`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

LOG_FILE = "log.jsonl"
"""The records of a run, in its folder (the name every stage has always used)."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files of a run, in its folder."""
STEP_KEY = "step"
TAG_SEPARATOR = "/"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl (a line cut by a crash is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def scalar_items(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) of every finite number in a record (nested dicts flattened), the step excluded."""
    for key, value in record.items():
        if not prefix and key == STEP_KEY:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalar_items(value, tag + TAG_SEPARATOR)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)


def _tensorboard_writer(folder: Path, resume_step: int):
    """A SummaryWriter, or None when tensorboard is not installed."""
    try:
        # optional extra `tensorboard` (a large install): without it the curves are in log.jsonl only
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=resume_step if resume_step > 0 else None)


class ScalarLog:
    """The scalar records of one run (module docstring): `log.write({"step": 10, "loss": 0.1})`."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        """Starts RUN/log.jsonl afresh at step 0; resuming at `resume_step` keeps the records up to it."""
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        self.path = run / LOG_FILE
        if resume_step > 0 and self.path.exists():
            kept = [r for r in read_records(self.path) if r.get(STEP_KEY, 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        else:
            self.path.unlink(missing_ok=True)
        self._writer = _tensorboard_writer(run / TENSORBOARD_DIR, resume_step) if tensorboard else None

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard event files are written too."""
        return self._writer is not None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (it must have a "step")."""
        step = int(record[STEP_KEY])
        with open(self.path, "a", encoding="utf-8") as f:  # opened per record: a crash loses nothing
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for tag, value in scalar_items(record):
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ScalarLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
