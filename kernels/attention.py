"""Play-time attention over the preallocated KV cache: one entry point, several interchangeable paths.

Every layer's cache is ONE tensor per K and V of shape [B, H, S, D] holding [sink | memory | window |
current] slots, with a bool `valid` [B, S] of filled slots (docs/architecture.md §The conventions, in brief). Position and camera are baked
into K before it is written, so attention is order-free and a frame's queries simply attend to every
valid slot. `cached_attention` reads K/V where they live (no gather, no concatenation) and dispatches:

- "reference": explicit fp32 softmax in PyTorch (kernels/reference.py), the yardstick for tests.
- "sdpa":      torch.nn.functional.scaled_dot_product_attention with the combined bool mask; the CPU path.
- "triton":    the flash-attention-style kernel in kernels/triton_attention.py (CUDA, or the CPU
               interpreter when TRITON_INTERPRET=1 was set before it was imported).
- "flash":     flash-attn's `flash_attn_func`, only when the mask has no holes (all slots valid and no
               extra_mask): flash-attn cannot express arbitrary per-slot masks without packing K/V.
- "auto":      flash when importable, on CUDA, fp16/bf16 and the mask has no holes; else triton on CUDA;
               else SDPA.

Every path returns zeros (never NaN) for a query row that may attend to no key.
Nothing here touches CUDA, triton or flash-attn at import time; devices are inspected per call.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F

from kernels.reference import combine_masks, reference_attention

Backend = Literal["auto", "sdpa", "triton", "flash", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "triton", "flash", "reference")
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256
FLASH_HEAD_DIM_MULTIPLE = 8


@functools.lru_cache(maxsize=None)
def _module_available(name: str) -> bool:
    """Whether `name` can be imported, without importing it (cheap; cached for the process)."""
    return importlib.util.find_spec(name) is not None


def flash_available() -> bool:
    """True when the flash-attn package is installed (it needs CUDA to actually run)."""
    return _module_available("flash_attn")


def triton_available() -> bool:
    """True when triton is installed (it needs CUDA, or TRITON_INTERPRET=1, to actually run)."""
    return _module_available("triton")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                 extra_mask: torch.Tensor | None) -> None:
    """Raise ValueError naming the first shape/dtype/device mismatch (a programming error, not a user one)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"cached_attention: q, k, v must be 4-D [B, H, T, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    bsz, heads, q_len, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"cached_attention: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if k.shape[0] != bsz or k.shape[1] != heads or k.shape[3] != head_dim:
        raise ValueError(f"cached_attention: k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in B, H or D")
    slots = k.shape[2]
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"cached_attention: dtypes differ (q {q.dtype}, k {k.dtype}, v {v.dtype})")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"cached_attention: devices differ (q {q.device}, k {k.device}, v {v.device})")
    if valid is not None:
        if valid.dtype != torch.bool or tuple(valid.shape) != (bsz, slots):
            raise ValueError(f"cached_attention: valid must be bool [B, S] = [{bsz}, {slots}]; "
                             f"got {valid.dtype} {tuple(valid.shape)}")
        if valid.device != q.device:
            raise ValueError(f"cached_attention: valid is on {valid.device}, q on {q.device}")
    if extra_mask is not None:
        if extra_mask.dtype != torch.bool or tuple(extra_mask.shape) != (q_len, slots):
            raise ValueError(f"cached_attention: extra_mask must be bool [Tq, S] = [{q_len}, {slots}]; "
                             f"got {extra_mask.dtype} {tuple(extra_mask.shape)}")
        if extra_mask.device != q.device:
            raise ValueError(f"cached_attention: extra_mask is on {extra_mask.device}, q on {q.device}")


def flash_unsupported_reason(q: torch.Tensor, valid: torch.Tensor | None, extra_mask: torch.Tensor | None,
                             check_valid: bool = True) -> str | None:
    """None if flash-attn can compute this call exactly; otherwise why not.

    `check_valid=True` reads `valid` (one device sync on CUDA) to see whether every slot is filled.
    """
    if not flash_available():
        return "flash_attn is not installed"
    if not q.is_cuda:
        return "flash_attn needs CUDA tensors"
    if q.dtype not in FLASH_DTYPES:
        return f"flash_attn needs float16/bfloat16, got {q.dtype}"
    head_dim = q.shape[-1]
    if head_dim > FLASH_MAX_HEAD_DIM or head_dim % FLASH_HEAD_DIM_MULTIPLE:
        return f"flash_attn needs head_dim a multiple of {FLASH_HEAD_DIM_MULTIPLE} <= {FLASH_MAX_HEAD_DIM}"
    if extra_mask is not None:
        return "an extra_mask restricts single query rows, which flash_attn cannot express"
    if check_valid and valid is not None and not bool(valid.all()):
        return "the valid mask has holes, which flash_attn cannot express without packing K/V"
    return None


def select_backend(q: torch.Tensor, valid: torch.Tensor | None, extra_mask: torch.Tensor | None) -> str:
    """The concrete path "auto" takes for this call (see the module docstring for the order)."""
    if not q.is_cuda:
        return "sdpa"
    if flash_unsupported_reason(q, valid, extra_mask) is None:
        return "flash"
    if triton_available():
        from kernels import triton_attention  # imports triton: only where a GPU kernel can run

        if triton_attention.supports(q) is None:
            return "triton"
    return "sdpa"


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                   extra_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """PyTorch SDPA with the combined bool mask [B|1, 1, Tq|1, S]; rows with no allowed key -> zeros."""
    mask = combine_masks(valid, extra_mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # [B, H, Tq, D]
    if mask is None:
        return out
    has_key = mask.any(dim=-1, keepdim=True)  # [B|1, 1, Tq|1, 1]; SDPA gives NaN (or junk) for empty rows
    return out.masked_fill(~has_key, 0.0)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                    extra_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """flash-attn over the cache (all slots valid, no extra mask) -> [B, H, Tq, D].

    flash-attn wants [B, T, H, D] with a unit last stride: a transposed view of the cache has exactly
    that, so K/V are still read in place.
    """
    reason = flash_unsupported_reason(q, valid, extra_mask)
    if reason is not None:
        raise ValueError(f"flash attention cannot run: {reason}")
    from flash_attn import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          softmax_scale=scale, causal=False)  # [B, Tq, H, D]
    return out.transpose(1, 2)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                     backend: Backend = "auto", extra_mask: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """One pass's queries q [B, H, Tq, D] against the cache k, v [B, H, S, D] -> [B, H, Tq, D] (q's dtype).

    valid [B, S] bool marks filled slots (None: all filled); extra_mask [Tq, S] bool restricts single
    query rows (None: none); scale defaults to 1/sqrt(D). Rows with no allowed key return zeros.
    """
    check_inputs(q, k, v, valid, extra_mask)
    if backend == "auto":
        backend = select_backend(q, valid, extra_mask)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, valid, extra_mask, scale)
    if backend == "reference":
        return reference_attention(q, k, v, valid, extra_mask, scale)
    if backend == "triton":
        if not triton_available():
            raise ValueError("triton attention cannot run: triton is not installed")
        from kernels.triton_attention import triton_cached_attention  # imports triton, as above

        return triton_cached_attention(q, k, v, valid, extra_mask, scale)
    if backend == "flash":
        return flash_attention(q, k, v, valid, extra_mask, scale)
    raise ValueError(f"cached_attention: unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
