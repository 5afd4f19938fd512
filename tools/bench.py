"""`worldmodel bench`: speed of the parts a player waits for, measured in one run.

- oracle: frames/s of the procedural renderer at 64x64, batched and one frame at a time.
- reproject: ms per call of the one reprojection function (worldmodel.reproject) for K sources at the
          model resolution, the geometric hint's splat (the hint target: <= 1.5 ms for K = 6 at 64x64).
- play:   ms per frame (p50, p99) of the real play loop's per-tick work (input -> action -> pose ->
          frame source -> displayed-frame array; display excluded) and the ratio of frame time late
          in a long session to early in it (constant cost means about 1.0).
- vecenv: steps/s of the batched Gymnasium environment (one generator pass for N sessions) against
          N single sessions stepped one after the other, for N = 1, 8, 32 (tools/bench_vecenv.py).
Numbers depend on the machine: the command prints what it ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from conventions.camera import DEFAULT_RESOLUTION
from worldmodel.config import PRECISION_NAMES
from tools.common import add_hint_setting_flags, add_threads_flag, apply_threads
from conventions.limits import flag_type
from scenes.render import render_views, render_views_with_depth
from scenes.world import generate_world
from tools.bench_kernels import bench_attention
from tools.bench_play import bench_play
from tools.bench_vecenv import bench_vecenv
from worldmodel.reproject import reproject


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="*", default=["oracle"], choices=["oracle", "reproject", "play", "kernels", "vecenv"],
                   help="what to benchmark (default: oracle)")
    p.add_argument("--resolution", type=flag_type("resolution"), default=DEFAULT_RESOLUTION)
    p.add_argument("--batch", type=flag_type("count"), default=64, help="oracle batch size (default 64)")
    p.add_argument("--frames", type=flag_type("count"), default=256, help="oracle frames per measurement (default 256)")
    p.add_argument("--ticks", type=flag_type("ticks"), default=10_000, help="play: ticks in the long session (default 10000)")
    p.add_argument("--backend", default="model", help="play: frame source, model or oracle (default model)")
    p.add_argument("--checkpoint", type=Path, default=None, help="play: checkpoint (default: shipped)")
    p.add_argument("--memory", choices=("on", "off"), default="on", help="play: memory on/off (default on)")
    p.add_argument("--hint", choices=("on", "off"), default=None,
                   help="play: the geometric hint (default: on when the checkpoint reads one)")
    p.add_argument("--precision", choices=PRECISION_NAMES, default=None,
                   help="play: model arithmetic, fp32 (default) or bf16")
    p.add_argument("--steps", type=flag_type("sample_steps"), default=None,
                   help="play: the model's sampling steps per frame (default: the checkpoint's)")
    p.add_argument("--envs", type=flag_type("count"), nargs="+", default=None,
                   help="vecenv: the numbers of environments N (default 1 8 32)")
    p.add_argument("--vec-steps", type=flag_type("count"), default=4,
                   help="vecenv: timed vector steps per round and N (default 4)")
    add_hint_setting_flags(p, "play: the hint's")
    add_threads_flag(p)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")


def machine_description() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, cuda={'yes' if torch.cuda.is_available() else 'no'}")


def bench_oracle(resolution: int, batch: int, frames: int, seed: int = 102) -> dict:
    """Frames/s of `render_views`, batched and single-frame, on one world along a turning path."""
    world = generate_world(seed)
    start = world.spawn_pose().as_tensor()
    poses = start.repeat(frames, 1)
    poses[:, 3] += torch.linspace(0, 2 * math.pi, frames)
    render_views(world, poses[:batch], resolution)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, frames, batch):
        render_views(world, poses[i:i + batch], resolution)
    batch_fps = frames / (time.perf_counter() - t0)
    single = min(frames, 64)
    t0 = time.perf_counter()
    for i in range(single):
        render_views(world, poses[i:i + 1], resolution)
    single_fps = single / (time.perf_counter() - t0)
    return {"resolution": resolution, "batch": batch, "batch_fps": batch_fps, "single_fps": single_fps}


REPROJECT_SOURCES = (1, 3, 6, 7)
"""K of the reprojection bench: one previous frame, a few, the hint's 6 and the shipped model's 7."""


def bench_reproject(resolution: int, iterations: int = 100, seed: int = 102) -> dict:
    """Median ms per `reproject` call of K true frames (with their true depth) of one world into the
    next pose of a walk, for each K of REPROJECT_SOURCES: the fine level alone with nearest colours
    (the rule the shipped weights were trained with), with the coarse levels (hint_splat_levels),
    the fine level with every source sampled bilinearly (hint_sampling "bilinear"), and the shipped
    play rule (`_start`: the fine level, the first source, the hint's start frame, preferred and
    sampled bilinearly, the others nearest; hint_sampling "bilinear-start" near the start pose)."""
    world = generate_world(seed)
    start = world.spawn_pose().as_tensor()
    k_max = max(REPROJECT_SOURCES)
    poses = start.repeat(k_max + 1, 1)
    poses[:, 3] += torch.linspace(0, 0.4, k_max + 1)
    poses[:, 2] -= torch.linspace(0, 1.0, k_max + 1)
    rgb, depth = render_views_with_depth(world, poses, resolution)
    rgb = rgb.permute(0, 3, 1, 2).float() / 255
    out = {"resolution": resolution}
    for k in REPROJECT_SOURCES:
        args = (rgb[None, :k], depth[None, :k], poses[None, :k], poses[k_max:])
        every = torch.ones(1, k, dtype=torch.bool)
        first = torch.zeros(1, k, dtype=torch.bool)
        first[0, 0] = True
        for name, levels, bilinear, preferred in (("", False, None, None), ("_levels", True, None, None),
                                                  ("_bilinear", False, every, None), ("_start", False, first, first)):
            for _ in range(5):
                reproject(*args, magnified=levels, bilinear=bilinear, preferred=preferred)
            times = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                reproject(*args, magnified=levels, bilinear=bilinear, preferred=preferred)
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            out[f"k{k}{name}_ms"] = times[len(times) // 2]
    return out


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    results: dict[str, object] = {"machine": machine_description()}
    print(f"machine: {results['machine']}")
    if "oracle" in args.what:
        r = bench_oracle(args.resolution, args.batch, args.frames)
        results["oracle"] = r
        print(f"oracle {r['resolution']}x{r['resolution']}: batch of {r['batch']}: {r['batch_fps']:.0f} frames/s; "
              f"single frame: {r['single_fps']:.0f} frames/s")
    if "reproject" in args.what:
        r = bench_reproject(args.resolution)
        results["reproject"] = r
        print(f"reproject {r['resolution']}x{r['resolution']} (median ms per call, fine level / with coarse levels / "
              f"fine level, bilinear colours / the shipped play rule): "
              + ", ".join(f"K={k}: {r[f'k{k}_ms']:.2f} / {r[f'k{k}_levels_ms']:.2f} / {r[f'k{k}_bilinear_ms']:.2f}"
                          f" / {r[f'k{k}_start_ms']:.2f}" for k in REPROJECT_SOURCES))
    if "play" in args.what:
        r = bench_play(args)
        results["play"] = r
    if "vecenv" in args.what:
        results["vecenv"] = bench_vecenv(args)
    if "kernels" in args.what:
        results["kernels"] = bench_attention()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0
