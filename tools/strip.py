"""`worldmodel strip`: a picture strip of a closed-loop rollout, to look at frames and not only PSNR.

    worldmodel strip --out docs/hint_strip.png                    # truth / hint on / hint off
    worldmodel strip --image photo.png --out docs/image_strip.png # a picture that is no procedural world
    worldmodel strip --point-cache 32768 --splat-levels on --oracle-row --out docs/oracle_depth_strip.png
    worldmodel strip --revisit 4 --out docs/revisit_strip.png     # first visits and their returns

Rows of the default strip: the oracle's truth, the model with its geometric hint, the model without
it, at the chosen ticks of the first drift-suite walk (a held-out world, 1100 ticks of chained
walk / look / revisit / retrace). With `--image` the rows are the model's frames and the depth its
autoencoder predicts for them (near = bright), starting from that picture (resized) and walking the
same actions: there is no truth for a picture. `--splat-levels`, `--point-cache` and `--composite`
set the hint-on row as `worldmodel eval` does; `--oracle-row` adds that row once more with the ray
caster's depth for every view (`eval --depth oracle`): what exact depth would show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conventions.atomic import atomic_write
from conventions.errors import UserError
from conventions.limits import flag_type
from tools.common import add_hint_setting_flags, add_threads_flag, apply_threads, hint_settings
from conventions.camera import CameraPose
from scenes.scene import load_image, Scene
from scenes.trajectories import revisit_ticks
from tools.eval import oracle_depth, suite_logs
from worldmodel.checkpoint import DEFAULT_CHECKPOINT
from worldmodel.runtime import ModelFrameSource

DEFAULT_TICKS = (0, 10, 50, 100, 500, 1000)
CELL_SCALE = 2
"""Each 64x64 frame is shown at 2x (nearest) so details are visible."""
GAP = 4
DEPTH_DISPLAY_MAX_M = 12.0
"""Depth is shown as brightness 1 - depth / this (clamped); sky black."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the shipped one)")
    p.add_argument("--ticks", default=",".join(map(str, DEFAULT_TICKS)),
                   help=f"comma-separated ticks to show (default {','.join(map(str, DEFAULT_TICKS))})")
    p.add_argument("--image", type=Path, default=None, help="start from this picture instead of a held-out world")
    p.add_argument("--prompt", default="a walled courtyard", help="prompt for --image")
    add_hint_setting_flags(p, "the hint-on row's")
    p.add_argument("--oracle-row", action="store_true",
                   help="add the hint-on row with the ray caster's depth for every view (an upper bound)")
    p.add_argument("--memory-off-row", action="store_true",
                   help="add the hint-on row with the memory off (what the memory does to a long walk)")
    p.add_argument("--revisit", type=flag_type("count"), default=0, metavar="N",
                   help="instead of --ticks of the drift walk: N return ticks of the first revisit-suite walk, "
                        "each after the frame of its first visit (rows: truth / memory on / memory off)")
    add_threads_flag(p)


def _ticks(text: str) -> list[int]:
    try:
        ticks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--ticks: expected comma-separated integers, got {text!r}") from None
    if not ticks or ticks[0] < 0 or ticks[-1] > 100_000:
        raise UserError(f"--ticks: need ticks in [0, 100000], got {text!r}")
    return ticks


def _rollout(source, scene, log, last: int, keep: list[int], with_depth: bool = False):
    """Frames (and depth maps) of `source` at the ticks in `keep`."""
    frames, depths = {}, {}
    frames[0] = np.asarray(source.reset(scene, log.start_pose, log.prompt, log.seed))
    if with_depth:
        depths[0] = source.session.views[0].depth.numpy()
    for t in range(1, last + 1):
        frame = source.step(log.actions[t - 1].tolist(), CameraPose.from_sequence(log.poses[t - 1].tolist()))
        if t in keep:
            frames[t] = np.asarray(frame)
            if with_depth:
                depths[t] = source.session.views[t].depth.numpy()
    return frames, depths


def _depth_image(depth: np.ndarray) -> np.ndarray:
    v = np.where(depth > 0, 1.0 - np.clip(depth / DEPTH_DISPLAY_MAX_M, 0, 1), 0.0)
    return (np.repeat(v[..., None], 3, -1) * 255).astype(np.uint8)


