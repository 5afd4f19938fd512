"""Triton flash-attention-style forward kernel for play-time cached attention.

One program computes a BLOCK_M tile of query rows of one (batch, head) against the whole KV cache,
walking the S slots in BLOCK_N tiles with an online (streaming) softmax, so the [Tq, S] score matrix
never exists in memory and K/V are read exactly once per query tile, IN PLACE from the preallocated
cache tensors (any strides; no gather, no concatenation). Slot validity comes from the cache's
`valid` [B, S] bool mask (read as bytes, zero-copy), an optional `extra_mask` [Tq, S] restricts single
query rows, and a K/V tile whose slots are all unfilled is skipped without loading it (early in a
session most of the ring buffer and memory region is empty).

Numerics: scores and the running max/sum are float32 whatever the input dtype (fp32, bf16, fp16); the
probabilities are cast to V's dtype for the P @ V product, as in FlashAttention. fp32 inputs use IEEE
fp32 dot products by default (TF32 is opt-in) so that the fp32 path matches the reference to ~1e-6.
Rows that may attend to no key produce zeros: the running max is replaced by 0 while it is still -inf,
so no `-inf - -inf` NaN can appear, and the final 1/l uses l = 1 where l = 0.

Under TRITON_INTERPRET=1, bfloat16 dot operands are widened to fp32 (the interpreter cannot multiply
bf16, see `triton_cached_attention`); every other step is the same code the GPU compiles.

Importing this module imports triton. Whether the kernel runs compiled (CUDA tensors) or in Triton's
CPU interpreter is decided by TRITON_INTERPRET=1 *when this module is first imported* (that is when
`@triton.jit` looks at it); `is_interpreted()` says which one this process got.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.reference import default_scale

LOG2_E = 1.4426950408889634  # scores are scaled by log2(e) so the kernel can use exp2
MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
MAX_HEAD_DIM = 128  # largest head_dim with a spill-free tile config (checked by compile_for_gpu on sm_90)
NUM_STAGES = 2
FP_FUSION = True  # let a*b+c become one FMA (Triton's current default, set explicitly so it cannot drift)
DEFAULT_NUM_SMS = 132  # H100/H200 SXM; the real count is read from the device at call time
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes and warps of one launch. BLOCK_D is head_dim padded to a power of two (>= 16)."""

    block_m: int
    block_n: int
    block_d: int
    num_warps: int


# (tensor-core dot?, padded head_dim <= key) -> (largest BLOCK_M, BLOCK_N, warps). Chosen so that the
# kernel compiled for sm_90 uses no local-memory spills (see `compile_for_gpu` and docs/kernels.md);
# IEEE fp32 dots run on FMA units with fp32 operands in registers, hence the smaller tiles.
# Speed on a real GPU has not been tuned (no GPU was available to measure).
_TILE_TABLE: dict[tuple[bool, int], tuple[int, int, int]] = {
    (True, 64): (64, 64, 4),
    (True, 128): (32, 64, 4),
    (False, 64): (32, 32, 4),
    (False, 128): (16, 32, 8),
}
_BLOCK_M_CHOICES = (64, 32, 16)


