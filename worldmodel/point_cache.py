"""The point cache (docs/architecture.md "Geometric hint"): every pixel a generated frame added to the
world, kept in world space, so the hint shows it again from later cameras without resampling it again.

Why: hint sources that are the last generated frames are themselves reprojections of the frames before
them, so a surface seen for 60 ticks has been resampled 60 times (nearest splat) and turns to noise or
haze. Here a pixel enters the cache once, the tick it was first generated (where no source covered
it), at the position its decoded depth puts it, and every later hint splats it from there: a surface
keeps the pixels it was first shown with until it leaves the cache. The start frame and the retrieved
memory entries stay frame sources of the hint beside the cache (worldmodel.hint).

The cache is bounded: at `max_points` the oldest ticks' points leave first, whole ticks at a time.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from worldmodel.reproject import WorldPoints, unproject


CRACK_SHARE = 0.5
"""An uncovered pixel enters only if more than this share of its 3x3 neighbourhood is uncovered too:
a lone hole is a crack between the magnified pixels of a source, not new content, and its decoded
colour among the source's pixels would stay as speckle."""


class PointCache:
    """Per-tick blocks of world points, oldest first; `points()` is what the hint splats."""

    def __init__(self, max_points: int) -> None:
        if max_points <= 0:
            raise ValueError(f"PointCache: max_points must be > 0, got {max_points}")
        self.max_points = int(max_points)
        self._blocks: deque[tuple[int, WorldPoints]] = deque()
        self._count = 0
        self._joined: WorldPoints | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, tick: int, rgb: torch.Tensor, depth: torch.Tensor, pose: torch.Tensor, uncovered: torch.Tensor,
            fov_deg: float) -> int:
        """Add the pixels of the frame at `tick` that no hint source covered (`uncovered` [H, W] bool),
        but for cracks (CRACK_SHARE); rgb uint8 [H, W, 3], depth [H, W], pose [5]. Returns how many
        points entered."""
        share = F.avg_pool2d(uncovered[None, None].float(), 3, stride=1, padding=1, count_include_pad=False)[0, 0]
        block = unproject(rgb, depth, pose, uncovered & (share > CRACK_SHARE), fov_deg)
        if block.count == 0:
            return 0
        self._blocks.append((int(tick), block))
        self._count += block.count
        while self._count > self.max_points and len(self._blocks) > 1:
            _, old = self._blocks.popleft()
            self._count -= old.count
        self._joined = None
        return block.count

    def points(self) -> WorldPoints:
        if self._joined is None:
            self._joined = WorldPoints.cat([b for _, b in self._blocks])
        return self._joined

    def reset(self) -> None:
        self._blocks.clear()
        self._count = 0
        self._joined = None

    # --- saving and restoring (worldmodel.world_state) ---
    def state_dict(self) -> dict[str, torch.Tensor]:
        pts = self.points()
        ticks = torch.cat([torch.full((b.count,), t, dtype=torch.long) for t, b in self._blocks]) \
            if self._blocks else torch.zeros(0, dtype=torch.long)
        return {"xyz": pts.xyz.clone(), "rgb": pts.rgb.clone(), "sky": pts.sky.clone(), "size": pts.size.clone(),
                "tick": ticks}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reset()
        ticks = state["tick"]
        # worlds saved before points had a size: 0, the fine level alone
        size = state["size"].float() if "size" in state else torch.zeros(ticks.shape[0])
        for t in torch.unique_consecutive(ticks).tolist():
            sel = ticks == t
            block = WorldPoints(state["xyz"][sel].float(), state["rgb"][sel].to(torch.uint8), state["sky"][sel].bool(),
                                size[sel])
            self._blocks.append((int(t), block))
            self._count += block.count
