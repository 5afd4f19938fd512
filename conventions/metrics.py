"""Fidelity metrics (docs/architecture.md §Metrics, binding): PSNR and SSIM on frames with values in [0, 1].

Inputs are float tensors [..., H, W, 3] or [..., 3, H, W] (channel axis given) in [0, 1], or uint8
(converted). Every report in the project (training validation, eval, guard tests) uses these two
functions, so numbers are comparable everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conventions.camera import angle_between_views

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_MAX_DB = 100.0
"""PSNR of identical frames is capped here instead of infinity, so means stay finite."""
REVISIT_MAX_DISTANCE_M = 0.5
REVISIT_MAX_ANGLE_DEG = 15.0
"""docs/architecture.md §Metrics / issue 4: a tick revisits a place when its pose is this close to an earlier pose."""
DRIFT_EARLY_TICKS = (1, 100)
DRIFT_LATE_TICKS = (1000, 1100)
"""docs/architecture.md §Metrics drift: mean PSNR vs the truth on ticks 1000-1100 of a long rollout relative to ticks 1-100
(inclusive tick windows; tick 0 is the given start frame)."""


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def psnr(a: torch.Tensor, b: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """PSNR in dB per frame: a, b [..., H, W, 3] (or channels at `channel_dim`) -> [...]."""
    a, b = to_unit(a), to_unit(b)
    if channel_dim != -1:
        a, b = a.movedim(channel_dim, -1), b.movedim(channel_dim, -1)
    return _mse_db(((a - b) ** 2).flatten(-3).mean(-1))


def _mse_db(mse: torch.Tensor) -> torch.Tensor:
    """Mean squared errors of values in [0, 1] -> PSNR in dB, capped at PSNR_MAX_DB."""
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).clamp(max=PSNR_MAX_DB)


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per frame over the pixels where `mask` is set: a, b [..., H, W, 3], mask bool
    [..., H, W] -> [...]; NaN for a frame with no such pixel (a mean over frames must skip it). Used to
    split a frame's error by where it comes from (docs/architecture.md §Metrics, start view / new
    content)."""
    a, b = to_unit(a), to_unit(b)
    m = mask.float()
    count = m.flatten(-2).sum(-1)
    mse = (((a - b) ** 2).mean(-1) * m).flatten(-2).sum(-1) / count.clamp(min=1)
    return _mse_db(mse).masked_fill(count == 0, float("nan"))


def _gaussian_window(device, dtype) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - SSIM_WINDOW // 2
    g = torch.exp(-(coords ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return g


def ssim(a: torch.Tensor, b: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """SSIM per frame (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, per channel, averaged).

    a, b [..., H, W, 3] (or channels at `channel_dim`) -> [...]; 'valid' windows only.
    """
    a, b = to_unit(a), to_unit(b)
    if channel_dim != -1:
        a, b = a.movedim(channel_dim, -1), b.movedim(channel_dim, -1)
    lead = a.shape[:-3]
    h, w = a.shape[-3], a.shape[-2]
    x = a.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    y = b.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    g = _gaussian_window(x.device, x.dtype)
    win = min(SSIM_WINDOW, h, w)
    g = g[(SSIM_WINDOW - win) // 2: (SSIM_WINDOW - win) // 2 + win]
    g = g / g.sum()

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(-1).reshape(*lead, 3).mean(-1)


def revisit_matrix(poses: torch.Tensor, min_gap: int, max_distance: float = REVISIT_MAX_DISTANCE_M,
                   max_angle_deg: float = REVISIT_MAX_ANGLE_DEG) -> torch.Tensor:
    """The revisit rule for one pose sequence [T, 5] -> bool [T, T]: [t, f] is True when the pose at
    tick f <= t - min_gap is within `max_distance` m and `max_angle_deg` of the pose at tick t. The
    eval's return ticks and the trainer's revisit-focused segments both come from here."""
    t = poses.shape[0]
    earlier = poses[None, :, :].expand(t, t, poses.shape[-1])  # [t, f, 5]: pose at f
    current = poses[:, None, :].expand(t, t, poses.shape[-1])  # [t, f, 5]: pose at t
    close = ((earlier[..., :3] - current[..., :3]).norm(dim=-1) <= max_distance) & (
        angle_between_views(earlier, current) <= math.radians(max_angle_deg))
    idx = torch.arange(t)
    return close & (idx[None, :] <= idx[:, None] - min_gap)


def drift_scores(psnr_per_tick: list[float], ssim_per_tick: list[float] | None = None,
                 early: tuple[int, int] = DRIFT_EARLY_TICKS, late: tuple[int, int] = DRIFT_LATE_TICKS
                 ) -> dict[str, float] | None:
    """docs/architecture.md §Metrics drift of one rollout: `psnr_per_tick[i]` scores tick i + 1. Returns the mean PSNR
    (and SSIM) of the early and late tick windows, their difference `drift_db` (late - early; 0 means
    no drift, negative means the rollout got worse) and `late_over_early` (the ratio of the two
    means); None when the rollout does not reach the end of the late window."""
    if len(psnr_per_tick) < late[1]:
        return None

    def mean(values: list[float], window: tuple[int, int]) -> float:
        part = values[window[0] - 1: window[1]]
        return float(sum(part) / len(part))

    out = {"early_psnr": mean(psnr_per_tick, early), "late_psnr": mean(psnr_per_tick, late)}
    out["drift_db"] = out["late_psnr"] - out["early_psnr"]
    out["late_over_early"] = out["late_psnr"] / out["early_psnr"]
    if ssim_per_tick is not None:
        out["early_ssim"] = mean(ssim_per_tick, early)
        out["late_ssim"] = mean(ssim_per_tick, late)
    return out


def mean_gradient(frames: torch.Tensor) -> float:
    """Mean absolute image gradient (horizontal and vertical finite differences, values in [0, 1]) of
    frames [..., H, W, 3]: the detail a frame carries."""
    x = to_unit(frames)
    gx = (x[..., :, 1:, :] - x[..., :, :-1, :]).abs().mean()
    gy = (x[..., 1:, :, :] - x[..., :-1, :, :]).abs().mean()
    return float(gx + gy) / 2


def detail_ratio(frames: torch.Tensor, truth: torch.Tensor) -> float:
    """docs/architecture.md §Metrics detail: mean image gradient of generated frames over the truth's on the same ticks
    ([..., H, W, 3] each). 1.0 = as detailed as the truth; below ~0.7 blur or haze, above ~1.4 noise or
    bands (PSNR alone rewards grey mush)."""
    return mean_gradient(frames) / max(mean_gradient(truth), 1e-8)
