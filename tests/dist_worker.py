"""Worker that tests/test_distributed.py starts under torchrun (one process group, several runs).

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py SPEC.json

SPEC: {"train": path, "val": path|null, "ae": path, "options": {TrainOptions fields}, "runs":
[{"out": dir, "stop_after": int|null}, ...]}. The runs share one process group (started here, so
train_world_model uses it and leaves it up between runs), which saves a torchrun start per run.
"""

from __future__ import annotations

import json
import sys

import torch


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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