@triton.jit
def _cached_attention_fwd(
    Q, K, V, Out, Valid, Extra,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_valid_b, stride_valid_n,
    stride_extra_m, stride_extra_n,
    num_heads, q_len, slots, head_dim, qk_scale_log2,
    HAS_VALID: tl.constexpr, HAS_EXTRA: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] query rows
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D] (padded head dim)
    offs_n0 = tl.arange(0, BLOCK_N)  # [BLOCK_N] slots within a tile
    row_ok = offs_m < q_len
    d_ok = offs_d < head_dim

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running unnormalised output

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    # Element offsets of the first tile, computed once as int32 (one pointer add per load, not a 64-bit
    # pointer per element); each step only adds the scalar start offset.
    k_offs = offs_n0[:, None] * stride_kn + offs_d[None, :] * stride_kd  # [BLOCK_N, BLOCK_D]
    v_offs = offs_n0[:, None] * stride_vn + offs_d[None, :] * stride_vd  # [BLOCK_N, BLOCK_D]
    e_offs = offs_m[:, None] * stride_extra_m + offs_n0[None, :] * stride_extra_n  # [BLOCK_M, BLOCK_N]
    for start in range(0, slots, BLOCK_N):
        offs_n = start + offs_n0
        in_range = offs_n < slots
        key_ok = in_range
        if HAS_VALID:
            filled = tl.load(Valid + b * stride_valid_b + offs_n * stride_valid_n, mask=in_range, other=0)
            key_ok = key_ok & (filled != 0)
        if tl.max(key_ok.to(tl.int32), axis=0) > 0:  # skip tiles whose slots are all unfilled
            kv_mask = in_range[:, None] & d_ok[None, :]
            k = tl.load(k_base + (start * stride_kn + k_offs), mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
            if UPCAST_DOT:
                k = k.to(tl.float32)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2  # [BLOCK_M, BLOCK_N]
            allowed = key_ok[None, :] & row_ok[:, None]
            if HAS_EXTRA:
                extra = tl.load(Extra + (start * stride_extra_n + e_offs),
                                mask=row_ok[:, None] & in_range[None, :], other=0)  # [BLOCK_M, BLOCK_N]
                allowed = allowed & (extra != 0)
            qk = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no allowed key yet: avoid -inf - -inf
            alpha = tl.exp2(m_i - m_safe)  # rescales what was accumulated so far (0 when m_i is -inf)
            p = tl.exp2(qk - m_safe[:, None])  # [BLOCK_M, BLOCK_N]; exactly 0 at masked slots
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + (start * stride_vn + v_offs), mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
            p_low = p.to(v.dtype)  # FlashAttention rounds P to V's dtype for the tensor-core product
            if UPCAST_DOT:
                p_low = p_low.to(tl.float32)
                v = v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p_low, v, input_precision=DOT_PRECISION)
            m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows with no allowed key: acc is 0 -> output 0
    out = acc / l_safe[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def is_interpreted() -> bool:
    """True when this process runs the kernel in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_cached_attention_fwd, InterpretedFunction)


def supports(q: torch.Tensor) -> str | None:
    """None if the kernel can run q [B, H, Tq, D]; otherwise the reason it cannot (for errors and `auto`)."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (supported: float32, bfloat16, float16)"
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} (supported: 1..{MAX_HEAD_DIM})"
    if not q.is_cuda and not is_interpreted():
        return "tensors are on the CPU (the compiled kernel needs CUDA; set TRITON_INTERPRET=1 before " \
               "the first import of kernels.triton_attention to run it in the interpreter)"
    return None


def tile_config(dtype: torch.dtype, head_dim: int, q_len: int, rows: int, allow_tf32: bool = False,
                num_sms: int = DEFAULT_NUM_SMS) -> TileConfig:
    """Tiles for one launch: the spill-free maximum for (dtype, head_dim), with BLOCK_M shrunk while the
    grid (`rows` = B*H query-tile rows) would leave SMs idle, because a play-time call is tiny
    (B=1, H=4, Tq=64) and its latency is set by how much of the cache each program walks."""
    block_d = max(MIN_BLOCK, triton.next_power_of_2(head_dim))
    tensor_cores = dtype != torch.float32 or allow_tf32
    table_d = min(d for tc, d in _TILE_TABLE if tc == tensor_cores and d >= block_d)
    max_m, block_n, warps = _TILE_TABLE[(tensor_cores, table_d)]
    fits = max(MIN_BLOCK, triton.next_power_of_2(q_len))
    candidates = [m for m in _BLOCK_M_CHOICES if m <= min(max_m, fits)] or [MIN_BLOCK]
    block_m = candidates[-1]
    for m in candidates:  # largest tile that still gives every SM a program
        if triton.cdiv(q_len, m) * rows >= num_sms:
            block_m = m
            break
    return TileConfig(block_m=block_m, block_n=block_n, block_d=block_d, num_warps=warps)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_NUM_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def triton_cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                            extra_mask: torch.Tensor | None = None, scale: float | None = None,
                            allow_tf32: bool = False) -> torch.Tensor:
    """q [B, H, Tq, D] over cache k, v [B, H, S, D] (read in place, any strides) -> [B, H, Tq, D] in q's dtype.

    valid [B, S] bool (None: all slots filled), extra_mask [Tq, S] bool (None: no per-row restriction).
    allow_tf32 lets fp32 inputs use TF32 tensor cores (faster, ~1e-3 relative error).
    Shapes are assumed checked by `kernels.attention.cached_attention`.
    """
    reason = supports(q)
    if reason is not None:
        raise ValueError(f"triton attention cannot run: {reason}")
    bsz, heads, q_len, head_dim = q.shape
    slots = k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, H, Tq, D]
    if q_len == 0 or bsz * heads == 0:
        return out
    scale = default_scale(head_dim) if scale is None else scale
    # bool -> uint8 views are zero-copy (same item size), so the masks are read where they live.
    valid_u8 = valid.view(torch.uint8) if valid is not None else out  # dummy pointer when unused
    extra_u8 = extra_mask.view(torch.uint8) if extra_mask is not None else out
    valid_strides = valid_u8.stride() if valid is not None else (0, 0)
    extra_strides = extra_u8.stride() if extra_mask is not None else (0, 0)
    use_tf32 = allow_tf32 and q.dtype == torch.float32
    # Triton's CPU interpreter multiplies bfloat16 bit patterns as integers in tl.dot (triton-lang/triton
    # #11584, "not supported yet"), so there and only there the dot operands are widened to fp32 after
    # the same bf16 rounding the compiled kernel applies; the compiled kernel is unaffected.
    upcast = is_interpreted() and q.dtype == torch.bfloat16
    cfg = tile_config(q.dtype, head_dim, q_len, bsz * heads, use_tf32, _num_sms(q.device))
    grid = (triton.cdiv(q_len, cfg.block_m), bsz * heads)
    _cached_attention_fwd[grid](
        q, k, v, out, valid_u8, extra_u8,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *valid_strides, *extra_strides,
        heads, q_len, slots, head_dim, scale * LOG2_E,
        HAS_VALID=valid is not None, HAS_EXTRA=extra_mask is not None,
        DOT_PRECISION="tf32" if use_tf32 else "ieee", UPCAST_DOT=upcast,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d,
        num_warps=cfg.num_warps, num_stages=NUM_STAGES, enable_fp_fusion=FP_FUSION,
    )
    return out


