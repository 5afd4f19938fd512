"""`KVCache`: the one preallocated play-time key/value cache of the world model.

Layout of every layer's cache (tokens along S; P = tokens per frame = latent_size**2, 64 by default;
numbers for the default config: memory 4 entries x 16 tokens, window W = 6 frames):

    slots [0, P)                      sink     the start frame, written once at reset, kept for ever
    slots [P, P + M)                  memory   M = memory_entries * memory_tokens (4 * 16 = 64), written
                                               when the retrieved entries change
    slots [P + M, P + M + W*P)        window   ring buffer of the last W committed frames (6 * 64 = 384)
    slots [P + M + W*P, S)            current  the frame being denoised (64)

    S = P + M + W*P + P  (default 64 + 64 + 384 + 64 = 576 tokens per layer)

Storage: `k` and `v` are each ONE tensor [layers, B, heads, S, head_dim] allocated at construction
(`k[l]` is layer l's [B, heads, S, head_dim] view), `valid` is a bool [B, S] mask of filled slots
shared by all layers, `sink_raw_k` [layers, B, heads, P, head_dim] keeps the sink's keys before the
temporal rotation so the sink can be re-timed (`max_time_offset`) without recomputing anything.
Default size: 2 (K, V) * 4 layers * 4 heads * 576 slots * 48 dims = 885k numbers per batch element,
3.5 MB in fp32 (1.8 MB in bf16), plus the sink's raw keys (0.2 MB): `nbytes()`.

Rows at different ticks (a batch of play sessions, `worldmodel.runtime.SessionBatch`): `row(b)` is row
b as a one-row cache that shares this cache's storage and keeps its own ring position, sink tick and
memory names, so each session resets, re-times its sink and writes its memory alone, while the
denoising passes of all rows run as one batched `WorldModel.forward_cached` over the whole cache.

Nothing is ever reallocated or concatenated: frames are written in place (`scatter_`, `index_copy_`) at
slot indices that are tensors (the ring position `window_pos` is a 0-dim tensor), so a compiled step function
sees the same shapes and no Python-int changes from tick to tick. Positional and camera information is
baked into keys before they are written, so attention is order-free and the ring order never matters.
"""

from __future__ import annotations

import copy

import torch

from worldmodel.config import WorldModelConfig

REGION_SINK, REGION_MEMORY, REGION_WINDOW, REGION_CURRENT = 0, 1, 2, 3


