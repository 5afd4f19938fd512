"""Action logs: the recording format of a play session (docs/architecture.md §The conventions, in brief, binding, version 1).

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from conventions.atomic import atomic_write_text, output_error
from conventions.camera import ACTION_DIM, POSE_DIM, CameraPose, integrate
from conventions.errors import UserError
from conventions.limits import (ACTION_LIMIT, POSE_KINDS, RANGES, action_problem, number_problem, pose_problem,
                                short_repr)

LOG_FORMAT = "worldmodel.actions"
LOG_VERSION = 1
BACKENDS: tuple[str, ...] = ("model", "oracle")
FIRST_TICK = 1
"""`t` of the first tick line: the pose after the first action."""
POSE_ATOL = 1e-4
POSE_RTOL = 1e-4
"""Logged pose vs integrated action agree when |diff| <= POSE_ATOL + POSE_RTOL * |expected|."""
MAX_LINE_BYTES = 1 << 20
"""Longest accepted line (a tick line is ~150 bytes, a header a few hundred): a bigger one is damage,
refused before it is read whole."""
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
    for key, kind in (("seed", "seed"), ("tick_hz", "tick_hz")):
        problem = number_problem(kind, header[key])
        if problem:
            return f'"{key}" {problem}'
    res = header["resolution"]
    if not (isinstance(res, list) and len(res) == 2 and all(_is_int(r) for r in res)):
        return f'"resolution" must be [H, W] with integers, got {short_repr(res)}'
    for r in res:
        problem = number_problem("resolution", r)
        if problem:
            return f'"resolution" {problem}'
    if "started_at_tick" in header:
        problem = number_problem("ticks", header["started_at_tick"])
        if problem:
            return f'"started_at_tick" {problem}'
    return (_vector_problem(header["start_pose"], POSE_DIM, "start_pose")
            or pose_problem(header["start_pose"], '"start_pose"'))


def is_action_log(path: str | os.PathLike) -> bool:
    """Whether `path` starts with an action-log header line (what the engine may replace)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(MAX_LINE_BYTES)
        obj = _parse_json(first.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("format") == LOG_FORMAT


# --- writer --------------------------------------------------------------------------------------
def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, allow_nan=False, separators=(", ", ": ")) + "\n"


class ActionLogWriter:
    """Appends one line per tick and flushes it, so killing the game loses at most the tick in flight.

    The header is written to a temporary file and renamed into place: the log either does not
    exist or starts with a complete header (never half a header). An existing *action log* at `path`
    is replaced; any other existing file is refused (the engine never overwrites a file it does not
    own). `fsync=True` also forces every line to disk (survives power loss, costs ~ms/tick). A failed
    write (disk full, file-size limit) is one UserError naming the log; every line before it stays
    readable (a torn last line is skipped by the reader).
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], fsync: bool = False) -> None:
        problem = _header_problem(header)
        if problem:
            raise ValueError(f"invalid action log header: {problem}")
        self.path = Path(path)
        self.header = dict(header)
        self.fsync = fsync
        self.ticks_written = 0
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; give a file name for the action log")
        if self.path.exists() and not is_action_log(self.path):
            raise UserError(f"{self.path}: exists and is not an action log; refusing to overwrite it "
                            "(choose another name)")
        atomic_write_text(self.path, _json_line(self.header), what="cannot write the action log")
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise output_error(self.path, exc, "cannot write the action log") from None

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
        try:
            self._fh.write(_json_line(record))  # one write call per line: a crash tears at most this line
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            self._close_quietly()
            raise output_error(self.path, exc, f"recording stopped after {self.ticks_written} ticks") from None
        self.ticks_written += 1
        return t

    def _close_quietly(self) -> None:
        """Close after a failed write: the buffered rest of a torn line cannot be written either."""
        try:
            self._fh.close()
        except OSError:
            pass

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                raise output_error(self.path, exc, "cannot finish the action log") from None

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def __enter__(self) -> "ActionLogWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- reader --------------------------------------------------------------------------------------
_COUNT_CHUNK_BYTES = 1 << 22
STREAM_BLOCK_BYTES = 1 << 20
"""Bytes of tick lines read and checked together by the reader's fast path (~7,000 ticks)."""
_JSON_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_NUMBERS_5 = _JSON_NUMBER + rb"(?:, " + _JSON_NUMBER + rb"){4}"
_TICK_LINES = re.compile(rb'(?:\{"t": (?:0|[1-9][0-9]*), "action": \[' + _NUMBERS_5 + rb'\], "pose": \['
                         + _NUMBERS_5 + rb"\]\}\n)++")
