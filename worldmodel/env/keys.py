"""Discrete actions for agents that pick keys: each action index is a combination of held game keys.

The combinations push action components as the game's keys do (`conventions.camera.held_key_action`:
full speed per held key, a diagonal no faster than a straight move), so a discrete agent moves
exactly like a player holding those keys for a tick.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from conventions.camera import held_key_action

KEY_ACTIONS: tuple[tuple[str, dict[str, float]], ...] = (
    ("nothing", {}),
    ("forward", {"forward": 1.0}),
    ("back", {"forward": -1.0}),
    ("strafe left", {"right": -1.0}),
    ("strafe right", {"right": 1.0}),
    ("turn left", {"yaw_delta": 1.0}),
    ("turn right", {"yaw_delta": -1.0}),
    ("forward + turn left", {"forward": 1.0, "yaw_delta": 1.0}),
    ("forward + turn right", {"forward": 1.0, "yaw_delta": -1.0}),
    ("look up", {"pitch_delta": 1.0}),
    ("look down", {"pitch_delta": -1.0}),
    ("up", {"up": 1.0}),
    ("down", {"up": -1.0}),
)
"""(name, held keys as action components -> sign) of each discrete action, in index order."""


def key_action(index: int, tick_hz: float) -> np.ndarray:
    """The relative action (float32 [5]) of discrete action `index` at `tick_hz`."""
    if not 0 <= int(index) < len(KEY_ACTIONS):
        raise ValueError(f"a key action is an index in [0, {len(KEY_ACTIONS)}), got {index}")
    return np.asarray(held_key_action(KEY_ACTIONS[int(index)][1], tick_hz), dtype=np.float32)


class KeyActions(gym.ActionWrapper):
    """`KeyActions(gym.make("worldmodel/Explore-v0"))`: a Discrete(len(KEY_ACTIONS)) action space."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.tick_hz = float(env.unwrapped.tick_hz)
        self.action_space = spaces.Discrete(len(KEY_ACTIONS))

    def action(self, action) -> np.ndarray:
        return key_action(int(action), self.tick_hz)


class KeyActionsVector(gym.vector.VectorActionWrapper):
    """The batched environment with one discrete key action per row (MultiDiscrete)."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.tick_hz = float(env.unwrapped.tick_hz)
        self.single_action_space = spaces.Discrete(len(KEY_ACTIONS))
        self.action_space = spaces.MultiDiscrete([len(KEY_ACTIONS)] * env.num_envs)

    def actions(self, actions) -> np.ndarray:
        return np.stack([key_action(int(a), self.tick_hz) for a in np.asarray(actions).reshape(-1)])
