"""Speed of the play-time attention paths at the shapes the game runs (`worldmodel bench kernels`).

Each configuration is one layer's attention call of one generated frame: B=1, H=4, D=64 queries of
one frame (Tq = tokens per frame) or of a two-frame pass (commit + current, Tq doubled), against the
whole cache S = sink + memory + window + current slots, with the masks the game really has: one of
the memory entries empty (a hole in `valid`) and, for two-frame passes, an extra_mask keeping the
committed frame's rows away from memory and the current frame. A "full" variant (every slot valid, no
extra mask) is also timed because it is the only case flash-attn can run.

Timing is the median (and 90th percentile) of single synchronised calls after warm-up, so launch
overhead is included: that is what a frame pays. The first call (Triton compilation) is reported
separately. Every row also reports its max abs error against the fp32 reference. On a CPU only SDPA
and the reference run: the Triton interpreter is a correctness tool, not a benchmark.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from kernels.attention import cached_attention, flash_unsupported_reason, triton_available
from kernels.reference import reference_attention

MASK_PLAY = "play"  # the masks the game has: an empty memory entry, extra_mask on two-frame passes
MASK_FULL = "full"  # every slot valid and no extra mask (what flash-attn can express)
DEFAULT_MIN_TIME_S = 0.25  # keep timing one configuration until this much time has passed...
DEFAULT_MIN_REPEATS = 5  # ...and at least this many calls
DEFAULT_MAX_REPEATS = 200
WARMUP_CALLS = 3
P90 = 0.9
EMPTY_MEMORY_ENTRIES = 1  # memory entries left unfilled in the "play" mask


@dataclass(frozen=True)
class AttentionShape:
    """One play-time attention call: queries of `frames` frames against a cache laid out like the game's."""

    name: str
    batch: int
    heads: int
    head_dim: int
    tokens_per_frame: int
    frames: int  # frames in the pass: 1 (denoise) or 2 (commit + denoise)
    sink_slots: int
    memory_entries: int
    memory_tokens: int  # tokens per memory entry
    window_frames: int

    @property
    def q_len(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def memory_slots(self) -> int:
        return self.memory_entries * self.memory_tokens

    @property
    def window_slots(self) -> int:
        return self.window_frames * self.tokens_per_frame

    @property
    def slots(self) -> int:
        return self.sink_slots + self.memory_slots + self.window_slots + self.tokens_per_frame


def _play_shape(name: str, tokens: int, memory_tokens: int, frames: int) -> AttentionShape:
    return AttentionShape(name=name, batch=1, heads=4, head_dim=64, tokens_per_frame=tokens, frames=frames,
                          sink_slots=tokens, memory_entries=4, memory_tokens=memory_tokens, window_frames=8)


# 64x64 frames: 8x8 latent = 64 tokens, memory entries pooled 2x2 to 16 tokens; 128x128: 256 and 64.
PLAY_SHAPES: tuple[AttentionShape, ...] = (
    _play_shape("64x64 1 frame", 64, 16, 1),
    _play_shape("64x64 2 frames", 64, 16, 2),
    _play_shape("128x128 1 frame", 256, 64, 1),
    _play_shape("128x128 2 frames", 256, 64, 2),
)


def make_inputs(shape: AttentionShape, mask: str, dtype: torch.dtype, device: torch.device, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random q [B,H,Tq,D], cache k/v [B,H,S,D], valid [B,S] and extra_mask [Tq,S] | None for `shape`."""
    gen = torch.Generator().manual_seed(seed)
    b, h, d, s = shape.batch, shape.heads, shape.head_dim, shape.slots
    q = torch.randn(b, h, shape.q_len, d, generator=gen).to(device=device, dtype=dtype)  # [B, H, Tq, D]
    k = torch.randn(b, h, s, d, generator=gen).to(device=device, dtype=dtype)  # [B, H, S, D]
    v = torch.randn(b, h, s, d, generator=gen).to(device=device, dtype=dtype)  # [B, H, S, D]
    valid = torch.ones(b, s, dtype=torch.bool)  # [B, S]
    if mask == MASK_FULL:
        return q, k, v, valid.to(device), None
    if mask != MASK_PLAY:
        raise ValueError(f"unknown mask kind {mask!r} (use {MASK_PLAY!r} or {MASK_FULL!r})")
    mem_start = shape.sink_slots
    mem_end = mem_start + shape.memory_slots
    empty = EMPTY_MEMORY_ENTRIES * shape.memory_tokens
    valid[:, mem_end - empty:mem_end] = False
    extra = None
    if shape.frames > 1:
        extra = torch.ones(shape.q_len, s, dtype=torch.bool)  # [Tq, S]
        commit_rows = slice(0, shape.q_len - shape.tokens_per_frame)
        extra[commit_rows, mem_start:mem_end] = False  # the committed frame sees sink + window only
        extra[commit_rows, s - shape.tokens_per_frame:] = False
        extra = extra.to(device)
    return q, k, v, valid.to(device), extra


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], torch.Tensor], device: torch.device, min_time_s: float, min_repeats: int,
              max_repeats: int) -> dict[str, float]:
    """First-call ms (includes compilation), then p50/p90 ms of single synchronised calls after warm-up."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(WARMUP_CALLS):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_time_s):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"ms_p50": times[len(times) // 2], "ms_p90": times[min(len(times) - 1, math.ceil(P90 * len(times)) - 1)],
            "first_ms": first_ms, "repeats": float(len(times))}


def default_backends(device: torch.device) -> list[str]:
    """Every path that can be benchmarked on `device` (the Triton interpreter is never a benchmark)."""
    if device.type != "cuda":
        return ["sdpa", "reference"]
    backends = ["flash"] if flash_unsupported_reason(torch.empty(1, 1, 1, 64, device=device, dtype=torch.bfloat16),
                                                     None, None) is None else []
    if triton_available():
        backends.append("triton")
    return backends + ["sdpa", "reference"]


def _skip_reason(backend: str, q: torch.Tensor, valid: torch.Tensor, extra: torch.Tensor | None) -> str | None:
    if backend == "flash":
        return flash_unsupported_reason(q, valid, extra)
    if backend == "triton":
        if not triton_available():
            return "triton is not installed"
        from kernels.triton_attention import supports  # imports triton: only when the kernel bench runs

        return supports(q)
    return None


def bench_attention(shapes: Sequence[AttentionShape] = PLAY_SHAPES, backends: Sequence[str] | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    masks: Sequence[str] = (MASK_PLAY, MASK_FULL), min_time_s: float = DEFAULT_MIN_TIME_S,
                    min_repeats: int = DEFAULT_MIN_REPEATS, max_repeats: int = DEFAULT_MAX_REPEATS,
                    seed: int = 0, print_table: bool = True) -> dict:
    """Time every backend on every (shape, mask) and check it against the fp32 reference.

    Defaults: CUDA if available (bfloat16, all paths) else CPU (float32, SDPA and reference).
    Returns {"device", "dtype", "rows": [...], "skipped": [...]} (JSON-serialisable); prints a table.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = dtype if dtype is not None else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    chosen = list(backends) if backends is not None else default_backends(dev)
    rows: list[dict] = []
    skipped: list[dict] = []
    for shape in shapes:
        for mask in masks:
            q, k, v, valid, extra = make_inputs(shape, mask, dt, dev, seed)
            truth = reference_attention(q.float(), k.float(), v.float(), valid, extra)  # [B, H, Tq, D] fp32
            for backend in chosen:
                reason = _skip_reason(backend, q, valid, extra)
                if reason is not None:
                    skipped.append({"config": shape.name, "mask": mask, "backend": backend, "reason": reason})
                    continue

                def call(backend: str = backend) -> torch.Tensor:
                    return cached_attention(q, k, v, valid, backend=backend, extra_mask=extra)

                err = (call().float() - truth).abs().max().item()
                timing = time_call(call, dev, min_time_s, min_repeats, max_repeats)
                rows.append({"config": shape.name, "q_len": shape.q_len, "slots": shape.slots, "mask": mask,
                             "backend": backend, "max_abs_err": err, **timing, "shape": asdict(shape)})
    result = {"device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
              "dtype": str(dt).removeprefix("torch."), "rows": rows, "skipped": skipped}
    if print_table:
        print(format_table(result))
    return result


def format_table(result: dict) -> str:
    """The bench result as a fixed-width text table (one row per config x mask x backend)."""
    header = f"{'config':<18} {'Tq':>4} {'S':>5} {'mask':<5} {'backend':<9} {'p50 ms':>8} {'p90 ms':>8} " \
             f"{'first ms':>9} {'max|err|':>9}"
    lines = [f"attention ({result['device']}, {result['dtype']}; B=1 H=4 D=64)", header, "-" * len(header)]
    for r in result["rows"]:
        lines.append(f"{r['config']:<18} {r['q_len']:>4} {r['slots']:>5} {r['mask']:<5} {r['backend']:<9} "
                     f"{r['ms_p50']:>8.3f} {r['ms_p90']:>8.3f} {r['first_ms']:>9.1f} {r['max_abs_err']:>9.1e}")
    for s in result["skipped"]:
        lines.append(f"skipped: {s['config']} / {s['mask']} / {s['backend']}: {s['reason']}")
    return "\n".join(lines)
