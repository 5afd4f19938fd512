"""Depth conventions (binding, docs/architecture.md "Depth"): the one place that says what a depth
map is, how the sky is flagged and how depth is scored.

- A depth map is float [..., H, W]: metres along the camera's -z axis (not along the ray), at model
  resolution. The oracle (`scenes.render.render_views_with_depth`), the autoencoder's depth head,
  data sets, memory entries and the reprojection all use it.
- Sky and misses are flagged, never a large number: their depth is SKY_DEPTH (0). `sky_mask` is the
  only test for it; the reprojection treats such pixels as directions at infinity (they move with
  the camera's rotation only and never occlude geometry).
- Scores on non-sky pixels of the truth: abs-rel = mean |d - d*| / d*, and delta<1.25 = share of
  pixels with max(d / d*, d* / d) < 1.25 (the usual monocular-depth metrics).
"""

from __future__ import annotations

import torch

from conventions.errors import UserError

SKY_DEPTH = 0.0
"""Depth value of pixels that see no geometry (sky, misses)."""
MIN_DEPTH = 0.05
"""Nearest depth (m) a predicted surface may have; the camera never gets closer to geometry."""
MAX_DEPTH = 200.0
"""Farthest depth (m) a predicted surface may have; fog hides everything beyond in our worlds."""
DELTA_THRESHOLD = 1.25


def sky_mask(depth: torch.Tensor) -> torch.Tensor:
    """bool [..., H, W]: pixels flagged as sky (no geometry)."""
    return depth <= SKY_DEPTH


def check_depth(depth: torch.Tensor, source: str) -> torch.Tensor:
    """Refuse a depth map with NaN, inf or negative values (UserError naming `source`)."""
    if depth.is_floating_point():
        bad_finite = ~torch.isfinite(depth)
        if bool(bad_finite.any()):
            raise UserError(f"{source}: depth has {int(bad_finite.sum())} NaN or infinite values")
    if bool((depth < 0).any()):
        raise UserError(f"{source}: depth has {int((depth < 0).sum())} negative values "
                        f"(metres along -z; sky is {SKY_DEPTH})")
    return depth


def depth_errors(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """abs-rel, delta<1.25 and sky accuracy of predicted depth maps against the truth ([..., H, W])."""
    geo = ~sky_mask(truth)
    p = pred.float().clamp(min=MIN_DEPTH)[geo]
    t = truth.float()[geo]
    abs_rel = float(((p - t).abs() / t).mean()) if t.numel() else 0.0
    ratio = torch.maximum(p / t, t / p)
    delta = float((ratio < DELTA_THRESHOLD).float().mean()) if t.numel() else 1.0
    sky_acc = float((sky_mask(pred) == sky_mask(truth)).float().mean())
    return {"abs_rel": abs_rel, "delta_1_25": delta, "sky_accuracy": sky_acc}
