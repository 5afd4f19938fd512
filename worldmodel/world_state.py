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
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from worldmodel.depth import check_depth
from worldmodel.errors import UserError

WORLD_FORMAT = "worldmodel.world"
WORLD_VERSION = 1
SESSION_PREFIX = "session-"
HASH_CHARS = 16


def _session_tensors(session) -> dict[str, torch.Tensor]:
    """The generator's exact state as named CPU tensors."""
    cache = session.cache
    t: dict[str, torch.Tensor] = {
        "cache.k": cache.k, "cache.v": cache.v, "cache.sink_raw_k": cache.sink_raw_k,
        "cache.valid": cache.valid, "cache.window_pos": cache.window_pos.reshape(1),
        "cache.window_ticks": cache.window_ticks,
        "cache.sink_tick": torch.tensor([cache.sink_tick], dtype=torch.long),
        "tick": torch.tensor([session.tick], dtype=torch.long), "pose": session.pose,
        "text_cond": session._text_cond, "gen_frame": session._gen_frame.get_state(),
        "gen_ctx": session._gen_ctx.get_state(),
    }
    if session.last_latent is not None:
        t["last_latent"] = session.last_latent
    if session._pending is not None:
        p = session._pending
        t.update({"pending.latent": p.latent, "pending.action": p.action, "pending.pose": p.pose,
                  "pending.tick": torch.tensor([p.tick], dtype=torch.long)})
    for tick, view in session.views.items():  # hint models: the views the next hints reproject
        t.update({f"view.{tick}.rgb": view.rgb, f"view.{tick}.depth": view.depth, f"view.{tick}.pose": view.pose})
    return {k: v.detach().cpu().clone().contiguous() for k, v in t.items()}  # clone: no shared storage


def save_world(source, directory: str | Path, extra: dict[str, Any]) -> Path:
    """Save `source` (a ModelFrameSource after at least one reset) to `directory`.

    `extra` (JSON) is the caller's resume metadata: scene, prompt, seed, pose history... The checkpoint's
    sha256 is added so a world is never resumed with another model.
    """
    session = source.session
    if session._text_cond is None:
        raise UserError(f"{directory}: nothing to save yet (the session has not started)")
    if source.memory is None:
        raise UserError(f"{directory}: this checkpoint has no memory; there is no world to save")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: exists and is not a folder; cannot save the world there")
    data = save(_session_tensors(session), metadata={"format": WORLD_FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{SESSION_PREFIX}{digest[:HASH_CHARS]}.safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except OSError as exc:
        raise UserError(f"{directory}: cannot save the world ({exc.strerror or exc})") from exc
    meta = dict(extra)
    meta.update({"format": WORLD_FORMAT, "version": WORLD_VERSION, "session_file": name, "session_sha256": digest,
                 "checkpoint_sha256": source.checkpoint_sha256, "tick": int(session.tick)})
    source.memory.save(directory, extra=meta)
    # Session files of earlier saves are no longer referenced by memory.json: remove them.
    for old in directory.glob(f"{SESSION_PREFIX}*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory


def read_world_meta(directory: str | Path) -> dict[str, Any]:
    """The resume metadata of a saved world (checked for format and version)."""
    from memory.store import MemoryStore

    store = MemoryStore.load(directory)
    return _check_meta(Path(directory), store.extra)


def _check_meta(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    if meta.get("format") != WORLD_FORMAT:
        raise UserError(f"{directory / 'memory.json'}: not a saved world (a memory store without session state)")
    if meta.get("version") != WORLD_VERSION:
        raise UserError(f"{directory / 'memory.json'}: saved world version {meta.get('version')!r}; "
                        f"this engine reads version {WORLD_VERSION}")
    return meta


def load_world(source, directory: str | Path) -> dict[str, Any]:
    """Restore a world saved by `save_world` into `source` (same checkpoint); returns its metadata.

    Call after `source.reset(...)` of the same scene (the reset allocates nothing new; this overwrites
    the whole generator state).
    """
    from memory.store import MemoryStore
    from worldmodel.runtime import FrameView, _Pending, memory_payload_shape

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
    cache = session.cache
    for name, target in (("cache.k", cache.k), ("cache.v", cache.v), ("cache.sink_raw_k", cache.sink_raw_k),
                         ("cache.valid", cache.valid), ("cache.window_ticks", cache.window_ticks)):
        if name not in t or t[name].shape != target.shape:
            got = None if name not in t else list(t[name].shape)
            raise UserError(f"{path}: tensor {name} has shape {got}, this model needs {list(target.shape)}")
        target.copy_(t[name].to(target.dtype))
    cache.window_pos.fill_(int(t["cache.window_pos"][0]))
    cache.sink_tick = int(t["cache.sink_tick"][0])
    cache.memory_ids = None
    session.tick = int(t["tick"][0])
    session.pose = t["pose"].float()
    session._text_cond = t["text_cond"].to(session.device, session.dtype)
    session._gen_frame.set_state(t["gen_frame"])
    session._gen_ctx.set_state(t["gen_ctx"])
    session.last_latent = t.get("last_latent")
    session._pending = None
    if "pending.latent" in t:
        session._pending = _Pending(t["pending.latent"], t["pending.action"], t["pending.pose"],
                                    int(t["pending.tick"][0]))
    session.views = {}
    for name in t:
        if name.startswith("view.") and name.endswith(".rgb"):
            tick = int(name.split(".")[1])
            depth = check_depth(t[f"view.{tick}.depth"].float(), f"{path} (view {tick})")
            session.views[tick] = FrameView(t[name], depth, t[f"view.{tick}.pose"].float())
    if session.config.hint and 0 not in session.views:
        raise UserError(f"{path}: saved without the views the geometric hint reprojects (a world saved "
                        f"before the hint, or by another model); resume it with the checkpoint that made it")
    session.set_memory(store)
    cache.memory_ids = None
    history = meta.get("pose_history")
    if isinstance(history, list) and history:
        source.pose_history = [list(map(float, p)) for p in history]
    return meta
