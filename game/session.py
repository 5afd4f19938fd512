"""`PlaySession`: the layer between the UI and a frame source (no pygame here).

It owns what a play session *is*: the pose and tick, the frame source, recording to an action
log, fixed-rate pacing and frame-time statistics. The window loop (`game.loop`) and headless
replay (`game.replay`) both drive it, so a recorded session and its replay go through the same
code path; tests drive it directly.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from game.action_log import ActionLogWriter, make_header
from game.frame_source import FrameSource
from conventions.camera import PATH_HISTORY, ACTION_DIM, DEFAULT_TICK_HZ, CameraPose
from conventions.errors import UserError
from worldmodel.world_state import load_world, save_world

RECORDINGS_DIR = Path("recordings")
"""Auto-named recordings go here (relative to the working directory)."""
LOG_SUFFIX = ".jsonl"
TIMING_WINDOW = 120
"""Frame times kept for the HUD statistics (ticks)."""
FPS_WINDOW_S = 1.0
"""Frames per second are counted over this much wall time."""
MS_PER_S = 1000.0


@dataclass
class FrameStats:
    """Frame-source time (ms per generated frame) and achieved ticks per second."""

    last_ms: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    fps: float


class FrameTimer:
    """Rolling statistics over the last TIMING_WINDOW frame times and FPS_WINDOW_S of ticks."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.frame_ms: deque[float] = deque(maxlen=TIMING_WINDOW)
        self.tick_times: deque[float] = deque()

    def add(self, ms: float) -> None:
        self.frame_ms.append(ms)
        now = self.clock()
        self.tick_times.append(now)
        while self.tick_times and now - self.tick_times[0] > FPS_WINDOW_S:
            self.tick_times.popleft()

    def stats(self) -> FrameStats:
        if not self.frame_ms:
            return FrameStats(0.0, 0.0, 0.0, 0.0, 0.0)
        values = sorted(self.frame_ms)
        p99_index = min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)
        span = self.tick_times[-1] - self.tick_times[0] if len(self.tick_times) > 1 else 0.0
        fps = (len(self.tick_times) - 1) / span if span > 0 else 0.0
        return FrameStats(self.frame_ms[-1], statistics.fmean(values), statistics.median(values),
                          values[p99_index], fps)


