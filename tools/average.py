"""`worldmodel average A B [...] --out C`: the mean of fine-tunes' weights as a new checkpoint.

See `worldmodel.checkpoint.average_checkpoints` (why, and what is checked). Evaluate the result like
any checkpoint (`worldmodel eval --checkpoint C ...`) before shipping it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.common import parse_overrides
from worldmodel.checkpoint import average_checkpoints, checkpoint_sha256
from worldmodel.config import PLAY_RULE_FIELDS, WorldModelConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoints of one config")
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged checkpoint")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per checkpoint, summing to 1 (default: equal)")
    p.add_argument("--first-depth-head", action="store_true",
                   help="the autoencoders may differ in their depth heads only; keep the first checkpoint's "
                        "(e.g. averaging with a fine-tune made before the head was trained longer)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"a play rule the result carries instead of the first checkpoint's (repeatable; one of "
                        f"{', '.join(PLAY_RULE_FIELDS)}), e.g. --set memory_key_scale=0.8")


def run(args: argparse.Namespace) -> int:
    out = average_checkpoints(list(args.checkpoints), args.out, args.weights,
                              first_depth_head=args.first_depth_head,
                              play_rules=parse_overrides(args.set, WorldModelConfig, "--set"))
    print(f"wrote {out} (sha256 {checkpoint_sha256(out)[:16]}...)")
    return 0
