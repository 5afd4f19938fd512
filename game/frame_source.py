"""Where frames come from: the FrameSource protocol and the procedural oracle.

The game loop, recording and replay only talk to a `FrameSource`, so the learned generator
(`worldmodel.runtime.ModelFrameSource`) and the ray-cast ground truth (`OracleFrameSource`) are
interchangeable: play with the oracle to check controls and worlds, replay a model session with
the oracle to see what the model should have drawn.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from conventions.camera import ACTION_DIM, DEFAULT_FOV_DEG, DEFAULT_RESOLUTION, CameraPose
from conventions.errors import UserError
from scenes.render import render_views
from scenes.scene import load_image
from scenes.world import generate_world
from worldmodel.runtime import ModelFrameSource

ORACLE_BACKEND = "oracle"
MODEL_BACKEND = "model"
DEFAULT_BACKEND = MODEL_BACKEND
"""Backend of `worldmodel play` when none is given: the learned generator."""
BACKEND_CHOICES: tuple[str, ...] = (ORACLE_BACKEND, MODEL_BACKEND)
WORLD_CACHE_SIZE = 4
"""Generated worlds kept per oracle (replaying several logs of the same seeds reuses them)."""


@runtime_checkable
class FrameSource(Protocol):
    """Produces one RGB uint8 frame [H, W, 3] (H = W = resolution) per tick."""

    name: str
    resolution: int
    # Capabilities, declared by every source (the oracle's are None/False): what a recording, the
    # HUD, the memory map and saved worlds may rely on, instead of probing with getattr.
    checkpoint_sha256: str | None
    """The learned model's checkpoint (recorded in logs); None for a source that is not learned."""
    precision: str | None
    """The generator's arithmetic ("fp32", "bf16"), recorded so a replay runs the same; None: none."""
    hint: bool | None
    """Whether frames use the geometric hint; None for a source without a generator."""
    use_memory: bool | None
    """Whether the generator reads its memory; None for a source without one."""
    start_radius: float | None
    """The hint's hint_start_radius (metres; recorded so a replay builds the same hints); None without a
    hint."""
    sampling: str | None
    """The hint's hint_sampling (recorded so a replay builds the same hints); None without a hint."""
    memory_key_scale: float | None
    """The scale of the memory's keys (recorded so a replay attends the same); None without a memory."""
    sample_steps: int | None
    """The generator's denoising steps per frame after its warm-up frames (recorded so a replay samples
    the same); None for a source without a generator."""
    memory: Any
    """The MemoryStore the map draws and saved worlds keep; None without one."""
    saves_worlds: bool
    """Whether `worldmodel.world_state.save_world` / `load_world` can save and continue this source."""

    def reset(self, scene, start_pose: CameraPose, prompt: str, seed: int) -> np.ndarray:
        """Start a session at `start_pose`; returns the first frame (tick 0)."""
        ...

    def step(self, action: Sequence[float], pose: CameraPose) -> np.ndarray:
        """The frame after `action`; `pose` is the absolute pose after it (docs/architecture.md §The conventions, in brief)."""
        ...


class OracleFrameSource:
    """Ground truth: renders the scene's procedural world (`scenes.render.render_views`) at the pose.

    The world is `scene.world_seed`'s, or the session seed's when the scene has none (a plain image
    scene). With `start_image` (uint8 [res, res, 3], e.g. from `--image`) the first frame shown is
    that picture; later frames are the procedural world. Deterministic: same poses, same pixels.
    """

    name = ORACLE_BACKEND
    checkpoint_sha256 = None
    precision = None
    hint = None
    use_memory = None
    start_radius = None
    sampling = None
    memory_key_scale = None
    sample_steps = None
    memory = None
    saves_worlds = False

    def __init__(self, resolution: int = DEFAULT_RESOLUTION, fov_deg: float | None = None,
                 start_image: np.ndarray | None = None) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if fov_deg is not None and not (math.isfinite(fov_deg) and 0 < fov_deg < 180):
            raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        if start_image is not None and tuple(start_image.shape) != (resolution, resolution, 3):
            raise ValueError(f"start image must be [{resolution}, {resolution}, 3], got {tuple(start_image.shape)}")
        self.resolution = int(resolution)
        self.fixed_fov_deg = fov_deg
        self.fov_deg = fov_deg if fov_deg is not None else DEFAULT_FOV_DEG
        self.start_image = None if start_image is None else np.ascontiguousarray(start_image, dtype=np.uint8)
        self._worlds: dict[int, object] = {}
        self.world = None
        self.world_seed: int | None = None

    def _world(self, seed: int):
        if seed not in self._worlds:
            if len(self._worlds) >= WORLD_CACHE_SIZE:
                self._worlds.pop(next(iter(self._worlds)))
            self._worlds[seed] = generate_world(seed)
        return self._worlds[seed]

    def render(self, pose: CameraPose) -> np.ndarray:
        """The true frame at `pose`, uint8 [res, res, 3]."""
        if self.world is None:
            raise RuntimeError("OracleFrameSource.render before reset")
        frame = render_views(self.world, pose.as_tensor()[None], self.resolution, self.fov_deg)  # [1, H, W, 3]
        return frame[0].numpy()

    def reset(self, scene, start_pose: CameraPose, prompt: str, seed: int) -> np.ndarray:
        self.world_seed = int(scene.world_seed) if scene.world_seed is not None else int(seed)
        self.world = self._world(self.world_seed)
        if self.fixed_fov_deg is None:
            self.fov_deg = float(scene.fov_deg)
        if self.start_image is not None:
            return self.start_image.copy()
        return self.render(start_pose)

    def step(self, action: Sequence[float], pose: CameraPose) -> np.ndarray:
        if len(action) != ACTION_DIM:
            raise ValueError(f"an action has {ACTION_DIM} numbers, got {len(action)}")
        return self.render(pose)


