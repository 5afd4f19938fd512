"""Play-time generation: `WorldModelSession` (latents in, latents out) and `ModelFrameSource` (the
game's FrameSource backed by the learned model); `SessionBatch` / `ModelFrameBatch` step N sessions
with one batched transformer pass per denoising step (the vector environment, worldmodel.env).

One tick (frame t, docs/architecture.md §One tick of play data flow):
  1. memory: retrieve the stored entries whose views overlap the camera at pose_t most (entries older
     than the rolling window only, the same `select_memory` rule training uses) and write their K/V
     into the cache's memory slots (sink/window are untouched);
  2. denoise frame t from seeded noise in `steps` passes of one frame of queries against the cache;
     the first pass also commits frame t-1's clean latent into the ring buffer (two frames of queries,
     masked so the committed frame sees only sink + window as in training), so a tick costs `steps`
     passes, not `steps + 1`;
  3. store frame t's latent with its pose and tick in the MemoryStore; decode for display.

Determinism: all randomness comes from two generators seeded at reset (one for the frames' initial
noise, one for the context-noise of committed frames), so a seed reproduces every frame and the
deferred and immediate commit orders draw the same numbers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from conventions.camera import ACTION_DIM, PATH_HISTORY, CameraPose
from worldmodel.config import DEFAULT_PRECISION, PRECISION_NAMES, WorldModelConfig
from worldmodel.data import LATENT_DTYPE, RGB_CHANNELS, VIEW_DEPTH_DTYPE
from conventions.depth import check_depth
from conventions.errors import UserError
from worldmodel.hint import bilinear_sources, encode_hint, hint_recent_ticks, start_preferred
from worldmodel.point_cache import PointCache
from worldmodel.reproject import Reprojection, reproject
from worldmodel.kv_cache import KVCache
from worldmodel.model import ROLE_CURRENT, ROLE_SINK, ROLE_WINDOW, WorldModel
from worldmodel.sampler import add_noise, ddim_step, noise_levels
from worldmodel.text import Tokenizer
from memory.store import MemoryConfig, MemoryStore
from scenes.scene import resize_image
from worldmodel.checkpoint import checkpoint_sha256, DEFAULT_CHECKPOINT, load_checkpoint

CTX_SEED_OFFSET = 0x5EED
"""The context-noise generator is seeded with seed + this, the frame-noise generator with seed."""


def _pose_tensor(pose: CameraPose | Sequence[float] | torch.Tensor) -> torch.Tensor:
    if isinstance(pose, CameraPose):
        return pose.as_tensor()
    return torch.as_tensor(pose, dtype=torch.float32).reshape(5)


PRECISIONS: dict[str, torch.dtype] = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16)))
"""Play-time precisions of the generator (`--precision`). bf16 is about 10% faster per frame on this
CPU at the same action following; see docs/model_card.md for what it measured."""


def precision_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `--precision` name; UserError naming the choices otherwise."""
    if name not in PRECISIONS:
        raise UserError(f"--precision: unknown precision {name!r} (choose from {', '.join(PRECISIONS)})")
    return PRECISIONS[name]


MEMORY_PAYLOAD_DTYPE = torch.bfloat16
"""Memory payloads (clean latents) are stored in bf16: 2 KiB per entry, exact enough for 2x2 pooling."""


HINT_MEMORY_PAYLOAD_DTYPE = torch.float16
"""Hint models keep each entry's view beside its latent, in float16: exact for the bf16 latents and
the uint8 RGB values, and the same precision as the depth of the training views."""


def memory_payload_shape(config: WorldModelConfig) -> tuple[int, ...]:
    """A memory entry of this model: the frame's clean latent [C, h, w] (compressed at use time); for
    a hint model, one flat vector [C*h*w + 4*H*W] that also holds the frame's view (RGB, depth) for
    the reprojection (`pack_memory_payload`)."""
    latent = (config.latent_channels, config.latent_size, config.latent_size)
    if not config.hint:
        return latent
    return (math.prod(latent) + (RGB_CHANNELS + 1) * config.resolution ** 2,)


def memory_payload_dtype(config: WorldModelConfig) -> torch.dtype:
    return HINT_MEMORY_PAYLOAD_DTYPE if config.hint else MEMORY_PAYLOAD_DTYPE


