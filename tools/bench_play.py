"""The play-loop benchmark behind `worldmodel bench play`.

Runs the real per-tick path of the game, headless: input events -> `InputState` -> action ->
`PlaySession.step` (pose integration, frame source: memory retrieval, denoising passes, decode) ->
the displayed frame's pygame surface. Only the window flip is left out. The key presses follow a
long play-like trajectory (walk, look around, come back) so memory retrieval works as in play.
Reports p50/p99 ms per frame, the ratio of frame time late in the session to early in it, and the
resident memory (RSS) at both points, so constant cost and flat memory are checked in one run.

Why an interleaved A/B phase as well: on a shared machine the speed of the CPU drifts by 10-20% over
minutes (measured: the same path at 26 and at 32 ms within one 3000-tick run), so "tick 10000 vs tick
100" measured minutes apart compares machine moments as much as session states. The session is copied
at tick 100 (model weights shared, cache and memory store copied) and, at the end, the early copy,
the late session and a memory-off copy of the late session take turns in short chunks of ticks, so all
three are timed under the same machine conditions. The sequential numbers are still reported.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time

import numpy as np
import torch

from conventions.progress import ProgressBar
from game.frame_source import make_frame_source
from game.session import PlaySession
from scenes.scene import DEFAULT_SCENE, load_scene
from scenes.trajectories import chained_trajectory
from scenes.world import generate_world
from tools.common import hint_settings

EARLY_TICK = 100
"""Frame time 'at tick 100' is the median over ticks [EARLY_TICK, EARLY_TICK + SPAN)."""
SPAN = 100
TICK_PARTS = ("memory", "hint", "generate", "decode")
"""The parts of a model tick that `TickTiming` times (`<part>_ms`); the JSON adds "rest", the frame
time they do not explain (game loop, HUD, encoding, bookkeeping)."""
AB_TICKS = 200
"""Ticks each contender runs in the interleaved A/B phase."""
AB_CHUNK = 10
"""Ticks a contender runs before the next takes its turn (short, so drift hits all alike)."""


def _rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return float("nan")


def _actions(world, ticks: int, tick_hz: float) -> torch.Tensor:
    """A long play-like action sequence (`chained_trajectory` from the spawn pose), [ticks, 5]."""
    return chained_trajectory(world, ticks + 1, random.Random(0), tick_hz).actions[1:]


def _fork(session, source):
    """A copy of `session` (cache, memory store, pose, RNG) that shares the model's weights."""
    shared = {id(m): m for m in (getattr(getattr(source, "session", None), "model", None),
                                  getattr(source, "autoencoder", None)) if m is not None}
    return copy.deepcopy(session, shared)


def _hint_settings_used(source) -> dict[str, object] | None:
    """The play-time hint settings the benchmarked session ran with (flags or the checkpoint's), so a
    JSON result says which rule it timed; None without a hint."""
    session = getattr(source, "session", None)
    if session is None or not session.use_hint:
        return None
    return {"composite": session.composite, "start_radius": session.start_radius, "sampling": session.sampling,
            "splat_levels": session.splat_levels,
            "point_cache": 0 if session.points is None else session.points.max_points}


def _timed_step(session, action: list[float]) -> float:
    """One tick of the play path, display array included; returns ms."""
    import pygame

    t0 = time.perf_counter()
    frame = session.step(action)
    surface = pygame.image.frombuffer(np.ascontiguousarray(frame).tobytes(), (frame.shape[1], frame.shape[0]), "RGB")
    ms = (time.perf_counter() - t0) * 1e3
    del surface
    return ms


