"""The documented range of every number a user can give the engine, and the one check of it.

Flags (`--size`, `--fps`, ...), scene.toml fields, action-log headers and ticks and saved-world
metadata are all checked here, so an absurd value (`--size 100000`, `--fps 0.001`, a 400-digit
integer, a start pose 1e39 m away) is one clear `UserError` saying which value, its range and why,
before anything is allocated, instead of an OverflowError or MemoryError deep in a library. The
table is also printed in docs/architecture.md ("Number ranges").
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from conventions.camera import PITCH_LIMIT
from conventions.errors import UserError


@dataclass(frozen=True)
class Range:
    """A closed range [lo, hi]; `integer` values must also be whole numbers (bools are not numbers)."""

    lo: float
    hi: float
    integer: bool
    why: str

    def problem(self, value: object) -> str | None:
        """Why `value` is not in the range, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {'an integer' if self.integer else 'a number'}, got {short_repr(value)}"
        if self.integer and not isinstance(value, int):
            return f"must be an integer, got {short_repr(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if not self.lo <= value <= self.hi:
            return f"{short_repr(value)} is out of range [{_fmt(self.lo)}, {_fmt(self.hi)}] ({self.why})"
        return None


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


SHORT_REPR_CHARS = 32
"""Longest echo of a user's value in a message; a 400-digit number is cut and its length said."""


def short_repr(value: object, limit: int = SHORT_REPR_CHARS) -> str:
    """repr(value) for an error message, cut to `limit` characters with the full length said."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


MAX_SEED = 2 ** 63 - 1
WORLD_COORD_LIMIT_M = 1.0e4
"""Procedural worlds span tens of metres; beyond 10 km float32 poses lose centimetres."""
YAW_LIMIT_RAD = 1.0e6
"""Yaw accumulates while turning (it is not wrapped); 1e6 rad is weeks of turning at full speed."""
MAX_HINT_POINTS = 10 ** 6
"""The reprojection's key numbers 2**20 points, the frame sources' pixels included."""
MAX_MEMORY_KEY_SCALE = 4.0
"""A memory key scale above this turns memory attention into a hard pick; no such rule was measured."""
MIN_MEMORY_KEY_SCALE = 0.01
"""Below this the memory is as good as off (use --memory off for that)."""
ACTION_LIMIT = 1.0e3
"""One tick's move (metres) or turn (radians); the game's largest is a fraction of a metre."""

RANGES: dict[str, Range] = {
    "resolution": Range(8, 1024, True, "frame side in pixels: 1024 px is already 256x the model's pixels"),
    "size": Range(1, 4096, True, "exported frame side in pixels"),
    "window": Range(64, 8192, True, "window side in pixels"),
    "threads": Range(1, 512, True, "torch CPU threads"),
    "fps": Range(0.1, 1000.0, False, "frames per second of an export or replay (a GIF frame lasts at most 10 s)"),
    "tick_hz": Range(0.1, 1000.0, False, "ticks (generated frames) per second"),
    "ticks": Range(0, 10 ** 9, True, "a count of ticks"),
    "seed": Range(0, MAX_SEED, True, "a 64-bit random seed"),
    "count": Range(1, 10 ** 7, True, "a count of worlds, clips or items"),
    "sample_steps": Range(1, 64, True, "denoising steps per generated frame (each is one transformer pass)"),
    "fov_deg": Range(10.0, 170.0, False, "horizontal field of view in degrees"),
    "position": Range(-WORLD_COORD_LIMIT_M, WORLD_COORD_LIMIT_M, False, "a position in metres"),
    "yaw": Range(-YAW_LIMIT_RAD, YAW_LIMIT_RAD, False, "yaw in radians"),
    "pitch": Range(-math.pi / 2, math.pi / 2, False, f"pitch in radians (the camera clamps at {PITCH_LIMIT:.3f})"),
    "action": Range(-ACTION_LIMIT, ACTION_LIMIT, False, "one tick's move in metres or turn in radians"),
    "weight": Range(0.0, 1.0, False, "a blend weight"),
    "points": Range(0, MAX_HINT_POINTS, True, "points of the hint's point cache (0 = none; the z-buffer key "
                                            "numbers at most 2**20 points with the frame sources)"),
    "distance": Range(0.0, 2 * WORLD_COORD_LIMIT_M, False, "a distance in metres"),
    "memory_key_scale": Range(MIN_MEMORY_KEY_SCALE, MAX_MEMORY_KEY_SCALE, False,
                              "the scale of the memory entries' keys (1 = as trained)"),
}
"""Each number the engine accepts from a user, by kind; flags, files and loaders name their own field."""

POSE_KINDS: tuple[str, ...] = ("position", "position", "position", "yaw", "pitch")
"""The range kind of each pose component [x, y, z, yaw, pitch] (the binding pose convention)."""


def number_problem(kind: str, value: object) -> str | None:
    """Why `value` is not a valid number of `kind` (a key of RANGES), or None."""
    return RANGES[kind].problem(value)


def check_number(kind: str, value, where: str):
    """`value` if it is in the range of `kind`, else UserError "`where`: <problem>"."""
    problem = number_problem(kind, value)
    if problem:
        raise UserError(f"{where}: {problem}")
    return value


def pose_problem(values: object, name: str = "pose") -> str | None:
    """Why a [x, y, z, yaw, pitch] list is not a usable pose, or None."""
    if not isinstance(values, (list, tuple)) or len(values) != len(POSE_KINDS):
        return f"{name} must be {len(POSE_KINDS)} numbers [x, y, z, yaw, pitch], got {short_repr(values)}"
    for i, (kind, value) in enumerate(zip(POSE_KINDS, values)):
        problem = number_problem(kind, value)
        if problem:
            return f"{name}[{i}] {problem}"
    return None


def action_problem(values: object, dim: int, name: str = "action") -> str | None:
    """Why a relative action is not `dim` numbers within the action range, or None."""
    if not isinstance(values, (list, tuple)) or len(values) != dim:
        return f"{name} must be {dim} numbers, got {short_repr(values)}"
    for i, value in enumerate(values):
        problem = number_problem("action", value)
        if problem:
            return f"{name}[{i}] {problem}"
    return None


def flag_type(kind: str, integer: bool | None = None):
    """An argparse `type=` for a flag of `kind`: parses, then checks the range, so
    `--size 100000` stops at argument parsing with "argument --size: 100000 is out of range ..."."""
    rng = RANGES[kind]
    as_int = rng.integer if integer is None else integer

    def parse(text: str):
        try:
            value = int(text) if as_int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{short_repr(text)} is not {'an integer' if as_int else 'a number'}") from None
        problem = rng.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse
