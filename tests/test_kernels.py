"""Tests of the play-time attention paths (kernels/) and their benchmark (tools/bench_kernels.py).

Every backend is compared with the fp32 PyTorch reference, and the reference with an independent
float64 softmax. The Triton kernel runs in Triton's CPU interpreter, which needs TRITON_INTERPRET=1
before triton itself is first imported (its own library functions are @triton.jit too). Setting that
for the whole pytest process would leak into every other test, so `run_interpreted_checks` runs in a
child process started with the variable set, and the tests assert on what it reports.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kernels.attention import cached_attention, flash_unsupported_reason, select_backend
from kernels.reference import reference_attention

FP32_TOL = 2e-3  # task bound for fp32 paths vs the reference (they reach ~1e-6)
BF16_TOL = 3e-2  # P is rounded to bf16 before P @ V and the output is stored in bf16 (~4e-3 seen)
FP16_TOL = 5e-3
REFERENCE_TOL = 1e-5  # fp32 reference vs float64 softmax
REPO = Path(__file__).resolve().parents[1]
INTERPRETER_TIMEOUT_S = 300


@dataclass(frozen=True)
class Case:
    """One attention call: shapes plus which mask features it exercises."""

    name: str
    batch: int
    heads: int
    q_len: int
    slots: int
    head_dim: int
    holes: bool = True  # random unfilled slots in `valid`
    tile_hole: tuple[int, int] | None = None  # a run of unfilled slots covering whole K/V tiles
    extra: bool = False  # an extra_mask, with one query row allowed nothing
    dead_batch: bool = False  # the last batch entry has no valid slot at all
    strided: bool = False  # q and k/v are non-contiguous views (cache read in place)
    no_valid: bool = False  # valid=None (every slot filled)


CASES = [
    Case("play-tiny", 1, 2, 16, 48, 16),
    Case("odd-tails", 2, 3, 13, 37, 24, extra=True, dead_batch=True, strided=True),
    Case("tile-holes", 1, 2, 70, 160, 32, tile_hole=(32, 128), extra=True),
    Case("no-valid", 1, 1, 5, 19, 16, holes=False, no_valid=True),
]


def make_case(case: Case, dtype: torch.dtype, seed: int = 0):
    """q [B,H,Tq,D], k/v [B,H,S,D] (views into a bigger cache when strided), valid [B,S] | None, extra [Tq,S] | None."""
    gen = torch.Generator().manual_seed(seed)
    b, h, tq, s, d = case.batch, case.heads, case.q_len, case.slots, case.head_dim
    if case.strided:
        q = torch.randn(b, tq, h, d, generator=gen).to(dtype).transpose(1, 2)  # [B, H, Tq, D] view
        cache = torch.randn(2, b, s, h, d, generator=gen).to(dtype)  # [L, B, S, H, D], two "layers"
        k = cache[1].transpose(1, 2)  # [B, H, S, D] view of layer 1
        v = torch.randn(2, b, s, h, d, generator=gen).to(dtype)[0].transpose(1, 2)
        assert not k.is_contiguous() and not q.is_contiguous()
    else:
        q = torch.randn(b, h, tq, d, generator=gen).to(dtype)
        k = torch.randn(b, h, s, d, generator=gen).to(dtype)
        v = torch.randn(b, h, s, d, generator=gen).to(dtype)
    valid = torch.ones(b, s, dtype=torch.bool)
    if case.holes:
        valid &= torch.rand(b, s, generator=gen) > 0.3
    if case.tile_hole is not None:
        valid[:, case.tile_hole[0]:case.tile_hole[1]] = False
    if case.dead_batch:
        valid[-1] = False
    extra = None
    if case.extra:
        extra = torch.rand(tq, s, generator=gen) > 0.25
        extra[1] = False
    return q, k, v, (None if case.no_valid else valid), extra


def empty_rows(valid: torch.Tensor | None, extra: torch.Tensor | None, q_shape: torch.Size,
               slots: int) -> torch.Tensor:
    """[B, 1, Tq, 1] bool: query rows that may attend to no key."""
    b, _, tq, _ = q_shape
    mask = torch.ones(b, 1, tq, slots, dtype=torch.bool)
    if valid is not None:
        mask &= valid[:, None, None, :]
    if extra is not None:
        mask &= extra[None, None]
    return ~mask.any(-1, keepdim=True)


HALF_CASE = 1  # odd tails, extra mask, dead batch entry, strided views
HALF_DTYPES = {"bfloat16": BF16_TOL, "float16": FP16_TOL}


def check_output(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None,
                 extra: torch.Tensor | None, scale: float | None = None) -> dict:
    """What a test asserts about one output: error vs the reference, NaNs, zeros in rows with no key."""
    ref = reference_attention(q, k, v, valid, extra, scale).float()
    dead = empty_rows(valid, extra, q.shape, k.shape[2]).expand_as(out)
    return {"err": (out.float() - ref).abs().max().item(), "nan": bool(out.isnan().any()),
            "dead_zero": bool((out[dead] == 0).all()), "shape_ok": out.shape == q.shape,
            "dtype_ok": out.dtype == q.dtype}


def run_interpreted_checks() -> dict:
    """Run the Triton backend on every case (called in a child process with TRITON_INTERPRET=1)."""
    from kernels import triton_attention

    results: dict = {"interpreted": triton_attention.is_interpreted()}
    for case in CASES:
        q, k, v, valid, extra = make_case(case, torch.float32)
        results[f"fp32/{case.name}"] = check_output(
            cached_attention(q, k, v, valid, backend="triton", extra_mask=extra), q, k, v, valid, extra)
    for name in HALF_DTYPES:
        q, k, v, valid, extra = make_case(CASES[HALF_CASE], getattr(torch, name), seed=1)
        results[f"{name}/{CASES[HALF_CASE].name}"] = check_output(
            cached_attention(q, k, v, valid, backend="triton", extra_mask=extra), q, k, v, valid, extra)
    q, k, v, _, _ = make_case(CASES[0], torch.float32)
    none_valid = torch.zeros(q.shape[0], k.shape[2], dtype=torch.bool)
    out = cached_attention(q, k, v, none_valid, backend="triton")
    results["all_invalid_exact_zeros"] = bool(torch.equal(out, torch.zeros_like(out)))
    valid = make_case(CASES[0], torch.float32)[3]
    out = cached_attention(q, k, v, valid, backend="triton", scale=0.5)
    results["scale_half"] = check_output(out, q, k, v, valid, None, scale=0.5)
    results["scale_half_vs_default_err"] = (out - reference_attention(q, k, v, valid)).abs().max().item()
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Results of `run_interpreted_checks` from a child process running triton's CPU interpreter."""
    pytest.importorskip("triton", reason="triton is not installed")
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ["TRITON_INTERPRET"] = "1"
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_kernels
        print("RESULTS " + json.dumps(test_kernels.run_interpreted_checks()))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         timeout=INTERPRETER_TIMEOUT_S)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULTS ")]
    assert res.returncode == 0 and lines, f"interpreter run failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    results = json.loads(lines[-1].removeprefix("RESULTS "))
    assert results.pop("interpreted") is True
    return results


