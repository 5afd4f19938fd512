"""The play-loop benchmark behind `worldmodel bench play`.

Runs the real per-tick path of the game, headless: input events -> `InputState` -> action ->
`PlaySession.step` (pose integration, frame source: memory retrieval, denoising passes, decode) ->
the displayed frame's pygame surface. Only the window flip is left out. The key presses follow a
long play-like trajectory (walk, look around, come back) so memory retrieval works as in play.
Reports p50/p99 ms per frame, the ratio of frame time late in the session to early in it, and the
resident memory (RSS) at both points, so constant cost and flat memory are checked in one run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import numpy as np
import torch

from worldmodel.progress import ProgressBar

EARLY_TICK = 100
"""Frame time 'at tick 100' is the median over ticks [EARLY_TICK, EARLY_TICK + SPAN)."""
SPAN = 100


def _rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return float("nan")


def _actions(world, ticks: int, tick_hz: float) -> torch.Tensor:
    """A long play-like action sequence: chained walk/look/revisit trajectories, [ticks, 5]."""
    from scenes.trajectories import POLICIES, make_trajectory
    from worldmodel.camera import CameraPose

    rng = random.Random(0)
    out = []
    pose = world.spawn_pose()
    while sum(len(a) for a in out) < ticks:
        tr = make_trajectory(world, 200, POLICIES[len(out) % len(POLICIES)], rng, tick_hz, start=pose)
        out.append(tr.actions[1:])
        pose = CameraPose.from_sequence(tr.poses[-1].tolist())
    return torch.cat(out)[:ticks]


def bench_play(args: argparse.Namespace) -> dict:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import pygame

    from game.frame_source import make_frame_source
    from game.session import PlaySession
    from scenes.scene import DEFAULT_SCENE, load_scene
    from scenes.world import generate_world

    scene = load_scene(DEFAULT_SCENE)
    kwargs = {"checkpoint": None if args.checkpoint is None else str(args.checkpoint)}
    source = make_frame_source(args.backend, resolution=args.resolution, **kwargs)
    if args.backend == "model" and args.memory == "off":
        source.session.use_memory = False
    memory_label = args.memory if args.backend == "model" else "n/a"
    session = PlaySession(source, scene, scene_spec=DEFAULT_SCENE, tick_hz=getattr(
        getattr(source, "config", None), "tick_hz", 20.0))
    actions = _actions(generate_world(scene.world_seed), args.ticks, session.tick_hz)
    session.reset()
    times = np.zeros(args.ticks)
    rss: dict[int, float] = {}
    late = args.ticks - SPAN
    with ProgressBar(args.ticks, f"bench play ({args.backend}, memory {memory_label})") as bar:
        for t in range(args.ticks):
            t0 = time.perf_counter()
            frame = session.step(actions[t].tolist())
            surface = pygame.image.frombuffer(np.ascontiguousarray(frame).tobytes(),
                                              (frame.shape[1], frame.shape[0]), "RGB")
            times[t] = (time.perf_counter() - t0) * 1e3
            del surface
            if t + 1 in (EARLY_TICK, EARLY_TICK + SPAN, late, args.ticks):
                rss[t + 1] = _rss_mb()
            bar.update(1, ms=float(times[t]))
    early_ms = float(np.median(times[EARLY_TICK:EARLY_TICK + SPAN])) if args.ticks >= EARLY_TICK + SPAN else float("nan")
    late_ms = float(np.median(times[late:]))
    steady = times[min(EARLY_TICK, args.ticks // 2):]
    result = {
        "backend": args.backend, "memory": memory_label, "ticks": args.ticks,
        "p50_ms": float(np.percentile(steady, 50)), "p99_ms": float(np.percentile(steady, 99)),
        "mean_ms": float(steady.mean()), "early_ms": early_ms, "late_ms": late_ms,
        "late_over_early": late_ms / early_ms if early_ms == early_ms else float("nan"),
        "rss_mb": {str(k): v for k, v in sorted(rss.items())},
        "memory_entries": len(source.memory) if getattr(source, "memory", None) is not None else 0,
        "threads": torch.get_num_threads(),
    }
    print(f"play loop ({args.backend}, memory {memory_label}, {args.ticks} ticks, {result['threads']} threads): "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms per frame; "
          f"tick {args.ticks} / tick {EARLY_TICK} frame time {result['late_over_early']:.3f} "
          f"({late_ms:.1f} / {early_ms:.1f} ms); RSS {statistics.fmean(list(rss.values())[:1] or [float('nan')]):.0f}"
          f" -> {list(rss.values())[-1] if rss else float('nan'):.0f} MB; memory entries {result['memory_entries']}")
    sys.stdout.flush()
    return result
