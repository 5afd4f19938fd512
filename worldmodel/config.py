"""`WorldModelConfig`: every number that shapes the causal world model, in one dataclass.

The same class describes the tiny configs used by the tests, the CPU default that ships and large GPU
configs; it is stored as JSON in every checkpoint's metadata so a checkpoint always rebuilds the exact
network it was trained as (and loading refuses a checkpoint whose config does not match).

Token layout (docs/architecture.md §The generator): a frame's latent [latent_channels, latent_size, latent_size] becomes
latent_size**2 tokens (patch 1). Each attention head of `head_dim` dims is split into
  camera part  `camera_dims`   (blocks of 4 multiplied by the frame's 4x4 pose matrix, GTA-style),
  RoPE parts   `rope_row_dims` + `rope_col_dims` (2-D patch position) + `rope_time_dims` (frame tick),
so `camera_dims + rope_row_dims + rope_col_dims + rope_time_dims == head_dim`.

Play-time KV cache (per layer, tokens): S = sink (one frame) + memory (memory_entries * memory_tokens)
+ window (window_frames frames, ring buffer) + current (one frame).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from conventions.camera import ACTION_DIM, DEFAULT_FOV_DEG, DEFAULT_RESOLUTION, DEFAULT_TICK_HZ
from conventions.errors import UserError
from conventions.limits import number_problem
from worldmodel.text import default_vocabulary

PRECISION_NAMES = ("fp32", "bf16")
"""Play-time arithmetic of the generator (`--precision`); worldmodel.runtime.PRECISIONS maps them to dtypes."""
DEFAULT_PRECISION = "fp32"

CAMERA_BLOCK = 4
"""The camera part of a head is a stack of homogeneous 4-vectors (one 4x4 pose matrix each)."""

MEMORY_COMPRESSIONS = ("pool", "patch")
TIME_SAMPLINGS = ("logit_normal", "uniform")
HINT_SAMPLINGS = ("nearest", "bilinear-start", "bilinear")
"""Values of WorldModelConfig.hint_sampling: which hint sources are sampled bilinearly
(worldmodel.hint.bilinear_sources): none, the start frame alone, every frame."""

PLAY_RULE_FIELDS = ("hint_composite", "hint_point_cache", "hint_splat_levels", "hint_start_radius", "hint_sampling",
                    "memory_key_scale")
"""Config fields that are rules of play, not of the weights: how the hint is built and composited and
how softly the memory is attended to. A checkpoint's config carries the values it plays with; a
fine-tune, `worldmodel average --set` and the play-time flags may change them."""


@dataclass
class WorldModelConfig:
    """The causal transformer, its conditioning, its cache and its sampler (defaults = shipped CPU model)."""

    # --- frames and latents (must match the autoencoder) ---
    resolution: int = DEFAULT_RESOLUTION
    latent_channels: int = 16
    latent_size: int = 8
    fov_deg: float = DEFAULT_FOV_DEG
    tick_hz: float = DEFAULT_TICK_HZ

    # --- transformer ---
    d_model: int = 192
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    cond_dim: int = 192
    """Width of the per-frame conditioning vector (noise level + action + pooled text) fed to adaLN."""

    # --- positional / camera encoding (per head) ---
    camera_dims: int = 16
    rope_row_dims: int = 8
    rope_col_dims: int = 8
    rope_time_dims: int = 16
    camera_position_scale: float = 0.1
    """Metres -> units of the 4x4 matrices baked into q/k/v; worlds are ~20 m across, so ~unit scale."""
    camera_values: bool = True
    """Also transform values into world space and outputs back into the query camera (GTA)."""
    rope_spatial_base: float = 100.0
    rope_time_base: float = 1000.0
    max_time_offset: int = 256
    """The sink looks at most this many ticks old (its keys are re-timed), so relative time stays in
    the range training saw however long a session lasts. Memory keys carry no time at all."""

    # --- text ---
    vocab: list[str] = field(default_factory=list)
    """Word vocabulary of the text encoder (index 0 <pad>, 1 <unk>); filled from the caption vocabulary."""
    max_text_tokens: int = 32
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4

    # --- action conditioning ---
    action_scale: tuple[float, ...] = (0.25, 0.25, 0.25, 0.1, 0.1)
    """Typical magnitude of each action field (metres / radians per tick); actions are divided by it."""

    # --- cache and memory ---
    window_frames: int = 6
    use_memory: bool = True
    memory_entries: int = 4
    memory_tokens: int = 16
    memory_compression: str = "pool"
    """'pool': 2x2 average pooling of the latent; 'patch': a learned projection of each 2x2 patch."""
    memory_key_scale: float = 0.9
    """Play: the memory entries' keys are multiplied by this as they enter the cache, so the current
    frame attends to them more softly than training did (1). Why 0.9: at 1 the memory attention can
    collapse onto washed-out entries and copy them back, tick after tick (docs/model_card.md "Why
    memory on ends below memory off on drift"); at 0.9 the drift suite's late frames gained 0.97 dB
    on the mean of three sampling seeds (every seed gained, no world washed out) with action
    following and returns level (docs/model_card.md, "Play rule since 2026-12-07 (seventh session)").
    A play-time rule (no weight depends on it); checkpoints saved without the field get this
    default; 1 is the rule before. A checkpoint carries its own value: the shipped one 0.8 since
    the ninth session, the scale its weights measured best with (docs/model_card.md, top section)."""

    # --- geometric hint (worldmodel.hint) ---
    hint: bool = False
    """The model reads the geometric hint: the start frame, the retrieved memory entries and the last
    `hint_recent` frames reprojected into the current camera (needs an autoencoder with a depth head).
    False: the pure KV-cache model (RELIC-style) of checkpoints from before the hint."""
    hint_recent: int = 2
    """Previous frames reprojected into the hint (besides the start frame and the memory entries)."""
    hint_composite: float = 0.0
    """Play: weight of the reprojected pixels in each generated frame where the hint covers them (the
    model's decoded frame takes the rest); 0 shows the decoded frame only. Reprojected pixels keep
    the sources' detail, which a trip through the 8x8 latent loses; at 1 the repeated nearest-pixel
    resampling turns into noise (docs/model_card.md measures the choice)."""
    hint_point_cache: int = 0
    """Play: points of the point cache (worldmodel.point_cache), which then replaces the last
    `hint_recent` frames among the hint's sources; 0 = no cache (the recent frames are sources). It
    measured worse with today's depth head (docs/model_card.md), so checkpoints ship with 0."""
    hint_splat_levels: bool = False
    """The hint's reprojection also splats the source pixels a move magnifies on coarser grids, so an
    approached surface has no cracks and nothing behind it leaks through (worldmodel.reproject,
    `magnified`); False: the fine level alone, the rule the shipped checkpoint was trained and
    measured with (docs/model_card.md compares them)."""
    hint_start_radius: float = 1.0
    """Metres: while the camera is this close to the start pose, the start frame's pixels win every
    pixel they land on over the generated sources' (worldmodel.hint.start_preferred); 0 = off, the
    z-buffer alone decides (the rule the shipped weights were trained with, and the rule of every
    measurement before 2026-12-07). Checkpoints saved without the field get this default. 1, 2, 3 m
    and no limit were measured (docs/model_card.md): the gain is on returns and early ticks, and
    beyond ~1 m some walks lose more to the start frame's depth errors than the others gain."""
    hint_sampling: str = "bilinear-start"
    """How the hint's reprojection colours the pixels a source frame won (HINT_SAMPLINGS;
    worldmodel.hint.bilinear_sources, worldmodel.reproject's `bilinear`): "nearest" copies the winning
    source pixel (the rule the shipped weights were trained with, and of every measurement before
    2026-12-07); "bilinear-start" samples the start frame bilinearly where the pixel's ray meets it
    and copies the generated frames' pixels; "bilinear" samples every frame so, which blurs over
    long walks (a generated frame is the last tick's resampled output, resampled again). Checkpoints
    saved without the field get this default (docs/model_card.md measures all three)."""

    # --- diffusion / sampling ---
    ctx_noise_max: float = 0.1
    """Clean context frames get noise level ~ U[0, ctx_noise_max] in training (against exposure bias)."""
    ctx_noise_play: float = 0.02
    """Noise level of a frame committed to the cache at play time (the model is told this level)."""
    sample_steps: int = 2
    warmup_steps: int = 4
    """Denoising steps for the first `warmup_frames` generated frames (they set the scene up)."""
    warmup_frames: int = 2
    schedule_shift: float = 1.0
    """Sampler noise levels t_k = shift*u / (1 + (shift-1)*u) for uniform u in (0, 1]; >1 spends more
    steps at high noise."""

    # --- training objective (stored so a checkpoint says how it was trained) ---
    target_frames: int = 4
    """K noisy target frames per training sample (the clean context is shared between them)."""
    time_sampling: str = "logit_normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    schedule_time_prob: float = 0.25
    """Probability that a target's noise level is one the sampler actually visits (e.g. t = 1)."""

    TRAINING_ONLY_FIELDS = ("ctx_noise_max", "target_frames", "time_sampling", "logit_normal_mean",
                            "logit_normal_std", "schedule_time_prob") + PLAY_RULE_FIELDS
    """Fields no weight depends on (the training objective, and the play rules), so a fine-tune may
    change them from the checkpoint it starts from."""

    def __post_init__(self) -> None:
        if isinstance(self.action_scale, list):
            self.action_scale = tuple(self.action_scale)

    # --- derived sizes ---
    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_size * self.latent_size

    @property
    def memory_grid(self) -> int:
        """Side of the compressed memory grid (2x2 pooling of the latent grid)."""
        return self.latent_size // 2

    @property
    def memory_slots(self) -> int:
        return self.memory_entries * self.memory_tokens if self.use_memory else 0

    @property
    def cache_slots(self) -> int:
        """S of the play-time cache: sink + memory + window + current, in tokens."""
        f = self.tokens_per_frame
        return f + self.memory_slots + self.window_frames * f + f

    def steps_for_frame(self, tick: int) -> int:
        """Denoising steps used to generate the frame at `tick` (>= 1)."""
        return self.warmup_steps if tick <= self.warmup_frames else self.sample_steps

    def validate(self) -> "WorldModelConfig":
        """Raise ValueError for an inconsistent config (programming error, not user input)."""
        problems = []
        if self.d_model % self.heads:
            problems.append(f"d_model {self.d_model} not divisible by heads {self.heads}")
        parts = self.camera_dims + self.rope_row_dims + self.rope_col_dims + self.rope_time_dims
        if parts != self.head_dim:
            problems.append(f"camera_dims+rope dims = {parts} != head_dim {self.head_dim}")
        if self.camera_dims % CAMERA_BLOCK:
            problems.append(f"camera_dims {self.camera_dims} not a multiple of {CAMERA_BLOCK}")
        for name in ("rope_row_dims", "rope_col_dims", "rope_time_dims"):
            if getattr(self, name) % 2:
                problems.append(f"{name} must be even")
        if self.text_dim % self.text_heads:
            problems.append("text_dim not divisible by text_heads")
        if self.latent_size % 2:
            problems.append("latent_size must be even (memory uses 2x2 compression)")
        if self.memory_tokens != self.memory_grid ** 2:
            problems.append(f"memory_tokens {self.memory_tokens} != (latent_size/2)^2 = {self.memory_grid ** 2}")
        if self.memory_compression not in MEMORY_COMPRESSIONS:
            problems.append(f"memory_compression must be one of {MEMORY_COMPRESSIONS}")
        if self.time_sampling not in TIME_SAMPLINGS:
            problems.append(f"time_sampling must be one of {TIME_SAMPLINGS}")
        if len(self.action_scale) != ACTION_DIM:
            problems.append(f"action_scale needs {ACTION_DIM} numbers")
        if min(self.sample_steps, self.warmup_steps) < 1:
            problems.append("sample_steps and warmup_steps must be >= 1")
        if self.hint_point_cache < 0:
            problems.append("hint_point_cache must be >= 0")
        if self.hint_recent < 0:
            problems.append("hint_recent must be >= 0")
        if not 0.0 <= self.hint_composite <= 1.0:
            problems.append("hint_composite must be in [0, 1]")
        if not (math.isfinite(self.hint_start_radius) and self.hint_start_radius >= 0):
            problems.append("hint_start_radius must be a finite number of metres >= 0")
        if self.hint_sampling not in HINT_SAMPLINGS:
            problems.append(f"hint_sampling must be one of {list(HINT_SAMPLINGS)}")
        key_scale_problem = number_problem("memory_key_scale", self.memory_key_scale)
        if key_scale_problem:
            problems.append(f"memory_key_scale {key_scale_problem}")
        if self.window_frames < 1 or self.target_frames < 1:
            problems.append("window_frames and target_frames must be >= 1")
        if not self.vocab or self.vocab[:2] != ["<pad>", "<unk>"]:
            problems.append("vocab must start with <pad>, <unk> (use worldmodel.text.default_vocabulary())")
        if problems:
            raise ValueError("invalid WorldModelConfig: " + "; ".join(problems))
        return self

    # --- (de)serialisation ---
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "WorldModelConfig":
        """Parse a config stored by `to_json`; unknown or missing keys are a UserError naming them."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}: config is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise UserError(f"{source}: config is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: config has unknown keys {unknown} (written by a newer version?)")
        cfg = cls(**data)
        try:
            return cfg.validate()
        except ValueError as exc:
            raise UserError(f"{source}: {exc}") from exc

    def replace(self, **changes: Any) -> "WorldModelConfig":
        return dataclasses.replace(self, **changes)

    def with_training_fields_of(self, other: "WorldModelConfig") -> "WorldModelConfig":
        """This config with `other`'s TRAINING_ONLY_FIELDS: what must equal `other` for both to hold
        one model (a fine-tune, a checkpoint to average)."""
        return self.replace(**{f: getattr(other, f) for f in self.TRAINING_ONLY_FIELDS})


def default_config(**overrides: Any) -> WorldModelConfig:
    """The shipped config with the caption vocabulary filled in (plus any overrides)."""
    overrides.setdefault("vocab", default_vocabulary())
    return WorldModelConfig(**overrides).validate()


def tiny_config(**overrides: Any) -> WorldModelConfig:
    """A few-thousand-parameter config for tests: same code paths, millisecond passes."""
    base: dict[str, Any] = dict(d_model=32, layers=2, heads=2, cond_dim=32, camera_dims=8, rope_row_dims=2,
                                rope_col_dims=2, rope_time_dims=4, text_dim=16, text_layers=1, text_heads=2,
                                window_frames=3, memory_entries=2, max_text_tokens=8, target_frames=3)
    base.update(overrides)
    return default_config(**base)