def make_frame_source(backend: str, *, resolution: int = DEFAULT_RESOLUTION, fov_deg: float | None = None,
                      start_image_path: str | None = None, checkpoint: str | None = None,
                      device: str = "cpu", precision: str | None = None, hint: bool | None = None,
                      memory: bool | None = None, start_radius: float | None = None,
                      sampling: str | None = None, composite: float | None = None,
                      point_cache: int | None = None, splat_levels: bool | None = None,
                      sample_steps: int | None = None, memory_key_scale: float | None = None) -> FrameSource:
    """The frame source for a backend name; the model is imported lazily (it is heavy and optional).

    `start_image_path` (the `--image` picture) makes the oracle show it as the first frame; the
    model always starts from `scene.image`, which the caller replaces with that picture. `precision`
    ("fp32" / "bf16", default fp32) is the model's; the oracle has none. `hint` (None = the
    checkpoint's choice) turns the model's geometric hint on or off; `memory` (None: on) its memory;
    `start_radius`, `sampling`, `composite`, `point_cache` and `splat_levels` (None: the checkpoint's)
    its hint_start_radius, hint_sampling, hint_composite, hint_point_cache and hint_splat_levels;
    `sample_steps` (None: the checkpoint's) its denoising steps per frame after the warm-up frames;
    `memory_key_scale` (None: the checkpoint's) the scale of its memory's keys.
    """
    if precision is not None and backend == ORACLE_BACKEND:
        raise UserError(f"--precision {precision}: only the model backend has a precision (the oracle renders)")
    if hint is not None and backend == ORACLE_BACKEND:
        raise UserError("--hint: only the model backend has a geometric hint (the oracle renders)")
    if memory is not None and backend == ORACLE_BACKEND:
        raise UserError("--memory: only the model backend has a memory (the oracle renders)")
    if sample_steps is not None and backend == ORACLE_BACKEND:
        raise UserError(f"--steps {sample_steps}: only the model backend samples (the oracle renders)")
    if memory_key_scale is not None and backend == ORACLE_BACKEND:
        raise UserError("--memory-key-scale: only the model backend has a memory (the oracle renders)")
    hint_settings = {"start_radius": start_radius, "sampling": sampling, "composite": composite,
                     "point_cache": point_cache, "splat_levels": splat_levels}
    given = [name for name, value in hint_settings.items() if value is not None]
    if given and backend == ORACLE_BACKEND:
        raise UserError(f"{', '.join('--' + name.replace('_', '-') for name in given)}: only the model backend "
                        f"has a geometric hint (the oracle renders)")
    if backend == ORACLE_BACKEND:
        start_image = None
        if start_image_path is not None:
            start_image = load_image(start_image_path, resolution)
        return OracleFrameSource(resolution, fov_deg, start_image)
    if backend == MODEL_BACKEND:
        return ModelFrameSource(checkpoint=checkpoint, device=device, precision=precision, hint=hint,
                                use_memory=True if memory is None else memory, sample_steps=sample_steps,
                                memory_key_scale=memory_key_scale, **hint_settings)
    raise UserError(f"--backend: unknown backend {backend!r} (choose from {', '.join(BACKEND_CHOICES)})")