def assert_good(result: dict, tol: float) -> None:
    assert result["shape_ok"] and result["dtype_ok"], result
    assert not result["nan"], result
    assert result["dead_zero"], result
    assert result["err"] <= tol, result


def test_reference_matches_float64_softmax():
    for case in CASES:
        q, k, v, valid, extra = make_case(case, torch.float32)
        out = reference_attention(q, k, v, valid, extra)
        scores = (q.double() @ k.double().transpose(-1, -2)) / case.head_dim ** 0.5  # [B, H, Tq, S]
        mask = torch.ones_like(scores, dtype=torch.bool)
        if valid is not None:
            mask &= valid[:, None, None, :]
        if extra is not None:
            mask &= extra[None, None]
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
        expected = probs @ v.double()
        assert (out.double() - expected).abs().max().item() <= REFERENCE_TOL, case.name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sdpa_matches_reference(case: Case):
    q, k, v, valid, extra = make_case(case, torch.float32)
    out = cached_attention(q, k, v, valid, backend="sdpa", extra_mask=extra)
    assert_good(check_output(out, q, k, v, valid, extra), FP32_TOL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_matches_reference_fp32(interpreted: dict, case: Case):
    assert_good(interpreted[f"fp32/{case.name}"], FP32_TOL)


@pytest.mark.parametrize("dtype", list(HALF_DTYPES))
def test_triton_half_precision_matches_reference(interpreted: dict, dtype: str):
    assert_good(interpreted[f"{dtype}/{CASES[HALF_CASE].name}"], HALF_DTYPES[dtype])


def test_triton_all_invalid_gives_exact_zeros(interpreted: dict):
    assert interpreted["all_invalid_exact_zeros"]


def test_triton_scale_argument(interpreted: dict):
    assert_good(interpreted["scale_half"], FP32_TOL)
    assert interpreted["scale_half_vs_default_err"] > FP32_TOL  # the scale really changed the result


@pytest.mark.parametrize("dtype", list(HALF_DTYPES))
def test_sdpa_half_precision_matches_reference(dtype: str):
    q, k, v, valid, extra = make_case(CASES[HALF_CASE], getattr(torch, dtype), seed=1)
    out = cached_attention(q, k, v, valid, backend="sdpa", extra_mask=extra)
    assert_good(check_output(out, q, k, v, valid, extra), HALF_DTYPES[dtype])


def test_auto_uses_sdpa_on_cpu():
    q, k, v, valid, extra = make_case(CASES[1], torch.float32)
    assert select_backend(q, valid, extra) == "sdpa"
    auto = cached_attention(q, k, v, valid, extra_mask=extra)
    assert torch.equal(auto, cached_attention(q, k, v, valid, backend="sdpa", extra_mask=extra))


def test_cpu_paths_do_not_import_triton_and_compiled_triton_refuses_cpu():
    """Run in a fresh interpreter: no import-time device work, and a clear error without CUDA/interpreter."""
    script = textwrap.dedent("""
        import os, sys, torch
        os.environ.pop("TRITON_INTERPRET", None)
        from kernels.attention import cached_attention
        q = torch.randn(1, 1, 4, 16); k = torch.randn(1, 1, 8, 16)
        valid = torch.ones(1, 8, dtype=torch.bool)
        cached_attention(q, k, k, valid)
        print("triton_imported", "triton" in sys.modules)
        try:
            cached_attention(q, k, k, valid, backend="triton")
        except ValueError as exc:
            print("error", exc)
    """)
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=120, check=True)
    assert "triton_imported False" in res.stdout
    if importlib.util.find_spec("triton") is not None:
        assert "error triton attention cannot run: tensors are on the CPU" in res.stdout


