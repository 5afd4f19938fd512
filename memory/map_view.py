"""Top-down map of the memory: where views were stored, where the camera went, what it sees now.

Pure numpy + Pillow (ImageDraw), so the game HUD (pygame surfarray) and the evaluation (PNG files) draw
the same picture. The map is north-up in the world's terms: +x to the right, -z up (a camera with yaw 0
looks up the map). It is scaled to fit all content with a margin, with a metre scale bar bottom-left.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from conventions.camera import DEFAULT_FOV_DEG, POSE_DIM
from conventions.atomic import atomic_write

BACKGROUND = (22, 24, 30)
PATH_COLOUR = (70, 130, 220)
ENTRY_COLOUR = (150, 155, 165)
SELECTED_COLOUR = (255, 80, 60)
CAMERA_COLOUR = (255, 215, 0)
WEDGE_RGBA = (255, 215, 0, 56)
SCALE_COLOUR = (230, 230, 230)

REFERENCE_SIZE = 256
"""Pixel sizes below are for a 256 px map and scale with the requested size."""
MARGIN_FRACTION = 0.1
"""Empty border on each side (the scale bar lives in the bottom one)."""
MIN_EXTENT_M = 4.0
"""Smallest span shown, so a lone point is not magnified without bound."""
ENTRY_DOT_PX = 1.5
SELECTED_DOT_PX = 3.0
ENTRY_LINE_PX = 6.0
PATH_WIDTH_PX = 1.0
CAMERA_PX = 7.0
WEDGE_FRACTION = 0.18
"""FOV wedge radius as a fraction of the map size."""
SCALE_BAR_FRACTION = 0.3
"""The scale bar is the largest 1/2/5 x 10^k metres not longer than this fraction of the content width."""
_NICE_STEPS = (1.0, 2.0, 5.0)


def _as_poses(name: str, value: Any) -> np.ndarray:
    """Tensor / ndarray / sequence of poses -> float64 [N, 5] (N may be 0)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, POSE_DIM))
    if arr.ndim != 2 or arr.shape[1] != POSE_DIM:
        raise ValueError(f"{name} must have shape [N, {POSE_DIM}], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite numbers")
    return arr


def _as_pose(value: Any) -> np.ndarray:
    if hasattr(value, "as_list"):  # CameraPose
        value = value.as_list()
    return _as_poses("current_pose", np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach")
                                                 else value, dtype=np.float64).reshape(1, -1))[0]


def _selected_mask(selected: Any, count: int) -> np.ndarray:
    """Indices [k] or a bool mask [N] -> bool mask [N]."""
    mask = np.zeros(count, dtype=bool)
    if selected is None:
        return mask
    if hasattr(selected, "detach"):
        selected = selected.detach().cpu().numpy()
    sel = np.asarray(selected)
    if sel.dtype == bool:
        if sel.shape != (count,):
            raise ValueError(f"selected mask must have shape [{count}], got {list(sel.shape)}")
        return sel.copy()
    idx = sel.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -count or idx.max() >= count):
        raise ValueError(f"selected index out of range for {count} entries")
    mask[idx] = True
    return mask