def _tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    h, w = rows[0][0].shape[:2]
    h, w = h * CELL_SCALE, w * CELL_SCALE
    out = np.full((len(rows) * (h + GAP) - GAP, len(rows[0]) * (w + GAP) - GAP, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            big = np.repeat(np.repeat(img, CELL_SCALE, 0), CELL_SCALE, 1)
            out[r * (h + GAP): r * (h + GAP) + h, c * (w + GAP): c * (w + GAP) + w] = big
    return out


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    ckpt = args.checkpoint or DEFAULT_CHECKPOINT
    probe = ModelFrameSource(ckpt)
    if args.revisit:
        if args.image is not None:
            raise UserError("--revisit shows a held-out world's return ticks; --image has no world to return to")
        return _revisit_strip(args, ckpt, probe)
    ticks = _ticks(args.ticks)
    log = suite_logs("drift", probe.resolution, probe.config.fov_deg, 1)[0]
    last = ticks[-1]
    if last > len(log.actions):
        raise UserError(f"--ticks: the walk has {len(log.actions)} ticks")
    if args.image is not None:
        image = load_image(args.image, probe.resolution)
        log.prompt = args.prompt
        scene = Scene(name="image", prompt=args.prompt, start_pose=log.start_pose, fov_deg=90.0, world_seed=None,
                      image=np.asarray(image), path=None)
        if not probe.config.hint:
            raise UserError(f"{ckpt}: --image strips show the predicted depth; this checkpoint has no depth head")
        frames, depths = _rollout(probe, scene, log, last, ticks, with_depth=True)
        rows = [[frames[t] for t in ticks], [_depth_image(depths[t]) for t in ticks]]
        labels = "model frames / predicted depth"
    else:
        scene = log.scene()
        rows = [[log.truth[t].numpy() for t in ticks]]
        options = hint_settings(args)
        # (hint, exact depth, memory) of each model row
        runs = [(True, False, True), (False, False, True)] if probe.config.hint else [(False, False, True)]
        if args.oracle_row:
            if not probe.config.hint:
                raise UserError(f"{ckpt}: --oracle-row sets the depth of the geometric hint, which this checkpoint "
                                f"does not read")
            runs.append((True, True, True))
        if args.memory_off_row:
            if not probe.config.use_memory:
                raise UserError(f"{ckpt}: --memory-off-row turns the memory off; this checkpoint has none")
            runs.append((probe.config.hint, False, False))
        for hint, oracle, memory in runs:
            source = ModelFrameSource(ckpt, hint=hint, use_memory=memory, **(options if hint else {}))
            if oracle:
                source.session.depth_source = oracle_depth(log.world, probe.resolution, probe.config.fov_deg)
            frames, _ = _rollout(source, scene, log, last, ticks)
            rows.append([frames[t] for t in ticks])
        labels = ("truth / hint on / hint off" + (" / hint on, exact depth" if args.oracle_row else "")
                  if probe.config.hint else "truth / model")
        labels += (" / hint on, memory off" if probe.config.hint else " / memory off") if args.memory_off_row else ""
    _save(args.out, rows)
    print(f"wrote {args.out}: rows {labels}, ticks {ticks}", file=sys.stderr)
    return 0


def _save(path: Path, rows: list[list[np.ndarray]]) -> None:
    image = Image.fromarray(_tile(rows))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _revisit_strip(args: argparse.Namespace, ckpt: Path, probe: ModelFrameSource) -> int:
    """Columns in pairs: the frame of a first visit, then the return tick that comes back to it
    (`revisit_ticks`, the pairs the revisit suite scores), for `args.revisit` return ticks spread
    over the walk's returns; rows: the truth, the model with memory on, with memory off (a
    checkpoint without memory: the truth and the model)."""
    log = suite_logs("revisit", probe.resolution, probe.config.fov_deg, 1)[0]
    pairs = revisit_ticks(torch.cat([log.start_pose.as_tensor()[None], log.poses]))
    if not pairs:
        raise UserError(f"{log.name}: this walk never returns")
    chosen = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, min(args.revisit, len(pairs))).round()]
    columns = [t for ret, first in chosen for t in (first, ret)]
    scene = log.scene()
    rows = [[log.truth[t].numpy() for t in columns]]
    options = hint_settings(args) if probe.config.hint else {}
    memories = (True, False) if probe.config.use_memory else (False,)
    for memory in memories:
        source = ModelFrameSource(ckpt, use_memory=memory, **options)
        frames, _ = _rollout(source, scene, log, max(columns), columns)
        rows.append([frames[t] for t in columns])
    _save(args.out, rows)
    labels = "truth / memory on / memory off" if probe.config.use_memory else "truth / model (no memory)"
    print(f"wrote {args.out}: {log.name}, rows {labels}, columns (first visit, return) "
          f"{[(first, ret) for ret, first in chosen]}", file=sys.stderr)
    return 0
