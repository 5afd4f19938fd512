"""The agents' API: the engine as a Gymnasium environment, `worldmodel/Explore-v0`, single and batched.

    import gymnasium as gym
    import worldmodel.env  # registers worldmodel/Explore-v0

    env = gym.make("worldmodel/Explore-v0", backend="oracle", task="reach", observe_goal=True)
    envs = gym.make_vec("worldmodel/Explore-v0", num_envs=8)  # model backend: one batched generator

Needs the optional extra `rl` (gymnasium): `pip install -e '.[rl]'`. The settings are
`ExploreConfig`'s; `KeyActions` / `KeyActionsVector` give agents discrete key combinations.
This package sits at the level of `tools` (it drives the game's frame sources), above `game`.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from worldmodel.env.config import DEFAULT_MAX_EPISODE_STEPS, TASKS, ExploreConfig
from worldmodel.env.explore import ExploreEnv
from worldmodel.env.keys import KEY_ACTIONS, KeyActions, KeyActionsVector, key_action
from worldmodel.env.task import REACH, Episode, ReachTask
from worldmodel.env.vector import ExploreVectorEnv

ENV_ID = "worldmodel/Explore-v0"

__all__ = ["DEFAULT_MAX_EPISODE_STEPS", "ENV_ID", "KEY_ACTIONS", "REACH", "TASKS", "Episode", "ExploreConfig",
           "ExploreEnv", "ExploreVectorEnv", "KeyActions", "KeyActionsVector", "ReachTask", "key_action"]

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="worldmodel.env.explore:ExploreEnv",
             vector_entry_point="worldmodel.env.vector:ExploreVectorEnv",
             max_episode_steps=DEFAULT_MAX_EPISODE_STEPS)