"""Lines exactly as ActionLogWriter (and json.dumps) writes ticks: the reader's fast path. The
possessive `++` keeps no backtracking state per line (a greedy `+` holds ~7 KB a line)."""
_TICK_TOKENS: tuple[tuple[bytes, bytes], ...] = (
    (b'{"t": ', b","), (b', "action": [', b","), (b'], "pose": [', b","), (b"]}\n", b""))
"""What turns matched tick lines into one comma-separated list of numbers (t, action, pose per line)."""
_TICK_NUMBERS = 1 + ACTION_DIM + POSE_DIM
_POSE_LIMITS = np.asarray([RANGES[kind].hi for kind in POSE_KINDS], dtype=np.float64)
"""|x|, |y|, |z|, |yaw|, |pitch| limits (conventions.limits, symmetric ranges)."""


class _HeaderView:
    """The header fields a replay reads, for a parsed log and a streamed one alike."""

    header: dict[str, Any]

    @property
    def start_pose(self) -> CameraPose:
        return CameraPose.from_sequence(self.header["start_pose"])

    @property
    def tick_hz(self) -> float:
        return float(self.header["tick_hz"])


@dataclass
class ActionLog(_HeaderView):
    """A parsed log. actions/poses are float64 [T, 5] (the exact logged numbers; `.float()` for models)."""

    header: dict[str, Any]
    actions: torch.Tensor
    poses: torch.Tensor
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def ticks(self) -> int:
        return int(self.actions.shape[0])


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _parse_json(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


class ActionLogReader(_HeaderView):
    """Reads a log as a stream: the header when opened, one tick at a time when iterated.

    Memory stays constant for any log length (a 2 M-tick log is ~200 MB on disk), and a replay's
    first frame does not wait for the whole file: `tick_count` counts newlines in large chunks, and
    `ticks()` parses and validates each line as it is reached. Every problem is a UserError naming
    the file and line. A torn last line (no trailing newline, not parseable: the game was killed
    mid-write) ends the stream with a warning. Logged poses that differ from integrating the actions
    (an oracle with collisions, an edited log) are counted while reading and reported once, in
    `warnings`, when the stream ends: replay follows the logged poses.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []
        try:
            self._fh = open(self.path, "rb")
        except FileNotFoundError:
            raise UserError(f"{self.path}: no such action log") from None
        except IsADirectoryError:
            raise UserError(f"{self.path}: is a folder, expected an action log (.jsonl)") from None
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        try:
            self.size = os.fstat(self._fh.fileno()).st_size
            first = self._read_line(1)
            if first is None or not first.strip():
                raise UserError(f"{self.path}: empty file, expected an action log header on line 1")
            obj = self._decode(first, 1, last=False)
            if obj is _TORN:
                raise UserError(f"{self.path}: line 1: incomplete header (the file was cut off)")
            problem = _header_problem(obj)
            if problem:
                raise UserError(f"{self.path}: line 1: {problem}")
            self.header: dict[str, Any] = obj
            self._body_offset = self._fh.tell()
        except BaseException:
            self._fh.close()
            raise

    # --- low level ---
    def _read_line(self, line_no: int) -> bytes | None:
        try:
            raw = self._fh.readline(MAX_LINE_BYTES + 1)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if not raw:
            return None
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{self.path}: line {line_no}: longer than {MAX_LINE_BYTES} bytes; not an action log line")
        return raw

    def _decode(self, raw: bytes, line_no: int, last: bool) -> Any:
        """The line's JSON value; _TORN for a cut-off last line; UserError for anything else."""
        ends_with_newline = raw.endswith(b"\n")
        body = raw[:-1] if ends_with_newline else raw
        try:
            return _parse_json(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if not ends_with_newline:
                return _TORN
            if not body.strip():
                raise UserError(f"{self.path}: line {line_no}: empty line") from None
            if isinstance(exc, UnicodeDecodeError):
                kind = "not UTF-8 text"
            elif isinstance(exc, RecursionError):
                kind = "not valid JSON (nested too deeply)"
            else:
                kind = f"not valid JSON ({short_repr(str(exc), 80)})"
            raise UserError(f"{self.path}: line {line_no}: {kind}") from None

    def tick_count(self) -> int:
        """Complete tick lines in the file (a cheap newline count; a torn last line is not one)."""
        count = 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._body_offset)
                tail = b""
                for chunk in iter(lambda: fh.read(_COUNT_CHUNK_BYTES), b""):
                    count += chunk.count(b"\n")
                    tail = chunk
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if tail and not tail.endswith(b"\n"):
            last = tail.rsplit(b"\n", 1)[-1]
            try:
                _parse_json(last.decode("utf-8"))
                count += 1  # a last line without newline that parses is a complete tick
            except (UnicodeDecodeError, ValueError, RecursionError):
                pass
        return count

    # --- the stream ---
    def ticks(self) -> Iterator[tuple[list[float], list[float]]]:
        """(action, pose) of each tick in order, validated; restartable (see `chunks`)."""
        for actions, poses in self.chunks():
            yield from zip(actions.tolist(), poses.tolist())

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The ticks in chunks of about STREAM_BLOCK_BYTES of text: (actions, poses), float64 [n, 5] each.

        A chunk of lines as the writer (or json.dumps) writes them is checked with one regular
        expression and parsed by numpy, ~5 us a tick and no Python object per number, so any log
        streams in constant memory. A chunk that does not match is read again line by line through
        the JSON parser, which finds the first bad line and says exactly what is wrong with it.
        """
        self._fh.seek(self._body_offset)
        self.warnings = []  # said again by each pass
        previous = np.asarray(self.header["start_pose"], dtype=np.float64)  # [5]
        line_no = 1  # of the last line read
        count = 0
        mismatches, first_mismatch = 0, None
        for text in self._blocks():
            line_count = text.count(b"\n") + (0 if text.endswith(b"\n") else 1)
            chunk = self._fast_chunk(text, line_count, FIRST_TICK + count)
            torn = False
            if chunk is None:
                chunk, torn = self._slow_chunk(_split_lines(text), line_no + 1, FIRST_TICK + count)
            actions, poses = chunk  # float64 [n, 5] each
            n = actions.shape[0]
            if n:
                before = np.concatenate([previous[None], poses[:-1]], axis=0)  # [n, 5]
                bad = _pose_differs(before, actions, poses)  # [n]
                if bad.any():
                    if first_mismatch is None:
                        i = int(np.flatnonzero(bad)[0])
                        first_mismatch = (FIRST_TICK + count + i, line_no + 1 + i)
                    mismatches += int(bad.sum())
                previous = poses[-1]
                yield actions, poses
            count += n
            line_no += line_count
            if torn:
                break
        if mismatches:
            t, line = first_mismatch
            self.warnings.append(
                f"{self.path}: line {line}: logged poses differ from the integrated actions on {mismatches} of "
                f"{count} ticks (first at t={t}); replay uses the logged poses")

    def _blocks(self) -> Iterator[bytes]:
        """The tick lines in blocks of whole lines (~STREAM_BLOCK_BYTES each; the last may lack its
        newline), read without a Python object per line."""
        pending = b""
        while True:
            try:
                block = self._fh.read(STREAM_BLOCK_BYTES)
            except OSError as exc:
                raise UserError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
            if not block:
                if pending:
                    yield pending
                return
            pending += block
            cut = pending.rfind(b"\n")
            if cut < 0:
                if len(pending) > MAX_LINE_BYTES:
                    raise UserError(f"{self.path}: a line is longer than {MAX_LINE_BYTES} bytes; not an action log")
                continue
            yield pending[:cut + 1]
            pending = pending[cut + 1:]

    def _fast_chunk(self, text: bytes, n: int, first_t: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The (actions, poses) of a block of `n` lines if every one is a plain, valid tick; None to
        look closer."""
        if _TICK_LINES.fullmatch(text) is None:
            return None
        flat = text
        for token, separator in _TICK_TOKENS:
            flat = flat.replace(token, separator)
        values = np.fromstring(flat[1:], dtype=np.float64, sep=",")  # text mode: C strtod, no objects
        if values.size != n * _TICK_NUMBERS:
            return None
        values = values.reshape(n, _TICK_NUMBERS)  # [n, 1 + 5 + 5]
        if not np.array_equal(values[:, 0], np.arange(first_t, first_t + n, dtype=np.float64)):
            return None
        actions, poses = values[:, 1:1 + ACTION_DIM], values[:, 1 + ACTION_DIM:]
        if not (np.isfinite(values).all() and (np.abs(actions) <= ACTION_LIMIT).all()
                and (np.abs(poses) <= _POSE_LIMITS).all()):
            return None
        return np.ascontiguousarray(actions), np.ascontiguousarray(poses)

    def _slow_chunk(self, lines: list[bytes], first_line_no: int, first_t: int
                    ) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
        """Line-by-line reading of a chunk: raises at the first bad line; (ticks, torn-last-line)."""
        actions, poses = [], []
        torn = False
        for i, raw in enumerate(lines):
            if len(raw) > MAX_LINE_BYTES:
                raise UserError(f"{self.path}: line {first_line_no + i}: longer than {MAX_LINE_BYTES} bytes; "
                                "not an action log line")
            obj = self._decode(raw, first_line_no + i, last=True)
            if obj is _TORN:
                self.warnings.append(f"{self.path}: line {first_line_no + i}: incomplete last line skipped (the "
                                     f"recording was cut off); replaying {first_t - FIRST_TICK + len(actions)} ticks")
                torn = True
                break
            action, pose = self._tick(obj, first_line_no + i, first_t + len(actions))
            actions.append(action)
            poses.append(pose)
        return ((np.asarray(actions, dtype=np.float64).reshape(-1, ACTION_DIM),
                 np.asarray(poses, dtype=np.float64).reshape(-1, POSE_DIM)), torn)

    def _tick(self, obj: Any, line_no: int, expected_t: int) -> tuple[list[float], list[float]]:
        def fail(problem: str) -> UserError:
            return UserError(f"{self.path}: line {line_no}: {problem}")

        if not isinstance(obj, dict):
            raise fail(f'expected a tick object {{"t", "action", "pose"}}, got {type(obj).__name__}')
        for key in ("t", "action", "pose"):
            if key not in obj:
                raise fail(f'tick lacks "{key}"')
        if not _is_int(obj["t"]):
            raise fail(f'"t" must be an integer, got {short_repr(obj["t"])}')
        if obj["t"] != expected_t:
            raise fail(f'"t" is {short_repr(obj["t"])}, expected {expected_t} (ticks are consecutive from {FIRST_TICK})')
        problem = (_vector_problem(obj["action"], ACTION_DIM, "action")
                   or action_problem(obj["action"], ACTION_DIM, '"action"')
                   or _vector_problem(obj["pose"], POSE_DIM, "pose") or pose_problem(obj["pose"], '"pose"'))
        if problem:
            raise fail(problem)
        return [float(v) for v in obj["action"]], [float(v) for v in obj["pose"]]

    # --- lifetime ---
    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ActionLogReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _split_lines(text: bytes) -> list[bytes]:
    """Lines with their newline (the last may lack it); only newline ends a line, as the writer writes."""
    parts = text.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


_TORN = object()
"""Marker of a cut-off last line (see ActionLogReader)."""


def _pose_differs(before: np.ndarray, actions: np.ndarray, logged: np.ndarray) -> np.ndarray:
    """[n] bool: logged pose vs the docs/architecture.md §The conventions, in brief integration of its action from the pose before it
    (`conventions.camera.integrate`; yaw compared modulo 2*pi)."""
    expected = integrate(torch.from_numpy(before), torch.from_numpy(actions)).numpy()  # [n, 5]
    diff = np.abs(logged - expected)  # [n, 5]
    yaw_diff = np.remainder(diff[:, 3], 2 * math.pi)
    diff[:, 3] = np.minimum(yaw_diff, 2 * math.pi - yaw_diff)
    return (diff > POSE_ATOL + POSE_RTOL * np.abs(expected)).any(axis=1)


def read_action_log(path: str | os.PathLike) -> ActionLog:
    """The whole log in memory (eval, tests, short logs); replay streams with ActionLogReader instead.
    Every problem is a UserError naming the file and line; warnings as ActionLogReader's."""
    with ActionLogReader(path) as reader:
        chunks = list(reader.chunks())
        actions = np.concatenate([a for a, _ in chunks]) if chunks else np.zeros((0, ACTION_DIM))  # [T, 5]
        poses = np.concatenate([p for _, p in chunks]) if chunks else np.zeros((0, POSE_DIM))  # [T, 5]
        return ActionLog(header=reader.header, actions=torch.from_numpy(actions), poses=torch.from_numpy(poses),
                         warnings=reader.warnings, path=reader.path)