def test_flash_refuses_what_it_cannot_express():
    q, k, v, valid, extra = make_case(CASES[0], torch.bfloat16)
    reason = flash_unsupported_reason(q, valid, extra)
    assert reason is not None
    with pytest.raises(ValueError, match="flash attention cannot run"):
        cached_attention(q, k, v, valid, backend="flash")


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available(),
                    reason="flash_attn is not installed (it cannot be built here) or there is no CUDA device")
def test_flash_matches_reference_on_cuda():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 64, generator=gen).cuda().bfloat16() for n in (64, 704, 704))
    valid = torch.ones(1, 704, dtype=torch.bool, device="cuda")
    assert select_backend(q, valid, None) == "flash"
    out = cached_attention(q, k, v, valid, backend="flash")
    assert (out.float() - reference_attention(q, k, v, valid).float()).abs().max().item() <= BF16_TOL
    holes = valid.clone()
    holes[0, :64] = False
    assert select_backend(q, holes, None) != "flash"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_triton_compiled_matches_reference_on_cuda():
    for case in CASES:
        for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, BF16_TOL)):
            q, k, v, valid, extra = (t.cuda() if t is not None else None for t in make_case(case, dtype))
            out = cached_attention(q, k, v, valid, backend="triton", extra_mask=extra)
            ref = reference_attention(q, k, v, valid, extra)
            assert (out.float() - ref.float()).abs().max().item() <= tol, (case.name, dtype)


@pytest.mark.parametrize("bad", ["valid_shape", "valid_dtype", "extra_shape", "head_dim", "dtype", "backend"])
def test_bad_inputs_raise(bad: str):
    q, k, v, valid, _ = make_case(CASES[0], torch.float32)
    kwargs: dict = {}
    if bad == "valid_shape":
        valid = valid[:, :-1]
    elif bad == "valid_dtype":
        valid = valid.float()
    elif bad == "extra_shape":
        kwargs["extra_mask"] = torch.ones(q.shape[2] + 1, k.shape[2], dtype=torch.bool)
    elif bad == "head_dim":
        k = k[..., :-1]
        v = v[..., :-1]
    elif bad == "dtype":
        k = k.double()
    elif bad == "backend":
        kwargs["backend"] = "cudnn"
    with pytest.raises(ValueError, match="cached_attention"):
        cached_attention(q, k, v, valid, **kwargs)


def test_kernel_compiles_for_h200_without_spills():
    """Ahead-of-time sm_90 compile of the play-time config (bf16, D=64, extra mask): real machine code."""
    ta = pytest.importorskip("kernels.triton_attention", reason="triton is not installed")
    ptxas = Path(ta.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton's bundled ptxas is missing, cannot compile for sm_90")
    if ta.is_interpreted():
        pytest.skip("TRITON_INTERPRET=1 is set for the whole test run; the compiler is not used then")
    cfg = ta.tile_config(torch.bfloat16, 64, 128, rows=4)
    info = ta.compile_for_gpu(torch.bfloat16, cfg, has_valid=True, has_extra=True)
    assert info["tensor_cores"] in ("wgmma", "mma")
    assert info["shared_bytes"] > 0
    if info["spill_bytes"] is not None:
        assert info["spill_bytes"] == 0, info


def test_bench_attention_reports_rows_and_skips(capsys):
    from tools.bench_kernels import AttentionShape, bench_attention

    shape = AttentionShape(name="tiny 2 frames", batch=1, heads=2, head_dim=16, tokens_per_frame=8, frames=2,
                           sink_slots=8, memory_entries=2, memory_tokens=4, window_frames=2)
    res = bench_attention(shapes=[shape], backends=["sdpa", "reference", "flash"], device="cpu",
                          min_time_s=0.0, min_repeats=2, max_repeats=2)
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "tiny 2 frames" in printed
    assert {(r["mask"], r["backend"]) for r in res["rows"]} == {
        ("play", "sdpa"), ("play", "reference"), ("full", "sdpa"), ("full", "reference")}
    for row in res["rows"]:
        assert row["slots"] == 8 + 2 * 4 + 2 * 8 + 8 and row["q_len"] == 16
        assert row["ms_p50"] > 0 and row["ms_p90"] >= row["ms_p50"]
        assert row["max_abs_err"] <= FP32_TOL
    assert len(res["skipped"]) == 2 and all(s["backend"] == "flash" for s in res["skipped"])
    json.dumps(res)  # the bench command writes it as JSON
