"""memory.retrieval: the view-overlap score and the shared selection rule."""

from __future__ import annotations

import math

import pytest
import torch

import memory.retrieval as retrieval
from memory.retrieval import (candidate_radius, near_duplicates, probe_reach, select_memory, view_overlap,
                              view_overlap_matrix)


def pose(x: float = 0.0, z: float = 0.0, yaw: float = 0.0, pitch: float = 0.0, y: float = 1.6) -> torch.Tensor:
    return torch.tensor([x, y, z, yaw, pitch], dtype=torch.float32)


def random_poses(n: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 5, generator=g)
    return torch.stack([(u[:, 0] - 0.5) * spread, 1.0 + u[:, 1], (u[:, 2] - 0.5) * spread,
                        (u[:, 3] - 0.5) * 2 * math.pi, (u[:, 4] - 0.5) * 0.8], dim=1)


def test_identical_pose_overlaps_fully() -> None:
    poses = random_poses(20, 30.0, seed=1)
    for q in poses:
        assert float(view_overlap(q, q[None])[0]) == pytest.approx(1.0, abs=1e-5)


def test_opposite_view_and_far_away_do_not_overlap() -> None:
    q = pose(2.0, -3.0, yaw=0.4)
    behind = pose(2.0, -3.0, yaw=0.4 + math.pi)
    far = pose(102.0, -3.0, yaw=0.4)
    out = view_overlap(q, torch.stack([behind, far]))
    assert out.tolist() == [0.0, 0.0]


def test_overlap_falls_with_distance_and_turn() -> None:
    q = pose()
    # Stepping straight back (+z for yaw 0): same view from farther away, less resolution and coverage.
    back = torch.stack([pose(z=d) for d in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)])
    by_distance = view_overlap(q, back)
    assert by_distance[0] == pytest.approx(1.0)
    assert bool((by_distance[1:] < by_distance[:-1]).all()), by_distance
    assert 0.0 < float(by_distance[-1]) < 0.5
    turned = torch.stack([pose(yaw=math.radians(a)) for a in (0, 15, 30, 45, 60, 89, 91)])
    by_angle = view_overlap(q, turned)
    assert bool((by_angle[1:] <= by_angle[:-1]).all()), by_angle
    assert 0.3 < float(by_angle[3]) < 0.7  # a 45 degree turn keeps about half of a 90 degree view
    assert float(by_angle[-1]) == 0.0  # beyond the FOV: no probe ray is inside the other frustum


def test_pitch_and_fov_matter() -> None:
    q = pose()
    by_pitch = view_overlap(q, torch.stack([pose(pitch=math.radians(a)) for a in (0, 30, 60, 85)]))
    assert bool((by_pitch[1:] < by_pitch[:-1]).all()), by_pitch
    assert float(by_pitch[2]) < 0.3 and float(by_pitch[3]) == 0.0
    side = pose(yaw=math.radians(70))
    assert float(view_overlap(q, side[None], fov_deg=60.0)[0]) == 0.0  # [-30, 30] vs [40, 100]
    assert float(view_overlap(q, side[None], fov_deg=90.0)[0]) > 0.0  # [-45, 45] vs [25, 115]


def test_roughly_symmetric() -> None:
    # Mirror-image pairs (reflected across the x = 0 plane) see each other's view exactly equally.
    for x, z, yaw in ((1.0, 0.0, 0.3), (2.0, 1.0, -0.5), (0.5, -3.0, 0.6)):
        a, b = pose(-x, z, yaw=yaw), pose(x, z, yaw=-yaw)
        ab, ba = float(view_overlap(a, b[None])[0]), float(view_overlap(b, a[None])[0])
        assert ab > 0.0 and ab == pytest.approx(ba, abs=1e-5)
    # In general the score is directional (a camera behind another sees all of its view, not the
    # reverse; the resolution weight partly compensates), but the two directions agree broadly.
    poses = random_poses(60, 8.0, seed=2)
    m = view_overlap_matrix(poses, poses)
    assert torch.allclose(m.diagonal(), torch.ones(60))
    both = (m > 0.05) | (m.T > 0.05)
    assert int(both.sum()) > 100
    assert float((m - m.T).abs()[both].mean()) < 0.2
    assert float(torch.corrcoef(torch.stack([m[both], m.T[both]]))[0, 1]) > 0.5


def test_matrix_matches_single_queries_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    queries = random_poses(7, 10.0, seed=3)
    poses = random_poses(50, 10.0, seed=4)
    full = view_overlap_matrix(queries, poses)
    assert full.shape == (7, 50)
    assert ((full >= 0) & (full <= 1)).all()
    rows = torch.stack([view_overlap(q, poses) for q in queries])
    assert torch.allclose(full, rows)
    assert torch.equal(view_overlap(queries, poses), full)  # batched form of view_overlap
    monkeypatch.setattr(retrieval, "_TILE_ELEMENTS", 100)  # one query, 1-2 stored per tile
    assert torch.allclose(view_overlap_matrix(queries, poses), full)
    assert view_overlap_matrix(queries, poses[:0]).shape == (7, 0)


