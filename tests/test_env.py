"""The Gymnasium environment: API conformance on both backends, seeded episodes that replay bit for
bit, the batched environment equal to single ones, the "reach" task and discrete key actions."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

import worldmodel.env  # noqa: E402,F401  (registers worldmodel/Explore-v0)
from gymnasium.utils.env_checker import check_env  # noqa: E402

from conventions.camera import action_limits  # noqa: E402
from worldmodel.env import ENV_ID, KEY_ACTIONS, REACH, ExploreEnv, KeyActions, KeyActionsVector  # noqa: E402
from worldmodel.env.task import relative_goal  # noqa: E402
from conventions.errors import UserError  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
RL_EXAMPLE_MARKER = "<!-- rl-example -->"


def _same(a, b) -> bool:
    """Observations / infos equal exactly (arrays bit for bit)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == np.asarray(b).dtype and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("backend", ["oracle", "model"])
def test_check_env_passes(backend: str) -> None:
    env = gym.make(ENV_ID, backend=backend, task="reach", observe_pose=True, observe_goal=True,
                   render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # pose and goal are unbounded
        check_env(env.unwrapped)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == env.observation_space["frame"].shape
    env.close()


def _episode(env, seed: int, ticks: int) -> list:
    env.action_space.seed(seed)
    out = [env.reset(seed=seed)]
    for _ in range(ticks):
        out.append(env.step(env.action_space.sample()))
    return out


def test_a_seeded_episode_replays_bit_identically() -> None:
    env = gym.make(ENV_ID, task="reach", observe_pose=True, observe_goal=True)  # the model backend
    first = _episode(env, seed=11, ticks=6)
    _episode(env, seed=12, ticks=3)  # another episode in between changes nothing
    again = _episode(env, seed=11, ticks=6)
    fresh = _episode(gym.make(ENV_ID, task="reach", observe_pose=True, observe_goal=True), seed=11, ticks=6)
    for a, b, c in zip(first, again, fresh):
        assert all(_same(x, y) and _same(x, z) for x, y, z in zip(a, b, c))
    other = _episode(env, seed=12, ticks=1)
    assert not _same(other[0][1]["goal"], first[0][1]["goal"])  # the seed picks the goal (and the noise)


def test_vector_env_equals_single_envs_stepped_one_by_one() -> None:
    """Row i of the batched env (one generator pass per denoising step for all rows) equals a single
    env seeded with seed + i, frame for frame and bit for bit, with the shipped model's memory and
    hint at work, across a reset of one row and auto-resets (rows then sit at different ticks: one
    in its first, more-step frames while the others commit and retrieve memory)."""
    n, ticks, limit, reset_row, reset_at = 3, 13, 10, 1, 4
    options = dict(task="reach", observe_goal=True, max_episode_steps=limit)
    envs = gym.make_vec(ENV_ID, num_envs=n, **options)
    assert envs.unwrapped.batched
    rows = envs.unwrapped.frames.sessions.rows
    singles = [ExploreEnv(**options) for _ in range(n)]
    obs, _ = envs.reset(seed=5)
    for i, env in enumerate(singles):
        assert _same({k: v[i] for k, v in obs.items()}, env.reset(seed=5 + i)[0])
    rng = np.random.default_rng(0)
    done = [False] * n
    memory_used = ended = False
    for t in range(ticks):
        if t == reset_at:  # one row starts over while the others go on
            mask = np.arange(n) == reset_row
            obs, _ = envs.reset(options={"reset_mask": mask})
            again, _ = singles[reset_row].reset()
            assert _same({k: v[reset_row] for k, v in obs.items()}, again)
        high = envs.single_action_space.high
        actions = (rng.uniform(-1, 1, (n, high.size)) * high).astype(np.float32)
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        memory_used |= any(row.timing.memory_entries > 0 for row in rows)
        for i, env in enumerate(singles):
            if done[i]:  # gymnasium's next-step auto-reset
                o, r, term, trunc = *env.reset()[:1], 0.0, False, False
            else:
                o, r, term, trunc, _ = env.step(actions[i])
            done[i] = term or trunc
            ended |= done[i]
            assert _same({k: v[i] for k, v in obs.items()}, o), (t, i)
            assert (rewards[i], terminated[i], truncated[i]) == (r, term, trunc), (t, i)
    assert ended and memory_used  # episodes ended and restarted; retrieved memory fed the batched pass


def test_reach_task_rewards_progress_and_ends_at_the_goal() -> None:
    env = gym.make(ENV_ID, backend="oracle", task="reach", observe_goal=True, max_episode_steps=400)
    obs, info = env.reset(seed=3)
    start = info["distance"]
    assert REACH.min_distance <= start <= REACH.max_distance
    limits = action_limits(env.unwrapped.tick_hz)
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):  # turn towards the goal, walk when facing it
        forward, right = obs["goal"]
        yaw = float(np.clip(-math.atan2(right, forward), -limits[3], limits[3]))
        move = limits[0] if abs(yaw) < limits[3] else 0.0
        obs, reward, terminated, truncated, info = env.step(np.array([move, 0, 0, yaw, 0], dtype=np.float32))
        total += reward
    assert terminated and not truncated and info["reached"] and info["distance"] <= REACH.radius
    assert total == pytest.approx(start - info["distance"] + REACH.bonus, abs=1e-6)


