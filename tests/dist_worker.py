"""Worker that tests/test_distributed.py starts under torchrun (one process group, several runs).

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py SPEC.json

SPEC: {"train": path, "val": path|null, "ae": path, "options": {TrainOptions fields}, "runs":
[{"out": dir, "stop_after": int|null}, ...]}. The runs share one process group (started here, so
train_world_model uses it and leaves it up between runs), which saves a torchrun start per run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


GLOO_THREAD_PREFIX = "pt_gloo"
"""gloo's per-group worker threads (pt_gloo_runloop); they exist only while a gloo group is alive."""


def live_gloo_threads() -> list[str]:
    """Names of this process's gloo worker threads (Linux /proc; [] where there is no /proc)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended while we listed them
            continue
    return [n for n in names if n.startswith(GLOO_THREAD_PREFIX)]


def main(spec_path: str) -> int:
    from worldmodel.config import tiny_config
    from worldmodel.distributed import distributed_session
    from worldmodel.train import TrainOptions, train_world_model

    torch.set_num_threads(1)
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    options = TrainOptions(**spec["options"])
    with distributed_session("cpu"):
        for run in spec["runs"]:
            train_world_model(spec["train"], run["out"], spec["ae"], options, tiny_config(),
                              val_latents_path=spec.get("val"), progress=False, stop_after=run.get("stop_after"))
    # A group that outlives its session takes gloo's threads into interpreter shutdown, where they can
    # abort the process after all the work is done (see worldmodel.distributed); fail every time, not
    # on the unlucky schedule.
    left = live_gloo_threads()
    if left:
        print(f"rank {os.environ.get('RANK')}: the process group outlived distributed_session "
              f"(gloo threads still running: {left})", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