@dataclass
class FrameView:
    """What the hint needs of one frame: rgb uint8 [H, W, 3] (the decoded latent) and depth float
    [H, W] (the depth head's, conventions.depth convention), both from the frame's bf16-rounded latent,
    exactly as the training views (worldmodel.data.encode_dataset)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    pose: torch.Tensor
    """[5]: where the frame was seen from."""


def pack_memory_payload(latent: torch.Tensor, view: FrameView | None, config: WorldModelConfig) -> torch.Tensor:
    """The payload the store keeps for a frame (see `memory_payload_shape`)."""
    if not config.hint:
        return latent.to(MEMORY_PAYLOAD_DTYPE)
    parts = [latent.to(LATENT_DTYPE).flatten(), view.rgb.permute(2, 0, 1).flatten(), view.depth.flatten()]
    return torch.cat([p.to(HINT_MEMORY_PAYLOAD_DTYPE) for p in parts])


def unpack_memory_payload(payload: torch.Tensor, config: WorldModelConfig, pose: torch.Tensor
                          ) -> tuple[torch.Tensor, FrameView | None]:
    """payload (of an entry seen from `pose`) -> (latent float [C, h, w], its view or None for
    hint-free models)."""
    c, s, r = config.latent_channels, config.latent_size, config.resolution
    if not config.hint:
        return payload.float().reshape(c, s, s), None
    n = c * s * s
    latent = payload[:n].float().reshape(c, s, s)
    rgb = payload[n: n + RGB_CHANNELS * r * r].float().reshape(RGB_CHANNELS, r, r).permute(1, 2, 0).round()
    depth = payload[n + RGB_CHANNELS * r * r:].float().reshape(r, r)
    return latent, FrameView(rgb.to(torch.uint8), depth, pose.float())


@dataclass
class GatheredMemory:
    """What `prepare_memory` retrieved for each row: entries found, and their views (hint models)."""

    found: list[int]
    views: list[list[FrameView]]


def prepare_memory(model: WorldModel, cache: KVCache, stores: Sequence, poses: torch.Tensor, tick: int,
                   dtype: torch.dtype = torch.float32, key_scale: float | None = None) -> GatheredMemory:
    """The one memory gathering, for any batch size (a play session, distillation's B clips): for row
    i, the entries of `stores[i]` (None: no memory) older than the window whose views overlap the
    camera at poses[i] [B, 5] most (`MemoryStore.retrieve_batch`) go into the cache's memory slots
    (`WorldModel.write_memory`, which skips the work when the cache already holds the same entries;
    `key_scale`: its memory_key_scale, None for the config's)."""
    c = model.config
    b = poses.shape[0]
    if not c.use_memory:
        return GatheredMemory([0] * b, [[] for _ in range(b)])
    e = c.memory_entries
    latents = torch.zeros(b, e, c.latent_channels, c.latent_size, c.latent_size)  # [B, E, C, h, w]
    entry_poses = torch.zeros(b, e, 5)  # [B, E, 5]
    valid = torch.zeros(b, e, dtype=torch.bool)  # [B, E]
    ids: list[tuple] = []
    gathered = GatheredMemory([], [])
    for i, store in enumerate(stores):
        found, row_ids, views = 0, (), []
        if store is not None and len(store) > 0:
            got = store.retrieve_batch(poses[i].cpu(), e, current_tick=tick, min_age=c.window_frames + 1)
            found = min(len(got), e)
            for j in range(found):
                latents[i, j], view = unpack_memory_payload(got.payloads[j].cpu(), c, got.poses[j])
                if view is not None:
                    views.append(view)
            entry_poses[i, :found] = got.poses[:found]
            valid[i, :found] = True
            row_ids = tuple(zip(got.slots[:found].tolist(), got.ticks[:found].tolist()))
        ids.append(row_ids)
        gathered.found.append(found)
        gathered.views.append(views)
    if max(gathered.found, default=0) == 0:
        cache.set_memory_valid(valid.to(cache.device))
        return gathered
    model.write_memory(cache, latents.to(cache.device, dtype), entry_poses.to(cache.device),
                       valid.to(cache.device), tuple(ids), key_scale=key_scale)
    return gathered


def memory_config(config: WorldModelConfig):
    """The MemoryConfig of this model's play-time store (training builds its memory by the same rules)."""
    return MemoryConfig(fov_deg=config.fov_deg, payload_shape=memory_payload_shape(config),
                        payload_dtype=str(memory_payload_dtype(config)).removeprefix("torch."))


def make_memory_store(config: WorldModelConfig):
    """An empty MemoryStore for this model's payloads (preallocated, fixed budget)."""
    return MemoryStore(memory_config(config))


@dataclass
class TickTiming:
    """Milliseconds spent in the parts of the last tick (for the HUD and the bench)."""

    memory_ms: float = 0.0
    hint_ms: float = 0.0
    generate_ms: float = 0.0
    decode_ms: float = 0.0
    passes: int = 0
    memory_entries: int = 0


@dataclass
class _Pending:
    """The last generated frame, committed to the ring buffer inside the next tick's first pass."""

    latent: torch.Tensor  # [C, h, w]
    action: torch.Tensor  # [5]
    pose: torch.Tensor  # [5]
    tick: int


GRAD_ATTENTION_BACKEND = "sdpa"
"""The attention of a pass under autograd: PyTorch SDPA (the Triton play kernel has no backward)."""


@dataclass
class _TickPlan:
    """One session's generated tick between `_begin_tick` and `_end_tick`: what its denoising passes
    read, and `x`, the frame they denoise (updated pass by pass)."""

    action: torch.Tensor  # [5]
    pose: torch.Tensor  # [5]
    tick: int
    levels: list[float]  # noise levels, passes + 1 numbers (noise_levels)
    x: torch.Tensor  # [C, h, w]
    hint: torch.Tensor | None  # [C + 1, h, w]
    pending: _Pending | None  # the previous frame, committed inside the first pass
    committed: torch.Tensor | None  # its latent noised to ctx_noise_play, as it enters the ring
    started: float  # perf_counter() when the passes began

    @property
    def passes(self) -> int:
        return len(self.levels) - 1


def _denoise_rows(rows: Sequence["WorldModelSession"], cache: KVCache, plans: Sequence[_TickPlan | None]) -> None:
    """The denoising passes of a tick for every row with a plan: ONE cached pass per step for all rows.

    `rows` are sessions whose caches are the rows of `cache` (`KVCache.row`), or one session whose
    cache is `cache` itself. The first pass also commits each row's pending frame into its own ring
    slot (a row with none gets a placeholder there, see `WorldModel.forward_cached`); a row whose
    schedule is shorter (or that has no plan: it is not stepping) rides along as a placeholder, so
    its outputs are ignored and nothing it writes becomes visible. Every row's numbers are those
    of the same session stepped alone: each row's arithmetic in the batched pass does not depend on
    the other rows (tests/test_env.py compares the frames exactly).
    """
    live = [plan for plan in plans if plan is not None]
    if not live:
        return
    head = rows[0]
    model, c, dev, dt = head.model, head.config, head.device, head.dtype
    alone = len(rows) == 1 and rows[0].cache is cache  # a lone session: the cache's ring position names the slots
    commit = any(plan.pending is not None for plan in live)
    text = head._text_cond if alone else torch.cat([row._text_cond for row in rows])
    latent_shape = (c.latent_channels, c.latent_size, c.latent_size)
    for i in range(max(plan.passes for plan in live)):
        roles = [ROLE_WINDOW, ROLE_CURRENT] if i == 0 and commit else [ROLE_CURRENT]
        g, b = len(roles), len(rows)
        latents = torch.zeros(b, g, *latent_shape)
        noise = [[0.0] * g for _ in range(b)]
        actions, poses = torch.zeros(b, g, ACTION_DIM), torch.zeros(b, g, 5)
        ticks = torch.zeros(b, g, dtype=torch.long)
        keep = torch.zeros(b, g, dtype=torch.bool)
        hints = torch.zeros(b, g, c.latent_channels + 1, c.latent_size, c.latent_size) if c.hint else None
        slots = []
        for r, (row, plan) in enumerate(zip(rows, plans)):
            frames = []
            poses[r] = row.pose  # placeholders look from where the row is
            if g == 2:
                pending = None if plan is None else plan.pending
                if pending is not None:
                    latents[r, 0], noise[r][0], keep[r, 0] = plan.committed, c.ctx_noise_play, True
                    actions[r, 0], poses[r, 0], ticks[r, 0] = pending.action, pending.pose, pending.tick
                frames.append(row.cache.window_index())
            if plan is not None:
                step = min(i, plan.passes - 1)
                latents[r, -1], noise[r][-1], keep[r, -1] = plan.x, plan.levels[step], i < plan.passes
                actions[r, -1], poses[r, -1], ticks[r, -1] = plan.action, plan.pose, plan.tick
                if plan.hint is not None:
                    hints[r, -1] = plan.hint
            frames.append(row.cache.current_index())
            slots.append(torch.cat(frames))
        extra = {} if hints is None else {"hint": hints.to(dev, dt)}
        if not alone:
            extra.update(slots=torch.stack(slots).to(dev), keep=keep.to(dev))
        out = model.forward_cached(cache, latents.to(dev, dt), torch.tensor(noise, device=dev, dtype=dt),
                                   actions.to(dev, dt), poses.to(dev), ticks[0].tolist() if alone else ticks.to(dev),
                                   text, roles, current_only=True, **extra).float().cpu()
        for r, (row, plan) in enumerate(zip(rows, plans)):
            if plan is None:
                continue
            if g == 2 and plan.pending is not None:
                row.cache.advance_window(plan.pending.tick)
            if i < plan.passes:
                row.timing.passes += 1
                plan.x = ddim_step(plan.x, out[r, -1], plan.levels[i], plan.levels[i + 1])


class WorldModelSession:
    """Batch-free generation API: reset with a start latent, then one latent per action.

    `model` runs in `dtype` (float32 or bfloat16) on `device`; the cache is allocated once. With
    `use_memory` False the memory slots stay empty (the memory-off baseline of the revisit metric).
    """

    def __init__(self, model: WorldModel, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 use_memory: bool = True, defer_commit: bool = True, sample_steps: int | None = None,
                 autoencoder: torch.nn.Module | None = None, use_hint: bool = True,
                 composite: float | None = None, cache: KVCache | None = None,
                 point_cache: int | None = None, splat_levels: bool | None = None,
                 start_radius: float | None = None, sampling: str | None = None,
                 memory_key_scale: float | None = None) -> None:
        """`cache`: a one-row cache to run in (a row of a `SessionBatch`'s cache); by default the
        session allocates its own. `composite`, `point_cache`, `splat_levels`, `start_radius`,
        `sampling`, `memory_key_scale`: the config's hint_composite, hint_point_cache,
        hint_splat_levels, hint_start_radius, hint_sampling and memory_key_scale by default."""
        self.model = model.eval().to(device=device, dtype=dtype)
        self.config = model.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.use_memory = bool(use_memory and self.config.use_memory)
        self.defer_commit = defer_commit
        self.sample_steps = sample_steps
        if self.config.hint and (autoencoder is None or not getattr(autoencoder, "has_depth", False)):
            raise UserError("this checkpoint reads the geometric hint, which needs its autoencoder's depth head; "
                            "the autoencoder given has none")
        self.autoencoder = autoencoder
        self.use_hint = bool(use_hint and self.config.hint)
        """Build the geometric hint each tick (False: empty hints, the --hint off baseline)."""
        self.composite = (self.config.hint_composite if composite is None else float(composite)) if self.use_hint else 0.0
        """Weight of the reprojected pixels in the frame shown (and kept as its view) where the hint
        covers; the model's decoded frame elsewhere and for the rest (0 = the decoded frame only)."""
        self._last_warp: Reprojection | None = None
        points = self.config.hint_point_cache if point_cache is None else int(point_cache)
        self.points = PointCache(points) if (self.use_hint and points > 0) else None
        """The point cache (worldmodel.point_cache) that replaces the recent frames as hint sources."""
        self.splat_levels = self.config.hint_splat_levels if splat_levels is None else bool(splat_levels)
        """The hint's reprojection closes cracks on coarser grids (worldmodel.reproject, `magnified`)."""
        self.start_radius = self.config.hint_start_radius if start_radius is None else float(start_radius)
        """Metres from the start pose within which the start frame wins over the generated sources
        (worldmodel.hint.start_preferred; 0 = off)."""
        self.sampling = self.config.hint_sampling if sampling is None else sampling
        """Which hint sources are sampled bilinearly (config.HINT_SAMPLINGS, worldmodel.hint.bilinear_sources)."""
        self.memory_key_scale = self.config.memory_key_scale if memory_key_scale is None else float(memory_key_scale)
        """Scale of the memory entries' keys in the cache (WorldModel.write_memory; 1 = as trained)."""
        # the overrides must be values the config itself accepts: its checks, not a copy of them
        self.config.replace(hint_start_radius=self.start_radius, hint_sampling=self.sampling,
                            memory_key_scale=self.memory_key_scale).validate()
        self.depth_source: Callable[[torch.Tensor], torch.Tensor] | None = None
        """Measurement only (`worldmodel eval --depth oracle`): pose [5] -> depth [H, W] that replaces the
        depth head's depth of every view, e.g. the ray caster's: what exact depth would be worth."""
        self.cache = KVCache(self.config, batch=1, device=self.device, dtype=dtype) if cache is None else cache
        if self.cache.batch != 1:
            raise ValueError(f"a session runs in a one-row cache, got {self.cache.batch} rows (see KVCache.row)")
        self.tokenizer = Tokenizer(self.config.vocab, self.config.max_text_tokens)
        self.memory = make_memory_store(self.config) if self.config.use_memory else None
        self.tick = 0
        self.pose = torch.zeros(5)
        self.timing = TickTiming()
        self._text_cond: torch.Tensor | None = None
        self._pending: _Pending | None = None
        self._gen_frame = torch.Generator(device="cpu")
        self._gen_ctx = torch.Generator(device="cpu")
        self.last_latent: torch.Tensor | None = None
        self.views: dict[int, FrameView] = {}
        """Hint models: the views of the start frame (tick 0) and of the last `hint_recent` frames."""
        self._memory_views: list[FrameView] = []

    # --- helpers ---
    def _noise(self, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        return torch.randn(1, 1, c.latent_channels, c.latent_size, c.latent_size, generator=generator)

    def _steps(self, tick: int) -> int:
        if self.sample_steps is not None and tick > self.config.warmup_frames:
            return self.sample_steps
        return self.config.steps_for_frame(tick)

    def _run(self, latents: torch.Tensor, noise: list[float], actions: torch.Tensor, poses: torch.Tensor,
             ticks: list[int], roles: list[str], hint: torch.Tensor | None = None, grad: bool = False) -> torch.Tensor:
        """One cached pass over G frames: latents [G, C, h, w] etc. -> x0 [G, C, h, w] of the ROLE_CURRENT
        frame (zeros for committed frames: `forward_cached`'s current_only).
        `hint` [C + 1, h, w]: the geometric hint of the ROLE_CURRENT frame (the others get none).
        `grad`: under autograd (`WorldModel.forward_cached`'s grad mode; output on the model's device)."""
        dev, dt = self.device, self.dtype
        hints = None
        if self.config.hint:
            c = self.config
            hints = torch.zeros(1, len(roles), c.latent_channels + 1, c.latent_size, c.latent_size)
            if hint is not None:
                hints[0, roles.index(ROLE_CURRENT)] = hint
            hints = hints.to(dev, dt)
        extra = {} if hints is None else {"hint": hints}
        if grad:
            extra.update(grad=True, attention_backend=GRAD_ATTENTION_BACKEND)
        # only a ROLE_CURRENT frame's output is ever read; a commit pass needs no last-layer attention
        extra["current_only"] = True
        out = self.model.forward_cached(
            self.cache, latents[None].to(dev, dt), torch.tensor([noise], device=dev, dtype=dt),
            actions[None].to(dev, dt), poses[None].to(dev), ticks, self._text_cond, roles, **extra)
        self.timing.passes += 1
        return out[0].float() if grad else out[0].float().cpu()

    @torch.no_grad()
    def frame_view(self, latent: torch.Tensor, pose: torch.Tensor, warp: Reprojection | None = None
                   ) -> FrameView | None:
        """The view of a frame (hint models; None otherwise): decoded from its bf16-rounded latent, as
        the training views are (worldmodel.data.encode_dataset); with `warp` (compositing), the
        reprojected pixels wherever it covers."""
        if not self.config.hint:
            return None
        ae = self.autoencoder
        z = latent.to(LATENT_DTYPE).float()[None].to(ae.latent_mean.device)
        rgb = ae.decode_uint8(z)[0].cpu()
        if warp is not None:
            weight = warp.coverage[0, 0, :, :, None] * self.composite  # [H, W, 1]
            mixed = warp.rgb[0].permute(1, 2, 0) * 255 * weight + rgb.float() * (1 - weight)
            rgb = mixed.round().clamp(0, 255).to(torch.uint8)
        depth = ae.decode_depth(z)[0] if self.depth_source is None else self.depth_source(pose)
        return FrameView(rgb, depth.to(VIEW_DEPTH_DTYPE).float().cpu(), pose.clone())

    def _remember_view(self, tick: int, view: FrameView | None) -> None:
        if view is None:
            return
        self.views[tick] = view
        keep = {0, *range(tick - self.config.hint_recent + 1, tick + 1)}
        for t in [t for t in self.views if t not in keep]:
            del self.views[t]

    @torch.no_grad()
    def build_hint(self, pose: torch.Tensor, tick: int) -> torch.Tensor | None:
        """The geometric hint [C + 1, h, w] of the frame at `tick` (worldmodel.hint's source rule: start
        frame, the memory entries retrieved for it, the recent frames or the point cache); None with
        the hint off."""
        if not self.use_hint:
            return None
        self._last_warp = self._warp(pose, tick)
        return encode_hint(self.autoencoder, self._last_warp)[0].cpu()

    def _warp(self, pose: torch.Tensor, tick: int) -> Reprojection:
        """The hint's sources reprojected into `pose` (the order of worldmodel.hint.hint_source_ticks:
        recent frames, memory entries, start frame; the point cache, when on, in place of the recent
        frames and after every frame in the tie order)."""
        c = self.config
        n_recent = 0 if self.points is not None else c.hint_recent
        sources = ([self.views[t] for t in hint_recent_ticks(tick, n_recent) if t in self.views]
                   + self._memory_views + [self.views[0]])
        s_max = 1 + c.memory_entries + n_recent
        r = c.resolution
        rgb = torch.zeros(1, s_max, r, r, RGB_CHANNELS, dtype=torch.uint8)
        depth = torch.zeros(1, s_max, r, r)
        poses = torch.zeros(1, s_max, 5)
        valid = torch.zeros(1, s_max, dtype=torch.bool)
        for i, v in enumerate(sources):
            rgb[0, i], depth[0, i], poses[0, i], valid[0, i] = v.rgb, v.depth, v.pose, True
        source_ticks = torch.full((1, s_max), -1, dtype=torch.long)  # only the start frame's tick (0) matters
        source_ticks[0, len(sources) - 1] = 0
        preferred = start_preferred(source_ticks, valid, pose[None], self.views[0].pose[None], self.start_radius)
        points = None if self.points is None else self.points.points()
        return reproject(rgb, depth, poses, pose[None].float(), valid, c.fov_deg, points=points,
                         magnified=self.splat_levels, preferred=preferred,
                         bilinear=bilinear_sources(source_ticks, valid, self.sampling))

    def _commit_noised(self, latent: torch.Tensor) -> torch.Tensor:
        """A clean latent as it enters the cache: noised to ctx_noise_play (as training did)."""
        level = self.config.ctx_noise_play
        return add_noise(latent, self._noise(self._gen_ctx)[0, 0], level)

    # --- API ---
    @torch.no_grad()
    def reset(self, start_latent: torch.Tensor, start_pose: CameraPose | Sequence[float] | torch.Tensor,
              prompt: str, seed: int, start_image: torch.Tensor | None = None) -> torch.Tensor:
        """Start a session: start_latent [C, h, w] (normalised AE latent) becomes the sink frame (tick 0).

        `start_image` (uint8 [H, W, 3] at the model resolution, the picture the latent encodes) is the
        start frame's view for the hint when compositing: its pixels are sharper than any decoded
        latent (without it, or without compositing, the view is the decoded latent, as in training).
        Returns the start latent. Clears cache, memory and the pending frame; reseeds the generators.
        """
        c = self.config
        self.cache.reset()
        if self.memory is not None:
            self.memory = make_memory_store(c)
        self._gen_frame.manual_seed(int(seed))
        self._gen_ctx.manual_seed(int(seed) + CTX_SEED_OFFSET)
        self.tick = 0
        self.pose = _pose_tensor(start_pose)
        self._pending = None
        self.views = {}
        self._memory_views = []
        if self.points is not None:
            self.points.reset()
        ids, mask = self.tokenizer.encode_batch([prompt])
        self._text_cond = self.model.text_condition(ids.to(self.device), mask.to(self.device)).to(self.dtype)
        start = start_latent.float().reshape(c.latent_channels, c.latent_size, c.latent_size)
        self._run(self._commit_noised(start)[None], [c.ctx_noise_play], torch.zeros(1, ACTION_DIM),
                  self.pose[None], [0], [ROLE_SINK])
        self.last_latent = start
        view = self.frame_view(start, self.pose)
        if view is not None and start_image is not None and self.composite > 0:
            view = FrameView(torch.as_tensor(start_image, dtype=torch.uint8).reshape(view.rgb.shape), view.depth,
                             view.pose)
        self._remember_view(0, view)
        return start

    @torch.no_grad()
    def step(self, action: Sequence[float] | torch.Tensor,
             pose: CameraPose | Sequence[float] | torch.Tensor | None = None,
             observed: torch.Tensor | None = None) -> torch.Tensor:
        """Generate the next frame: `action` (5 floats) moved the camera to `pose` (integrated from the
        previous pose when None). Returns the frame's latent [C, h, w] (float32, CPU).

        With `observed` (a latent [C, h, w]) nothing is generated: the observed frame becomes this
        tick's frame (teacher forcing / prefill, e.g. replaying the outbound half of a revisit path),
        entering the window and the memory exactly as a generated frame would.
        """
        action_t, pose_t = self._action_pose(action, pose)
        if observed is not None:
            self.timing = TickTiming()
            return self._observe(observed, action_t, pose_t, self.tick + 1)
        plan = self._begin_tick(action_t, pose_t)
        _denoise_rows([self], self.cache, [plan])
        return self._end_tick(plan)

    def step_with_grad(self, action: Sequence[float] | torch.Tensor,
                       pose: CameraPose | Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """`step` whose last denoising pass runs under autograd (Self Forcing, worldmodel.self_forcing):
        -> that pass's x0 [C, h, w], with gradients to the model's weights. Everything before it (memory,
        hint, the earlier passes) runs without, and the session goes on with the detached frame exactly
        as `step` would, so a rollout of these steps is the play session's own rollout. Needs
        defer_commit=False: the frame is committed at the end of its own tick, not inside the next
        tick's first pass (which would put the commit into the graph)."""
        if self.defer_commit:
            raise ValueError("step_with_grad needs a session with defer_commit=False")
        action_t, pose_t = self._action_pose(action, pose)
        with torch.no_grad():
            plan = self._begin_tick(action_t, pose_t)
            last = plan.passes - 1
            for i in range(last):
                out = self._run(plan.x[None], [plan.levels[i]], action_t[None], pose_t[None], [plan.tick],
                                [ROLE_CURRENT], plan.hint)
                plan.x = ddim_step(plan.x, out[0], plan.levels[i], plan.levels[i + 1])
        x0 = self._run(plan.x[None], [plan.levels[last]], action_t[None], pose_t[None], [plan.tick], [ROLE_CURRENT],
                       plan.hint, grad=True)[0]
        with torch.no_grad():
            plan.x = ddim_step(plan.x, x0.detach().cpu(), plan.levels[last], plan.levels[last + 1])
            self._end_tick(plan)
        return x0

    def _action_pose(self, action: Sequence[float] | torch.Tensor,
                     pose: CameraPose | Sequence[float] | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tick's action [5] and the pose after it [5] (integrated from the current pose when None)."""
        if not self.started:
            raise RuntimeError("WorldModelSession.step called before reset")
        action_t = torch.as_tensor(action, dtype=torch.float32).reshape(ACTION_DIM)
        pose_t = CameraPose.from_sequence(self.pose.tolist()).step(action_t.tolist()).as_tensor() \
            if pose is None else _pose_tensor(pose)
        return action_t, pose_t

    def _begin_tick(self, action: torch.Tensor, pose: torch.Tensor) -> "_TickPlan":
        """Everything of a generated tick before its denoising passes: memory retrieval, the sink's
        timing, the hint, the initial noise and the context noise of the frame to commit."""
        c = self.config
        tick = self.tick + 1
        self.timing = TickTiming()
        t0 = time.perf_counter()
        self._prepare_memory(pose, tick)
        self.model.retime_sink(self.cache, tick)
        t_hint = time.perf_counter()
        hint = self.build_hint(pose, tick)
        t1 = time.perf_counter()
        self.timing.memory_ms = (t_hint - t0) * 1e3
        self.timing.hint_ms = (t1 - t_hint) * 1e3
        levels = noise_levels(self._steps(tick), c.schedule_shift)
        x = self._noise(self._gen_frame)[0, 0]  # [C, h, w]
        pending = self._pending if self.defer_commit else None
        committed = None if pending is None else self._commit_noised(pending.latent)
        return _TickPlan(action, pose, tick, levels, x, hint, pending, committed, t1)

    def _end_tick(self, plan: "_TickPlan") -> torch.Tensor:
        """Everything of a generated tick after its passes: commit (now or next tick), memory, views."""
        new = _Pending(plan.x, plan.action, plan.pose, plan.tick)
        if self.defer_commit:
            self._pending = new
        else:
            self._commit_now(new)
        self.timing.generate_ms = (time.perf_counter() - plan.started) * 1e3
        self._keep_frame(plan.x, plan.pose, plan.tick)
        self.tick, self.pose, self.last_latent = plan.tick, plan.pose, plan.x
        return plan.x

    def _observe(self, latent: torch.Tensor, action: torch.Tensor, pose: torch.Tensor, tick: int) -> torch.Tensor:
        """Take a given latent as frame `tick` (no denoising passes; a pending frame is committed now)."""
        c = self.config
        x = latent.float().cpu().reshape(c.latent_channels, c.latent_size, c.latent_size)
        self.model.retime_sink(self.cache, tick)
        if self._pending is not None:
            self._commit_now(self._pending)
            self._pending = None
        new = _Pending(x, action, pose, tick)
        if self.defer_commit:
            self._pending = new
        else:
            self._commit_now(new)
        self._keep_frame(x, pose, tick, generated=False)
        self.tick, self.pose, self.last_latent = tick, pose, x
        return x

    def _keep_frame(self, x: torch.Tensor, pose: torch.Tensor, tick: int, generated: bool = True) -> None:
        """A new frame's latent x [C, h, w] enters the memory store (and, for hint models, its view the
        recent views)."""
        t0 = time.perf_counter()
        view = self.frame_view(x, pose, self._last_warp if (self.composite > 0 and generated) else None)
        if view is not None:
            self.timing.decode_ms = (time.perf_counter() - t0) * 1e3
        self._remember_view(tick, view)
        if self.points is not None and view is not None:
            # the pixels no source covered are new to the world (an observed frame had no hint: what
            # the sources of the last hint cover of it)
            warp = self._last_warp if generated else self._warp(pose, tick)
            self.points.add(tick, view.rgb, view.depth, view.pose, warp.coverage[0, 0] == 0, self.config.fov_deg)
        if self.memory is not None:
            self.memory.add(pack_memory_payload(x, view, self.config), pose, tick)

    @property
    def started(self) -> bool:
        """Whether `reset` has run (there is a session to step or save)."""
        return self._text_cond is not None

    # --- saving and restoring (saved worlds, worldmodel.world_state) ---
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the next tick depends on, as named CPU tensors: the KV cache (`cache.*`), tick,
        pose, the prompt's conditioning, both random generators, the last latent, the frame waiting
        to be committed (`pending.*`) and, for hint models, the views the next hints reproject
        (`view.<tick>.*`). Saving the cache itself, not latents to re-derive it from, is what makes a
        resumed session continue bit-identically: the window's keys came from context kept nowhere else."""
        if not self.started:
            raise RuntimeError("WorldModelSession.state_dict before reset")
        t: dict[str, torch.Tensor] = {f"cache.{k}": v for k, v in self.cache.state_dict().items()}
        t.update({"tick": torch.tensor([self.tick], dtype=torch.long), "pose": self.pose,
                  "text_cond": self._text_cond, "gen_frame": self._gen_frame.get_state(),
                  "gen_ctx": self._gen_ctx.get_state()})
        if self.last_latent is not None:
            t["last_latent"] = self.last_latent
        if self._pending is not None:
            p = self._pending
            t.update({"pending.latent": p.latent, "pending.action": p.action, "pending.pose": p.pose,
                      "pending.tick": torch.tensor([p.tick], dtype=torch.long)})
        if self.points is not None:
            t.update({f"points.{k}": v for k, v in self.points.state_dict().items()})
        for tick, view in self.views.items():
            t.update({f"view.{tick}.rgb": view.rgb, f"view.{tick}.depth": view.depth, f"view.{tick}.pose": view.pose})
        return {k: v.detach().cpu().clone().contiguous() for k, v in t.items()}  # clone: no shared storage

    def load_state_dict(self, t: dict[str, torch.Tensor], source: str = "state") -> None:
        """Restore `state_dict()` (after a `reset` of the same model); UserError naming `source` and the
        tensor for a state this model cannot continue."""
        try:
            self.cache.load_state_dict({k[len("cache."):]: v for k, v in t.items() if k.startswith("cache.")})
        except ValueError as exc:
            raise UserError(f"{source}: {exc}") from None
        for name in ("tick", "pose", "text_cond", "gen_frame", "gen_ctx"):
            if name not in t:
                raise UserError(f"{source}: tensor {name} is missing")
        self.tick = int(t["tick"][0])
        self.pose = t["pose"].float()
        self._text_cond = t["text_cond"].to(self.device, self.dtype)
        self._gen_frame.set_state(t["gen_frame"])
        self._gen_ctx.set_state(t["gen_ctx"])
        self.last_latent = t.get("last_latent")
        self._pending = None
        if "pending.latent" in t:
            self._pending = _Pending(t["pending.latent"], t["pending.action"], t["pending.pose"],
                                     int(t["pending.tick"][0]))
        self.views = {}
        for name in t:
            if name.startswith("view.") and name.endswith(".rgb"):
                tick = int(name.split(".")[1])
                depth = check_depth(t[f"view.{tick}.depth"].float(), f"{source} (view {tick})")
                self.views[tick] = FrameView(t[name], depth, t[f"view.{tick}.pose"].float())
        if self.points is not None:
            self.points.reset()
            if "points.xyz" in t:
                self.points.load_state_dict({k[len("points."):]: v for k, v in t.items() if k.startswith("points.")})
        if self.config.hint and 0 not in self.views:
            raise UserError(f"{source}: saved without the views the geometric hint reprojects (a world saved "
                            f"before the hint, or by another model); resume it with the checkpoint that made it")

    def set_memory(self, store) -> None:
        """Use a MemoryStore loaded from a saved world (e.g. `MemoryStore.load(dir)`) from now on.

        Entries keep their ticks; call after `reset` (which starts an empty store). A store whose
        payloads are not this model's latents is refused.
        """
        if self.memory is None:
            raise UserError("this checkpoint was trained without memory; a saved memory cannot be used")
        shape = getattr(store, "payload_shape", None)
        if shape is not None and tuple(shape) != memory_payload_shape(self.config):
            why = (" (a world saved before the geometric hint keeps no views for the reprojection; "
                   "play it with that checkpoint, or start the world anew)" if self.config.hint else "")
            raise UserError(f"saved memory holds payloads of shape {list(shape)}, this model stores "
                            f"{list(memory_payload_shape(self.config))}; it was saved by another model{why}")
        self.memory = store
        self.cache.memory_ids = None  # slots of another store name other entries

    def _commit_now(self, frame: _Pending) -> None:
        committed = self._commit_noised(frame.latent)
        self._run(committed[None], [self.config.ctx_noise_play], frame.action[None], frame.pose[None],
                  [frame.tick], [ROLE_WINDOW])
        self.cache.advance_window(frame.tick)

    def _prepare_memory(self, pose: torch.Tensor, tick: int) -> None:
        """Retrieve memory entries for the frame at `tick` and write them into the cache."""
        got = prepare_memory(self.model, self.cache, [self.memory if self.use_memory else None], pose[None], tick,
                             self.dtype, key_scale=self.memory_key_scale)
        self._memory_views = got.views[0]
        self.timing.memory_entries = got.found[0]

    @torch.no_grad()
    def rollout(self, actions: torch.Tensor, poses: torch.Tensor | None = None) -> torch.Tensor:
        """Feed actions [T, 5] (and poses [T, 5] after each action) -> latents [T, C, h, w]."""
        out = []
        for i in range(actions.shape[0]):
            out.append(self.step(actions[i], None if poses is None else poses[i]))
        return torch.stack(out)


class ModelFrameSource:
    """The learned generator as a game FrameSource (see game/frame_source.py): uint8 frames in/out."""

    name = "model"
    saves_worlds = True
    """Saved worlds (worldmodel.world_state) keep and continue this source's memory and generator state."""

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", use_memory: bool = True,
                 dtype: torch.dtype | None = None, sample_steps: int | None = None,
                 precision: str | None = None, hint: bool | None = None, composite: float | None = None,
                 point_cache: int | None = None, splat_levels: bool | None = None,
                 start_radius: float | None = None, sampling: str | None = None,
                 memory_key_scale: float | None = None) -> None:
        """`precision` ("fp32" / "bf16", see PRECISIONS) or `dtype` picks the generator's dtype (fp32 by
        default; not both). The autoencoder always decodes in fp32. `hint`: build the geometric hint
        (None = whenever the checkpoint reads one; True for a checkpoint without it is refused).
        `composite`, `point_cache`, `splat_levels`, `start_radius`, `sampling`: the checkpoint's
        hint_composite, hint_point_cache, hint_splat_levels, hint_start_radius and hint_sampling by
        default; `memory_key_scale` its memory_key_scale (refused for a model without memory)."""
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        model, autoencoder, config = load_checkpoint(self.checkpoint_path)
        self.checkpoint_sha256 = checkpoint_sha256(self.checkpoint_path)
        self.config = config
        self.resolution = config.resolution
        self.device = torch.device(device)
        if dtype is not None and precision is not None:
            raise ValueError("give dtype or precision, not both")
        run_dtype = dtype if dtype is not None else precision_dtype(precision or DEFAULT_PRECISION)
        self.precision = next((n for n, d in PRECISIONS.items() if d == run_dtype), str(run_dtype))
        """The generator's precision name, recorded in action logs so a replay uses the same one."""
        self.autoencoder = autoencoder.eval().to(self.device)
        if hint and not config.hint:
            raise UserError(f"{self.checkpoint_path}: --hint on needs a checkpoint trained with the geometric "
                            f"hint (and an autoencoder with a depth head); this one has neither, so play it "
                            f"with --hint off")
        settings = {"splat-levels": splat_levels, "point-cache": point_cache, "composite": composite,
                    "start-radius": start_radius, "sampling": sampling}
        given = [f"--{flag}" for flag, value in settings.items() if value is not None]
        use_hint = config.hint if hint is None else hint
        if given and not use_hint:
            # one refusal for every command (play, replay, eval, bench, strip): a setting that would
            # silently do nothing makes a measurement say what it did not measure
            raise UserError(f"{self.checkpoint_path}: {', '.join(given)} set the geometric hint, which is off "
                            f"here ({'--hint off' if hint is False else 'this checkpoint has no hint'})")
        if memory_key_scale is not None and not config.use_memory:
            raise UserError(f"{self.checkpoint_path}: --memory-key-scale sets the memory, and this checkpoint "
                            f"has none")
        self.session = WorldModelSession(model, device=self.device, dtype=run_dtype, use_memory=use_memory,
                                         sample_steps=sample_steps, autoencoder=self.autoencoder,
                                         use_hint=use_hint, composite=composite,
                                         point_cache=point_cache, splat_levels=splat_levels,
                                         start_radius=start_radius, sampling=sampling,
                                         memory_key_scale=memory_key_scale)
        self.hint = self.session.use_hint
        """Whether frames are generated with the geometric hint (recorded in action logs)."""
        self.pose_history: deque[list[float]] = deque(maxlen=PATH_HISTORY)
        """The last PATH_HISTORY poses since the reset (start pose first), for the memory map."""

    @property
    def memory(self):
        """The session's MemoryStore (save/load a world, draw the map); None for a memory-free model."""
        return self.session.memory

    @memory.setter
    def memory(self, store) -> None:
        self.session.set_memory(store)

    @property
    def timing(self) -> TickTiming:
        return self.session.timing

    @property
    def use_memory(self) -> bool:
        """Whether frames are generated with the memory (`--memory`; recorded in action logs)."""
        return self.session.use_memory

    @property
    def memory_key_scale(self) -> float | None:
        """The scale of the memory's keys (`--memory-key-scale`, else the checkpoint's; recorded in
        action logs so a replay attends the same); None for a model without memory."""
        return self.session.memory_key_scale if self.config.use_memory else None

    @property
    def sample_steps(self) -> int:
        """Denoising steps per frame after the warm-up frames (`--steps`, else the checkpoint's
        sample_steps; recorded in action logs so a replay samples the same)."""
        return self.session.sample_steps or self.config.sample_steps

    @property
    def start_radius(self) -> float | None:
        """The hint's start radius (recorded in action logs); None with the hint off."""
        return self.session.start_radius if self.hint else None

    @property
    def sampling(self) -> str | None:
        """The hint's colour sampling (recorded in action logs); None with the hint off."""
        return self.session.sampling if self.hint else None

    @torch.no_grad()
    def _decode(self, latent: torch.Tensor, session: WorldModelSession | None = None) -> np.ndarray:
        """The frame of `latent`, the current frame of `session` (this source's own by default)."""
        session = self.session if session is None else session
        t0 = time.perf_counter()
        view = session.views.get(session.tick)
        if view is not None and latent is session.last_latent:
            return view.rgb.numpy()  # a hint model decoded this frame already, for its view (timed there)
        frame = self.autoencoder.decode_uint8(latent[None].to(self.device))[0]
        session.timing.decode_ms = (time.perf_counter() - t0) * 1e3
        return frame.cpu().numpy()

    def current_depth(self) -> torch.Tensor | None:
        """Depth [H, W] (conventions.depth) of the current tick's frame as the hint reprojects it
        later (its view's), or None for a model without the hint. Eval scores it against the oracle:
        how good the geometry play feeds back into its own hints is."""
        view = self.session.views.get(self.session.tick)
        return None if view is None else view.depth

    @torch.no_grad()
    def current_frame(self) -> np.ndarray:
        """The frame of the current tick, decoded again (e.g. after resuming a saved world)."""
        if self.session.last_latent is None:
            raise RuntimeError("ModelFrameSource.current_frame before reset")
        return self._decode(self.session.last_latent)

    @torch.no_grad()
    def reset(self, scene, start_pose: CameraPose, prompt: str, seed: int) -> np.ndarray:
        """Encode the scene's start image (resized to the model resolution) as the sink frame."""
        image = self.reset_session(self.session, scene, start_pose, prompt, seed)
        self.pose_history = deque([_pose_tensor(start_pose).tolist()], maxlen=PATH_HISTORY)
        return image

    @torch.no_grad()
    def reset_session(self, session: WorldModelSession, scene, start_pose: CameraPose, prompt: str,
                      seed: int) -> np.ndarray:
        """`reset` for any session of this model (a row of a `ModelFrameBatch`); returns the start frame."""
        image = self._prepare_image(scene.image)
        session.reset(self._encode(image), start_pose, prompt, seed, start_image=torch.from_numpy(image))
        return image

    def _prepare_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.shape[:2] != (self.resolution, self.resolution):
            image = resize_image(image, self.resolution)
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _encode(self, image: np.ndarray) -> torch.Tensor:
        frame = torch.from_numpy(image)[None].to(self.device)  # [1, H, W, 3] uint8
        return self.autoencoder.encode(frame)[0].float().cpu()  # [C, h, w]

    @torch.no_grad()
    def step(self, action: Sequence[float], pose: CameraPose, observed: np.ndarray | None = None) -> np.ndarray:
        """The frame after `action` at `pose`; with `observed` (uint8 [H, W, 3], any size) that true frame
        is fed to the model instead of generating one (teacher forcing) and returned."""
        self.pose_history.append(_pose_tensor(pose).tolist())
        if observed is not None:
            image = self._prepare_image(observed)
            self.session.step(action, pose, observed=self._encode(image))
            return image
        return self._decode(self.session.step(action, pose))


class SessionBatch:
    """N play sessions stepped together: one batched cached pass per denoising step for all of them.

    Why rows of one cache rather than N caches: the transformer pass is the bulk of a tick, and one
    pass over N rows replaces N passes. Each row is a full `WorldModelSession` (memory store,
    generators, views, ring position) running in one row of a shared `KVCache(batch=N)`
    (`KVCache.row`), so a row resets, retrieves its memory, builds its hint and decodes exactly as a
    lone session does, at its own tick; only the denoising passes are shared (`_denoise_rows`), and
    they give every row the numbers it would get alone.
    """

    def __init__(self, model: WorldModel, size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, **session_options) -> None:
        """`session_options`: `WorldModelSession`'s (use_memory, sample_steps, autoencoder, use_hint,
        composite, point_cache, splat_levels, start_radius, sampling, memory_key_scale) for every row."""
        if size < 1:
            raise ValueError(f"a session batch has at least one row, got {size}")
        self.cache = KVCache(model.config, batch=size, device=device, dtype=dtype)
        self.rows = [WorldModelSession(model, device=device, dtype=dtype, cache=self.cache.row(i), **session_options)
                     for i in range(size)]

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def step(self, actions: Sequence[Sequence[float] | torch.Tensor | None],
             poses: Sequence[CameraPose | Sequence[float] | torch.Tensor | None]) -> list[torch.Tensor | None]:
        """One tick of every row whose action is not None (the others, e.g. rows just reset, keep their
        state): -> each stepped row's latent [C, h, w] (None for the others). Every row must be reset."""
        if len(actions) != len(self.rows) or len(poses) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows, got {len(actions)} actions and {len(poses)} poses")
        if not all(row.started for row in self.rows):
            raise RuntimeError("SessionBatch.step before every row was reset")
        plans = [None if action is None else row._begin_tick(*row._action_pose(action, pose))
                 for row, action, pose in zip(self.rows, actions, poses)]
        _denoise_rows(self.rows, self.cache, plans)
        return [None if plan is None else row._end_tick(plan) for row, plan in zip(self.rows, plans)]


class ModelFrameBatch:
    """N model frame sources in one: the frames `ModelFrameSource` would make for N sessions, generated
    by a `SessionBatch` (the batched environment, `worldmodel.env.ExploreVectorEnv`, steps these)."""

    name = "model"

    def __init__(self, source: ModelFrameSource, size: int) -> None:
        """`source` lends its checkpoint, settings (precision, hint, memory, steps) and weights."""
        one = source.session
        self.source = source
        self.resolution = source.resolution
        self.sessions = SessionBatch(one.model, size, one.device, one.dtype, use_memory=one.use_memory,
                                     sample_steps=one.sample_steps, autoencoder=source.autoencoder,
                                     use_hint=one.use_hint, composite=one.composite,
                                     point_cache=0 if one.points is None else one.points.max_points,
                                     splat_levels=one.splat_levels, start_radius=one.start_radius,
                                     sampling=one.sampling, memory_key_scale=one.memory_key_scale)

    def __len__(self) -> int:
        return len(self.sessions)

    def reset(self, index: int, scene, start_pose: CameraPose, prompt: str, seed: int) -> np.ndarray:
        """Start row `index` (as `ModelFrameSource.reset`); returns its first frame."""
        return self.source.reset_session(self.sessions.rows[index], scene, start_pose, prompt, seed)

    def step(self, actions: Sequence[Sequence[float] | None], poses: Sequence[CameraPose | None]
             ) -> list[np.ndarray | None]:
        """The frames after one tick of every row whose action is not None (None for the others)."""
        latents = self.sessions.step(actions, poses)
        return [None if z is None else self.source._decode(z, row) for z, row in zip(latents, self.sessions.rows)]

