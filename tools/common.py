"""What several commands share: the `--threads` flag and its one application; the play-time settings
of the geometric hint (`--splat-levels`, `--point-cache`, `--composite`) and the session arguments
they become; the `KEY=VALUE` items of `--set` / `--opt` (train, distill, average)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import torch

from conventions.errors import UserError
from conventions.limits import flag_type
from worldmodel.config import HINT_SAMPLINGS

THREADS_HELP = ("CPU threads for torch (default: torch's choice; 1 is often fastest for 64 px frames on a busy "
                "machine)")


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=flag_type("threads"), default=None, help=THREADS_HELP)


def apply_threads(args: argparse.Namespace) -> None:
    """torch.set_num_threads(--threads) when given (the range is checked at parsing)."""
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)


def add_hint_setting_flags(p: argparse.ArgumentParser, whose: str) -> None:
    """The hint's play-time settings (WorldModelConfig.hint_splat_levels, hint_point_cache,
    hint_composite, hint_start_radius, hint_sampling), and the memory's memory_key_scale, as flags;
    `whose` names what they set in the help ("the hint's", "the hint-on row's")."""
    p.add_argument("--splat-levels", choices=("on", "off"), default=None,
                   help=f"{whose} reprojection also closes the cracks of magnified surfaces on coarser grids "
                        f"(default: the checkpoint's hint_splat_levels)")
    p.add_argument("--point-cache", type=flag_type("points"), default=None,
                   help=f"points of {whose} point cache, 0 = none (default: the checkpoint's hint_point_cache)")
    p.add_argument("--composite", type=flag_type("weight"), default=None,
                   help=f"{whose} weight of the reprojected pixels in the frames shown (default: the "
                        f"checkpoint's hint_composite)")
    p.add_argument("--start-radius", type=flag_type("distance"), default=None,
                   help=f"metres from the start pose within which {whose} start frame wins over the generated "
                        f"frames, 0 = off (default: the checkpoint's hint_start_radius)")
    p.add_argument("--memory-key-scale", type=flag_type("memory_key_scale"), default=None,
                   help="scale of the memory entries' keys in the cache, 1 = as trained (default: the "
                        "checkpoint's memory_key_scale)")
    p.add_argument("--sampling", choices=HINT_SAMPLINGS, default=None,
                   help=f"which of {whose} sources are sampled bilinearly where a pixel's ray meets them, not "
                        f"copied nearest: none, the start frame, every frame (default: the checkpoint's "
                        f"hint_sampling)")


def hint_settings(args: argparse.Namespace) -> dict[str, object]:
    """The `add_hint_setting_flags` flags as ModelFrameSource arguments (None = the checkpoint's; a
    namespace built without the flags, as a test or a script may build one, gives all None)."""
    splat_levels = getattr(args, "splat_levels", None)
    return {"splat_levels": None if splat_levels is None else splat_levels == "on",
            "point_cache": getattr(args, "point_cache", None), "composite": getattr(args, "composite", None),
            "start_radius": getattr(args, "start_radius", None), "sampling": getattr(args, "sampling", None),
            "memory_key_scale": getattr(args, "memory_key_scale", None)}


def parse_overrides(items: list[str], cls: type, flag: str) -> dict[str, Any]:
    """`KEY=VALUE` items of a repeatable flag (`--set`, `--opt`) -> {field: value} for the dataclass
    `cls`: values parse as JSON, else stay strings (memory_compression=patch); UserError naming the
    flag for a malformed item or an unknown field."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE")
        if key not in names:
            raise UserError(f"{flag} {item!r}: unknown field {key!r} (known: {', '.join(sorted(names))})")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # bare strings such as memory_compression=patch
    return out