def interleaved_ab(contenders: dict[str, tuple[object, torch.Tensor]], ticks: int = AB_TICKS,
                   chunk: int = AB_CHUNK) -> dict[str, float]:
    """Median ms per frame of each contender (a play session and its next actions [>= ticks, 5]),
    timed in turns of `chunk` ticks with the turn order rotated each round."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r, start in enumerate(range(0, ticks, chunk)):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            session, actions = contenders[name]
            for t in range(start, min(start + chunk, ticks)):
                times[name].append(_timed_step(session, actions[t].tolist()))
    return {n: float(np.median(v)) for n, v in times.items()}


def bench_play(args: argparse.Namespace) -> dict:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    scene = load_scene(DEFAULT_SCENE)
    kwargs = {"checkpoint": None if args.checkpoint is None else str(args.checkpoint),
              "precision": getattr(args, "precision", None), "sample_steps": getattr(args, "steps", None)}
    if getattr(args, "hint", None) is not None:
        kwargs["hint"] = args.hint == "on"
    settings = hint_settings(args)
    kwargs.update(settings)
    source = make_frame_source(args.backend, resolution=args.resolution, **kwargs)  # refuses what does not apply
    if args.backend == "model" and args.memory == "off":
        source.session.use_memory = False
    memory_label = args.memory if args.backend == "model" else "n/a"
    session = PlaySession(source, scene, scene_spec=DEFAULT_SCENE, tick_hz=getattr(
        getattr(source, "config", None), "tick_hz", 20.0))
    ab = args.ticks >= EARLY_TICK + SPAN  # an early window to compare with, and a session to fork there
    actions = _actions(generate_world(scene.world_seed), args.ticks + AB_TICKS, session.tick_hz)
    session.reset()
    early_session = None
    times = np.zeros(args.ticks)
    timed = hasattr(source, "timing")  # the model reports where its tick went (worldmodel.runtime.TickTiming)
    parts = np.zeros((args.ticks, len(TICK_PARTS)))
    rss: dict[int, float] = {}
    late = args.ticks - SPAN
    with ProgressBar(args.ticks, f"bench play ({args.backend}, memory {memory_label})") as bar:
        for t in range(args.ticks):
            times[t] = _timed_step(session, actions[t].tolist())
            if timed:
                parts[t] = [getattr(source.timing, f"{part}_ms") for part in TICK_PARTS]
            if ab and t + 1 == EARLY_TICK:
                early_session = _fork(session, source)
            if t + 1 in (EARLY_TICK, EARLY_TICK + SPAN, late, args.ticks):
                rss[t + 1] = _rss_mb()
            bar.update(1, ms=float(times[t]))
    early_ms = float(np.median(times[EARLY_TICK:EARLY_TICK + SPAN])) if ab else float("nan")
    late_ms = float(np.median(times[late:]))
    steady = times[min(EARLY_TICK, args.ticks // 2):]
    parts_ms = None
    if timed:
        split = parts[min(EARLY_TICK, args.ticks // 2):]
        parts_ms = {part: float(np.median(split[:, i])) for i, part in enumerate(TICK_PARTS)}
        parts_ms["rest"] = float(np.median(steady - split.sum(axis=1)))  # UI, HUD, encode, bookkeeping
    interleaved = None
    if ab:
        contenders = {"early": (early_session, actions[EARLY_TICK:]), "late": (session, actions[args.ticks:])}
        if memory_label == "on":
            late_off = _fork(session, source)
            late_off.source.session.use_memory = False
            contenders["late_memory_off"] = (late_off, actions[args.ticks:])
        interleaved = interleaved_ab(contenders)
        interleaved["late_over_early"] = interleaved["late"] / interleaved["early"]
        if "late_memory_off" in interleaved:
            interleaved["memory_on_over_off"] = interleaved["late"] / interleaved["late_memory_off"]
    result = {
        "backend": args.backend, "memory": memory_label, "ticks": args.ticks,
        "p50_ms": float(np.percentile(steady, 50)), "p99_ms": float(np.percentile(steady, 99)),
        "mean_ms": float(steady.mean()), "early_ms": early_ms, "late_ms": late_ms,
        "parts_ms": parts_ms,
        "late_over_early": late_ms / early_ms if early_ms == early_ms else float("nan"),
        "rss_mb": {str(k): v for k, v in sorted(rss.items())},
        "memory_entries": len(source.memory) if source.memory is not None else 0,
        "interleaved_ms": interleaved,
        "threads": torch.get_num_threads(),
        "precision": source.precision,
        "sample_steps": source.sample_steps,
        "hint": source.hint,
        "hint_settings": _hint_settings_used(source),
        "memory_key_scale": source.memory_key_scale,
    }
    precision = f", {result['precision']}" if result["precision"] else ""
    precision += "" if result["hint"] is None else f", hint {'on' if result['hint'] else 'off'}"
    if result["hint_settings"] is not None:
        precision += " (" + ", ".join(f"{k} {v}" for k, v in result["hint_settings"].items()) + ")"
    print(f"play loop ({args.backend}{precision}, memory {memory_label}, {args.ticks} ticks, {result['threads']} threads): "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms per frame; "
          f"tick {args.ticks} / tick {EARLY_TICK} frame time {result['late_over_early']:.3f} "
          f"({late_ms:.1f} / {early_ms:.1f} ms); RSS {statistics.fmean(list(rss.values())[:1] or [float('nan')]):.0f}"
          f" -> {list(rss.values())[-1] if rss else float('nan'):.0f} MB; memory entries {result['memory_entries']}")
    if parts_ms is not None:
        print("median per part: " + ", ".join(f"{part} {ms:.1f} ms" for part, ms in parts_ms.items()))
    if interleaved is not None:
        line = (f"interleaved A/B ({AB_TICKS} ticks each, turns of {AB_CHUNK}): tick {args.ticks} / tick {EARLY_TICK} "
                f"{interleaved['late_over_early']:.3f} ({interleaved['late']:.1f} / {interleaved['early']:.1f} ms)")
        if "memory_on_over_off" in interleaved:
            line += (f"; memory on / off at tick {args.ticks} {interleaved['memory_on_over_off']:.3f} "
                     f"({interleaved['late']:.1f} / {interleaved['late_memory_off']:.1f} ms)")
        print(line)
    sys.stdout.flush()
    return result
