"""memory.map_view: the top-down memory map drawn for the HUD and the evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memory.map_view import (BACKGROUND, CAMERA_COLOUR, CAMERA_PX, ENTRY_COLOUR, SELECTED_COLOUR, MapTransform,
                             draw_memory_map, draw_store_map, nice_length, save_png)
from memory.store import MemoryConfig, MemoryStore
from conventions.camera import CameraPose
from conventions.errors import UserError


def pose(x: float = 0.0, z: float = 0.0, yaw: float = 0.0) -> list[float]:
    return [x, 1.6, z, yaw, 0.0]


def pixel(img: np.ndarray, col: float, row: float) -> tuple[int, ...]:
    return tuple(int(v) for v in img[int(math.floor(row)), int(math.floor(col))])


def content_transform(store, path, cam, size) -> MapTransform:
    xz = np.concatenate([np.asarray(store, dtype=float).reshape(-1, 5)[:, [0, 2]],
                         np.asarray(path, dtype=float).reshape(-1, 5)[:, [0, 2]], np.asarray(cam)[None, [0, 2]]])
    return MapTransform(xz, size)


def test_camera_is_drawn_where_it_stands_and_points_where_it_looks() -> None:
    store = [pose(-6.0, 4.0), pose(5.0, -3.0, 1.0)]
    path = [pose(-6.0, 4.0), pose(0.0, 0.0), pose(3.0, 2.0)]
    for yaw, ahead in ((0.0, (0, -1)), (math.pi / 2, (-1, 0)), (math.pi, (0, 1))):  # up, left, down the map
        cam = pose(3.0, 2.0, yaw)
        img = draw_memory_map(torch.tensor(store), torch.tensor(path), torch.tensor(cam), size=256)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        col, row = content_transform(store, path, cam, 256)(3.0, 2.0)
        assert pixel(img, col, row) == CAMERA_COLOUR
        tip = (col + ahead[0] * CAMERA_PX, row + ahead[1] * CAMERA_PX)
        tail = (col - ahead[0] * 1.6 * CAMERA_PX, row - ahead[1] * 1.6 * CAMERA_PX)
        assert pixel(img, *tip) == CAMERA_COLOUR
        assert pixel(img, *tail) != CAMERA_COLOUR
        # The FOV wedge tints the map ahead of the camera (beyond the triangle), not behind it.
        wedge = (col + ahead[0] * 30, row + ahead[1] * 30)
        behind = (col - ahead[0] * 30, row - ahead[1] * 30)
        assert pixel(img, *wedge) not in (BACKGROUND, CAMERA_COLOUR)
        assert img[int(wedge[1]), int(wedge[0]), 0] > BACKGROUND[0] + 10  # yellowish tint
        assert pixel(img, *behind) == BACKGROUND


def test_axes_entries_and_selection() -> None:
    # +x is right, -z is up; the selected entry is highlighted.
    store = np.array([pose(8.0, 0.0), pose(0.0, -8.0), pose(-8.0, 8.0)])
    cam = pose(0.0, 0.0, math.pi)  # looking down the map, away from the entries above it
    img = draw_memory_map(store, np.zeros((0, 5)), cam, size=200, selected=[1])
    tf = content_transform(store, np.zeros((0, 5)), cam, 200)
    (c0, r0), (c1, r1), (c2, r2) = (tf(x, z) for x, _, z, _, _ in store)
    assert c0 > 150 and r1 < 50 and c2 < 50 and r2 > 150
    assert pixel(img, c0, r0) == ENTRY_COLOUR
    assert pixel(img, c1, r1) == SELECTED_COLOUR
    mask = np.array([False, False, True])
    img2 = draw_memory_map(store, np.zeros((0, 5)), CameraPose(0.0, 1.6, 0.0, math.pi, 0.0), size=200,
                           selected=mask)
    assert pixel(img2, c2, r2) == SELECTED_COLOUR and pixel(img2, c1, r1) == ENTRY_COLOUR


def test_autoscale_keeps_far_content_inside_and_draws_path() -> None:
    path = np.array([pose(1000.0 + i, 500.0 - 2 * i) for i in range(40)])
    img = draw_memory_map(np.zeros((0, 5)), path, path[-1], size=128)
    tf = content_transform(np.zeros((0, 5)), path, path[-1], 128)
    cols, rows = tf(path[:, 0], path[:, 2])
    assert cols.min() >= 0.09 * 128 and cols.max() <= 0.91 * 128 and rows.min() >= 0.09 * 128
    mid = path[10]
    assert pixel(img, *tf(mid[0], mid[2])) != BACKGROUND  # the path polyline passes here
    # A lone camera: nothing to scale to, the minimum extent applies and the scale bar is drawn.
    lone = draw_memory_map(np.zeros((0, 5)), np.zeros((0, 5)), pose(), size=64)
    assert lone.shape == (64, 64, 3) and (lone == np.array(CAMERA_COLOUR, dtype=np.uint8)).all(-1).any()
    assert (lone[-8:] != np.array(BACKGROUND, dtype=np.uint8)).any()  # scale bar in the bottom margin


def test_nice_length() -> None:
    assert [nice_length(v) for v in (0.3, 1.0, 1.9, 2.0, 4.99, 7.0, 12.0, 360.0)] == \
        [0.2, 1.0, 1.0, 2.0, 2.0, 5.0, 10.0, 200.0]
    with pytest.raises(ValueError):
        nice_length(0.0)


def test_store_map_and_png(tmp_path: Path) -> None:
    s = MemoryStore(MemoryConfig(budget_entries=16))
    for t in range(12):
        s.add(torch.zeros(2), torch.tensor(pose(2.0 * t, 0.0)), t)
    picked = s.retrieve_batch(torch.tensor(pose(0.0, 0.0, -math.pi / 2)), 2, current_tick=100)
    assert len(picked) == 2
    img = draw_store_map(s, s.poses(), pose(0.0, 0.0), size=160, selected_slots=picked.slots)
    tf = content_transform(s.poses().numpy(), s.poses().numpy(), pose(), 160)
    for slot in picked.slots.tolist():
        e = s.entry(slot).pose
        assert pixel(img, *tf(float(e[0]), float(e[2]))) == SELECTED_COLOUR
    out = save_png(img, tmp_path / "maps" / "memory.png")
    assert np.array_equal(np.asarray(Image.open(out)), img)
    assert sorted(p.name for p in out.parent.iterdir()) == ["memory.png"]  # no temp file left
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(UserError, match="cannot write the image"):
        save_png(img, tmp_path / "blocker" / "x.png")
    with pytest.raises(ValueError):
        save_png(img[..., 0], tmp_path / "grey.png")
