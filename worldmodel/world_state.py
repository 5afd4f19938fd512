"""Save and resume a played world: the memory store plus everything the generator needs to continue.

A saved world is a folder:
    memory.json                  the commit point (memory.store format) whose `extra` holds the
                                 session metadata below and names the session file by content hash
    memory-<hash>.safetensors    the memory store's entries (payloads, poses, ticks)
    session-<hash>.safetensors   the generator's exact state: the KV cache (sink, memory, window ring
                                 buffer and its position), the frame waiting to be committed, the
                                 prompt's conditioning, the random generators, pose and tick

Saving the KV cache itself (a few MB) rather than re-deriving it from latents makes a resumed
session continue bit-identically to one that never stopped: the window's keys were computed from
context that is no longer anywhere else. Writes are atomic: the session file goes first under a
hash name, then the memory store updates memory.json in one rename; a crash leaves the old save.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from conventions.atomic import (atomic_write_bytes, atomic_write_text, check_output_folder, output_error,
                               remove_stale_temps, TEMP_NAME_GLOB)
from worldmodel.checkpoint import check_finite_tensors
from conventions.errors import UserError
from conventions.camera import PATH_HISTORY
from conventions.limits import number_problem, pose_problem
from memory.store import MemoryStore
from worldmodel.runtime import memory_payload_shape

WORLD_FORMAT = "worldmodel.world"
WORLD_VERSION = 1
SESSION_PREFIX = "session-"
HASH_CHARS = 16
WORLD_MARKER = ".worldmodel-world"
"""A file in every saved-world folder: the engine writes into a folder only if it carries this (or
is empty, or is a world saved before the marker existed)."""
WORLD_MARKER_TEXT = "a world saved by worldmodel (memory + generator state); see memory.json\n"


def save_world(source, directory: str | Path, extra: dict[str, Any]) -> Path:
    """Save `source` (a ModelFrameSource after at least one reset) to `directory`.

    `extra` (JSON) is the caller's resume metadata: scene, prompt, seed, pose history... The checkpoint's
    sha256 is added so a world is never resumed with another model.
    """
    session = source.session
    if not session.started:
        raise UserError(f"{directory}: nothing to save yet (the session has not started)")
    if source.memory is None:
        raise UserError(f"{directory}: this checkpoint has no memory; there is no world to save")
    directory = check_world_target(directory)
    data = save(session.state_dict(), metadata={"format": WORLD_FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{SESSION_PREFIX}{digest[:HASH_CHARS]}.safetensors"
    what = "cannot save the world"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(directory, exc, what) from None
    atomic_write_bytes(directory / name, data, what=what)
    if not (directory / WORLD_MARKER).is_file():
        atomic_write_text(directory / WORLD_MARKER, WORLD_MARKER_TEXT, what=what)
    meta = dict(extra)
    meta.update({"format": WORLD_FORMAT, "version": WORLD_VERSION, "session_file": name, "session_sha256": digest,
                 "checkpoint_sha256": source.checkpoint_sha256, "tick": int(session.tick)})
    source.memory.save(directory, extra=meta)
    # Session files of earlier saves are no longer referenced by memory.json, and temp files of
    # killed saves (older engines named them session-*.safetensors.tmp) were never finished: remove them.
    stale = [*directory.glob(f"{SESSION_PREFIX}*.safetensors"), *directory.glob(f"{SESSION_PREFIX}*.tmp"),
             *directory.glob(f".{SESSION_PREFIX}*.safetensors.{TEMP_NAME_GLOB}")]
    for old in stale:
        if old.name != name:
            old.unlink(missing_ok=True)
    remove_stale_temps(directory)  # a killed first save's temp folder beside `directory`
    return directory


def _owned(directory: Path) -> bool:
    """Whether `directory` is a saved world this engine wrote (its marker, or a world's memory.json)."""
    if (directory / WORLD_MARKER).is_file():
        return True
    state = directory / "memory.json"
    try:
        return json.loads(state.read_text(encoding="utf-8")).get("extra", {}).get("format") == WORLD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_world_target(directory: str | Path) -> Path:
    """The folder `--save-world` may write: new, empty, or a saved world of ours; UserError otherwise.

    Checked when the game starts (not at quit, when the session would be lost): a file there, a folder
    holding someone else's files (a `memory.json` of their own...) or a place that cannot be written.
    """
    directory = Path(directory)
    owned = directory.is_dir() and _owned(directory)  # a world of ours: everything in it is ours
    return check_output_folder(directory, lambda _entry: owned, "--save-world")


def read_world_meta(directory: str | Path) -> dict[str, Any]:
    """The resume metadata of a saved world (checked for format and version)."""
    store = MemoryStore.load(directory)
    return _check_meta(Path(directory), store.extra)


def _check_meta(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    if meta.get("format") != WORLD_FORMAT:
        raise UserError(f"{directory / 'memory.json'}: not a saved world (a memory store without session state)")
    if meta.get("version") != WORLD_VERSION:
        raise UserError(f"{directory / 'memory.json'}: saved world version {meta.get('version')!r}; "
                        f"this engine reads version {WORLD_VERSION}")
    where = f"{directory / 'memory.json'}: saved world"
    for key, kind in (("seed", "seed"), ("tick", "ticks"), ("tick_hz", "tick_hz")):
        if key in meta:
            problem = number_problem(kind, meta[key])
            if problem:
                raise UserError(f"{where} field '{key}' {problem}")
    for key in ("pose", "start_pose"):
        if key in meta:
            problem = pose_problem(meta[key], f"field '{key}'")
            if problem:
                raise UserError(f"{where} {problem}")
    history = meta.get("pose_history")
    if history is not None:
        if not isinstance(history, list):
            raise UserError(f"{where} field 'pose_history' must be a list of poses")
        for i, pose in enumerate(history):
            problem = pose_problem(pose, f"field 'pose_history'[{i}]")
            if problem:
                raise UserError(f"{where} {problem}")
    return meta


def load_world(source, directory: str | Path) -> dict[str, Any]:
    """Restore a world saved by `save_world` into `source` (same checkpoint); returns its metadata.

    Call after `source.reset(...)` of the same scene (the reset allocates nothing new; this overwrites
    the whole generator state).
    """
    directory = Path(directory)
    session = source.session
    store = MemoryStore.load(directory, device=None, expect_payload_shape=memory_payload_shape(session.config))
    meta = _check_meta(directory, store.extra)
    if meta.get("checkpoint_sha256") != source.checkpoint_sha256:
        raise UserError(f"{directory}: saved with checkpoint {str(meta.get('checkpoint_sha256'))[:12]}..., "
                        f"but this session uses {source.checkpoint_sha256[:12]}...; resume with that checkpoint")
    path = directory / str(meta.get("session_file"))
    if not path.is_file():
        raise UserError(f"{path}: missing; the saved world is incomplete")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("session_sha256"):
        raise UserError(f"{path}: content does not match its recorded hash; the saved world is damaged")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not readable as safetensors ({exc})") from exc
    check_finite_tensors(t, str(path))
    session.load_state_dict(t, str(path))
    session.set_memory(store)
    session.cache.memory_ids = None  # set_memory may have named entries: the next tick writes them
    history = meta.get("pose_history")
    if isinstance(history, list) and history:
        source.pose_history = deque((list(map(float, p)) for p in history), maxlen=PATH_HISTORY)
    return meta
