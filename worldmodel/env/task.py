"""Episodes of an exploration environment and its built-in task, computed from the pose alone.

An episode is what the environment keeps beside the frame source: the session seed of the frame
source, the pose and tick, and for the "reach" task a goal. Everything random in an episode comes
from the environment's seeded generator (Gymnasium's `np_random`), in one fixed order (session seed,
then goal), so `reset(seed=s)` gives the same episode bit for bit, and row i of the batched
environment seeded with s gives the episode of a single environment seeded with s + i.

Task "reach": a goal point on the ground is drawn in the world's free area (`scenes.world.World`
is_free: inside the walls, off the obstacles) between `min_distance` and `max_distance` from the
start; with no procedural world behind the scene (a picture scene) it is drawn in that ring around
the start. Reward per tick = the decrease of the horizontal (x/z) distance to the goal, plus `bonus`
on the tick it comes within `radius`, which ends the episode (terminated). The goal is in `info`
("goal" [x, z], "distance", "reached") and, with observe_goal, in the observation as its position
in the camera's yaw frame (forward, right): what an agent needs to learn to walk there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from conventions.camera import CameraPose, relative_action
from worldmodel.env.config import FRAME_KEY, GOAL_KEY, POSE_KEY, TASK_REACH, ExploreConfig

SEED_RANGE = 2 ** 31 - 1
"""Session seeds of the frame source are drawn from [0, SEED_RANGE)."""


@dataclass(frozen=True)
class ReachTask:
    """The "reach" task's rules (module docstring); metres unless said otherwise."""

    radius: float = 0.75
    """The goal counts as reached within this horizontal distance."""
    bonus: float = 10.0
    """Reward on the tick the goal is reached, on top of the progress."""
    min_distance: float = 2.0
    max_distance: float = 8.0
    """Goals are drawn this far from the start (8 m: about 3 s of walking at the game's speed)."""
    clearance: float = 0.5
    """Goals keep this far from walls and obstacles (the walker's radius of World.is_free)."""
    tries: int = 500
    """Points drawn before the ring's rule is dropped (a small world may have no free point in it)."""


REACH = ReachTask()


@dataclass
class Episode:
    """One episode's state beside the frame source."""

    seed: int
    """Session seed of the frame source (the model's noise)."""
    pose: CameraPose
    tick: int = 0
    goal: tuple[float, float] | None = None
    """The "reach" task's goal (x, z); None without the task."""
    distance: float = math.nan
    reached: bool = False


def sample_goal(rng: np.random.Generator, start: CameraPose, world, task: ReachTask = REACH) -> tuple[float, float]:
    """A goal (x, z) for an episode starting at `start` (module docstring for the rule)."""
    if world is None:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        radius = rng.uniform(task.min_distance, task.max_distance)
        return start.x + radius * math.cos(angle), start.z + radius * math.sin(angle)
    free = None
    for _ in range(task.tries):
        x, z = (float(v) for v in rng.uniform(-world.half_extent, world.half_extent, 2))
        if not world.is_free(x, z, task.clearance):
            continue
        free = (x, z)
        if task.min_distance <= math.hypot(x - start.x, z - start.z) <= task.max_distance:
            return free
    return free if free is not None else (start.x, start.z + task.min_distance)


def goal_distance(pose: CameraPose, goal: tuple[float, float]) -> float:
    """Horizontal distance from the camera to the goal, metres."""
    return math.hypot(goal[0] - pose.x, goal[1] - pose.z)


def start_episode(rng: np.random.Generator, config: ExploreConfig, start_pose: CameraPose, world,
                  task: ReachTask = REACH) -> Episode:
    """A new episode: its session seed, then (task "reach") its goal, drawn from `rng` in that order."""
    episode = Episode(seed=int(rng.integers(SEED_RANGE)), pose=start_pose)
    if config.task == TASK_REACH:
        episode.goal = sample_goal(rng, start_pose, world, task)
        episode.distance = goal_distance(start_pose, episode.goal)
    return episode


def advance(episode: Episode, pose: CameraPose, task: ReachTask = REACH) -> tuple[float, bool]:
    """Move the episode to `pose` (one tick later) -> (reward, terminated)."""
    episode.pose = pose
    episode.tick += 1
    if episode.goal is None:
        return 0.0, False
    before = episode.distance
    episode.distance = goal_distance(pose, episode.goal)
    episode.reached = episode.distance <= task.radius
    return (before - episode.distance) + (task.bonus if episode.reached else 0.0), episode.reached


def relative_goal(pose: CameraPose, goal: tuple[float, float]) -> np.ndarray:
    """The goal in the camera's yaw frame: [forward, right] metres (the move an action would make)."""
    target = torch.tensor([goal[0], pose.y, goal[1], pose.yaw, pose.pitch], dtype=torch.float64)
    move = relative_action(torch.tensor(pose.as_list(), dtype=torch.float64), target)
    return move[:2].numpy().astype(np.float32)


def observation(frame: np.ndarray, episode: Episode, config: ExploreConfig):
    """What the agent sees: the frame (a fresh copy), or a dictionary with the pose and the goal."""
    image = np.array(frame, dtype=np.uint8, copy=True)
    if not config.observes_dict:
        return image
    obs = {FRAME_KEY: image}
    if config.observe_pose:
        obs[POSE_KEY] = np.asarray(episode.pose.as_list(), dtype=np.float32)
    if config.observe_goal:
        obs[GOAL_KEY] = relative_goal(episode.pose, episode.goal)
    return obs


def info(episode: Episode) -> dict:
    """The step's info: pose [x, y, z, yaw, pitch] and tick; goal, distance and reached for "reach"."""
    out = {"pose": np.asarray(episode.pose.as_list(), dtype=np.float32), "tick": episode.tick}
    if episode.goal is not None:
        out.update(goal=np.asarray(episode.goal, dtype=np.float32), distance=float(episode.distance),
                   reached=bool(episode.reached))
    return out
