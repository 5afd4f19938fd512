"""The batched-environment benchmark behind `worldmodel bench vecenv`.

For each N it steps `worldmodel/Explore-v0` with the model backend two ways in the same run: the
batched environment (N sessions, one forward pass of the generator per denoising step for all of
them) and N single sessions stepped one after the other (`ExploreVectorEnv(batched=False)`, the
same frames). Both get the same random actions; their steps/s (environment steps, N per vector
step) are timed in alternating rounds, so drift of a shared machine's speed hits both alike, and
the frames of both are checked to be equal. Reports N, steps/s batched, steps/s sequential, ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

SIZES = (1, 8, 32)
"""N of the default run."""
WARMUP_STEPS = 3
"""Steps before timing: past the first frames, which take more denoising steps (warmup_frames)."""
ROUNDS = 2
"""Timed rounds per contender, alternating batched / sequential."""
SEED = 0


def _timed(env, actions: np.ndarray) -> tuple[float, list]:
    """Seconds for one vector step per row of `actions` [steps, N, 5], and the observations."""
    seen = []
    t0 = time.perf_counter()
    for a in actions:
        seen.append(env.step(a)[0])
    return time.perf_counter() - t0, seen


def bench_size(n: int, steps: int, options: dict) -> dict:
    """steps/s of the batched and of the sequential environment for N = n."""
    from worldmodel.env import ExploreVectorEnv  # gymnasium is the optional extra [rl]: only when this bench runs

    contenders = {"batched": ExploreVectorEnv(num_envs=n, **options),
                  "sequential": ExploreVectorEnv(num_envs=n, batched=False, **options)}
    space = contenders["batched"].single_action_space
    rng = np.random.default_rng(SEED)
    total = WARMUP_STEPS + ROUNDS * steps
    actions = (rng.uniform(-1.0, 1.0, (total, n, space.shape[0])) * space.high).astype(np.float32)
    seconds = {name: 0.0 for name in contenders}
    frames_equal = True
    for env in contenders.values():
        env.reset(seed=SEED)
        for a in actions[:WARMUP_STEPS]:
            env.step(a)
    for r in range(ROUNDS):
        chunk = actions[WARMUP_STEPS + r * steps: WARMUP_STEPS + (r + 1) * steps]
        seen = {}
        for name, env in contenders.items():
            dt, seen[name] = _timed(env, chunk)
            seconds[name] += dt
        frames_equal &= all(np.array_equal(a, b) for a, b in zip(seen["batched"], seen["sequential"]))
    for env in contenders.values():
        env.close()
    rate = {name: n * ROUNDS * steps / s for name, s in seconds.items()}
    return {"n": n, "batched_steps_s": rate["batched"], "sequential_steps_s": rate["sequential"],
            "ratio": rate["batched"] / rate["sequential"], "frames_equal": bool(frames_equal)}


def bench_vecenv(args: argparse.Namespace) -> list[dict]:
    options = {"backend": "model"}
    if getattr(args, "checkpoint", None) is not None:
        options["checkpoint"] = str(args.checkpoint)
    if getattr(args, "hint", None) is not None:
        options["hint"] = args.hint == "on"
    if getattr(args, "memory", None) is not None:
        options["memory"] = args.memory == "on"
    if getattr(args, "precision", None) is not None:
        options["precision"] = args.precision
    sizes = args.envs or list(SIZES)
    print(f"vecenv (model backend, memory {args.memory}, {torch.get_num_threads()} threads, "
          f"{ROUNDS} x {args.vec_steps} timed steps per N):")
    print(f"{'N':>4} {'batched steps/s':>16} {'sequential steps/s':>19} {'ratio':>6}  frames equal")
    rows = []
    for n in sizes:
        r = bench_size(n, args.vec_steps, options)
        rows.append(r)
        print(f"{r['n']:>4} {r['batched_steps_s']:>16.2f} {r['sequential_steps_s']:>19.2f} {r['ratio']:>6.2f}  "
              f"{'yes' if r['frames_equal'] else 'NO'}")
        sys.stdout.flush()
    return rows
