"""The causal world-model transformer (docs/architecture.md §The generator): one network, two ways to run it.

* `WorldModel.forward_joint(batch)` — training: one pass over many frames of a clip (clean context
  copies and noisy targets) with a block mask that gives every frame exactly the keys it would see at
  play time (`build_joint_mask`).
* `WorldModel.forward_cached(cache, ...)` — play: one or two frames of queries against the
  preallocated `KVCache` (sink | memory | window ring | current), writing their keys/values in place.

Both paths share every projection and positional function below, and everything positional is baked
into q/k/v before caching, so the two agree exactly (tests/test_model.py checks it).

Per-token layout: a latent frame [C, h, w] is h*w tokens (patch 1) embedded by a linear layer plus a
learnt absolute patch embedding. Conditioning is per frame through adaLN-zero: the frame's noise
level (sinusoidal + MLP) + its relative action (MLP) + the pooled prompt embedding.

Camera encoding (GTA / PRoPE style, relative and cache-safe): each head's dims are [camera | RoPE].
The camera part is a stack of homogeneous 4-vectors:
    q~_i = T_i^T q_i,   k~_j = T_j^{-1} k_j,   v~_j = T_j^{-1} v_j,   o_i = T_i (sum_j a_ij v~_j)
with T = world_to_camera(pose, positions scaled by `camera_position_scale`), so q~_i . k~_j =
q_i^T (T_i T_j^{-1}) k_j depends only on the relative transform between the two cameras: moving and
rotating the whole world (all poses) by one rigid transform changes nothing. The RoPE part rotates
pairs of dims by the token's patch row, patch column and frame tick, so attention logits depend on
relative patch offsets and relative time only. The sink never looks older than `max_time_offset`; memory keys
are timeless (their time dims are zero), so a memory entry's K/V depend only on its latent and pose and
are reused for as long as the same entries are retrieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from conventions.camera import ACTION_DIM, camera_to_world, world_to_camera
from worldmodel.config import CAMERA_BLOCK, WorldModelConfig
from worldmodel.hint import hint_channels
from worldmodel.kv_cache import KVCache
from worldmodel.text import TextEncoder
from kernels.attention import cached_attention

NOISE_EMBED_DIM = 256
"""Width of the sinusoidal noise-level features before the MLP."""
NOISE_EMBED_SCALE = 1000.0
"""Noise levels in [0, 1] are multiplied by this before the sinusoids (DiT timestep convention)."""
NOISE_EMBED_MAX_PERIOD = 10000.0
INIT_STD = 0.02
NORM_EPS = 1e-6

ROLE_SINK, ROLE_WINDOW, ROLE_CURRENT = "sink", "window", "current"
"""Where a frame of a cached pass is written: the sink, the ring buffer, or the current slots."""


# --------------------------------------------------------------------------------------------------
# positional helpers (shared by the joint and the cached path)
# --------------------------------------------------------------------------------------------------
def rope_frequencies(dims: int, base: float) -> torch.Tensor:
    """dims/2 angular frequencies (float64) from 1 down to base^-(dims-2)/dims."""
    return base ** (-torch.arange(0, dims, 2, dtype=torch.float64) / max(dims, 1))


def rope_cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation angles [..., n] (float64, so tick * frequency stays exact after hours of play) ->
    cos, sin [..., 2n] in float32, duplicated for the rotate-half pairing of `rotate_half_pairs`."""
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)


