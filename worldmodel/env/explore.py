"""`ExploreEnv`: one camera walking through a scene, as a `gymnasium.Env` (`worldmodel/Explore-v0`).

The frames come from the game's own frame sources (`game.frame_source`): the model backend
generates every frame with the checkpoint (the play command's `ModelFrameSource`), the oracle
renders the procedural ground truth. An action is the game's relative action (5 floats, bounded by
what a held key makes in a tick); the pose is integrated exactly as in play
(`conventions.camera.CameraPose.step`). Episodes, the "reach" task and the observation are
`worldmodel.env.task`'s, shared with the batched environment (`worldmodel.env.vector`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from conventions.camera import DEFAULT_TICK_HZ
from worldmodel.env.config import (ExploreConfig, action_space, load_env_scene, make_env_source,
                                   observation_space, clip_action, source_tick_hz)
from worldmodel.env.task import Episode, advance, info, observation, start_episode
from conventions.errors import UserError
from scenes.world import generate_world
from game.session import Pacer

RENDER_MODES = ("rgb_array", "human")


def scene_world(scene):
    """The procedural world behind a scene (for the "reach" task's goals), None for a picture scene."""
    if scene.world_seed is None:
        return None

    return generate_world(int(scene.world_seed))


def check_render_mode(render_mode: str | None, modes: tuple[str, ...]) -> str | None:
    if render_mode is not None and render_mode not in modes:
        raise UserError(f"render_mode: {render_mode!r} is not one of {', '.join(modes)}")
    return render_mode


class ExploreEnv(gym.Env):
    """`gymnasium.make("worldmodel/Explore-v0", backend="model", task="reach", ...)`; the keyword
    arguments are `worldmodel.env.config.ExploreConfig`'s. render_mode "rgb_array" returns the frame,
    "human" shows it in a pygame window at the tick rate."""

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": DEFAULT_TICK_HZ}  # the source's, once made

    def __init__(self, render_mode: str | None = None, **options: Any) -> None:
        self.config = ExploreConfig.from_options(options)
        self.render_mode = check_render_mode(render_mode, RENDER_MODES)
        self.scene = load_env_scene(self.config)
        self.world = scene_world(self.scene)
        self.source = make_env_source(self.config)
        self.tick_hz = source_tick_hz(self.source)
        self.metadata = {**self.metadata, "render_fps": self.tick_hz}
        self.action_space = action_space(self.tick_hz)
        self.observation_space = observation_space(self.config, self.source.resolution)
        self._episode: Episode | None = None
        self._frame: np.ndarray | None = None
        self._window = None
        self._pacer = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._episode = start_episode(self.np_random, self.config, self.scene.start_pose, self.world)
        self._frame = self.source.reset(self.scene, self.scene.start_pose, self.scene.prompt, self._episode.seed)
        if self.render_mode == "human":
            self.render()
        return observation(self._frame, self._episode, self.config), info(self._episode)

    def step(self, action):
        if self._episode is None:
            raise RuntimeError("ExploreEnv.step before reset")
        act = clip_action(action, self.action_space)
        pose = self._episode.pose.step(act)
        self._frame = self.source.step(act, pose)
        reward, terminated = advance(self._episode, pose)
        limit = self.config.max_episode_steps
        truncated = not terminated and limit is not None and self._episode.tick >= limit
        if self.render_mode == "human":
            self.render()
        return (observation(self._frame, self._episode, self.config), float(reward), bool(terminated),
                bool(truncated), info(self._episode))

    def render(self):
        if self._frame is None or self.render_mode is None:
            return None
        if self.render_mode == "rgb_array":
            return np.array(self._frame, dtype=np.uint8, copy=True)
        self._show(self._frame)
        return None

    def _show(self, frame: np.ndarray) -> None:
        """The frame in a window (nearest upscaling), held to the tick rate."""
        import pygame  # only for render_mode="human": the game's window library, not needed to train agents

        from game.loop import DEFAULT_WINDOW  # imports pygame, as above

        if self._window is None:
            pygame.display.init()
            self._window = pygame.display.set_mode((DEFAULT_WINDOW, DEFAULT_WINDOW))
            self._pacer = Pacer(self.tick_hz)
        pygame.display.set_caption(f"worldmodel/Explore-v0 ({self.config.backend}) tick {self._episode.tick}")
        pygame.event.pump()
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        surface = pygame.image.frombuffer(frame.tobytes(), (frame.shape[1], frame.shape[0]), "RGB")
        self._window.blit(pygame.transform.scale(surface, self._window.get_size()), (0, 0))
        pygame.display.flip()
        self._pacer.wait()

    def close(self) -> None:
        if self._window is not None:
            import pygame  # the window exists, so pygame was imported for it

            pygame.display.quit()
            self._window = None
        super().close()
