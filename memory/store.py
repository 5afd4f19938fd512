"""The long-horizon memory: a fixed-budget store of compressed, pose-tagged frame payloads.

Every generated frame leaves a payload (whatever the world model chooses to keep: pooled latents,
per-layer K/V tokens, ...; the store only requires that all entries share one shape) tagged with the
absolute camera pose it was seen from and its tick. Each tick the runtime asks for the few entries
whose views overlap the current camera most (`memory.retrieval`), so places seen long ago look the
same when the player comes back, at a cost that does not grow with the length of the session:

- payloads live in ONE preallocated tensor [budget_entries, *payload_shape] (allocated on the first
  add, never grown or reallocated); poses and ticks in [budget] CPU tensors next to it;
- add-time dedup: a new view within `dedup_distance` and `dedup_angle_deg` of a stored one is a
  near-duplicate, so the budget is spent on covering more of the world rather than one place many
  times. `dedup_keep` says which view of a place stays:
  - "first" (default): the stored view stays and the new one is skipped. A place looks the way it
    did when it was first seen, and the frames generated during a return never overwrite what the
    return is meant to reproduce. (With "newest", the first return frame replaced every first-visit
    entry within dedup_distance, and the replacement stays out of retrieval for the W ticks it is in
    the rolling window, so the frames right after it were generated without the first visit.)
  - "newest": the new view replaces the stored ones, unless one of them is younger than
    `refresh_ticks` (the place was just recorded: skipped, else a walking camera would keep
    replacing the entry it stored a tick ago). For worlds that change, where the newest view is
    the truth;
- eviction when full: the oldest entry of the most crowded grid cell goes (ties: older tick, lower
  slot), which thins out places visited often and keeps the only views of rarely visited ones;
- retrieval scores only the entries the spatial grid finds within `candidate_radius` of the camera,
  which gives exactly the selection of scoring every entry (farther entries have zero overlap);
- save/load: safetensors (slots, poses, ticks, payloads) + JSON (format, version, config, caller's
  resume state), committed atomically; anything damaged is a UserError naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from memory.retrieval import (DEFAULT_DEDUP_ANGLE_DEG, DEFAULT_DEDUP_DISTANCE, DEFAULT_MAX_DISTANCE,
                              DEFAULT_MIN_OVERLAP, candidate_radius, duplicate_matrix, near_duplicates,
                              select_memory, view_overlap)
from memory.spatial_index import SpatialGrid
from conventions.camera import DEFAULT_FOV_DEG, POSE_DIM
from conventions.errors import UserError

MEMORY_FORMAT = "worldmodel.memory"
MEMORY_VERSION = 1
STATE_FILE = "memory.json"
"""The commit point of a save: it names the data file (by content hash) and holds config and extra."""
DATA_PREFIX = "memory-"
DATA_SUFFIX = ".safetensors"
_HASH_CHARS_IN_NAME = 16
_FILE_MODE = 0o666
_DIR_MODE = 0o777
_NO_TICK = torch.iinfo(torch.long).max
DEDUP_KEEP = ("first", "newest")
"""Values of MemoryConfig.dedup_keep."""


@dataclass(frozen=True)
class MemoryConfig:
    """How big the memory is and how it chooses what to keep and what to show the model."""

    budget_entries: int = 1024
    """Fixed number of entries (payload slots). Cost per retrieval is bounded by it; 1024 pooled
    16x4x4 bf16 latents are 0.5 MiB, 1024 K/V payloads of 100 KiB are 100 MiB: size it to the payload."""
    fov_deg: float = DEFAULT_FOV_DEG
    """Horizontal (= vertical, square images) field of view used to score view overlap."""
    max_distance: float = DEFAULT_MAX_DISTANCE
    """Metres a stored view is assumed to see (see memory.retrieval)."""
    dedup_distance: float = DEFAULT_DEDUP_DISTANCE
    """Metres: an added view this close (3D) to a stored one, and within dedup_angle_deg, replaces it;
    selection skips pairs this close too."""
    dedup_angle_deg: float = DEFAULT_DEDUP_ANGLE_DEG
    """Degrees between viewing directions under which two close views count as the same view."""
    dedup_keep: str = "first"
    """Which view of a place stays when a near-duplicate is added: "first" or "newest" (module docstring)."""
    refresh_ticks: int = 20
    """With dedup_keep "newest": a duplicate of a stored view younger than this many ticks is skipped
    instead of replacing it (1 s at 20 Hz; see the module docstring)."""
    min_overlap: float = DEFAULT_MIN_OVERLAP
    """Entries sharing less of the current view than this are never retrieved."""
    cell_size: float = 4.0
    """Metres per side of the spatial grid cells (retrieval lookup and the eviction's crowding count)."""
    payload_shape: tuple[int, ...] | None = None
    """Shape of one payload; None = taken from the first add (the tensor is allocated then, once).
    When set, the tensor is allocated at construction (dtype payload_dtype, default bfloat16)."""
    payload_dtype: str | None = None
    """torch dtype name of stored payloads (e.g. "bfloat16"); None = the first payload's dtype."""

    def __post_init__(self) -> None:
        if not isinstance(self.budget_entries, int) or self.budget_entries < 1:
            raise ValueError(f"budget_entries must be a positive integer, got {self.budget_entries!r}")
        for name in ("fov_deg", "max_distance", "dedup_distance", "dedup_angle_deg", "min_overlap", "cell_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 < self.fov_deg < 180.0:
            raise ValueError(f"fov_deg must be in (0, 180), got {self.fov_deg}")
        if self.max_distance <= 0.0 or self.cell_size <= 0.0:
            raise ValueError("max_distance and cell_size must be positive")
        if self.dedup_distance < 0.0 or not 0.0 <= self.dedup_angle_deg <= 180.0:
            raise ValueError("dedup_distance must be >= 0 and dedup_angle_deg in [0, 180]")
        if self.dedup_keep not in DEDUP_KEEP:
            raise ValueError(f"dedup_keep must be one of {DEDUP_KEEP}, got {self.dedup_keep!r}")
        if isinstance(self.refresh_ticks, bool) or not isinstance(self.refresh_ticks, int) or self.refresh_ticks < 0:
            raise ValueError(f"refresh_ticks must be a non-negative integer, got {self.refresh_ticks!r}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {self.min_overlap}")
        if self.payload_shape is not None:
            shape = tuple(self.payload_shape)
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise ValueError(f"payload_shape must be non-negative integers, got {self.payload_shape!r}")
            object.__setattr__(self, "payload_shape", shape)
        if self.payload_dtype is not None:
            _dtype_from_name(self.payload_dtype)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["payload_shape"] = None if self.payload_shape is None else list(self.payload_shape)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MemoryConfig":
        """Inverse of `to_dict`; ValueError naming unknown or invalid fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        kwargs = dict(data)
        if kwargs.get("payload_shape") is not None:
            if not isinstance(kwargs["payload_shape"], list):
                raise ValueError(f"payload_shape must be a list, got {kwargs['payload_shape']!r}")
            kwargs["payload_shape"] = tuple(kwargs["payload_shape"])
        return cls(**kwargs)


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype name: {name!r}")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class MemoryEntry:
    """One stored view: its payload [*payload_shape], camera pose [5] and tick."""

    payload: torch.Tensor
    pose: torch.Tensor
    tick: int
    slot: int = -1
    overlap: float = 0.0
    """View overlap with the query this entry was retrieved for (0 when not from a retrieval)."""


@dataclass
class RetrievedMemory:
    """Batched retrieval result, best entry first; tensors are copies (safe across later adds)."""

    slots: torch.Tensor  # [k] int64, store slots
    payloads: torch.Tensor  # [k, *payload_shape], on the store's payload device
    poses: torch.Tensor  # [k, 5] float32
    ticks: torch.Tensor  # [k] int64
    overlap: torch.Tensor  # [k] float32, view overlap with the query

    def __len__(self) -> int:
        return int(self.slots.shape[0])

    def entries(self) -> list[MemoryEntry]:
        return [MemoryEntry(self.payloads[i], self.poses[i], int(self.ticks[i]), int(self.slots[i]),
                            float(self.overlap[i])) for i in range(len(self))]


@dataclass
class MemoryStats:
    """Counters since construction/load (for the HUD and benchmarks)."""

    added: int = 0
    replaced: int = 0
    """Stored entries dropped because an added view duplicated them."""
    skipped: int = 0
    """Added views not stored because a duplicate younger than refresh_ticks was there."""
    evicted: int = 0


class MemoryStore:
    """Fixed-budget, pose-indexed store of frame payloads (module docstring has the rules)."""

    def __init__(self, config: MemoryConfig | None = None, device: str | torch.device | None = None) -> None:
        self.config = config if config is not None else MemoryConfig()
        budget = self.config.budget_entries
        self._device = torch.device(device) if device is not None else None
        self._payloads: torch.Tensor | None = None  # [budget, *payload_shape]
        self._poses = torch.zeros(budget, POSE_DIM)  # [budget, 5]
        self._ticks = torch.full((budget,), _NO_TICK, dtype=torch.long)  # [budget]
        self._used = torch.zeros(budget, dtype=torch.bool)  # [budget]
        self._cell_count = torch.zeros(budget, dtype=torch.long)  # [budget] entries in the slot's cell
        self._free: list[int] = list(range(budget))  # min-heap: the lowest free slot is used first
        self._count = 0
        self._grid = SpatialGrid(self.config.cell_size)
        self._radius = candidate_radius(self.config.max_distance, self.config.fov_deg)
        self.stats = MemoryStats()
        self.extra: dict[str, Any] = {}
        """Resume state read by `load` (what the caller passed to `save`)."""
        if self.config.payload_shape is not None:
            dtype = _dtype_from_name(self.config.payload_dtype or "bfloat16")
            self._allocate(self.config.payload_shape, dtype, self._device or torch.device("cpu"))

    # --- inspection --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (f"MemoryStore({self._count}/{self.config.budget_entries} entries, "
                f"payload {self.payload_shape} {self.payload_dtype})")

    @property
    def payload_shape(self) -> tuple[int, ...] | None:
        return None if self._payloads is None else tuple(self._payloads.shape[1:])

    @property
    def payload_dtype(self) -> torch.dtype | None:
        return None if self._payloads is None else self._payloads.dtype

    @property
    def payload_buffer(self) -> torch.Tensor | None:
        """The preallocated payload tensor [budget, *payload_shape] (read-only use; for tests/benchmarks)."""
        return self._payloads

    @property
    def nbytes(self) -> int:
        """Bytes held by the payload tensor (fixed once allocated)."""
        return 0 if self._payloads is None else self._payloads.numel() * self._payloads.element_size()

    def slots(self) -> torch.Tensor:
        """Occupied slots, ascending: [N] int64. `poses()`, `ticks()` use the same order."""
        return self._used.nonzero().squeeze(1)

    def poses(self) -> torch.Tensor:
        """Poses of the stored entries [N, 5] float32 (ascending slot order)."""
        return self._poses[self._used].clone()

    def ticks(self) -> torch.Tensor:
        """Ticks of the stored entries [N] int64 (ascending slot order)."""
        return self._ticks[self._used].clone()

    def entry(self, slot: int) -> MemoryEntry:
        """The entry in `slot` (payload copied)."""
        if not (0 <= slot < self.config.budget_entries and bool(self._used[slot])):
            raise KeyError(f"slot {slot} is empty")
        assert self._payloads is not None
        return MemoryEntry(self._payloads[slot].clone(), self._poses[slot].clone(), int(self._ticks[slot]), slot)

    # --- writing -----------------------------------------------------------------------------
    def _allocate(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
        self._payloads = torch.zeros(self.config.budget_entries, *shape, dtype=dtype, device=device)

    def clear(self) -> None:
        """Forget every entry (keeps the payload tensor, so no reallocation)."""
        self._poses.zero_()
        self._ticks.fill_(_NO_TICK)
        self._used.zero_()
        self._cell_count.zero_()
        self._free = list(range(self.config.budget_entries))
        self._count = 0
        self._grid.clear()

    def add(self, payload: torch.Tensor, pose: torch.Tensor | Sequence[float], tick: int) -> int | None:
        """Store `payload` [*payload_shape] seen from `pose` [5] at `tick`; returns the slot used, or None
        when the view was skipped (a near-duplicate is stored and dedup_keep is "first", or, with
        "newest", one younger than refresh_ticks is).

        With "newest", older near-duplicates of the new view are dropped (the new entry takes the
        nearest one's slot). When the store is full the eviction rule frees a slot first. Never
        reallocates the payload tensor.
        """
        pose_t = torch.as_tensor(pose, dtype=torch.float32).detach().to("cpu").reshape(-1)  # [5]
        if pose_t.shape[0] != POSE_DIM or not bool(torch.isfinite(pose_t).all()):
            raise ValueError(f"pose must be {POSE_DIM} finite numbers, got {pose_t.tolist()}")
        if isinstance(tick, bool) or int(tick) != tick:
            raise ValueError(f"tick must be an integer, got {tick!r}")
        tick = int(tick)
        if self._payloads is None:
            dtype = _dtype_from_name(self.config.payload_dtype) if self.config.payload_dtype else payload.dtype
            self._allocate(tuple(payload.shape), dtype, self._device or payload.device)
        assert self._payloads is not None
        if tuple(payload.shape) != tuple(self._payloads.shape[1:]):
            raise ValueError(f"payload shape {list(payload.shape)} differs from the store's "
                             f"{list(self._payloads.shape[1:])}")

        dup = self._duplicates(pose_t)  # [D] slots
        if dup.numel() and (self.config.dedup_keep == "first"
                            or bool(((tick - self._ticks[dup]) < self.config.refresh_ticks).any())):
            self.stats.skipped += 1
            return None
        slot = self._drop(pose_t, dup) if dup.numel() else None
        if slot is None:
            if self._count >= self.config.budget_entries:
                self._release(self._eviction_slot())
                self.stats.evicted += 1
            slot = heapq.heappop(self._free)
        self._payloads[slot].copy_(payload.detach())
        self._poses[slot] = pose_t
        self._ticks[slot] = tick
        self._used[slot] = True
        self._count += 1
        cell = self._grid.insert(slot, float(pose_t[0]), float(pose_t[2]))
        self._recount(cell)
        self.stats.added += 1
        return slot

    def _duplicates(self, pose: torch.Tensor) -> torch.Tensor:
        """Slots [D] of stored near-duplicates of `pose` [5] (ascending)."""
        c = self.config
        near = self._grid.query(float(pose[0]), float(pose[2]), c.dedup_distance)  # [M] slots
        if near.numel() == 0:
            return near
        return near[near_duplicates(pose, self._poses.index_select(0, near), c.dedup_distance, c.dedup_angle_deg)]

    def _drop(self, pose: torch.Tensor, dup: torch.Tensor) -> int:
        """Remove the entries in slots `dup` [D] (D >= 1); return the (now reserved) slot of the one
        nearest to `pose`, which the new entry takes."""
        dist_sq = (self._poses.index_select(0, dup)[:, :3] - pose[None, :3]).pow(2).sum(-1)  # [D]
        keep = int(dup[int(torch.argmin(dist_sq))])  # first minimum = lowest slot among ties
        for slot in dup.tolist():
            self._release(slot)
        self.stats.replaced += int(dup.numel())
        self._free.remove(keep)  # the new entry takes it; O(budget) list work, no tensor work
        heapq.heapify(self._free)
        return keep

    def _eviction_slot(self) -> int:
        """The oldest entry of the most crowded grid cell (ties: older tick, then lower slot)."""
        crowd = torch.where(self._used, self._cell_count, -1)  # [budget]
        in_top = crowd == crowd.max()
        return int(torch.argmin(torch.where(in_top, self._ticks, _NO_TICK)))

    def _release(self, slot: int) -> None:
        cell = self._grid.remove(slot)
        self._used[slot] = False
        self._ticks[slot] = _NO_TICK
        self._cell_count[slot] = 0
        self._count -= 1
        heapq.heappush(self._free, slot)
        self._recount(cell)

    def _recount(self, cell: tuple[int, int]) -> None:
        members = self._grid.members(cell)
        if members:
            self._cell_count[torch.tensor(members, dtype=torch.long)] = len(members)

    # --- reading -----------------------------------------------------------------------------
    def candidates(self, pose: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Slots the spatial grid finds near `pose` [5]: [M] int64 ascending (a superset of those
        that can overlap its view)."""
        pose_t = torch.as_tensor(pose, dtype=torch.float32).reshape(-1)
        return self._grid.query(float(pose_t[0]), float(pose_t[2]), self._radius)

    def retrieve_batch(self, pose: torch.Tensor | Sequence[float], max_entries: int,
                       current_tick: int | None = None, min_age: int = 0) -> RetrievedMemory:
        """The entries to show the model for a frame at `pose` [5] and `current_tick`, best first.

        `select_memory` over the grid's candidates: entries at least `min_age` ticks old (younger ones
        are still in the rolling window), highest view overlap first, near-duplicates skipped.
        """
        c = self.config
        pose_t = torch.as_tensor(pose, dtype=torch.float32).detach().to("cpu").reshape(-1)  # [5]
        if pose_t.shape[0] != POSE_DIM:
            raise ValueError(f"pose must have {POSE_DIM} numbers, got {pose_t.shape[0]}")
        slots = torch.zeros(0, dtype=torch.long)
        overlap = torch.zeros(0)
        if self._count and max_entries > 0:
            cand = self.candidates(pose_t)  # [M]
            if cand.numel():
                cand_poses = self._poses.index_select(0, cand)  # [M, 5]
                scores = view_overlap(pose_t, cand_poses, c.fov_deg, c.max_distance)  # [M]
                cand_ticks = self._ticks.index_select(0, cand)  # [M]
                pick = select_memory(pose_t, cand_poses, cand_ticks, current_tick, max_entries, min_age, c.fov_deg,
                                     c.max_distance, c.dedup_distance, c.dedup_angle_deg, c.min_overlap,
                                     overlap=scores)
                slots, overlap = cand.index_select(0, pick), scores.index_select(0, pick)
        if self._payloads is None:
            payloads = torch.zeros(0)
        else:
            payloads = self._payloads.index_select(0, slots.to(self._payloads.device))
        return RetrievedMemory(slots, payloads, self._poses.index_select(0, slots), self._ticks.index_select(0, slots),
                               overlap)

    def retrieve(self, pose: torch.Tensor | Sequence[float], max_entries: int, current_tick: int | None = None,
                 min_age: int = 0) -> list[MemoryEntry]:
        """`retrieve_batch` as a list of MemoryEntry (best first)."""
        return self.retrieve_batch(pose, max_entries, current_tick, min_age).entries()

    # --- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the store (and the caller's resume state `extra`, JSON-serialisable; None = keep
        `self.extra`, the state it was last loaded or saved with) to `directory`.

        Atomic: a new folder is built beside it and renamed into place; an existing save is updated by
        writing the hash-named data file first and then replacing memory.json (the commit point), so
        a crash leaves either the old or the new save, never half of one. Returns the folder.
        """
        directory = Path(directory)
        extra_dict = dict(self.extra if extra is None else extra)
        extra_json = json.dumps(extra_dict)  # TypeError now, before anything is written
        slots = self.slots()
        tensors = {"slots": slots, "poses": self._poses[slots].contiguous(), "ticks": self._ticks[slots].contiguous()}
        if self._payloads is not None:
            tensors["payloads"] = self._payloads.index_select(0, slots.to(self._payloads.device)).cpu().contiguous()
        data = save_safetensors_bytes(tensors, metadata={"format": MEMORY_FORMAT})
        digest = hashlib.sha256(data).hexdigest()
        data_name = f"{DATA_PREFIX}{digest[:_HASH_CHARS_IN_NAME]}{DATA_SUFFIX}"
        state = {
            "format": MEMORY_FORMAT, "version": MEMORY_VERSION, "config": self.config.to_dict(),
            "entries": int(slots.numel()),
            "payload_shape": None if self.payload_shape is None else list(self.payload_shape),
            "payload_dtype": None if self.payload_dtype is None else _dtype_name(self.payload_dtype),
            "data_file": data_name, "data_sha256": digest, "extra": json.loads(extra_json),
        }
        state_bytes = (json.dumps(state, indent=1) + "\n").encode()
        try:
            if directory.exists() and not directory.is_dir():
                raise UserError(f"{directory}: exists and is not a folder; cannot save the world there")
            if not directory.exists():
                _save_new_folder(directory, data_name, data, state_bytes)
            else:
                _update_folder(directory, data_name, data, state_bytes)
        except OSError as exc:
            raise UserError(f"{directory}: cannot save the world ({exc.strerror or exc})") from exc
        self.extra = json.loads(extra_json)  # the store remembers the resume state it was saved with
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None,
             expect_payload_shape: Sequence[int] | None = None) -> "MemoryStore":
        """Read a folder written by `save`; the caller's resume state is in `.extra`.

        Everything is checked (format, version, config, file hash, tensor names, shapes, dtypes, slots);
        a problem raises UserError naming the file. `expect_payload_shape` rejects a save made by a
        model that stores differently shaped payloads.
        """
        directory = Path(directory)
        state_path = directory / STATE_FILE
        if not directory.is_dir():
            if directory.exists():
                raise UserError(f"{directory}: is a file; a saved world is a folder (the one given to --save-world)")
            raise UserError(f"{directory}: no saved world here (folder does not exist)")
        if not state_path.is_file():
            raise UserError(f"{state_path}: missing; {directory} is not a saved world")
        try:
            text = state_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{state_path}: cannot read ({exc})") from exc
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{state_path}: line {exc.lineno}: not valid JSON ({exc.msg}); "
                            "the save is damaged") from exc
        state = _check_state(state_path, state)
        try:
            config = MemoryConfig.from_dict(state["config"])
        except (TypeError, ValueError) as exc:
            raise UserError(f"{state_path}: bad config ({exc})") from exc
        data_path = directory / state["data_file"]
        tensors = _read_data(data_path, state["data_sha256"])
        if config.payload_shape is not None and state["payload_shape"] is not None \
                and list(config.payload_shape) != state["payload_shape"]:
            raise UserError(f"{state_path}: config payload_shape {list(config.payload_shape)} differs from the "
                            f"saved payload_shape {state['payload_shape']}")
        store = cls(dataclasses.replace(config, payload_shape=None), device=device)  # allocated by _fill
        store.config = config
        store._fill(data_path, tensors, state)
        if expect_payload_shape is not None and store.payload_shape is not None \
                and tuple(expect_payload_shape) != store.payload_shape:
            raise UserError(f"{data_path}: payloads have shape {list(store.payload_shape)} but this model "
                            f"stores {list(expect_payload_shape)}; the world was saved by another model")
        store.extra = state["extra"]
        return store

    def _fill(self, data_path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore entries into the exact slots they had (so a resumed session continues identically)."""
        n = state["entries"]
        budget = self.config.budget_entries
        need = ("slots", "poses", "ticks") + (("payloads",) if state["payload_shape"] is not None else ())
        missing = [k for k in need if k not in tensors]
        if missing:
            raise UserError(f"{data_path}: missing tensor(s) {missing}")
        slots, poses, ticks = tensors["slots"], tensors["poses"], tensors["ticks"]
        checks = [("slots", slots, torch.long, (n,)), ("poses", poses, torch.float32, (n, POSE_DIM)),
                  ("ticks", ticks, torch.long, (n,))]
        if state["payload_shape"] is not None:
            dtype = _dtype_from_name(state["payload_dtype"])
            checks.append(("payloads", tensors["payloads"], dtype, (n, *state["payload_shape"])))
        for name, t, dtype, shape in checks:
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise UserError(f"{data_path}: tensor '{name}' is {_dtype_name(t.dtype)} {list(t.shape)}, "
                                f"expected {_dtype_name(dtype)} {list(shape)}")
        if n > budget:
            raise UserError(f"{data_path}: {n} entries exceed the budget of {budget}")
        if n and (int(slots.min()) < 0 or int(slots.max()) >= budget or slots.unique().numel() != n):
            raise UserError(f"{data_path}: slot numbers are out of range or repeated")
        if not bool(torch.isfinite(poses).all()):
            raise UserError(f"{data_path}: poses contain non-finite numbers")
        if state["payload_shape"] is not None:
            self._allocate(state["payload_shape"], _dtype_from_name(state["payload_dtype"]),
                           self._device or torch.device("cpu"))
            assert self._payloads is not None
            self._payloads[slots.to(self._payloads.device)] = tensors["payloads"].to(self._payloads.device)
        self._poses[slots] = poses
        self._ticks[slots] = ticks
        self._used[slots] = True
        self._count = n
        taken = set(slots.tolist())
        self._free = [s for s in range(budget) if s not in taken]
        heapq.heapify(self._free)
        cells = {self._grid.insert(int(s), float(p[0]), float(p[2])) for s, p in zip(slots.tolist(), poses)}
        for cell in cells:
            self._recount(cell)


# --- persistence helpers -------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_durable(path: Path, data: bytes) -> None:
    """Write `data` to a new file `path` and fsync it (the file is complete before anyone renames it)."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, _FILE_MODE & ~_umask())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_new_folder(directory: Path, data_name: str, data: bytes, state_bytes: bytes) -> None:
    """Build the whole save in a hidden temp folder beside `directory`, then rename it into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        os.chmod(tmp, _DIR_MODE & ~_umask())
        _write_durable(tmp / data_name, data)
        _write_durable(tmp / STATE_FILE, state_bytes)
        _fsync_dir(tmp)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(directory.parent)


def _update_folder(directory: Path, data_name: str, data: bytes, state_bytes: bytes) -> None:
    """Replace the save in an existing folder: data file first, then memory.json by os.replace."""
    data_path = directory / data_name
    if not data_path.exists():  # same content hash = same bytes already there
        tmp_data = directory / f".{data_name}.tmp"
        tmp_data.unlink(missing_ok=True)
        _write_durable(tmp_data, data)
        os.replace(tmp_data, data_path)
    tmp_state = directory / f".{STATE_FILE}.tmp"
    tmp_state.unlink(missing_ok=True)
    _write_durable(tmp_state, state_bytes)
    os.replace(tmp_state, directory / STATE_FILE)  # the commit point
    _fsync_dir(directory)
    for stale in directory.glob(f"{DATA_PREFIX}*{DATA_SUFFIX}"):
        if stale.name != data_name:
            stale.unlink(missing_ok=True)


def _check_state(path: Path, state: Any) -> dict[str, Any]:
    """Validate memory.json's top level; UserError naming the file and the problem."""
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(state).__name__}")
    if state.get("format") != MEMORY_FORMAT:
        raise UserError(f"{path}: not a saved world (format {state.get('format')!r}, expected {MEMORY_FORMAT!r})")
    version = state.get("version")
    if version != MEMORY_VERSION:
        raise UserError(f"{path}: unsupported version {version!r} (this build reads version {MEMORY_VERSION})")
    types = {"config": dict, "entries": int, "data_file": str, "data_sha256": str, "extra": dict}
    for key, kind in types.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise UserError(f"{path}: field '{key}' is missing or not a {kind.__name__}")
    if state["entries"] < 0:
        raise UserError(f"{path}: field 'entries' is negative")
    name = state["data_file"]
    if Path(name).name != name or not name.startswith(DATA_PREFIX) or not name.endswith(DATA_SUFFIX):
        raise UserError(f"{path}: field 'data_file' is not a data file name: {name!r}")
    shape, dtype = state.get("payload_shape"), state.get("payload_dtype")
    if (shape is None) != (dtype is None):
        raise UserError(f"{path}: payload_shape and payload_dtype must both be set or both be null")
    if shape is not None:
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise UserError(f"{path}: field 'payload_shape' must be a list of non-negative integers")
        try:
            _dtype_from_name(dtype)
        except ValueError as exc:
            raise UserError(f"{path}: field 'payload_dtype': {exc}") from exc
    return state


def _read_data(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """Read and verify the data file; UserError for missing, damaged or unreadable files."""
    if not path.is_file():
        raise UserError(f"{path}: missing (named by {STATE_FILE}); the save is incomplete")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"{path}: damaged (sha256 {digest[:12]}... does not match {sha256[:12]}... "
                        f"recorded in {STATE_FILE})")
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from exc


def _kept_ticks_first(poses: torch.Tensor, config: MemoryConfig) -> torch.Tensor:
    """kept_ticks for dedup_keep "first" without eviction: a frame is added unless a near-duplicate
    (the store's own `near_duplicates` test, every pair at once with the same arithmetic) is held
    already, and nothing held ever leaves. Training needs this once per clip; running a store costs
    ~26 ms for a 160-tick clip, this ~3 ms. tests/test_memory_store.py checks it against the store."""
    dup = duplicate_matrix(poses, config.dedup_distance, config.dedup_angle_deg).numpy()  # [T, T]
    kept = np.zeros(poses.shape[0], dtype=bool)
    for t in range(1, poses.shape[0]):
        kept[t] = not (dup[t, :t] & kept[:t]).any()
    return torch.from_numpy(kept)


def kept_ticks(poses: torch.Tensor, config: MemoryConfig) -> torch.Tensor:
    """bool [T]: which frames of a path (poses [T, 5]; tick 0 is the start image, which the runtime keeps
    in the attention sink and never adds) a store with `config` holds once ticks 1..T-1 were added in
    order. Computed by running a store with 1-number payloads, so it is the store's own rule.

    With dedup_keep "first" and T <= budget_entries (no eviction) a frame, once held, stays held, so
    the store held at tick t exactly the kept frames up to t: training uses this to give each target
    the memory candidates play would have had.
    """
    if config.dedup_keep == "first" and poses.shape[0] - 1 <= config.budget_entries:
        return _kept_ticks_first(poses, config)
    store = MemoryStore(dataclasses.replace(config, payload_shape=(1,), payload_dtype="float32"))
    one = torch.zeros(1)
    for t in range(1, poses.shape[0]):
        store.add(one, poses[t], t)
    kept = torch.zeros(poses.shape[0], dtype=torch.bool)
    kept[store.ticks()] = True
    return kept
