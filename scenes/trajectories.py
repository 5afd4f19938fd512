"""Trajectory policies that look like play, for training clips and evaluation logs.

Actions are what a player's keys and mouse would produce: held keys move at WALK_SPEED_MPS and
turn at TURN_SPEED_DPS, mouse looks add smooth yaw/pitch changes. Walkers do not pass through
obstacles (the policy turns away), so the clips look like someone exploring, and the poses are
exactly the docs/architecture.md §The conventions, in brief integration of the actions. Two policies come back to places >= 100 ticks
later, which is what the memory learns from and is scored on:
- `revisit` walks out, turns round, comes back along the way and faces the start again, so the
  place it returns to is the start view (which the sink frame also holds);
- `retrace` does the same and then walks the outbound route a second time with the same keys, so
  the views it returns to are ones seen along the way, which only the memory can hold.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from scenes.world import World
from conventions.camera import (ACTION_DIM, DEFAULT_TICK_HZ, PITCH_LIMIT, TURN_SPEED_DPS, WALK_SPEED_MPS,
                               CameraPose, angle_between_views)
from conventions.metrics import REVISIT_MAX_ANGLE_DEG, REVISIT_MAX_DISTANCE_M, revisit_matrix

POLICIES = ("walk", "look", "revisit", "retrace")
POLICY_WEIGHTS = (0.30, 0.20, 0.25, 0.25)
"""Mix weights of `worldmodel dataset --policy mix` (data sets record each clip's policy)."""
RETRACE_OUT_FRACTION = 0.25
"""Retrace clips: the outbound walk is this share of the clip (then back, then the walk again)."""
LOOK_AROUND_START_TICKS = 6
WALKER_RADIUS = 0.4
REVISIT_TURN_SPEED = 2.0
"""About-faces in revisit clips turn at twice the key rate, like a mouse flick."""
MAX_PITCH_LOOK = math.radians(30.0)
"""Players mostly look near the horizon; trajectories keep pitch within this."""


@dataclass
class Trajectory:
    actions: torch.Tensor  # [T, 5]; actions[0] = 0 (the start frame has no action)
    poses: torch.Tensor  # [T, 5]; poses[t] = integrate(poses[t-1], actions[t])
    policy: str


class _Walker:
    """Integrates actions from a pose, refusing moves into obstacles (turning instead)."""

    def __init__(self, world: World, pose: CameraPose, tick_hz: float, rng: random.Random) -> None:
        self.world, self.pose, self.rng = world, pose, rng
        self.step_m = WALK_SPEED_MPS / tick_hz
        self.turn_rad = math.radians(TURN_SPEED_DPS) / tick_hz
        self.actions: list[list[float]] = [[0.0] * ACTION_DIM]
        self.poses: list[CameraPose] = [pose]

    def act(self, forward: float = 0.0, right: float = 0.0, dyaw: float = 0.0, dpitch: float = 0.0) -> bool:
        """Apply one tick; a blocked move becomes a turn. Returns whether the move was free."""
        nxt = self.pose.step([forward, right, 0.0, dyaw, dpitch])
        free = self.world.segment_is_free(self.pose.x, self.pose.z, nxt.x, nxt.z, WALKER_RADIUS)
        if not free:
            forward = right = 0.0
            nxt = self.pose.step([0.0, 0.0, 0.0, dyaw if dyaw else self.turn_rad, dpitch])
        action = [forward, right, 0.0, nxt.yaw - self.pose.yaw, nxt.pitch - self.pose.pitch]
        self.pose = nxt
        self.actions.append(action)
        self.poses.append(nxt)
        return free

    def pitch_towards(self, target: float) -> float:
        return max(-self.turn_rad * 0.5, min(self.turn_rad * 0.5, target - self.pose.pitch))

    def ahead_is_free(self, distance: float) -> bool:
        s, c = math.sin(self.pose.yaw), math.cos(self.pose.yaw)
        return self.world.segment_is_free(self.pose.x, self.pose.z, self.pose.x - s * distance,
                                          self.pose.z - c * distance, WALKER_RADIUS)

    def wander(self, ticks: int, turn_prob: float = 0.03) -> None:
        """Walk forward with occasional key turns, strafes and mouse drifts; avoid walls early."""
        turning, strafe, drift = 0, 0.0, 0.0
        pitch_target = 0.0
        for _ in range(ticks):
            if turning == 0 and (not self.ahead_is_free(1.2) or self.rng.random() < turn_prob):
                turning = self.rng.choice([-1, 1]) * self.rng.randint(4, 20)
            if self.rng.random() < 0.05:
                strafe = self.rng.choice([0.0, 0.0, -1.0, 1.0])
            if self.rng.random() < 0.05:
                drift = self.rng.uniform(-0.4, 0.4) * self.turn_rad
            if self.rng.random() < 0.03:
                pitch_target = self.rng.uniform(-MAX_PITCH_LOOK, MAX_PITCH_LOOK) * 0.5
            dyaw = drift
            forward = self.step_m
            if turning:
                dyaw = math.copysign(self.turn_rad, turning)
                turning -= int(math.copysign(1, turning))
                forward = self.step_m * 0.5 if self.ahead_is_free(0.8) else 0.0
            self.act(forward, strafe * self.step_m * 0.6, dyaw, self.pitch_towards(pitch_target))

    def look_around(self, ticks: int) -> None:
        """Stand (mostly), pan with the mouse and look up/down, with a few short steps."""
        yaw_rate = self.rng.uniform(-1, 1) * self.turn_rad
        pitch_target = 0.0
        for _ in range(ticks):
            if self.rng.random() < 0.06:
                yaw_rate = self.rng.uniform(-1.2, 1.2) * self.turn_rad
            if self.rng.random() < 0.05:
                pitch_target = self.rng.uniform(-MAX_PITCH_LOOK, MAX_PITCH_LOOK)
            step = self.step_m if self.rng.random() < 0.15 and self.ahead_is_free(1.0) else 0.0
            self.act(step, 0.0, yaw_rate, self.pitch_towards(pitch_target))

    def turn_to(self, yaw: float, max_ticks: int, speed: float = 1.0, pitch: float = 0.0) -> None:
        """Turn in place to (`yaw`, `pitch`) at `speed` x the key turn rate (a mouse flick turns faster)."""
        rate = self.turn_rad * speed
        for _ in range(max_ticks):
            diff = math.remainder(yaw - self.pose.yaw, 2 * math.pi)
            if abs(diff) < 1e-6 and abs(self.pose.pitch - pitch) < 1e-6:
                break
            self.act(0.0, 0.0, max(-rate, min(rate, diff)), self.pitch_towards(pitch))

    def replay(self, actions: list[list[float]], max_ticks: int) -> None:
        """Press the same keys again: apply recorded actions (blocked moves still turn instead)."""
        for a in actions[:max_ticks]:
            self.act(a[0], a[1], a[3], a[4])

    def go_to(self, x: float, z: float, max_ticks: int, tolerance: float) -> None:
        """Turn towards (x, z) and walk there, as a player steering with keys and mouse would."""
        for _ in range(max_ticks):
            dx, dz = x - self.pose.x, z - self.pose.z
            dist = math.hypot(dx, dz)
            if dist < tolerance:
                return
            want = math.atan2(-dx, -dz)  # yaw whose forward (-sin, -cos) points along (dx, dz)
            diff = math.remainder(want - self.pose.yaw, 2 * math.pi)
            dyaw = max(-self.turn_rad, min(self.turn_rad, diff))
            forward = min(self.step_m, dist) if abs(diff) < math.radians(40) else 0.0
            self.act(forward, 0.0, dyaw, self.pitch_towards(0.0))


def make_trajectory(world: World, ticks: int, policy: str, rng: random.Random,
                    tick_hz: float = DEFAULT_TICK_HZ, start: CameraPose | None = None) -> Trajectory:
    """A `ticks`-frame trajectory of `policy` in `world` from `start` (default: a random free point)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {POLICIES}")
    if start is None:
        x, z = world.random_free_point(rng, radius=WALKER_RADIUS + 0.3)
        start = CameraPose(x, world.spawn_pose().y, z, rng.uniform(-math.pi, math.pi), 0.0)
    w = _Walker(world, start, tick_hz, rng)
    n = ticks - 1
    if policy == "walk":
        w.wander(n)
    elif policy == "look":
        w.look_around(n)
    elif policy == "revisit":
        # Out (about 30% of the clip), turn round, come back along the way, face the start again.
        out = max(1, int(n * 0.30))
        w.look_around(min(LOOK_AROUND_START_TICKS, out))
        w.wander(out)
        _walk_back(w, ticks)
        w.turn_to(start.yaw, max_ticks=max(0, ticks - len(w.poses)), speed=REVISIT_TURN_SPEED)
        if len(w.poses) < ticks:
            w.look_around(ticks - len(w.poses))
    else:
        # Out (a quarter of the clip), back along the way, then the same outbound keys again from the
        # same place and heading: the second walk sees what the first one saw.
        out = max(1, int(n * RETRACE_OUT_FRACTION))
        w.look_around(min(LOOK_AROUND_START_TICKS, out))
        origin = w.pose
        first_action = len(w.actions)
        w.wander(out)
        outbound = [list(a) for a in w.actions[first_action:]]
        _walk_back(w, ticks, origin)
        w.turn_to(origin.yaw, max_ticks=max(0, ticks - len(w.poses)), speed=REVISIT_TURN_SPEED,
                  pitch=origin.pitch)
        w.replay(outbound, max_ticks=max(0, ticks - len(w.poses)))
        if len(w.poses) < ticks:
            w.look_around(ticks - len(w.poses))
    actions = torch.tensor(w.actions[:ticks], dtype=torch.float32)
    poses = torch.tensor([p.as_list() for p in w.poses[:ticks]], dtype=torch.float32)
    assert actions.shape[0] == ticks and poses.shape[0] == ticks, (policy, actions.shape, ticks)
    assert poses[:, 4].abs().max() <= PITCH_LIMIT + 1e-6
    return Trajectory(actions=actions, poses=poses, policy=policy)


CHAIN_SEGMENT_TICKS = 200
"""Frames of each policy segment of a `chained_trajectory` (its first is the previous segment's last)."""


def chained_trajectory(world: World, ticks: int, rng: random.Random, tick_hz: float = DEFAULT_TICK_HZ,
                       start: CameraPose | None = None, segment_ticks: int = CHAIN_SEGMENT_TICKS) -> Trajectory:
    """A long play-like trajectory of `ticks` frames: segments of walk, look, revisit, retrace in turn,
    each starting where the last one ended (default start: the world's spawn pose).

    Long runs (the play benchmark, the drift suite) need a camera that keeps exploring and comes back,
    the way a person plays for minutes; one policy alone either never returns or never leaves."""
    if ticks < 1 or segment_ticks < 2:
        raise ValueError(f"need ticks >= 1 and segment_ticks >= 2, got {ticks}, {segment_ticks}")
    pose = world.spawn_pose() if start is None else start
    actions, poses = [torch.zeros(1, ACTION_DIM)], [torch.tensor([pose.as_list()], dtype=torch.float32)]
    made, i = 1, 0
    while made < ticks:
        seg = make_trajectory(world, segment_ticks, POLICIES[i % len(POLICIES)], rng, tick_hz, start=pose)
        actions.append(seg.actions[1:])
        poses.append(seg.poses[1:])
        made += segment_ticks - 1
        pose = CameraPose.from_sequence(seg.poses[-1].tolist())
        i += 1
    return Trajectory(actions=torch.cat(actions)[:ticks], poses=torch.cat(poses)[:ticks], policy="chain")


def _walk_back(w: _Walker, ticks: int, to: CameraPose | None = None) -> None:
    """Turn round and walk back along the path walked so far (to its start, or to the pose `to`)."""
    path = [(p.x, p.z) for p in w.poses]
    w.turn_to(w.pose.yaw + math.pi, max_ticks=ticks, speed=REVISIT_TURN_SPEED)
    for x, z in reversed(path[:: max(1, len(path) // 12)]):
        if len(w.poses) >= ticks:
            return
        w.go_to(x, z, max_ticks=ticks - len(w.poses), tolerance=w.step_m)
    if to is not None and len(w.poses) < ticks:
        w.go_to(to.x, to.z, max_ticks=ticks - len(w.poses), tolerance=w.step_m * 0.5)


def revisit_ticks(poses: torch.Tensor, min_gap: int = 100, max_distance: float = REVISIT_MAX_DISTANCE_M,
                  max_angle_deg: float = REVISIT_MAX_ANGLE_DEG, match: str = "first_visit") -> list[tuple[int, int]]:
    """(t, first) pairs, docs/architecture.md §Metrics: tick t's pose is within `max_distance` m and `max_angle_deg` of
    the pose at some tick <= t - min_gap; `first` is the frame of the first visit to compare it with.

    The first visit is the earliest unbroken run of such ticks. Its frame is, with `match`:
    - "first_visit" (default): the tick of that run whose pose is nearest t's (distance / max_distance
      + angle / max_angle), i.e. the frame of the first visit that shows the same view;
    - "earliest": the run's first tick. That is the edge of the tolerance ball, a view up to 0.5 m and
      15 degrees away, so even the true renders agree only to ~19 dB there (measured on the revisit
      suite); it was the rule before 2026-11-29 and is kept to compare with earlier numbers.
    """
    if match not in ("first_visit", "earliest"):
        raise ValueError(f"match must be 'first_visit' or 'earliest', got {match!r}")
    close = revisit_matrix(poses, min_gap, max_distance, max_angle_deg)  # [t, f]
    pairs = []
    for t in torch.nonzero(close.any(1)).flatten().tolist():
        hits = torch.nonzero(close[t]).flatten()  # ticks f, ascending
        if match == "earliest":
            pairs.append((t, int(hits[0])))
            continue
        breaks = torch.nonzero(hits.diff() != 1).flatten()
        run = hits[: int(breaks[0]) + 1] if breaks.numel() else hits  # the first unbroken visit
        here = poses[t].expand(run.numel(), poses.shape[-1])
        distance = (poses[run, :3] - here[:, :3]).norm(dim=-1) / max_distance + \
            angle_between_views(poses[run], here) / math.radians(max_angle_deg)  # [run]
        pairs.append((t, int(run[int(distance.argmin())])))
    return pairs