def nice_length(max_length: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above `max_length` (> 0): the scale bar's length in metres."""
    if not max_length > 0.0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    exponent = math.floor(math.log10(max_length))
    best = 10.0 ** exponent
    for step in _NICE_STEPS:
        if step * 10.0 ** exponent <= max_length * (1 + 1e-9):
            best = step * 10.0 ** exponent
    return best


class MapTransform:
    """World (x, z) -> map pixel (col, row) for a square map fitted to some content."""

    def __init__(self, xz: np.ndarray, size: int) -> None:
        lo, hi = xz.min(axis=0), xz.max(axis=0)  # [2] each
        self.centre = (lo + hi) / 2
        self.extent = float(max(hi[0] - lo[0], hi[1] - lo[1], MIN_EXTENT_M))
        self.size = size
        self.px_per_m = size * (1 - 2 * MARGIN_FRACTION) / self.extent

    def __call__(self, x: np.ndarray | float, z: np.ndarray | float) -> tuple[Any, Any]:
        col = self.size / 2 + (np.asarray(x) - self.centre[0]) * self.px_per_m
        row = self.size / 2 + (np.asarray(z) - self.centre[1]) * self.px_per_m  # +z is down: -z up
        return col, row


def _direction_px(yaw: np.ndarray | float) -> tuple[Any, Any]:
    """Map-pixel unit vector of the viewing direction (-sin yaw, -cos yaw) in (col, row)."""
    return -np.sin(yaw), -np.cos(yaw)


def draw_memory_map(store_poses: Any, path_poses: Any, current_pose: Any, size: int = 256,
                    selected: Any = None, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """Top-down memory map -> uint8 [size, size, 3].

    store_poses [N, 5]: one dot per stored entry plus a short line along its view direction;
    `selected` (indices [k] or bool mask [N]) are drawn larger in SELECTED_COLOUR (e.g. what the
    model is attending to this tick); path_poses [T, 5]: the camera path as a polyline;
    current_pose [5]: a CAMERA_COLOUR triangle (its centre pixel is at the camera position) with a
    translucent wedge of the field of view. Tensors, arrays, sequences and CameraPose are accepted.
    """
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    store = _as_poses("store_poses", store_poses)  # [N, 5]
    path = _as_poses("path_poses", path_poses)  # [T, 5]
    cam = _as_pose(current_pose)  # [5]
    sel = _selected_mask(selected, store.shape[0])  # [N]
    k = size / REFERENCE_SIZE
    xz = np.concatenate([store[:, [0, 2]], path[:, [0, 2]], cam[None, [0, 2]]], axis=0)  # [M, 2]
    tf = MapTransform(xz, size)

    image = Image.new("RGB", (size, size), BACKGROUND)
    # FOV wedge (translucent, under everything else).
    overlay = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    cc, cr = tf(cam[0], cam[2])
    dc, dr = _direction_px(cam[3])
    heading = math.degrees(math.atan2(dr, dc))  # PIL angles: degrees clockwise from +col
    radius = WEDGE_FRACTION * size
    ImageDraw.Draw(overlay).pieslice([cc - radius, cr - radius, cc + radius, cr + radius],
                                     heading - fov_deg / 2, heading + fov_deg / 2, fill=WEDGE_RGBA)
    image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(image)

    if path.shape[0] >= 2:
        pc, pr = tf(path[:, 0], path[:, 2])
        draw.line(list(zip(pc.tolist(), pr.tolist())), fill=PATH_COLOUR, width=max(1, round(PATH_WIDTH_PX * k)))

    if store.shape[0]:
        ec, er = tf(store[:, 0], store[:, 2])
        vc, vr = _direction_px(store[:, 3])
        for i in np.argsort(sel, kind="stable"):  # selected last, on top
            colour = SELECTED_COLOUR if sel[i] else ENTRY_COLOUR
            dot = (SELECTED_DOT_PX if sel[i] else ENTRY_DOT_PX) * k
            line = ENTRY_LINE_PX * k * (1.5 if sel[i] else 1.0)
            draw.line([(ec[i], er[i]), (ec[i] + vc[i] * line, er[i] + vr[i] * line)], fill=colour,
                      width=max(1, round(k)))
            draw.ellipse([ec[i] - dot, er[i] - dot, ec[i] + dot, er[i] + dot], fill=colour)

    # Camera triangle: tip ahead, base behind; the camera position is inside it.
    s = CAMERA_PX * k
    rc, rr = -dr, dc  # right = forward rotated 90 degrees clockwise on the map
    tri = [(cc + dc * 1.3 * s, cr + dr * 1.3 * s),
           (cc - dc * 0.7 * s + rc * 0.8 * s, cr - dr * 0.7 * s + rr * 0.8 * s),
           (cc - dc * 0.7 * s - rc * 0.8 * s, cr - dr * 0.7 * s - rr * 0.8 * s)]
    draw.polygon(tri, fill=CAMERA_COLOUR)

    _draw_scale_bar(draw, tf, k)
    return np.asarray(image, dtype=np.uint8).copy()


def _draw_scale_bar(draw: ImageDraw.ImageDraw, tf: MapTransform, k: float) -> None:
    """A 1/2/5 x 10^k metre bar with end ticks and its label, in the bottom-left margin."""
    metres = nice_length(SCALE_BAR_FRACTION * tf.extent)
    length = metres * tf.px_per_m
    margin = MARGIN_FRACTION * tf.size
    x0 = margin
    y = tf.size - margin * 0.35
    tick = max(2.0, 3 * k)
    width = max(1, round(k))
    draw.line([(x0, y), (x0 + length, y)], fill=SCALE_COLOUR, width=width)
    draw.line([(x0, y - tick), (x0, y)], fill=SCALE_COLOUR, width=width)
    draw.line([(x0 + length, y - tick), (x0 + length, y)], fill=SCALE_COLOUR, width=width)
    label = f"{metres:g} m"
    draw.text((x0 + length + 4 * k, y), label, fill=SCALE_COLOUR, anchor="lm")


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 [H, W, 3] image as PNG atomically (temp file beside it, fsync, rename)."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {arr.dtype} {list(arr.shape)}")
    path = Path(path)
    image = Image.fromarray(arr, "RGB")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), what="cannot write the image")
    return path


def draw_store_map(store: Any, path_poses: Sequence[Any] | Any, current_pose: Any, size: int = 256,
                   selected_slots: Any = None, fov_deg: float | None = None) -> np.ndarray:
    """`draw_memory_map` for a `memory.store.MemoryStore`; `selected_slots` are store slots (e.g. the
    `slots` of the last `retrieve_batch`), mapped to the store's entry order here."""
    poses = store.poses()  # [N, 5]
    selected = None
    if selected_slots is not None:
        slots = store.slots().cpu().numpy()  # [N]
        wanted = np.asarray(selected_slots.detach().cpu().numpy() if hasattr(selected_slots, "detach")
                            else selected_slots, dtype=np.int64).reshape(-1)
        selected = np.isin(slots, wanted)
    return draw_memory_map(poses, path_poses, current_pose, size=size, selected=selected,
                           fov_deg=store.config.fov_deg if fov_deg is None else fov_deg)
