"""Camera and action conventions: the one source of truth (docs/architecture.md §The conventions, in brief, binding).

Everything that moves a camera, renders from one, logs one or encodes one for the model imports
from here: the action vector layout, the pose layout, the integration rule, the camera-to-world
matrix and the per-pixel rays. Both numpy-free torch batch functions and a small dataclass for the
game loop are provided so nobody re-derives the trigonometry.

World frame: right-handed, +y up, metres. Camera looks along its local -z, +x right, +y up.
Pose = (x, y, z, yaw, pitch); yaw 0 looks along world -z and positive yaw turns left; positive
pitch looks up, clamped to +-85 degrees; no roll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# --- layouts -------------------------------------------------------------------------------------
ACTION_FIELDS: tuple[str, ...] = ("forward", "right", "up", "yaw_delta", "pitch_delta")
"""Relative action per tick, in the camera's yaw frame: metres per tick and radians per tick."""
ACTION_DIM = len(ACTION_FIELDS)

POSE_FIELDS: tuple[str, ...] = ("x", "y", "z", "yaw", "pitch")
"""Absolute camera pose: position in metres, yaw and pitch in radians."""
POSE_DIM = len(POSE_FIELDS)

PITCH_LIMIT = math.radians(85.0)
DEFAULT_FOV_DEG = 90.0
"""Horizontal field of view of the pinhole camera (square images) unless a scene says otherwise."""

DEFAULT_TICK_HZ = 20.0
"""One generated frame = one tick. Stored in every checkpoint's config and every action log."""

WALK_SPEED_MPS = 2.5
"""Movement speed of a held key (forward/back, strafe, up/down), metres per second."""
TURN_SPEED_DPS = 90.0
"""Turning speed of a held arrow key, degrees per second. Per tick: divide by the tick rate."""

PATH_HISTORY = 20_000
"""Camera poses a session remembers for the memory map and saved worlds (about 17 minutes at 20 Hz):
bounded, so a session of any length keeps constant memory."""
DEFAULT_RESOLUTION = 64
"""Frames are square RESOLUTION x RESOLUTION RGB; larger sizes are configs, not forks."""


def action_limits(tick_hz: float = DEFAULT_TICK_HZ) -> list[float]:
    """The largest |component| of an action a held key makes in one tick at `tick_hz`: WALK_SPEED_MPS
    / tick_hz metres for the moves, TURN_SPEED_DPS / tick_hz (in radians) for the turns. The game's
    keys (game.bindings) and the agents' action space (worldmodel.env) both move at these speeds."""
    if not (tick_hz > 0 and math.isfinite(tick_hz)):
        raise ValueError(f"tick rate must be a positive number, got {tick_hz}")
    move, turn = WALK_SPEED_MPS / tick_hz, math.radians(TURN_SPEED_DPS) / tick_hz
    return [move, move, move, turn, turn]


def held_key_action(axes: dict[str, float], tick_hz: float = DEFAULT_TICK_HZ) -> list[float]:
    """The action of held keys: `axes` maps action components (ACTION_FIELDS) to -1..1 (absent = 0),
    scaled by `action_limits`; a diagonal (forward + strafe) is normalised so it is not faster than a
    straight move."""
    unknown = set(axes) - set(ACTION_FIELDS)
    if unknown:
        raise ValueError(f"unknown action components {sorted(unknown)}; known: {ACTION_FIELDS}")
    push = [float(axes.get(name, 0.0)) for name in ACTION_FIELDS]
    norm = math.hypot(push[0], push[1])
    if norm > 1.0:
        push[0], push[1] = push[0] / norm, push[1] / norm
    return [p * limit for p, limit in zip(push, action_limits(tick_hz))]


@dataclass(frozen=True)
class CameraPose:
    """An absolute pose as logged and displayed."""

    x: float = 0.0
    y: float = 1.6
    z: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0

    def as_list(self) -> list[float]:
        return [float(self.x), float(self.y), float(self.z), float(self.yaw), float(self.pitch)]

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(self.as_list(), dtype=torch.float32)

    @classmethod
    def from_sequence(cls, values) -> "CameraPose":
        vals = [float(v) for v in values]
        if len(vals) != POSE_DIM:
            raise ValueError(f"a pose has {POSE_DIM} numbers {POSE_FIELDS}, got {len(vals)}")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"pose contains a non-finite number: {vals}")
        return cls(*vals)

    def step(self, action) -> "CameraPose":
        """The pose after one tick of `action` (docs/architecture.md §The conventions, in brief integration)."""
        a = [float(v) for v in action]
        if len(a) != ACTION_DIM:
            raise ValueError(f"an action has {ACTION_DIM} numbers {ACTION_FIELDS}, got {len(a)}")
        forward, right, up, dyaw, dpitch = a
        yaw = self.yaw + dyaw
        pitch = min(max(self.pitch + dpitch, -PITCH_LIMIT), PITCH_LIMIT)
        s, c = math.sin(yaw), math.cos(yaw)
        x = self.x - s * forward + c * right
        z = self.z - c * forward - s * right
        y = self.y + up
        return CameraPose(x, y, z, yaw, pitch)