def rotate_half_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + n]) of x [..., 2n] by angles whose cos/sin [..., 2n] broadcast to x.

    The reference form of the rotation that `PositionEncoder` bakes into its per-token matrices.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def pose_matrices(poses: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """poses [..., 5] -> (T, T^-1) each [..., 4, 4] float32: world_to_camera / camera_to_world of the
    pose with its position scaled (metres -> ~unit)."""
    p = poses.float().clone()
    p[..., :3] = p[..., :3] * scale
    return world_to_camera(p), camera_to_world(p)


@dataclass
class Positions:
    """Everything positional for G frames (or memory entries) of T tokens each, as right-multiplied
    matrices (row-vector convention: encoded = x @ map) over one head's D dims.

    q_map, k_map [B, G, T, D, D]: camera block (T_i^T q, T_j^-1 k) + RoPE rotation by patch and tick.
    v_map, out_map [B, G, D, D]: camera block only (T_j^-1 v, T_i o), identity elsewhere; None when
    `camera_values` is off. k_untimed_map / time_map: the key map split into its patch part and its
    tick part (only built for the sink, whose keys are re-timed later).
    """

    q_map: torch.Tensor
    k_map: torch.Tensor
    v_map: torch.Tensor | None
    out_map: torch.Tensor | None
    k_untimed_map: torch.Tensor | None = None
    time_map: torch.Tensor | None = None


class PositionEncoder(nn.Module):
    """Bakes camera pose, patch position and tick into q/k/v (no parameters; tables as buffers).

    Head dims are [camera (n 4-vectors) | RoPE (R dims = R/2 rotation pairs (i, i + R/2))]: the first
    pairs rotate with the patch row, then the column, the last ones with the tick. Camera transform and
    rotations are combined into one D x D matrix per token, built once per pass and applied with one
    batched matmul per tensor and layer (in float32; the result is cast back to the activations'
    dtype). This keeps the per-layer op count small, which dominates play-time cost on a CPU.
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.dim = c.head_dim
        self.cam = c.camera_dims
        self.blocks = c.camera_dims // CAMERA_BLOCK
        self.spatial_pairs = (c.rope_row_dims + c.rope_col_dims) // 2
        self.time_pairs = c.rope_time_dims // 2
        pairs = self.spatial_pairs + self.time_pairs
        self.register_buffer("time_freqs", rope_frequencies(c.rope_time_dims, c.rope_time_base), persistent=False)
        row_f = rope_frequencies(c.rope_row_dims, c.rope_spatial_base)
        col_f = rope_frequencies(c.rope_col_dims, c.rope_spatial_base)
        frame_grid = torch.arange(c.latent_size, dtype=torch.float64)
        mem_grid = 2.0 * torch.arange(c.memory_grid, dtype=torch.float64) + 0.5  # centres of 2x2 patches
        for name, grid in (("frame", frame_grid), ("memory", mem_grid)):
            rows, cols = torch.meshgrid(grid, grid, indexing="ij")
            angles = torch.cat([rows.flatten()[:, None] * row_f, cols.flatten()[:, None] * col_f,
                                torch.zeros(rows.numel(), self.time_pairs, dtype=torch.float64)], dim=-1)
            self.register_buffer(f"{name}_angles", angles, persistent=False)  # [T, R/2] float64
        first = self.cam + torch.arange(pairs)
        self.register_buffer("pair_a", first, persistent=False)
        self.register_buffer("pair_b", first + pairs, persistent=False)
        self.register_buffer("rope_diag", torch.arange(self.cam, self.dim), persistent=False)
        self.register_buffer("cam_diag", torch.arange(self.cam), persistent=False)
        self.register_buffer("block_eye", torch.eye(self.blocks), persistent=False)
        timeless = torch.ones(self.dim)
        timeless[first[self.spatial_pairs:]] = 0.0
        timeless[first[self.spatial_pairs:] + pairs] = 0.0
        self.register_buffer("timeless", timeless, persistent=False)
        """[D] mask that zeroes the time pairs: a key without them is seen the same from any tick."""

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Keep the float64 angle tables float64 when the model is cast (`model.to(torch.bfloat16)` at
        play): rounding the frequencies would shift every relative angle (by up to ~1 rad at 256 ticks
        in bf16) away from what training saw; the tables only move to the new device."""
        exact = {name: buf for name, buf in self._buffers.items() if buf is not None and buf.dtype == torch.float64}
        super()._apply(fn, recurse)
        for name, buf in exact.items():
            self._buffers[name] = buf.to(self._buffers[name].device)
        return self

    # --- building maps ---
    def time_angles(self, ticks: torch.Tensor) -> torch.Tensor:
        """ticks [B, G] -> angles [B, G, R/2] (float64; zero for the spatial pairs)."""
        t = ticks.to(torch.float64)[..., None] * self.time_freqs
        return torch.cat([torch.zeros(*t.shape[:-1], self.spatial_pairs, dtype=torch.float64, device=t.device), t], -1)

    def _map(self, block: torch.Tensor | None, angles: torch.Tensor | None, lead: tuple[int, ...]) -> torch.Tensor:
        """D x D maps [*lead, D, D]: `block` [B, G, 4, 4] (row convention, repeated along the camera
        dims, broadcast over tokens) or identity; rotation by `angles` [*lead, R/2] or identity."""
        m = torch.zeros(*lead, self.dim, self.dim, device=self.time_freqs.device)
        if block is None:
            m[..., self.cam_diag, self.cam_diag] = 1.0
        else:
            blockdiag = (self.block_eye[:, None, :, None] * block[..., None, :, None, :]).flatten(-4, -3).flatten(-2)
            if len(lead) > block.dim() - 2:  # per-token map: broadcast the frame's block over tokens
                blockdiag = blockdiag.unsqueeze(-3)
            m[..., : self.cam, : self.cam] = blockdiag
        if angles is None:
            m[..., self.rope_diag, self.rope_diag] = 1.0
        else:
            cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
            a, b = self.pair_a, self.pair_b
            m[..., a, a] = cos
            m[..., b, b] = cos
            m[..., b, a] = -sin
            m[..., a, b] = sin
        return m

    def positions(self, poses: torch.Tensor, ticks: torch.Tensor, memory: bool = False,
                  split_time: bool = False) -> Positions:
        """poses [B, G, 5], ticks [B, G] (temporal position of each frame / entry) -> Positions."""
        with _full_precision(poses):
            w2c, c2w = pose_matrices(poses, self.config.camera_position_scale)
            spatial = getattr(self, "memory_angles" if memory else "frame_angles")  # [T, R/2]
            timed = self.time_angles(ticks)  # [B, G, R/2]
            b, g = ticks.shape
            lead = (b, g, spatial.shape[0])
            angles = spatial + timed[:, :, None, :]  # [B, G, T, R/2]
            # row convention: q~ = T^T q  ->  q @ T ; k~ = T^-1 k  ->  k @ T^-T ; out = T o  ->  o @ T^T
            c2w_t = c2w.transpose(-1, -2)
            pos = Positions(self._map(w2c, angles, lead), self._map(c2w_t, angles, lead),
                            self._map(c2w_t, None, (b, g)) if self.config.camera_values else None,
                            self._map(w2c.transpose(-1, -2), None, (b, g)) if self.config.camera_values else None)
            if split_time:
                pos.k_untimed_map = self._map(c2w_t, spatial.expand(b, g, -1, -1), lead)
                pos.time_map = self._map(None, timed, (b, g))
            return pos

    def time_map(self, ticks: torch.Tensor) -> torch.Tensor:
        """ticks [B, G] -> [B, G, D, D] rotating only the time pairs (to re-time the sink)."""
        return self._map(None, self.time_angles(ticks), tuple(ticks.shape))

    # --- applying maps ---
    @staticmethod
    def per_token(x: torch.Tensor, token_map: torch.Tensor) -> torch.Tensor:
        """x [B, G, T, H, D] @ per-token maps [B, G, T, D, D] -> [B, G, T, H, D] (x's dtype)."""
        with _full_precision(x):
            return (x.float() @ token_map).to(x.dtype)

    @staticmethod
    def per_frame(x: torch.Tensor, frame_map: torch.Tensor | None) -> torch.Tensor:
        """x [B, G, T, H, D] @ per-frame maps [B, G, D, D] -> [B, G, T, H, D] (identity for None)."""
        if frame_map is None:
            return x
        with _full_precision(x):
            return (x.float().flatten(2, 3) @ frame_map).view(x.shape).to(x.dtype)


def _hint_tokens(hint: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """hint [B, G, C + 1, h, w] -> per-token features [B, G, P, C + 1]."""
    return hint.flatten(-2).transpose(-1, -2).to(dtype)


def _per_frame(fn, *args: torch.Tensor | None):
    """`fn(*args)` computed for each frame alone (args [B, G, ...]), results put back together [B, G, ...]
    (tuples part by part).

    Why: a cached pass conditions each frame through small linear layers with one row per frame,
    and for 1-3 rows BLAS takes a GEMV path whose sums round differently from its GEMM path. Frame
    by frame, a play session's numbers are bit for bit the same alone, in a pass that also commits a
    frame, or as a row of a batch of sessions (`worldmodel.runtime.SessionBatch`; tests/test_env.py)."""
    lead = next(a for a in args if a is not None).shape[:2]
    if lead == (1, 1):
        return fn(*args)
    outs = [[fn(*(None if a is None else a[b: b + 1, f: f + 1] for a in args)) for f in range(lead[1])]
            for b in range(lead[0])]
    if isinstance(outs[0][0], tuple):
        return tuple(torch.cat([torch.cat([o[i] for o in row], 1) for row in outs]) for i in range(len(outs[0][0])))
    return torch.cat([torch.cat(row, 1) for row in outs])


def _kept_entries(held: tuple | None, wanted: tuple | None) -> dict[int, int]:
    """For a one-row cache: {position in `wanted`: position in `held`} of the entries (names, as
    `WorldModel.write_memory` takes them) the cache's memory slots already hold."""
    if held is None or wanted is None or len(held) != 1 or len(wanted) != 1:
        return {}
    where = {name: i for i, name in enumerate(held[0])}
    return {j: where[name] for j, name in enumerate(wanted[0]) if name in where}


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Positional maths runs in float32 even under bf16 autocast (poses and angles need the bits)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


# --------------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------------
def noise_features(levels: torch.Tensor, dim: int = NOISE_EMBED_DIM) -> torch.Tensor:
    """Sinusoidal features of noise levels [...] in [0, 1] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(NOISE_EMBED_MAX_PERIOD) * torch.arange(half, device=levels.device) / half)
    args = levels.float()[..., None] * NOISE_EMBED_SCALE * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
    """adaLN: x * multiplier + shift (the multiplier's bias starts at 1, see `_init_modulation`)."""
    return torch.addcmul(shift, x, multiplier)


def _init_modulation(linear: nn.Linear, d: int, multipliers: tuple[int, ...]) -> None:
    """adaLN-zero: every output starts at 0 except the multipliers (chunks listed), which start at 1,
    so each block starts as the identity and the output layer as zero."""
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    with torch.no_grad():
        for chunk in multipliers:
            linear.bias[chunk * d: (chunk + 1) * d] = 1.0


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-zero (shift/scale/gate for attention and MLP)."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=NORM_EPS)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=NORM_EPS)
        hidden = int(d * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.cond_dim, 6 * d))
        _init_modulation(self.modulation[1], d, multipliers=(1, 4))
        if config.use_memory:
            # memory entries become keys/values directly (never run through the residual stream)
            self.mem_norm = nn.LayerNorm(d, eps=NORM_EPS)
            self.mem_kv = nn.Linear(d, 2 * d)

    def mods(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond [B, G, cond] -> six [B, G, 1, d]: shift, multiplier, gate (attention), same (MLP)."""
        b, g, _ = cond.shape
        return self.modulation(cond).view(b, g, 1, 6, -1).unbind(3)

    def qkv_tokens(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, G, T, d] -> q, k, v [B, G, T, H, dh] (q, k RMS-normalised, nothing positional yet)."""
        b, g, t, _ = x.shape
        h = _modulate(self.norm1(x), shift, scale)
        q, k, v = self.qkv(h).view(b, g, t, 3, self.heads, self.head_dim).unbind(3)
        return self.q_norm(q), self.k_norm(k), v

    def memory_kv(self, m: torch.Tensor, timeless: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory tokens [B, E, Tm, d] -> k, v [B, E, Tm, H, dh]; k's time dims zeroed by `timeless` [dh]."""
        b, e, t, _ = m.shape
        k, v = self.mem_kv(self.mem_norm(m)).view(b, e, t, 2, self.heads, self.head_dim).unbind(3)
        return self.k_norm(k) * timeless.to(k.dtype), v

    def finish(self, x: torch.Tensor, att: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Residual updates after attention; att [B, G, T, H, dh] -> new x [B, G, T, d]."""
        _, _, gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a * self.proj(att.flatten(-2))
        return x + gate_m * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


def to_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, G, T, H, D] -> [B, H, G*T, D] (the attention / cache layout)."""
    b, g, t, h, d = x.shape
    return x.permute(0, 3, 1, 2, 4).reshape(b, h, g * t, d)


def from_heads(x: torch.Tensor, g: int) -> torch.Tensor:
    """[B, H, G*T, D] -> [B, G, T, H, D]."""
    b, h, n, d = x.shape
    return x.view(b, h, g, n // g, d).permute(0, 2, 3, 1, 4)


@dataclass
class JointBatch:
    """A training pass over G frames of B clips (see `build_joint_mask` for who sees whom).

    latents   [B, G, C, h, w]  model input (clean copies already noise-augmented, targets noised)
    noise     [B, G]           noise level of each frame (what the model is told)
    actions   [B, G, 5]        relative action that led to the frame
    poses     [B, G, 5]        absolute camera pose of the frame
    ticks     [B, G] int64     frame index in its clip (0 = the sink / start frame)
    clean     [B, G] bool      clean context copy (True) or noisy target (False)
    sink      [B, G] bool      the sink frame (seen by every frame of the clip)
    valid     [B, G] bool      padding frames are False (seen by nobody but themselves)
    text_ids  [B, L] int64, text_mask [B, L] bool
    mem_latents [B, E, C, h, w], mem_poses [B, E, 5], mem_owner [B, E] int64 (index in G of the noisy
    frame that retrieved it), mem_valid [B, E] bool; all None when there is no memory.
    hint      [B, G, C + 1, h, w] the geometric hint of each frame (worldmodel.hint; zeros for clean
              frames); None for a model without hint inputs.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    actions: torch.Tensor
    poses: torch.Tensor
    ticks: torch.Tensor
    clean: torch.Tensor
    sink: torch.Tensor
    valid: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    mem_latents: torch.Tensor | None = None
    mem_poses: torch.Tensor | None = None
    mem_owner: torch.Tensor | None = None
    mem_valid: torch.Tensor | None = None
    hint: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "JointBatch":
        return JointBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                             for f in fields(self)})


def build_joint_mask(ticks: torch.Tensor, clean: torch.Tensor, sink: torch.Tensor, valid: torch.Tensor,
                     window: int, tokens_per_frame: int, mem_owner: torch.Tensor | None = None,
                     mem_valid: torch.Tensor | None = None, memory_tokens: int = 0) -> torch.Tensor:
    """Token-level attention mask of a joint pass: [B, G*P, G*P + E*Tm] bool (True = may attend).

    Query frame i sees key frame j iff j == i (bidirectional within a frame), or j is a valid clean
    frame and either the sink or one of the frames just before i in the ring buffer: a noisy frame
    sees the `window` previous frames (tick_i - window <= tick_j < tick_i); a clean frame being
    committed takes the ring slot of the oldest one, so it sees the `window - 1` previous frames.
    Memory entries are seen only by the noisy frame that retrieved them. This is exactly what the
    play-time cache holds when frame i is denoised (noisy) or committed (clean).
    """
    g = ticks.shape[1]
    eye = torch.eye(g, dtype=torch.bool, device=ticks.device)[None]  # [1, G, G]
    ti, tj = ticks[:, :, None], ticks[:, None, :]
    span = window - clean.long()[:, :, None]  # [B, G, 1]: W for noisy queries, W - 1 for clean ones
    in_window = (tj < ti) & (tj >= ti - span)
    ctx = (clean & valid)[:, None, :] & (sink[:, None, :] | in_window)
    frame_vis = eye | ctx  # [B, G, G]
    mask = frame_vis.repeat_interleave(tokens_per_frame, 1).repeat_interleave(tokens_per_frame, 2)
    if mem_owner is None or mem_owner.shape[1] == 0:
        return mask
    frame_idx = torch.arange(g, device=ticks.device)
    mem_vis = (frame_idx[None, :, None] == mem_owner[:, None, :]) & mem_valid[:, None, :] & ~clean[:, :, None]
    mem_mask = mem_vis.repeat_interleave(tokens_per_frame, 1).repeat_interleave(memory_tokens, 2)
    return torch.cat([mask, mem_mask], dim=2)


class WorldModel(nn.Module):
    """Causal latent-video transformer conditioned on actions, camera poses and a prompt."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c, d = config, config.d_model
        self.patch_in = nn.Linear(c.latent_channels, d)
        self.patch_pos = nn.Parameter(torch.randn(c.tokens_per_frame, d) * INIT_STD)
        self.noise_mlp = nn.Sequential(nn.Linear(NOISE_EMBED_DIM, c.cond_dim), nn.SiLU(),
                                       nn.Linear(c.cond_dim, c.cond_dim))
        self.action_mlp = nn.Sequential(nn.Linear(ACTION_DIM, c.cond_dim), nn.SiLU(),
                                        nn.Linear(c.cond_dim, c.cond_dim))
        self.register_buffer("action_scale", torch.tensor(c.action_scale, dtype=torch.float32), persistent=False)
        self.text_encoder = TextEncoder(len(c.vocab), c.text_dim, c.text_layers, c.text_heads, c.max_text_tokens)
        self.text_proj = nn.Linear(c.text_dim, c.cond_dim)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.layers)])
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=NORM_EPS)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(c.cond_dim, 2 * d))
        self.patch_out = nn.Linear(d, c.latent_channels)
        _init_modulation(self.final_mod[1], d, multipliers=(1,))
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)
        if c.use_memory:
            mem_in = c.latent_channels * (4 if c.memory_compression == "patch" else 1)
            self.mem_in = nn.Linear(mem_in, d)
            self.mem_pos = nn.Parameter(torch.randn(c.memory_tokens, d) * INIT_STD)
        if c.hint:
            # the geometric hint (worldmodel.hint) enters each token's embedding and, through a
            # per-token skip, its output; both start at zero, so a fine-tune from a hint-free
            # checkpoint starts as that checkpoint
            hc = hint_channels(c.latent_channels)
            self.hint_in = nn.Linear(hc, d)
            self.hint_out = nn.Linear(hc, c.latent_channels)
            for layer in (self.hint_in, self.hint_out):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.pos = PositionEncoder(c)

    # --- embeddings ---
    def text_condition(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prompt ids/mask [B, L] -> its contribution to every frame's condition [B, cond]."""
        return self.text_proj(self.text_encoder(ids, mask))

    def frame_condition(self, noise: torch.Tensor, actions: torch.Tensor, text_cond: torch.Tensor) -> torch.Tensor:
        """noise [B, G], actions [B, G, 5], text_cond [B, cond] -> per-frame condition [B, G, cond]."""
        dtype = self.patch_in.weight.dtype
        a = (actions.float() / self.action_scale).to(dtype)
        return self.noise_mlp(noise_features(noise).to(dtype)) + self.action_mlp(a) + text_cond[:, None, :].to(dtype)

    def embed_frames(self, latents: torch.Tensor, hint: torch.Tensor | None = None) -> torch.Tensor:
        """[B, G, C, h, w] (+ hint [B, G, C + 1, h, w]) -> tokens [B, G, P, d]."""
        tokens = latents.flatten(-2).transpose(-1, -2)  # [B, G, P, C]
        x = self.patch_in(tokens.to(self.patch_in.weight.dtype)) + self.patch_pos
        if hint is not None and self.config.hint:
            x = x + self.hint_in(_hint_tokens(hint, self.hint_in.weight.dtype))
        return x

    def compress_memory(self, latents: torch.Tensor) -> torch.Tensor:
        """Memory payloads [B, E, C, h, w] -> memory tokens [B, E, Tm, d] (2x2 pool or 2x2 patches)."""
        b, e, ch, h, w = latents.shape
        x = latents.reshape(b * e, ch, h, w).to(self.mem_in.weight.dtype)
        if self.config.memory_compression == "pool":
            x = F.avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # [BE, Tm, C]
        else:
            x = F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)  # [BE, Tm, 4C]
        return (self.mem_in(x) + self.mem_pos).view(b, e, self.config.memory_tokens, -1)

    def output(self, x: torch.Tensor, cond: torch.Tensor, hint: torch.Tensor | None = None) -> torch.Tensor:
        """Final adaLN + projection: x [B, G, P, d] -> predicted clean latents [B, G, C, h, w]."""
        b, g, _ = cond.shape
        shift, multiplier = self.final_mod(cond).view(b, g, 1, 2, -1).unbind(3)
        out = self.patch_out(_modulate(self.final_norm(x), shift, multiplier))  # [B, G, P, C]
        if hint is not None and self.config.hint:
            out = out + self.hint_out(_hint_tokens(hint, self.hint_out.weight.dtype))
        s = self.config.latent_size
        return out.transpose(-1, -2).unflatten(-1, (s, s)).float()

    def sink_time(self, newest_tick: int | torch.Tensor) -> int | torch.Tensor:
        """Temporal position of the sink when the newest frame in a pass has `newest_tick`."""
        if isinstance(newest_tick, torch.Tensor):
            return (newest_tick - self.config.max_time_offset).clamp_min(0)
        return max(0, newest_tick - self.config.max_time_offset)

    # --- training: one joint pass ---
    def forward_joint(self, batch: JointBatch) -> torch.Tensor:
        """All frames of `batch` in one pass -> predicted clean latents [B, G, C, h, w]."""
        c = self.config
        bsz, g = batch.ticks.shape
        text_cond = self.text_condition(batch.text_ids, batch.text_mask)
        cond = self.frame_condition(batch.noise, batch.actions, text_cond)  # [B, G, cond]
        x = self.embed_frames(batch.latents, batch.hint)  # [B, G, P, d]
        newest = torch.where(batch.valid, batch.ticks, torch.zeros_like(batch.ticks)).amax(1, keepdim=True)
        time_ticks = torch.where(batch.sink, self.sink_time(newest).expand_as(batch.ticks), batch.ticks)
        pos = self.pos.positions(batch.poses, time_ticks)
        use_mem = c.use_memory and batch.mem_latents is not None and batch.mem_latents.shape[1] > 0
        mask = build_joint_mask(batch.ticks, batch.clean, batch.sink, batch.valid, c.window_frames,
                                c.tokens_per_frame, batch.mem_owner if use_mem else None,
                                batch.mem_valid if use_mem else None, c.memory_tokens)
        mask = mask[:, None]  # [B, 1, Nq, Nk]
        if use_mem:
            mem = self.compress_memory(batch.mem_latents)  # [B, E, Tm, d]
            mem_pos = self.pos.positions(batch.mem_poses, torch.zeros_like(batch.mem_owner), memory=True)
        for block in self.blocks:
            mods = block.mods(cond)
            q, k, v = block.qkv_tokens(x, mods[0], mods[1])  # [B, G, P, H, dh]
            q = to_heads(self.pos.per_token(q, pos.q_map))
            k = to_heads(self.pos.per_token(k, pos.k_map))
            v = to_heads(self.pos.per_frame(v, pos.v_map))
            if use_mem:
                mk, mv = block.memory_kv(mem, self.pos.timeless)
                k = torch.cat([k, to_heads(self.pos.per_token(mk, mem_pos.k_map))], dim=2)
                v = torch.cat([v, to_heads(self.pos.per_frame(mv, mem_pos.v_map))], dim=2)
            att = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
            att = self.pos.per_frame(from_heads(att, g), pos.out_map)
            x = block.finish(x, att, mods)
        return self.output(x, cond, batch.hint)

    # --- play: cached passes ---
    def forward_cached(self, cache: KVCache, latents: torch.Tensor, noise: torch.Tensor, actions: torch.Tensor,
                       poses: torch.Tensor, ticks: list[int] | torch.Tensor, text_cond: torch.Tensor, roles: list[str],
                       hint: torch.Tensor | None = None, slots: torch.Tensor | None = None,
                       keep: torch.Tensor | None = None, grad: bool = False,
                       attention_backend: str = "auto", current_only: bool = False) -> torch.Tensor:
        """Run G frames (G = 1 or 2) against the cache, writing their K/V in place: the one cached
        forward path, for play, eval, batched sessions and distillation.

        latents [B, G, C, h, w], noise [B, G], actions [B, G, 5], poses [B, G, 5], ticks: G ints,
        roles: per frame ROLE_SINK / ROLE_WINDOW (a clean frame being committed at the ring position)
        / ROLE_CURRENT (the frame being denoised). Committed frames see only sink + window (as in
        training); the current frame sees everything valid. `hint` [B, G, C + 1, h, w]: the geometric
        hint of each frame (zeros for committed frames, as in training). Returns predicted clean latents
        [B, G, C, h, w]. Call `cache.advance_window` after a pass that committed a ROLE_WINDOW frame.

        Rows at different ticks (`worldmodel.runtime.SessionBatch`: each row a session with its own ring
        position, `KVCache.row`): `ticks` is a tensor [B, G], `slots` [B, G*P] the slots of each row's
        frames, and `keep` [B, G] bool the frames whose slots become valid; a frame with keep False is
        a placeholder (a row with nothing to commit, or not stepping): computed and written to a slot
        nobody sees, its output ignored. Rows never write the sink this way (a reset is one row's pass).

        `grad=True` (distillation's exit pass, Self Forcing) runs under autograd: the frames' K/V go into
        copies of the cache tensors (out of place) and the valid mask is snapshotted, so the graph owns
        its inputs and the cache can keep rolling in place before backward; the cached context is a
        constant of the graph. Same operations in the same order, so both modes give the same numbers.
        `attention_backend` picks the kernel (one with a backward, e.g. "sdpa", for grad).

        `current_only=True` (play): the caller reads only the ROLE_CURRENT frame's output, so the last
        layer runs its attention and MLP for that frame alone; a committed frame needs nothing of the
        last layer but its K/V, which are written as always (a pass of committed frames alone skips the
        last layer's attention and MLP altogether). Their output rows are zeros. The current
        frame's numbers are the same either way (each query row and token row is computed alone), and
        a pass that commits a frame costs one frame's attention and MLP less.
        """
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self._forward_cached(cache, latents, noise, actions, poses, ticks, text_cond, roles, hint,
                                        slots, keep, grad, attention_backend, current_only)

    def _forward_cached(self, cache: KVCache, latents: torch.Tensor, noise: torch.Tensor, actions: torch.Tensor,
                        poses: torch.Tensor, ticks: list[int] | torch.Tensor, text_cond: torch.Tensor,
                        roles: list[str], hint: torch.Tensor | None, slots: torch.Tensor | None,
                        keep: torch.Tensor | None, grad: bool, attention_backend: str,
                        current_only: bool = False) -> torch.Tensor:
        if grad and any(r != ROLE_CURRENT for r in roles):
            raise ValueError("forward_cached: grad=True runs the current frame only (commits stay in place)")
        c = self.config
        p = c.tokens_per_frame
        b, g = latents.shape[:2]
        if slots is None:
            index_of = {ROLE_SINK: cache.sink_index, ROLE_WINDOW: cache.window_index,
                        ROLE_CURRENT: cache.current_index}
            slots = torch.cat([index_of[r]() for r in roles])[None].expand(b, -1)  # [B, G*P]
        elif ROLE_SINK in roles:
            raise ValueError("forward_cached: per-row slots cannot write the sink (reset a row through its own cache)")
        kept = torch.ones_like(slots, dtype=torch.bool) if keep is None else keep.repeat_interleave(p, 1)
        cache.valid.scatter_(1, slots, cache.valid.gather(1, slots) | kept)
        write_at = slots[:, None, :, None].expand(b, c.heads, -1, c.head_dim)  # [B, H, G*P, dh]
        valid = cache.valid.clone() if grad else cache.valid  # [B, S]: the graph must not see later updates
        extra = None  # frames being denoised see every valid slot
        if any(r != ROLE_CURRENT for r in roles):  # committed frames see only sink + window
            commit_rows = cache.commit_mask()[None].expand(p, -1)
            all_rows = torch.ones_like(commit_rows)
            extra = torch.cat([all_rows if r == ROLE_CURRENT else commit_rows for r in roles])  # [G*P, S]
        if ROLE_SINK in roles:
            cache.sink_tick = 0
        if isinstance(ticks, torch.Tensor):
            time_ticks = ticks.to(latents.device)
        else:
            time_ticks = torch.tensor([[cache.sink_tick if r == ROLE_SINK else t for r, t in zip(roles, ticks)]],
                                      device=latents.device).expand(b, -1)
        cond = _per_frame(lambda n, a, t: self.frame_condition(n, a, t[:, 0]), noise, actions,
                          text_cond[:, None].expand(-1, g, -1))
        x = self.embed_frames(latents, hint)
        sink_at = roles.index(ROLE_SINK) if ROLE_SINK in roles else None
        pos = self.pos.positions(poses, time_ticks, split_time=sink_at is not None)
        # the frames whose outputs the caller reads; with current_only, the last layer runs for them alone
        out_frames = [i for i, r in enumerate(roles) if r == ROLE_CURRENT] if current_only else list(range(g))
        trim = len(out_frames) < g
        if len(out_frames) > 1 and trim:
            raise ValueError("forward_cached: current_only takes at most one ROLE_CURRENT frame")
        for layer, block in enumerate(self.blocks):
            mods = _per_frame(block.mods, cond)
            q, k, v = block.qkv_tokens(x, mods[0], mods[1])  # [B, G, P, H, dh]
            last_trimmed = trim and layer == len(self.blocks) - 1
            k_cache, v_cache = cache.layer(layer)
            q = to_heads(self.pos.per_token(q, pos.q_map)).to(k_cache.dtype)
            if sink_at is not None:
                k_raw = self.pos.per_token(k, pos.k_untimed_map)  # [B, G, P, H, dh]
                cache.sink_raw_k[layer].copy_(to_heads(k_raw[:, sink_at: sink_at + 1]))
                k = self.pos.per_frame(k_raw, pos.time_map)
            else:
                k = self.pos.per_token(k, pos.k_map)
            k_new = to_heads(k).to(k_cache.dtype)
            v_new = to_heads(self.pos.per_frame(v, pos.v_map)).to(v_cache.dtype)
            if grad:  # out of place: the graph keeps its own copy of this layer's K/V
                k_cache, v_cache = k_cache.scatter(2, write_at, k_new), v_cache.scatter(2, write_at, v_new)
            else:
                k_cache.scatter_(2, write_at, k_new)
                v_cache.scatter_(2, write_at, v_new)
            if last_trimmed and not out_frames:  # a pass that only commits: its K/V are all it leaves
                break
            if last_trimmed:  # only the current frame's queries, rows, condition and maps from here on
                f = out_frames[0]
                q = q[:, :, f * p:(f + 1) * p]
                extra = None if extra is None else extra[f * p:(f + 1) * p]
                x, mods = x[:, f:f + 1], tuple(m[:, f:f + 1] for m in mods)
                out_map = None if pos.out_map is None else pos.out_map[:, f:f + 1]
            else:
                out_map = pos.out_map
            att = cached_attention(q, k_cache, v_cache, valid, backend=attention_backend,
                                   extra_mask=extra)  # [B, H, G*P, dh] (one frame's P rows when trimmed)
            att = self.pos.per_frame(from_heads(att.to(x.dtype), x.shape[1]), out_map)
            x = block.finish(x, att, mods)
        if not trim:
            return _per_frame(self.output, x, cond, hint)
        out = torch.zeros(b, g, c.latent_channels, c.latent_size, c.latent_size, device=x.device)
        for f in out_frames:
            out[:, f:f + 1] = _per_frame(self.output, x, cond[:, f:f + 1], None if hint is None else hint[:, f:f + 1])
        return out

    @torch.no_grad()
    def retime_sink(self, cache: KVCache, newest_tick: int) -> None:
        """Rotate the sink's cached keys to the temporal position `sink_time(newest_tick)` (cheap)."""
        tick = self.sink_time(newest_tick)
        if tick == cache.sink_tick:
            return
        ticks = torch.full((cache.batch, 1), tick, dtype=torch.long, device=cache.device)
        tmap = self.pos.time_map(ticks)  # [B, 1, D, D]
        idx = cache.sink_index()
        for layer in range(self.config.layers):
            raw = cache.sink_raw_k[layer]  # [B, H, P, D]
            with _full_precision(raw):
                timed = (raw.float() @ tmap).to(raw.dtype)  # [B, 1, D, D] broadcast over heads
            cache.k[layer].index_copy_(2, idx, timed)
        cache.sink_tick = tick

    @torch.no_grad()
    def write_memory(self, cache: KVCache, latents: torch.Tensor, poses: torch.Tensor, valid: torch.Tensor,
                     ids: tuple | None = None, key_scale: float | None = None) -> bool:
        """Fill the cache's memory slots with entries' keys/values; returns whether the slots changed.

        latents [B, E, C, h, w] with E = memory_entries (invalid rows may hold anything), poses [B, E, 5],
        valid [B, E] bool. Memory K/V depend only on each entry's latent and pose (timeless keys), so
        when `ids` (any hashable naming the entries, per row a tuple of entry names, e.g. store slots
        and ticks) equals what the cache already holds, nothing is recomputed; and for one row, an
        entry the cache already holds under another slot is copied there, so only entries new to the
        cache are computed (play: retrieval mostly reorders the entries or swaps one of them). The
        keys are multiplied by `key_scale` (None: the config's memory_key_scale), a play-time rule; one
        cache holds keys of one scale (a session keeps its scale).
        """
        if not self.config.use_memory:
            return False
        if ids is not None and ids == cache.memory_ids:
            return False
        idx = cache.memory_index()  # [E * Tm]
        tm = self.config.memory_tokens
        kept = _kept_entries(cache.memory_ids, ids) if latents.shape[0] == 1 else {}
        fresh = [j for j in range(latents.shape[1]) if j not in kept]
        if kept:  # {new position: old position}; read before anything is overwritten
            src = torch.cat([torch.arange(i * tm, (i + 1) * tm) for i in kept.values()]).to(idx.device)
            dst = torch.cat([idx[j * tm:(j + 1) * tm] for j in kept])
            held = [(k[:, :, idx[src]], v[:, :, idx[src]]) for k, v in
                    (cache.layer(layer) for layer in range(len(self.blocks)))]
        if fresh:
            at = torch.cat([idx[j * tm:(j + 1) * tm] for j in fresh])
            mem = self.compress_memory(latents[:, fresh])
            sel = poses[:, fresh]
            pos = self.pos.positions(sel, torch.zeros(sel.shape[:2], dtype=torch.long, device=sel.device),
                                     memory=True)
        scale = self.config.memory_key_scale if key_scale is None else key_scale
        for layer, block in enumerate(self.blocks):
            k_cache, v_cache = cache.layer(layer)
            if fresh:
                mk, mv = block.memory_kv(mem, self.pos.timeless)  # [B, E', Tm, H, dh]
                if scale != 1.0:
                    mk = mk * scale
                k_cache.index_copy_(2, at, to_heads(self.pos.per_token(mk, pos.k_map)).to(k_cache.dtype))
                v_cache.index_copy_(2, at, to_heads(self.pos.per_frame(mv, pos.v_map)).to(v_cache.dtype))
            if kept:
                k_cache.index_copy_(2, dst, held[layer][0])
                v_cache.index_copy_(2, dst, held[layer][1])
        cache.set_memory_valid(valid)
        cache.memory_ids = ids
        return True

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
