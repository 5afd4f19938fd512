"""memory.spatial_index: the x/z grid hash the store uses to find entries near the camera."""

from __future__ import annotations

import math
import random

import pytest

from memory.spatial_index import SpatialGrid


def brute_within(points: dict[int, tuple[float, float]], x: float, z: float, radius: float) -> set[int]:
    return {i for i, (px, pz) in points.items() if math.hypot(px - x, pz - z) <= radius}


def test_query_is_a_tight_superset_of_brute_force() -> None:
    rng = random.Random(0)
    grid = SpatialGrid(cell_size=3.0)
    points = {i: (rng.uniform(-60, 60), rng.uniform(-60, 60)) for i in range(800)}
    for i, (x, z) in points.items():
        grid.insert(i, x, z)
    assert len(grid) == 800
    for _ in range(60):
        x, z = rng.uniform(-70, 70), rng.uniform(-70, 70)
        for radius in (0.0, 0.7, 5.0, 18.0, 400.0):  # 400 m takes the walk-the-occupied-cells path
            got = grid.query(x, z, radius).tolist()
            assert got == sorted(got) and len(set(got)) == len(got)
            assert brute_within(points, x, z, radius) <= set(got)
            # Only whole touched cells are added: nothing farther than radius + a cell diagonal.
            slack = radius + 3.0 * math.sqrt(2) + 1e-9
            assert set(got) <= brute_within(points, x, z, slack)
    # The lookup prunes: a small disc finds a small fraction of a spread-out store.
    assert len(grid.query(0.0, 0.0, 5.0)) < 80


def test_remove_move_and_empty_cells() -> None:
    grid = SpatialGrid(cell_size=2.0)
    grid.insert(1, -0.5, -0.5)
    grid.insert(2, -1.5, -0.1)
    grid.insert(3, 10.0, 10.0)
    assert grid.cell_of(1) == (-1, -1) and grid.cell_of(3) == (5, 5)  # floor division, negatives too
    assert grid.members((-1, -1)) == [1, 2]
    assert grid.occupied_cells() == 2
    assert grid.remove(3) == (5, 5)
    assert grid.occupied_cells() == 1  # emptied cells are dropped
    assert 3 not in grid and grid.query(10.0, 10.0, 1.0).tolist() == []
    grid.insert(1, 20.0, 0.0)  # re-inserting moves
    assert grid.members((-1, -1)) == [2] and grid.cell_of(1) == (10, 0)
    assert grid.query(-1.0, -1.0, 1.0).tolist() == [2]
    with pytest.raises(KeyError):
        grid.remove(3)
    grid.clear()
    assert len(grid) == 0 and grid.occupied_cells() == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SpatialGrid(0.0)
    grid = SpatialGrid(1.0)
    with pytest.raises(ValueError):
        grid.insert(0, float("nan"), 0.0)
    with pytest.raises(ValueError):
        grid.query(0.0, 0.0, -1.0)