def test_candidate_radius_is_a_true_bound() -> None:
    assert probe_reach(10.0) == pytest.approx(8.0)
    radius = candidate_radius(10.0)
    # Cameras just outside the radius, looking back at the query, must score exactly 0 ...
    q = pose(yaw=0.3)
    ring = []
    for a in torch.linspace(0, 2 * math.pi, 73)[:-1].tolist():
        x, z = (radius + 0.01) * math.cos(a), (radius + 0.01) * math.sin(a)
        ring.append(pose(x, z, yaw=math.atan2(x, z)))  # yaw that looks towards the origin
    assert float(view_overlap(q, torch.stack(ring), max_distance=10.0).max()) == 0.0
    # ... while the bound is tight: a camera 9.9 m from the farthest probe, almost square to the
    # query's ray on the query's side, looking at the probe, still scores.
    probes = retrieval._probe_points(90.0, 10.0)  # [P, 3] camera coords of pose() (yaw 0, no pitch)
    far = probes[int(probes.norm(dim=-1).argmax())]
    u = far / far.norm()  # the query's ray
    v = torch.linalg.cross(u, torch.tensor([0.0, 1.0, 0.0]))
    v = v / v.norm()  # horizontal, square to the ray
    eps = 0.02
    at = far + 9.9 * (v * math.cos(eps) - u * math.sin(eps)) + torch.tensor([0.0, 1.6, 0.0])
    look = far + torch.tensor([0.0, 1.6, 0.0]) - at
    look = look / look.norm()  # forward = (-sin yaw cos pitch, sin pitch, -cos yaw cos pitch)
    cam = torch.tensor([at[0], at[1], at[2], math.atan2(-look[0], -look[2]), math.asin(look[1])])
    assert radius - 0.3 < float((cam[:3] - pose()[:3]).norm()) < radius
    assert float(view_overlap(pose(), cam[None], max_distance=10.0)[0]) > 0.0
    # Facing the query from ahead sees the space between, not what the query sees: only a few edge
    # probes, seen at almost 90 degrees from the query's rays, count.
    facing = pose(z=-5.0, yaw=math.pi)
    assert float(view_overlap(pose(), facing[None])[0]) < 0.1


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        view_overlap(torch.zeros(4), torch.zeros(3, 5))
    with pytest.raises(ValueError):
        view_overlap_matrix(torch.zeros(2, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        view_overlap(pose(), torch.zeros(3, 5), fov_deg=180.0)


def test_near_duplicates() -> None:
    base = pose(1.0, 1.0, yaw=0.2)
    others = torch.stack([pose(1.3, 1.0, yaw=0.2 + math.radians(10)), pose(1.6, 1.0, yaw=0.2),
                          pose(1.0, 1.0, yaw=0.2 + math.radians(20)), pose(1.0, 1.0, yaw=0.2, pitch=0.4)])
    assert near_duplicates(base, others).tolist() == [True, False, False, False]


def reference_select(query, poses, ticks, current_tick, max_entries, min_age, **kw) -> list[int]:
    """Plain-Python statement of the rule, to check the vectorised one against."""
    ov = view_overlap(query, poses).tolist()
    items = [i for i in range(len(ov)) if ov[i] >= kw.get("min_overlap", 0.05)
             and current_tick - int(ticks[i]) >= min_age]
    items.sort(key=lambda i: (-ov[i], -int(ticks[i]), i))
    taken: list[int] = []
    for i in items:
        if len(taken) == max_entries:
            break
        if taken and bool(near_duplicates(poses[i], poses[taken]).any()):
            continue
        taken.append(i)
    return taken


@pytest.mark.parametrize("block", [256, 3, 1])  # 1: the greedy pass runs over many small blocks
def test_select_matches_reference_rule(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval, "_SELECT_BLOCK", block)
    for seed in range(5):
        poses = random_poses(300, 12.0, seed=10 + seed)
        # Clusters of near-identical views make dedup matter.
        poses[100:200] = poses[:100] + torch.tensor([0.1, 0.0, -0.1, 0.05, 0.0])
        ticks = torch.randperm(300, generator=torch.Generator().manual_seed(seed))
        query = poses[seed]
        got = select_memory(query, poses, ticks, current_tick=300, max_entries=8, min_age=40)
        assert got.dtype == torch.long
        assert got.tolist() == reference_select(query, poses, ticks, 300, 8, 40)


def test_select_excludes_recent_dedups_and_breaks_ties_by_newer_tick() -> None:
    q = pose()
    poses = torch.stack([pose(), pose(z=0.05), pose(z=0.1), pose(yaw=0.6), pose(yaw=math.pi)])
    ticks = torch.tensor([95, 10, 11, 12, 13])
    idx = select_memory(q, poses, ticks, current_tick=100, max_entries=4, min_age=10)
    # 0 is too recent; 1 and 2 are duplicates (2 is nearer, wins); 4 looks away (below min_overlap).
    assert idx.tolist() == [1, 3]
    # Equal overlap: the newer entry goes first.
    same = torch.stack([pose(), pose()])
    assert select_memory(q, same, torch.tensor([5, 7]), 100, 1, 0).tolist() == [1]
    assert select_memory(q, same, torch.tensor([7, 7]), 100, 1, 0).tolist() == [0]
    assert select_memory(q, poses, ticks, 100, 0, 0).numel() == 0
    assert select_memory(q, poses[:0], ticks[:0], 100, 4, 0).numel() == 0
    # current_tick None: no age filter at all.
    assert select_memory(q, poses, ticks, None, 1, 1000).tolist() == [0]