class Pacer:
    """Holds a fixed tick rate: `wait()` sleeps until the next tick is due.

    When a tick ran late by more than a whole period the schedule restarts from now instead of
    bursting to catch up (a slow generator plays slower, never in jumps).
    """

    def __init__(self, tick_hz: float, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not (tick_hz > 0 and math.isfinite(tick_hz)):
            raise ValueError(f"tick rate must be a positive number, got {tick_hz}")
        self.period = 1.0 / tick_hz
        self.clock = clock
        self.sleep = sleep
        self.deadline = clock() + self.period

    def restart(self) -> None:
        """Start a fresh schedule (after a pause)."""
        self.deadline = self.clock() + self.period

    def wait(self) -> None:
        now = self.clock()
        if now < self.deadline:
            self.sleep(self.deadline - now)
            self.deadline += self.period
        elif now - self.deadline > self.period:
            self.deadline = now + self.period
        else:
            self.deadline += self.period


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "session"


class PlaySession:
    """Pose, tick, frames and recording of one play session.

    `scene_spec` is what goes into a log's "scene" field (a bundled name, a folder path or
    `procedural:<seed>`); `image_path` is the `--image` picture if one replaced the scene's image
    (logged as the extra header key "image" so a replay can show it again).
    """

    def __init__(self, source: FrameSource, scene, *, scene_spec: str, prompt: str | None = None,
                 start_pose: CameraPose | None = None, seed: int = 0, tick_hz: float = DEFAULT_TICK_HZ,
                 image_path: str | None = None, recordings_dir: Path = RECORDINGS_DIR, fsync: bool = False,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not (tick_hz > 0 and math.isfinite(tick_hz)):
            raise ValueError(f"tick rate must be a positive number, got {tick_hz}")
        self.source = source
        self.scene = scene
        self.scene_spec = scene_spec
        self.prompt = scene.prompt if prompt is None else prompt
        self.start_pose = scene.start_pose if start_pose is None else start_pose
        self.seed = int(seed)
        self.tick_hz = float(tick_hz)
        self.image_path = image_path
        self.recordings_dir = Path(recordings_dir)
        self.fsync = fsync
        self.clock = clock
        self.pose = self.start_pose
        self.tick = 0
        self.frame: np.ndarray | None = None
        self.path: deque[CameraPose] = deque(maxlen=PATH_HISTORY)
        self.timer = FrameTimer(clock)
        self.pacer = Pacer(self.tick_hz, clock, sleep)
        self.writer: ActionLogWriter | None = None
        self.last_record_path: Path | None = None
        self.recording_error: str | None = None
        """Why the recording stopped on its own (set by `step`, cleared by whoever reported it)."""

    # --- frames ---
    def reset(self) -> np.ndarray:
        """Start (or restart) at the start pose; returns the first frame (tick 0)."""
        self.pose = self.start_pose
        self.tick = 0
        self.path.clear()
        self.path.append(self.pose)
        t0 = self.clock()
        self.frame = self.source.reset(self.scene, self.start_pose, self.prompt, self.seed)
        self.timer.add((self.clock() - t0) * MS_PER_S)
        self.pacer.restart()
        return self.frame

    def step(self, action: Sequence[float], pose: CameraPose | None = None) -> np.ndarray:
        """Advance one tick. The pose is the integration of `action` unless given (replay of logged poses)."""
        if self.frame is None:
            raise RuntimeError("PlaySession.step before reset")
        action = [float(v) for v in action]
        if len(action) != ACTION_DIM or not all(math.isfinite(v) for v in action):
            raise ValueError(f"an action is {ACTION_DIM} finite numbers, got {action}")
        new_pose = self.pose.step(action) if pose is None else pose
        t0 = self.clock()
        frame = self.source.step(action, new_pose)
        self.timer.add((self.clock() - t0) * MS_PER_S)
        self.pose = new_pose
        self.tick += 1
        self.frame = frame
        self.path.append(new_pose)
        if self.writer is not None:
            try:
                self.writer.write(action, new_pose)
            except UserError as exc:  # disk full: stop recording, keep playing; every tick so far is in the log
                self.writer = None
                self.recording_error = str(exc)
        return frame

    def wait_for_next_tick(self) -> None:
        """Sleep until the next tick is due (fixed tick rate)."""
        self.pacer.wait()

    def stats(self) -> FrameStats:
        return self.timer.stats()

    # --- recording ---
    @property
    def recording(self) -> bool:
        return self.writer is not None

    @property
    def record_path(self) -> Path | None:
        return self.writer.path if self.writer is not None else None

    def header(self, **extra: Any) -> dict[str, Any]:
        """The action-log header for a recording starting now (at the current pose and tick)."""
        if self.image_path is not None:
            extra.setdefault("image", str(self.image_path))
        extra.setdefault("started_at_tick", self.tick)
        extra.setdefault("created", datetime.now().astimezone().isoformat(timespec="seconds"))
        if self.source.precision is not None:
            extra.setdefault("precision", self.source.precision)  # a replay must run the same arithmetic
        if self.source.hint is not None:
            extra.setdefault("hint", bool(self.source.hint))  # ... and the same conditioning
        if self.source.use_memory is not None:
            extra.setdefault("memory", bool(self.source.use_memory))  # ... with or without its memory
        if self.source.start_radius is not None:
            extra.setdefault("hint_start_radius", float(self.source.start_radius))  # ... and the same hints
        if self.source.sampling is not None:
            extra.setdefault("hint_sampling", str(self.source.sampling))
        if self.source.memory_key_scale is not None:
            extra.setdefault("memory_key_scale", float(self.source.memory_key_scale))  # ... and the same memory
        if self.source.sample_steps is not None:
            extra.setdefault("sample_steps", int(self.source.sample_steps))  # ... and the same denoising steps
        return make_header(
            scene=self.scene_spec, prompt=self.prompt, backend=self.source.name, seed=self.seed,
            tick_hz=self.tick_hz, resolution=self.source.resolution, start_pose=self.pose,
            start_image=np.asarray(self.scene.image),
            checkpoint_sha256=self.source.checkpoint_sha256, **extra)

    def auto_record_path(self) -> Path:
        """recordings/<scene>-<YYYYmmdd-HHMMSS>.jsonl, never an existing file."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{_safe_name(Path(self.scene_spec).name or self.scene_spec)}-{stamp}"
        candidate = self.recordings_dir / f"{base}{LOG_SUFFIX}"
        counter = 1
        while candidate.exists():
            candidate = self.recordings_dir / f"{base}-{counter}{LOG_SUFFIX}"
            counter += 1
        return candidate

    def start_recording(self, path: str | Path | None = None) -> Path:
        """Start logging every following tick (header = the current pose); returns the log path."""
        if self.writer is not None:
            return self.writer.path
        target = Path(path) if path is not None else self.auto_record_path()
        self.writer = ActionLogWriter(target, self.header(), fsync=self.fsync)
        self.last_record_path = target
        return target

    def stop_recording(self) -> Path | None:
        """Close the log; returns its path (None if nothing was recording)."""
        if self.writer is None:
            return None
        path = self.writer.path
        self.writer.close()
        self.writer = None
        return path

    # --- saved worlds (model backend: memory store + generator state) ---
    def save_world(self, directory: str | Path) -> Path:
        """Save the memory and the generator's exact state so `load_world` continues from here."""
        if not self.source.saves_worlds:
            raise UserError(f"{directory}: saving a world needs the model backend (the oracle has no memory)")
        extra = {"scene": self.scene_spec, "prompt": self.prompt, "seed": self.seed, "tick_hz": self.tick_hz,
                 "pose": self.pose.as_list(), "start_pose": self.start_pose.as_list(),
                 "image": None if self.image_path is None else str(self.image_path),
                 "pose_history": [p.as_list() for p in self.path]}
        return save_world(self.source, directory, extra)

    def load_world(self, directory: str | Path) -> dict[str, Any]:
        """Continue a world saved by `save_world` (call after `reset`); returns its metadata."""
        if not self.source.saves_worlds:
            raise UserError(f"{directory}: resuming a world needs the model backend (the oracle has no memory)")
        meta = load_world(self.source, directory)
        self.pose = CameraPose.from_sequence(meta["pose"])
        self.tick = int(meta["tick"])
        self.path.clear()
        self.path.extend(CameraPose.from_sequence(p) for p in meta.get("pose_history", []) or [meta["pose"]])
        self.frame = self.source.current_frame()
        self.pacer.restart()
        return meta

    def close(self) -> None:
        self.stop_recording()


def scene_with_image(scene, image: np.ndarray, prompt: str | None = None):
    """A copy of `scene` whose start image (and optionally prompt) is replaced (the `--image` option)."""
    return replace(scene, image=image, prompt=scene.prompt if prompt is None else prompt)