def integrate(poses: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Batched docs/architecture.md §The conventions, in brief integration: poses [..., 5], actions [..., 5] -> next poses [..., 5].

    Yaw and pitch update first, then the move happens in the *new* yaw frame; pitch never tilts it.
    """
    forward, right, up, dyaw, dpitch = actions.unbind(-1)
    x, y, z, yaw, pitch = poses.unbind(-1)
    yaw = yaw + dyaw
    pitch = (pitch + dpitch).clamp(-PITCH_LIMIT, PITCH_LIMIT)
    s, c = torch.sin(yaw), torch.cos(yaw)
    x = x - s * forward + c * right
    z = z - c * forward - s * right
    y = y + up
    return torch.stack([x, y, z, yaw, pitch], dim=-1)


def integrate_sequence(start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """start [..., 5], actions [..., T, 5] -> poses after each action [..., T, 5]."""
    out = []
    pose = start
    for t in range(actions.shape[-2]):
        pose = integrate(pose, actions[..., t, :])
        out.append(pose)
    return torch.stack(out, dim=-2)


def relative_action(prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """The action that integrates `prev` [..., 5] into `nxt` [..., 5] (inverse of `integrate`).

    Exact when the pitch stays inside the clamp; used to label trajectories planned as poses.
    """
    dyaw = nxt[..., 3] - prev[..., 3]
    dpitch = nxt[..., 4] - prev[..., 4]
    yaw = nxt[..., 3]
    s, c = torch.sin(yaw), torch.cos(yaw)
    dx = nxt[..., 0] - prev[..., 0]
    dz = nxt[..., 2] - prev[..., 2]
    forward = -s * dx - c * dz
    right = c * dx - s * dz
    up = nxt[..., 1] - prev[..., 1]
    return torch.stack([forward, right, up, dyaw, dpitch], dim=-1)


def rotation(poses: torch.Tensor) -> torch.Tensor:
    """Camera-to-world rotation [..., 3, 3] from poses [..., 5]: R = R_y(yaw) @ R_x(pitch).

    Columns are the camera's +x (right), +y (up) and +z (backwards) axes in world coordinates.
    """
    yaw, pitch = poses[..., 3], poses[..., 4]
    sy, cy = torch.sin(yaw), torch.cos(yaw)
    sp, cp = torch.sin(pitch), torch.cos(pitch)
    zero = torch.zeros_like(yaw)
    # R_y(yaw) = [[c,0,s],[0,1,0],[-s,0,c]];  R_x(p) = [[1,0,0],[0,c,-s],[0,s,c]]
    row0 = torch.stack([cy, sy * sp, sy * cp], dim=-1)
    row1 = torch.stack([zero, cp, -sp], dim=-1)
    row2 = torch.stack([-sy, cy * sp, cy * cp], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def camera_to_world(poses: torch.Tensor) -> torch.Tensor:
    """The one pose -> 4x4 camera-to-world matrix conversion: poses [..., 5] -> [..., 4, 4]."""
    rot = rotation(poses)
    out = torch.zeros(*poses.shape[:-1], 4, 4, dtype=poses.dtype, device=poses.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = poses[..., :3]
    out[..., 3, 3] = 1.0
    return out


def world_to_camera(poses: torch.Tensor) -> torch.Tensor:
    """Inverse of `camera_to_world`, [..., 4, 4], computed in closed form (R^T, -R^T t)."""
    rot_t = rotation(poses).transpose(-1, -2)
    out = torch.zeros(*poses.shape[:-1], 4, 4, dtype=poses.dtype, device=poses.device)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ poses[..., :3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def focal_length(width: int, fov_deg: float = DEFAULT_FOV_DEG) -> float:
    """Focal length in pixels of the pinhole camera `width` pixels wide with horizontal field of view
    `fov_deg`."""
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2)


def pixel_directions(height: int, width: int, fov_deg: float = DEFAULT_FOV_DEG,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit ray directions through pixel centres in camera coordinates, [H, W, 3].

    Pinhole with horizontal field of view `fov_deg`; row 0 is the top of the image.
    """
    focal = focal_length(width, fov_deg)
    u = (torch.arange(width, dtype=dtype) + 0.5 - width / 2) / focal
    v = (torch.arange(height, dtype=dtype) + 0.5 - height / 2) / focal
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    d = torch.stack([uu, -vv, -torch.ones_like(uu)], dim=-1)
    return d / d.norm(dim=-1, keepdim=True)


def camera_rays(poses: torch.Tensor, height: int, width: int,
                fov_deg: float = DEFAULT_FOV_DEG) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays for every pixel: poses [B, 5] -> origins [B, H, W, 3], directions [B, H, W, 3]."""
    local = pixel_directions(height, width, fov_deg, poses.dtype).to(poses.device)  # [H, W, 3]
    rot = rotation(poses)  # [B, 3, 3]
    dirs = torch.einsum("bij,hwj->bhwi", rot, local)
    origins = poses[:, None, None, :3].expand_as(dirs)
    return origins, dirs


def forward_vector(poses: torch.Tensor) -> torch.Tensor:
    """Viewing direction (camera -z) in world coordinates, pitch included: [..., 3]."""
    return -rotation(poses)[..., :, 2]


def angle_between_views(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between the viewing directions of poses a and b ([..., 5] each)."""
    fa, fb = forward_vector(a), forward_vector(b)
    return torch.acos((fa * fb).sum(-1).clamp(-1.0, 1.0))
