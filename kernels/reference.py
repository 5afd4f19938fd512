"""Plain PyTorch reference for play-time cached attention (the yardstick every fast path is tested against).

It is written for clarity, not speed: an explicit softmax(Q K^T * scale) with the slot mask applied,
accumulated in float32 whatever the input dtype, so that a bf16/fp16 fast path is compared with what
the maths says rather than with another low-precision kernel.

Masking contract shared by every backend (see `kernels.attention.cached_attention`):
- `valid` [B, S] bool marks filled cache slots; an unfilled slot is never attended to.
- `extra_mask` [Tq, S] bool further restricts individual query rows (a pass holding two frames uses it
  to keep the frame being committed from seeing the memory and the current frame).
- A query row that may attend to no key at all returns zeros (never NaN): a softmax over nothing has
  no meaningful value, and zeros keep the residual stream unchanged for that token.
"""

from __future__ import annotations

import math

import torch


def default_scale(head_dim: int) -> float:
    """Softmax temperature 1/sqrt(D), the one used by every backend unless the caller passes its own."""
    return 1.0 / math.sqrt(head_dim)


def combine_masks(valid: torch.Tensor | None, extra_mask: torch.Tensor | None) -> torch.Tensor | None:
    """valid [B, S] bool and extra_mask [Tq, S] bool -> one broadcastable mask [B|1, 1, Tq|1, S] (or None).

    True means "this query row may attend to this slot". None means no restriction at all.
    """
    if valid is None and extra_mask is None:
        return None
    if valid is None:
        return extra_mask[None, None]  # [1, 1, Tq, S]
    mask = valid[:, None, None, :]  # [B, 1, 1, S]
    if extra_mask is not None:
        mask = mask & extra_mask[None, None]  # [B, 1, Tq, S]
    return mask


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                        extra_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Masked attention of q [B, H, Tq, D] over k, v [B, H, S, D] -> [B, H, Tq, D] in q's dtype.

    Computed in float32 with an explicit, max-subtracted softmax; rows without any allowed key are zeros.
    """
    scale = default_scale(q.shape[-1]) if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # [B, H, Tq, S]
    mask = combine_masks(valid, extra_mask)  # [B|1, 1, Tq|1, S] or None
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)  # [B, H, Tq, 1]; -inf where a row has no allowed key
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)  # [B, H, Tq, S]; exactly 0 at masked slots
    denom = weights.sum(dim=-1, keepdim=True)  # [B, H, Tq, 1]; 0 only for rows with no allowed key
    out = torch.matmul(weights, vf) / denom.clamp_min(torch.finfo(torch.float32).tiny)  # [B, H, Tq, D]
    return out.to(q.dtype)
