"""The geometric hint (docs/architecture.md "Geometric hint"): what the frames already seen show from
the camera of the frame being generated, in the form the world model reads.

One rule chooses the sources and one function builds the hint, for training and play alike (a test
checks that a training batch and a play session build the same hint for the same frames and poses):
- sources of the frame at tick t (in this order, which breaks the z-buffer's ties between views of
  one surface): the `hint_recent` previous frames (t-1 first: the closest views, whose predicted depth
  errors move pixels least), the memory entries retrieved for t (best view overlap first), and the
  start frame (tick 0, the sink; never among the recent frames); at play, a point cache
  (`hint_point_cache`, worldmodel.point_cache) can take the recent frames' place;
- each source is its decoded RGB and the depth head's depth of its latent (what play has for a
  generated frame), reprojected by `worldmodel.reproject.reproject`;
- the warped image goes through the autoencoder's encoder (so the hint is in the latent space the
  model denoises, and a covered token can be copied almost as it is), and each token gets the share of
  its pixels that some source covered: hint = [encoded warp (C) | coverage (1)] per token.
An empty hint (no source, or the hint switched off) is all zeros: zero latent and zero coverage;
training shows the model empty hints too, so a hint-trained model still runs with `--hint off`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldmodel.config import HINT_SAMPLINGS
from worldmodel.reproject import Reprojection, reproject

HINT_EXTRA_CHANNELS = 1
"""Channels a hint token has beyond the latent: its coverage."""


def hint_channels(latent_channels: int) -> int:
    return latent_channels + HINT_EXTRA_CHANNELS


def hint_recent_ticks(tick: int, recent: int) -> list[int]:
    """The previous frames a frame at `tick` reprojects (newest first; tick 0 is the sink source)."""
    return [t for t in range(tick - 1, tick - 1 - recent, -1) if t >= 1]


def hint_source_ticks(tick: int, memory_ticks: list[int], recent: int) -> list[int]:
    """All source ticks of the hint of the frame at `tick`, in priority order (module docstring)."""
    return hint_recent_ticks(tick, recent) + list(memory_ticks) + [0]


@dataclass
class HintAugment:
    """Training-time corruption of hints, so the model tolerates its own errors at play.

    drop_source: each source (but the sink) is left out with this probability; empty: the whole hint
    is empty with this probability; noise_max: Gaussian noise of std U[0, noise_max] on the warped
    RGB (in [0, 1]) before it is encoded."""

    drop_source: float = 0.15
    empty: float = 0.1
    noise_max: float = 0.03


@torch.no_grad()
def encode_hint(autoencoder: torch.nn.Module, warped: Reprojection, noise: torch.Tensor | None = None
                ) -> torch.Tensor:
    """A reprojection -> hint tokens [B, C + 1, h, w]: the encoded warp and each token's coverage.

    `noise` [B, 3, H, W] (training augmentation) is added to the covered pixels before encoding."""
    rgb = warped.rgb
    if noise is not None:
        rgb = (rgb + noise * warped.coverage).clamp(0.0, 1.0)
    latent = autoencoder.encode(rgb.to(autoencoder.latent_mean.device)).float()  # [B, C, h, w]
    factor = rgb.shape[-1] // latent.shape[-1]
    coverage = F.avg_pool2d(warped.coverage.to(latent.device), factor)  # [B, 1, h, w]
    empty = warped.coverage.flatten(1).amax(1) == 0  # no source landed anywhere: exactly empty
    hint = torch.cat([latent, coverage], dim=1)
    return torch.where(empty.to(hint.device)[:, None, None, None], torch.zeros_like(hint), hint)


@torch.no_grad()
def build_hint(autoencoder: torch.nn.Module, rgb: torch.Tensor, depth: torch.Tensor, poses: torch.Tensor,
               valid: torch.Tensor, target: torch.Tensor, fov_deg: float,
               noise: torch.Tensor | None = None, splat_levels: bool = False,
               preferred: torch.Tensor | None = None, bilinear: torch.Tensor | None = None) -> torch.Tensor:
    """Sources -> hint tokens [B, C + 1, h, w].

    rgb [B, K, 3, H, W] float in [0, 1] or uint8 [B, K, H, W, 3], depth [B, K, H, W], poses [B, K, 5],
    valid [B, K] bool, target poses [B, 5], preferred [B, K] bool or None (`start_preferred`), bilinear
    [B, K] bool or None (`bilinear_sources`); see
    `reproject` (`splat_levels` is its `magnified`) and `encode_hint`."""
    return encode_hint(autoencoder, reproject(rgb, depth, poses, target, valid, fov_deg, magnified=splat_levels,
                                              preferred=preferred, bilinear=bilinear), noise)


def start_preferred(source_ticks: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, start: torch.Tensor,
                    radius: float) -> torch.Tensor | None:
    """Which hint sources win over the others wherever they land (`reproject`'s `preferred`): the
    start frame (source tick 0) while the target camera is within `radius` metres of the start pose;
    None when `radius` is 0 (the rule off). source_ticks [B, K] long, valid [B, K] bool, target and
    start poses [B, 5] -> [B, K] bool.

    Why: the start frame is the one true picture, every other source a generated frame that has
    been through the latent and the compositing chain (docs/model_card.md: by tick 10 the recent
    frames have lost the floor's stripes while the start frame still has them); but the start
    frame's predicted depth misplaces its pixels more the farther the camera has moved from it,
    so the preference ends at a radius."""
    if radius <= 0:
        return None
    near = (target[:, :3].float() - start[:, :3].float()).norm(dim=-1) <= radius  # [B]
    return (source_ticks == 0) & valid & near[:, None]


def bilinear_sources(source_ticks: torch.Tensor, valid: torch.Tensor, sampling: str) -> torch.Tensor | None:
    """Which hint sources `reproject` samples bilinearly (its `bilinear`) under the config's
    hint_sampling (config.HINT_SAMPLINGS): none, the start frame (source tick 0) alone, or every
    valid source. source_ticks [B, K] long, valid [B, K] bool -> [B, K] bool, or None for none.

    Why the start frame alone by default: bilinear sampling is a low-pass filter. The start frame is
    the one true picture, resampled once per tick from the original, so it gains the warp's accuracy
    at no cost; a generated frame shown with compositing is the last tick's resampled output, and
    resampling it bilinearly every tick blurs the world over a long walk (docs/model_card.md: late
    detail 0.68 of the truth's with every frame sampled so, 0.87 with the start frame alone)."""
    if sampling not in HINT_SAMPLINGS:
        raise ValueError(f"hint sampling must be one of {HINT_SAMPLINGS}, got {sampling!r}")
    if sampling == "nearest":
        return None
    return valid & (source_ticks == 0) if sampling == "bilinear-start" else valid.clone()
