import math

import pytest
import torch

from conventions.camera import (PITCH_LIMIT, CameraPose, angle_between_views, camera_rays, camera_to_world,
                               forward_vector, integrate, integrate_sequence, relative_action, world_to_camera)


def test_yaw_zero_looks_down_negative_z_and_positive_yaw_turns_left():
    p = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, math.pi / 2, 0.0]])
    f = forward_vector(p)
    assert torch.allclose(f[0], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert torch.allclose(f[1], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)  # left of -z is -x


def test_positive_pitch_looks_up_and_is_clamped():
    pose = CameraPose(pitch=0.0)
    for _ in range(100):
        pose = pose.step([0, 0, 0, 0, 0.1])
    assert pose.pitch == pytest.approx(PITCH_LIMIT)
    assert forward_vector(pose.as_tensor())[1] > 0.99


def test_integration_moves_in_new_yaw_frame_and_pitch_never_tilts_movement():
    pose = CameraPose(0, 1.6, 0, 0, 0.5)
    nxt = pose.step([1.0, 0.0, 0.0, math.pi / 2, 0.0])
    assert (nxt.x, nxt.y, nxt.z) == pytest.approx((-1.0, 1.6, 0.0), abs=1e-9)
    right = CameraPose().step([0.0, 1.0, 0.0, 0.0, 0.0])
    assert (right.x, right.z) == pytest.approx((1.0, 0.0))


def test_batched_integration_matches_dataclass_and_relative_action_inverts_it():
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(50, 5, generator=g) * torch.tensor([0.2, 0.2, 0.05, 0.1, 0.05])
    start = torch.tensor([1.0, 1.6, -2.0, 0.3, 0.1])
    poses = integrate_sequence(start, actions)
    pose = CameraPose.from_sequence(start.tolist())
    for t in range(50):
        pose = pose.step(actions[t].tolist())
        assert torch.allclose(poses[t], pose.as_tensor(), atol=1e-4)
    prev = torch.cat([start[None], poses[:-1]])
    assert torch.allclose(relative_action(prev, poses), actions, atol=1e-4)


def test_matrices_are_inverse_and_rays_point_forward():
    poses = torch.tensor([[1.0, 2.0, 3.0, 0.7, -0.3], [0.0, 1.6, 0.0, -2.0, 0.4]])
    eye = camera_to_world(poses) @ world_to_camera(poses)
    assert torch.allclose(eye, torch.eye(4).expand(2, 4, 4), atol=1e-5)
    origins, dirs = camera_rays(poses, 8, 8)
    centre = dirs[:, 3:5, 3:5].mean(dim=(1, 2))
    assert torch.allclose(centre / centre.norm(dim=-1, keepdim=True), forward_vector(poses), atol=1e-5)
    assert torch.allclose(origins[:, 0, 0], poses[:, :3])


def test_pose_validation_rejects_nan_and_wrong_length():
    with pytest.raises(ValueError):
        CameraPose.from_sequence([0, 0, float("nan"), 0, 0])
    with pytest.raises(ValueError):
        CameraPose.from_sequence([0, 0, 0])
    assert angle_between_views(torch.zeros(5), torch.zeros(5)) == pytest.approx(0.0, abs=1e-3)