def test_no_task_means_no_reward_and_the_pose_is_the_games() -> None:
    env = ExploreEnv(backend="oracle", max_episode_steps=2, observe_pose=True)
    obs, info = env.reset(seed=0)
    assert set(info) == {"pose", "tick"} and info["tick"] == 0
    step = env.action_space.high * np.array([1, 0, 0, 1, 0], dtype=np.float32)
    obs, reward, terminated, truncated, info = env.step(step)
    expected = env.scene.start_pose.step(step.tolist())
    assert reward == 0.0 and not terminated and not truncated
    assert np.allclose(obs["pose"], expected.as_list()) and info["tick"] == 1
    assert env.step(step)[3]  # truncated at max_episode_steps
    with pytest.raises(ValueError, match="5 finite numbers"):
        env.step([0.0, math.nan, 0.0, 0.0, 0.0])


def test_key_actions_are_held_game_keys() -> None:
    env = KeyActions(ExploreEnv(backend="oracle", observe_pose=True))
    assert env.action_space.n == len(KEY_ACTIONS)
    obs, _ = env.reset(seed=0)
    forward = [name for name, _ in KEY_ACTIONS].index("forward")
    after, *_ = env.step(forward)
    moved = math.hypot(after["pose"][0] - obs["pose"][0], after["pose"][2] - obs["pose"][2])
    assert moved == pytest.approx(action_limits(env.unwrapped.tick_hz)[0], rel=1e-5)
    envs = KeyActionsVector(gym.make_vec(ENV_ID, num_envs=2, backend="oracle"))
    envs.reset(seed=0)
    assert envs.step(np.array([forward, 0]))[0].shape[0] == 2


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown option 'colour'"):
        ExploreEnv(backend="oracle", colour="red")
    with pytest.raises(UserError, match="only the 'reach' task has a goal"):
        ExploreEnv(backend="oracle", observe_goal=True)
    with pytest.raises(UserError, match="unknown task"):
        ExploreEnv(backend="oracle", task="fly")
    with pytest.raises(UserError, match="only the model backend has a memory"):
        ExploreEnv(backend="oracle", memory=False)


def test_relative_goal_is_in_the_camera_yaw_frame() -> None:
    from conventions.camera import CameraPose

    pose = CameraPose(0.0, 1.6, 0.0, math.pi / 2, 0.0)  # yaw 90 degrees: looking along world -x
    assert np.allclose(relative_goal(pose, (-3.0, 0.0)), [3.0, 0.0], atol=1e-6)  # straight ahead
    assert np.allclose(relative_goal(pose, (0.0, -2.0)), [0.0, 2.0], atol=1e-6)  # to the right


def test_readme_rl_example_runs_as_written() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(re.escape(RL_EXAMPLE_MARKER) + r"\s*```python\n(.*?)```", text, re.S)
    assert block is not None, f"README has no python block after {RL_EXAMPLE_MARKER}"
    code = block.group(1)
    assert len(code.strip().splitlines()) == 6
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102  (the README's own example)
    assert scope["env"].observation_space.contains(scope["obs"])


def test_bench_vecenv_measures_both_ways_on_equal_frames(capsys) -> None:
    from tools.cli import main

    assert main(["bench", "vecenv", "--envs", "2", "--vec-steps", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("2 "))
    assert float(row[1]) > 0 and float(row[2]) > 0 and row[-1] == "yes"  # N, batched, sequential, ratio, equal
