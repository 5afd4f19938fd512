"""Action logs: the recording format of a play session (DESIGN.md §3, binding, version 1).

JSON Lines. Line 1 is the header object, then one object per tick `{"t", "action", "pose"}` where
`pose` is the absolute pose after `action`. Why this shape: a log is append-only, so a crash loses
at most the tick in flight; a reader can tell a torn last line (skipped with a warning) from a
damaged file (an error naming the line); numbers are written with `repr` precision so replay feeds
the frame source exactly the floats the live session did.

Ticks are numbered from 1 (`t` = number of actions applied since the header's `start_pose`).
`image_sha256` is the SHA-256 of the start image's RGB uint8 pixels at native size, row-major
(`image_sha256`), so re-encoding the same picture does not change it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from game.atomic import temp_file_beside
from worldmodel.camera import ACTION_DIM, POSE_DIM, CameraPose, integrate
from worldmodel.errors import UserError

LOG_FORMAT = "worldmodel.actions"
LOG_VERSION = 1
BACKENDS: tuple[str, ...] = ("model", "oracle")
FIRST_TICK = 1
"""`t` of the first tick line: the pose after the first action."""
POSE_ATOL = 1e-4
POSE_RTOL = 1e-4
"""Logged pose vs integrated action agree when |diff| <= POSE_ATOL + POSE_RTOL * |expected|."""
_SHA256_HEX_LEN = 64
_HASH_CHUNK_BYTES = 1 << 20

REQUIRED_HEADER_FIELDS: tuple[str, ...] = (
    "format", "version", "scene", "prompt", "image_sha256", "checkpoint_sha256", "backend", "seed",
    "tick_hz", "resolution", "start_pose",
)


# --- hashing -------------------------------------------------------------------------------------
def image_sha256(image: np.ndarray) -> str:
    """SHA-256 of an RGB uint8 image [H, W, 3] (its pixels, row-major): the header's `image_sha256`."""
    arr = np.ascontiguousarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
    return hashlib.sha256(arr.tobytes()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (checkpoints), read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


# --- header --------------------------------------------------------------------------------------
def make_header(
    *,
    scene: str,
    prompt: str,
    backend: str,
    seed: int,
    tick_hz: float,
    resolution: int | Sequence[int],
    start_pose: CameraPose | Sequence[float],
    start_image: np.ndarray | None = None,
    checkpoint_sha256: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A validated version-1 header. `checkpoint_sha256` is None for the oracle; extra keys are kept."""
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    pose = start_pose if isinstance(start_pose, CameraPose) else CameraPose.from_sequence(start_pose)
    header: dict[str, Any] = {
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        "scene": str(scene),
        "prompt": str(prompt),
        "image_sha256": None if start_image is None else image_sha256(start_image),
        "checkpoint_sha256": checkpoint_sha256,
        "backend": backend,
        "seed": int(seed),
        "tick_hz": float(tick_hz),
        "resolution": [int(r) for r in resolution],
        "start_pose": pose.as_list(),
    }
    for key, value in extra.items():
        if key in header:
            raise ValueError(f"extra header key {key!r} would overwrite a standard field")
        header[key] = value
    problem = _header_problem(header)
    if problem:
        raise ValueError(f"invalid action log header: {problem}")
    return header


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _vector_problem(value: Any, length: int, name: str) -> str | None:
    if not isinstance(value, list):
        return f'"{name}" must be a list of {length} numbers, got {type(value).__name__}'
    if len(value) != length:
        return f'"{name}" must have {length} numbers, got {len(value)}'
    for v in value:
        if not _is_number(v):
            return f'"{name}" must contain numbers, got {v!r}'
        if not math.isfinite(v):
            return f'"{name}" contains a non-finite number ({v})'
    return None


def _sha_problem(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != _SHA256_HEX_LEN or any(c not in "0123456789abcdef" for c in value):
        return f'"{name}" must be null or a lowercase 64-digit hex SHA-256, got {value!r}'
    return None


def _header_problem(header: Any) -> str | None:
    """Why `header` is not a valid version-1 header, or None."""
    if not isinstance(header, dict):
        return f"the header must be a JSON object, got {type(header).__name__}"
    if header.get("format") != LOG_FORMAT:
        return f'not an action log ("format" is {header.get("format")!r}, expected {LOG_FORMAT!r})'
    version = header.get("version")
    if not _is_int(version):
        return f'"version" must be an integer, got {version!r}'
    if version > LOG_VERSION:
        return f"version {version} was written by a newer engine; this one reads version {LOG_VERSION}"
    if version != LOG_VERSION:
        return f"unsupported version {version} (this engine reads version {LOG_VERSION})"
    missing = [k for k in REQUIRED_HEADER_FIELDS if k not in header]
    if missing:
        return f"header lacks {', '.join(repr(k) for k in missing)}"
    for key in ("scene", "prompt"):
        if not isinstance(header[key], str):
            return f'"{key}" must be a string, got {header[key]!r}'
    if not header["scene"]:
        return '"scene" is empty'
    for key in ("image_sha256", "checkpoint_sha256"):
        problem = _sha_problem(header[key], key)
        if problem:
            return problem
    if header["backend"] not in BACKENDS:
        return f'"backend" must be one of {list(BACKENDS)}, got {header["backend"]!r}'
    if not _is_int(header["seed"]):
        return f'"seed" must be an integer, got {header["seed"]!r}'
    tick_hz = header["tick_hz"]
    if not _is_number(tick_hz) or not math.isfinite(tick_hz) or tick_hz <= 0:
        return f'"tick_hz" must be a positive number, got {tick_hz!r}'
    res = header["resolution"]
    if not (isinstance(res, list) and len(res) == 2 and all(_is_int(r) and r > 0 for r in res)):
        return f'"resolution" must be [H, W] with positive integers, got {res!r}'
    return _vector_problem(header["start_pose"], POSE_DIM, "start_pose")


# --- writer --------------------------------------------------------------------------------------
def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, allow_nan=False, separators=(", ", ": ")) + "\n"


class ActionLogWriter:
    """Appends one line per tick and flushes it, so killing the game loses at most the tick in flight.

    The header is written to a temporary file and renamed into place: the log either does not
    exist or starts with a complete header (never half a header). An existing file at `path` is
    replaced. `fsync=True` also forces every line to disk (survives power loss, costs ~ms/tick).
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], fsync: bool = False) -> None:
        problem = _header_problem(header)
        if problem:
            raise ValueError(f"invalid action log header: {problem}")
        self.path = Path(path)
        self.header = dict(header)
        self.fsync = fsync
        self.ticks_written = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_file_beside(self.path, ".tmp")
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(_json_line(self.header))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{self.path}: cannot write the action log ({exc.strerror or exc})") from exc

    def write(self, action: Sequence[float], pose: CameraPose | Sequence[float], **extra: Any) -> int:
        """Append the next tick (pose = after the action); returns its `t`."""
        if self._fh.closed:
            raise ValueError(f"{self.path}: action log is closed")
        action_list = [float(v) for v in action]
        pose_list = pose.as_list() if isinstance(pose, CameraPose) else [float(v) for v in pose]
        for name, vec, dim in (("action", action_list, ACTION_DIM), ("pose", pose_list, POSE_DIM)):
            problem = _vector_problem(vec, dim, name)
            if problem:
                raise ValueError(problem)
        t = FIRST_TICK + self.ticks_written
        record: dict[str, Any] = {"t": t, "action": action_list, "pose": pose_list}
        for key, value in extra.items():
            if key in record:
                raise ValueError(f"extra tick key {key!r} would overwrite a standard field")
            record[key] = value
        self._fh.write(_json_line(record))  # one write call per line: a crash tears at most this line
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        self.ticks_written += 1
        return t

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def __enter__(self) -> "ActionLogWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- reader --------------------------------------------------------------------------------------
@dataclass
class ActionLog:
    """A parsed log. actions/poses are float64 [T, 5] (the exact logged numbers; `.float()` for models)."""

    header: dict[str, Any]
    actions: torch.Tensor
    poses: torch.Tensor
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def ticks(self) -> int:
        return int(self.actions.shape[0])

    @property
    def start_pose(self) -> CameraPose:
        return CameraPose.from_sequence(self.header["start_pose"])

    @property
    def tick_hz(self) -> float:
        return float(self.header["tick_hz"])


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _parse_json(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def read_action_log(path: str | os.PathLike) -> ActionLog:
    """Parse and validate a log; every problem is a UserError naming the file and line.

    A torn last line (no trailing newline and not parseable: the game was killed mid-write) is
    skipped with a warning. If logged poses differ from integrating the actions (an oracle with
    collisions, or an edited log), a warning says replay follows the logged poses.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such action log") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path}: is a folder, expected an action log (.jsonl)") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data.strip():
        raise UserError(f"{path}: empty file, expected an action log header on line 1")

    raw_lines = data.split(b"\n")
    ends_with_newline = raw_lines[-1] == b""
    if ends_with_newline:
        raw_lines.pop()
    last_index = len(raw_lines) - 1
    warnings: list[str] = []

    def fail(line_no: int, problem: str) -> UserError:
        return UserError(f"{path}: line {line_no}: {problem}")

    header: dict[str, Any] | None = None
    actions: list[list[float]] = []
    poses: list[list[float]] = []
    for index, raw in enumerate(raw_lines):
        line_no = index + 1
        torn_candidate = index == last_index and not ends_with_newline and index > 0
        try:
            obj = _parse_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            if torn_candidate:
                warnings.append(
                    f"{path}: line {line_no}: incomplete last line skipped (the recording was cut off);"
                    f" replaying {len(actions)} ticks")
                break
            if not raw.strip():
                raise fail(line_no, "empty line") from exc
            if index == 0 and not ends_with_newline and last_index == 0:
                raise fail(line_no, "incomplete header (the file was cut off)") from exc
            kind = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"not valid JSON ({exc})"
            raise fail(line_no, kind) from exc
        if index == 0:
            problem = _header_problem(obj)
            if problem:
                raise fail(line_no, problem)
            header = obj
            continue
        if not isinstance(obj, dict):
            raise fail(line_no, f"expected a tick object {{\"t\", \"action\", \"pose\"}}, got {type(obj).__name__}")
        for key in ("t", "action", "pose"):
            if key not in obj:
                raise fail(line_no, f'tick lacks "{key}"')
        expected_t = FIRST_TICK + len(actions)
        if not _is_int(obj["t"]):
            raise fail(line_no, f'"t" must be an integer, got {obj["t"]!r}')
        if obj["t"] != expected_t:
            raise fail(line_no, f'"t" is {obj["t"]}, expected {expected_t} (ticks are consecutive from {FIRST_TICK})')
        for key, dim in (("action", ACTION_DIM), ("pose", POSE_DIM)):
            problem = _vector_problem(obj[key], dim, key)
            if problem:
                raise fail(line_no, problem)
        actions.append([float(v) for v in obj["action"]])
        poses.append([float(v) for v in obj["pose"]])

    assert header is not None  # line 1 exists: the file is not blank
    action_t = torch.tensor(actions, dtype=torch.float64).reshape(-1, ACTION_DIM)  # [T, 5]
    pose_t = torch.tensor(poses, dtype=torch.float64).reshape(-1, POSE_DIM)  # [T, 5]
    log = ActionLog(header=header, actions=action_t, poses=pose_t, warnings=warnings, path=path)
    mismatch = pose_mismatch(log)
    if mismatch is not None:
        count, first_t = mismatch
        warnings.append(
            f"{path}: line {first_t + 1 - FIRST_TICK + 1}: logged poses differ from the integrated actions on"
            f" {count} of {log.ticks} ticks (first at t={first_t}); replay uses the logged poses")
    return log


def pose_mismatch(log: ActionLog) -> tuple[int, int] | None:
    """(number of ticks, first t) whose logged pose is not the DESIGN §2 integration of its action
    applied to the previous logged pose (pitch clamp included, yaw compared modulo 2*pi), or None."""
    if log.ticks == 0:
        return None
    start = torch.tensor(log.header["start_pose"], dtype=torch.float64)[None]  # [1, 5]
    previous = torch.cat([start, log.poses[:-1]], dim=0)  # [T, 5]
    expected = integrate(previous, log.actions)  # [T, 5]
    diff = (log.poses - expected).abs()  # [T, 5]
    yaw_diff = diff[:, 3].remainder(2 * math.pi)
    diff[:, 3] = torch.minimum(yaw_diff, 2 * math.pi - yaw_diff)
    bad = (diff > POSE_ATOL + POSE_RTOL * expected.abs()).any(dim=1)  # [T]
    if not bool(bad.any()):
        return None
    first = int(torch.nonzero(bad)[0, 0])
    return int(bad.sum()), FIRST_TICK + first