SM90 = 90  # H100/H200 (Hopper) compute capability, the GPU this engine targets
WARP_SIZE = 32
JIT_DIVISIBILITY = 16  # what Triton's JIT assumes of 16-aligned pointers and strides it is given
_TORCH_TO_TRITON_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
_POINTER_ARGS = ("Q", "K", "V", "Out")
_MASK_ARGS = ("Valid", "Extra")
_UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_valid_n", "stride_extra_n")
_SIZE_ARGS = ("num_heads", "q_len", "slots", "head_dim")


def compile_for_gpu(dtype: torch.dtype, config: TileConfig, has_valid: bool = True, has_extra: bool = True,
                    allow_tf32: bool = False, arch: int = SM90) -> dict[str, object]:
    """Compile the kernel ahead of time for an NVIDIA GPU of compute capability `arch`; no GPU needed.

    The launch is specialised the way Triton's JIT specialises a play-time call (unit last-dim strides
    become constants, other strides and pointers 16-divisible), so this is how a machine without a GPU
    checks that the real kernel lowers to machine code and what it costs. Returns {"arch",
    "shared_bytes", "registers", "spill_bytes" (registers/spill None if cuobjdump is missing),
    "tensor_cores": "wgmma"|"mma"|"none"}. Raises what Triton raises when the kernel does not compile.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if is_interpreted():  # triton's own library functions are interpreter objects in this process too
        raise RuntimeError("compile_for_gpu needs a process without TRITON_INTERPRET=1")
    fn = _cached_attention_fwd
    constexprs: dict[str, object] = {
        "HAS_VALID": has_valid, "HAS_EXTRA": has_extra, "UPCAST_DOT": False,
        "DOT_PRECISION": "tf32" if (allow_tf32 and dtype == torch.float32) else "ieee",
        "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "BLOCK_D": config.block_d,
        **{name: 1 for name in _UNIT_STRIDES},
    }
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = (_TORCH_TO_TRITON_PTR[dtype] if name in _POINTER_ARGS else "*u8" if name in _MASK_ARGS
                           else "fp32" if name == "qk_scale_log2" else "i32")
        if name != "qk_scale_log2" and name not in _SIZE_ARGS:
            attrs[(i,)] = [["tt.divisibility", JIT_DIVISIBILITY]]
    src = ASTSource(fn=fn, signature=signature, attrs=attrs,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, WARP_SIZE),
                              options={"num_warps": config.num_warps, "num_stages": NUM_STAGES,
                                       "enable_fp_fusion": FP_FUSION})
    ptx = compiled.asm["ptx"]
    cores = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "none")
    registers, spill = _resource_usage(compiled.asm["cubin"])
    return {"arch": arch, "shared_bytes": compiled.metadata.shared, "registers": registers,
            "spill_bytes": spill, "tensor_cores": cores}


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers per thread, stack + local bytes per thread) from Triton's bundled cuobjdump, if present."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                               check=False).stdout
    reg = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    if reg is None:
        return None, None
    return int(reg.group(1)), (int(stack.group(1)) if stack else 0) + (int(local.group(1)) if local else 0)