class KVCache:
    """Preallocated per-layer K/V tensors + valid mask + ring-buffer bookkeeping (see module doc)."""

    def __init__(self, config: WorldModelConfig, batch: int = 1, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.batch = batch
        p = config.tokens_per_frame
        self.frame_tokens = p
        self.memory_slots = config.memory_slots
        self.window_frames = config.window_frames
        self.sink_start = 0
        self.memory_start = p
        self.window_start = p + self.memory_slots
        self.current_start = self.window_start + self.window_frames * p
        self.slots = self.current_start + p
        assert self.slots == config.cache_slots
        shape = (config.layers, batch, config.heads, self.slots, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # [L, B, H, S, D]
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # [L, B, H, S, D]
        self.sink_raw_k = torch.zeros(config.layers, batch, config.heads, p, config.head_dim,
                                      device=device, dtype=dtype)  # [L, B, H, P, D]
        self.valid = torch.zeros(batch, self.slots, dtype=torch.bool, device=device)  # [B, S]
        self.window_pos = torch.zeros((), dtype=torch.long, device=device)
        """Ring slot (frame index in [0, W)) the next committed frame is written to."""
        self.window_ticks = torch.full((self.window_frames,), -1, dtype=torch.long, device=device)
        """Tick of the frame held by each ring slot (-1 = empty); bookkeeping for tests and debugging."""
        self._frame_arange = torch.arange(p, device=device)
        region = torch.empty(self.slots, dtype=torch.long, device=device)
        region[: self.memory_start] = REGION_SINK
        region[self.memory_start: self.window_start] = REGION_MEMORY
        region[self.window_start: self.current_start] = REGION_WINDOW
        region[self.current_start:] = REGION_CURRENT
        self.region = region  # [S]
        self.sink_tick = 0
        """Tick the sink's keys are currently rotated to (see WorldModel.retime_sink)."""
        self.memory_ids: tuple | None = None
        """Names of the entries whose K/V fill the memory slots (None = unknown, recompute)."""

    def row(self, index: int) -> "KVCache":
        """Row `index` as a one-row cache: its k, v, sink_raw_k and valid are views of this cache's
        (writes land here), its ring position, sink tick and memory names are its own (fresh)."""
        if not 0 <= index < self.batch:
            raise IndexError(f"cache row {index} of {self.batch}")
        view = copy.copy(self)  # the slot layout (region, starts, arange) is shared and read-only
        view.batch = 1
        view.k, view.v = self.k[:, index: index + 1], self.v[:, index: index + 1]
        view.sink_raw_k = self.sink_raw_k[:, index: index + 1]
        view.valid = self.valid[index: index + 1]
        view.window_pos = torch.zeros((), dtype=torch.long, device=self.device)
        view.window_ticks = torch.full((self.window_frames,), -1, dtype=torch.long, device=self.device)
        view.sink_tick = 0
        view.memory_ids = None
        return view

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    def reset(self) -> None:
        """Forget everything (a new session) without reallocating."""
        self.valid.zero_()
        self.window_pos.zero_()
        self.window_ticks.fill_(-1)
        self.sink_tick = 0
        self.memory_ids = None

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s K and V, each [B, H, S, D] (views into the one allocation)."""
        return self.k[index], self.v[index]

    # --- slot indices (tensors, so nothing depends on Python ints that change per tick) ---
    def sink_index(self) -> torch.Tensor:
        return self.sink_start + self._frame_arange  # [P]

    def current_index(self) -> torch.Tensor:
        return self.current_start + self._frame_arange  # [P]

    def window_index(self) -> torch.Tensor:
        """Slots of the ring position the next committed frame goes to: [P]."""
        return self.window_start + self.window_pos * self.frame_tokens + self._frame_arange

    def memory_index(self) -> torch.Tensor:
        return torch.arange(self.memory_start, self.window_start, device=self.device)  # [M]

    def advance_window(self, tick: int) -> None:
        """Record that the ring slot at `window_pos` now holds frame `tick`, move to the next slot."""
        self.window_ticks.index_fill_(0, self.window_pos.view(1), tick)
        self.window_pos.add_(1).remainder_(self.window_frames)

    def set_memory_valid(self, entry_valid: torch.Tensor) -> None:
        """entry_valid bool [B, memory_entries] -> the memory slots' valid bits."""
        if self.memory_slots == 0:
            return
        if not bool(entry_valid.any()):
            self.memory_ids = None
        tokens = self.config.memory_tokens
        self.valid[:, self.memory_start: self.window_start] = entry_valid.repeat_interleave(tokens, dim=1)

    def commit_mask(self) -> torch.Tensor:
        """Slots a frame being committed (clean, entering sink/window) may see: sink + window. [S] bool."""
        return (self.region == REGION_SINK) | (self.region == REGION_WINDOW)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.sink_raw_k, self.valid))

    # --- saving and restoring (saved worlds) ---
    _STATE_TENSORS = ("k", "v", "sink_raw_k", "valid", "window_ticks")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The cache's exact state as named tensors (views of the live storage: clone before keeping)."""
        state = {name: getattr(self, name) for name in self._STATE_TENSORS}
        state["window_pos"] = self.window_pos.reshape(1)
        state["sink_tick"] = torch.tensor([self.sink_tick], dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()` in place; ValueError naming a missing or misshapen tensor. The memory
        names are forgotten, so the next tick writes its retrieved entries again."""
        for name in self._STATE_TENSORS + ("window_pos", "sink_tick"):
            if name not in state:
                raise ValueError(f"tensor {name} is missing")
        for name in self._STATE_TENSORS:
            target = getattr(self, name)
            if tuple(state[name].shape) != tuple(target.shape):
                raise ValueError(f"tensor {name} has shape {list(state[name].shape)}, this model needs "
                                 f"{list(target.shape)}")
        for name in self._STATE_TENSORS:
            getattr(self, name).copy_(state[name].to(getattr(self, name).dtype))
        self.window_pos.fill_(int(state["window_pos"][0]))
        self.sink_tick = int(state["sink_tick"][0])
        self.memory_ids = None
