"""`ExploreVectorEnv`: N exploration episodes stepped together, as a `gymnasium.vector.VectorEnv`.

`gymnasium.make_vec("worldmodel/Explore-v0", num_envs=N)` builds this. With the model backend the N
sessions are the rows of one `worldmodel.runtime.ModelFrameBatch`: each tick runs ONE batched
forward pass of the generator per denoising step for all rows, while each row keeps its own
memory, hint, noise generators and tick, so row i's frames are bit for bit those of a single
`ExploreEnv` seeded with seed + i (tests/test_env.py). The oracle backend (and `batched=False`, the
yardstick of `worldmodel bench vecenv`) steps N frame sources one after the other.

Auto-reset is Gymnasium's default "next step" mode: the step after a row terminates or truncates
resets that row (its action is ignored, its reward is 0) while the other rows step.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from game.frame_source import MODEL_BACKEND, FrameSource
from conventions.camera import DEFAULT_TICK_HZ, CameraPose
from worldmodel.env.config import (ExploreConfig, action_space, clip_action, load_env_scene, make_env_source,
                                   observation_space, source_tick_hz)
from worldmodel.env.explore import check_render_mode, scene_world
from worldmodel.env.task import Episode, advance, info, observation, start_episode
from conventions.errors import UserError
from worldmodel.runtime import ModelFrameBatch

RESET_MASK = "reset_mask"
"""`reset(options={"reset_mask": bool array [N]})` resets only those rows (as SyncVectorEnv)."""


class FrameRows:
    """N frame sources side by side, with `ModelFrameBatch`'s interface (one after the other)."""

    def __init__(self, sources: Sequence[FrameSource]) -> None:
        self.sources = list(sources)
        self.resolution = self.sources[0].resolution

    def reset(self, index: int, scene, start_pose: CameraPose, prompt: str, seed: int) -> np.ndarray:
        return self.sources[index].reset(scene, start_pose, prompt, seed)

    def step(self, actions: Sequence[list[float] | None], poses: Sequence[CameraPose | None]
             ) -> list[np.ndarray | None]:
        return [None if a is None else s.step(a, p) for s, a, p in zip(self.sources, actions, poses)]


class ExploreVectorEnv(VectorEnv):
    """`gymnasium.make_vec("worldmodel/Explore-v0", num_envs=N, **settings)` (module docstring);
    `batched=False` steps N separate sessions instead of one batch (same frames, for comparison)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": DEFAULT_TICK_HZ, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, batched: bool = True,
                 **options: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise UserError(f"num_envs: a positive number of environments, got {num_envs!r}")
        self.config = ExploreConfig.from_options(options)
        self.num_envs = num_envs
        self.render_mode = check_render_mode(render_mode, tuple(self.metadata["render_modes"]))
        self.scene = load_env_scene(self.config)
        self.world = scene_world(self.scene)
        first = make_env_source(self.config)
        if self.config.backend == MODEL_BACKEND and batched:
            self.frames = ModelFrameBatch(first, num_envs)
        else:
            self.frames = FrameRows([first] + [make_env_source(self.config) for _ in range(num_envs - 1)])
        self.batched = not isinstance(self.frames, FrameRows)
        self.tick_hz = source_tick_hz(first)
        self.metadata = {**self.metadata, "render_fps": self.tick_hz}
        self.single_action_space = action_space(self.tick_hz)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = observation_space(self.config, first.resolution)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._episodes: list[Episode | None] = [None] * num_envs
        self._frames: list[np.ndarray | None] = [None] * num_envs
        self._autoreset = np.zeros(num_envs, dtype=bool)

    # --- rows ---
    def _reset_row(self, index: int, seed: int | None) -> None:
        """A new episode in row `index`: exactly `ExploreEnv.reset(seed=seed)` of a single env."""
        if seed is not None or self._rngs[index] is None:
            self._rngs[index], _ = seeding.np_random(seed)
        episode = start_episode(self._rngs[index], self.config, self.scene.start_pose, self.world)
        self._frames[index] = self.frames.reset(index, self.scene, self.scene.start_pose, self.scene.prompt,
                                                episode.seed)
        self._episodes[index] = episode

    def _observations(self):
        items = [observation(frame, episode, self.config) for frame, episode in zip(self._frames, self._episodes)]
        return concatenate(self.single_observation_space, items,
                           create_empty_array(self.single_observation_space, self.num_envs))

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int):
            return [seed + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} environments")
        return seeds

    # --- Gymnasium API ---
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every row (or the rows of options["reset_mask"]); an int seed s seeds row i with s + i."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        mask = np.ones(self.num_envs, dtype=bool)
        if options is not None and RESET_MASK in options:
            mask = np.asarray(options[RESET_MASK], dtype=bool).reshape(self.num_envs)
        infos: dict[str, Any] = {}
        for i, row_seed in enumerate(self._seeds(seed)):
            if mask[i]:
                self._reset_row(i, row_seed)
                infos = self._add_info(infos, info(self._episodes[i]), i)
        self._autoreset[mask] = False
        return self._observations(), infos

    def step(self, actions):
        if any(e is None for e in self._episodes):
            raise RuntimeError("ExploreVectorEnv.step before reset")
        acts = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)
        resetting = self._autoreset.copy()
        moves: list[list[float] | None] = []
        poses: list[CameraPose | None] = []
        for i in range(self.num_envs):
            if resetting[i]:
                self._reset_row(i, None)
                moves.append(None)
                poses.append(None)
            else:
                move = clip_action(acts[i], self.single_action_space)
                moves.append(move)
                poses.append(self._episodes[i].pose.step(move))
        frames = self.frames.step(moves, poses)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        limit = self.config.max_episode_steps
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            episode = self._episodes[i]
            if moves[i] is not None:
                self._frames[i] = frames[i]
                rewards[i], terminated[i] = advance(episode, poses[i])
                truncated[i] = not terminated[i] and limit is not None and episode.tick >= limit
            infos = self._add_info(infos, info(episode), i)
        self._autoreset = terminated | truncated
        return self._observations(), rewards, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None or any(f is None for f in self._frames):
            return None
        return tuple(np.array(f, dtype=np.uint8, copy=True) for f in self._frames)
