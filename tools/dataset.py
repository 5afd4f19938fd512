"""`worldmodel dataset`: training clips from procedural worlds, written in safetensors shards.

Each clip is a play-like trajectory (walk, look around, or leave-and-return) in a world made from a
seed, with the oracle's frames and depth maps, the exact actions and poses, the world seed and its caption. The
format is a shared convention (see `DATASET_FORMAT`, docs/architecture.md §Binding conventions); training reads it with worldmodel.data.
Train worlds use seeds below scenes.world.HELDOUT_SEED_START, held-out worlds seeds at or above it,
so evaluation never sees a training world.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

from scenes.render import render_views_with_depth
from scenes.trajectories import POLICIES, POLICY_WEIGHTS, make_trajectory
from scenes.world import HELDOUT_SEED_START, generate_world, is_heldout_seed
from conventions.camera import DEFAULT_FOV_DEG, DEFAULT_RESOLUTION, DEFAULT_TICK_HZ
from conventions.errors import UserError
from conventions.progress import ProgressBar
from conventions.atomic import atomic_write_text, check_output_folder, output_error
from conventions.limits import flag_type
from worldmodel.autoencoder import atomic_save_safetensors

DATASET_FORMAT = "worldmodel.dataset"
DATASET_VERSION = 1
INDEX_FILE = "dataset.json"
DEPTH_DTYPE = torch.float16
"""Depth maps are stored as float16 metres along -z (0 = sky, conventions.depth): 0.05% precision."""
CLIP_SEED_STRIDE = 1000
"""Clip RNG seed = world seed * stride + clip index, so clips are reproducible one by one."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worlds", type=flag_type("count"), required=True, help="number of procedural worlds")
    p.add_argument("--clips-per-world", type=flag_type("count"), default=4, help="clips per world (default 4)")
    p.add_argument("--ticks", type=flag_type("count"), default=160, help="frames per clip (default 160)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--split", choices=("train", "heldout"), default="train",
                   help=f"train: seeds from --seed-start; heldout: seeds from {HELDOUT_SEED_START} + --seed-start")
    p.add_argument("--seed-start", type=flag_type("seed"), default=0, help="first world seed offset (default 0)")
    p.add_argument("--policy", choices=("mix",) + POLICIES, default="mix",
                   help="trajectory policy; mix draws walk/look/revisit per clip (default)")
    p.add_argument("--resolution", type=flag_type("resolution"), default=DEFAULT_RESOLUTION)
    p.add_argument("--fov", type=flag_type("fov_deg"), default=DEFAULT_FOV_DEG)
    p.add_argument("--tick-hz", type=flag_type("tick_hz"), default=DEFAULT_TICK_HZ)
    p.add_argument("--shard-clips", type=flag_type("count"), default=64, help="clips per shard file (default 64)")


def _atomic_json(obj: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


SHARD_GLOB = "shard-*.safetensors"
BYTES_PER_PIXEL = 3 + 2
"""A stored frame pixel: RGB uint8 + float16 depth."""
MEMORY_FRACTION = 0.5
"""A data set's shard buffer may use at most this part of the memory available when it starts."""


def _available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None  # not a POSIX system that says: no estimate


PLAN_FILE = ".dataset-plan.json"
"""What an unfinished data set is being written with; a run with the same plan continues it."""


def _check_target(out: Path) -> None:
    """A new or empty folder, or one holding only shards of an interrupted run of ours."""
    if (out / INDEX_FILE).exists():
        raise UserError(f"{out / INDEX_FILE}: a data set already exists there; choose an empty --out")
    check_output_folder(out, lambda entry: (entry.match(SHARD_GLOB) or entry.name.startswith(".shard-")
                                            or entry.name == PLAN_FILE))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


SHARD_WAIT_S = 2.0
"""How often rank 0 looks for the other ranks' shards."""


def _wait_for(out: Path, names: list[str]) -> None:
    """Block until every shard in `names` exists (the other ranks write them atomically)."""
    while not all((out / n).is_file() for n in names):
        time.sleep(SHARD_WAIT_S)


def _resumable_shards(out: Path, plan: dict) -> bool:
    """Whether the shards in `out` were written with `plan` (then they are kept, not rendered again).

    Shards are written atomically, so one that exists is whole; one of another plan is not mixed in."""
    path = out / PLAN_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()) == plan
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def write_dataset(out: Path, worlds: int, clips_per_world: int, ticks: int, split: str = "train",
                  seed_start: int = 0, policy: str = "mix", resolution: int = DEFAULT_RESOLUTION,
                  fov_deg: float = DEFAULT_FOV_DEG, tick_hz: float = DEFAULT_TICK_HZ,
                  shard_clips: int = 64, progress: bool = True, device: torch.device | str = "cpu",
                  resume: bool = True, rank: int = 0, world_size: int = 1) -> dict:
    """Write the data set and return its index (the content of dataset.json).

    The oracle renders on `device` (a GPU renders far faster). An interrupted run leaves whole shards
    behind; run again with the same arguments and `resume` keeps them and renders only the rest.
    Several processes (`rank` of `world_size`, e.g. under torchrun) share the work shard by shard:
    each renders the shards i with i % world_size == rank into the same folder, rank 0 writes the
    index when all are there, and the others return {}."""
    if worlds < 1 or clips_per_world < 1 or ticks < 2 or shard_clips < 1 or resolution < 8:
        raise UserError("dataset: --worlds, --clips-per-world, --shard-clips must be >= 1, --ticks >= 2, "
                        "--resolution >= 8")
    if seed_start < 0:
        raise UserError("dataset: --seed-start must be >= 0")
    first = seed_start + (HELDOUT_SEED_START if split == "heldout" else 0)
    seeds = list(range(first, first + worlds))
    if split == "train" and is_heldout_seed(seeds[-1]):
        raise UserError(f"dataset: train seeds must stay below {HELDOUT_SEED_START} (held-out worlds)")
    if rank == 0:  # rank 0 checks the folder; the others only add their shards to it
        _check_target(out)
    elif (out / INDEX_FILE).exists():
        return {}
    jobs = [(s, c) for s in seeds for c in range(clips_per_world)]
    needed = min(shard_clips, len(jobs)) * ticks * resolution * resolution * BYTES_PER_PIXEL
    available = _available_memory_bytes()
    if available is not None and needed > MEMORY_FRACTION * available:
        raise UserError(f"{out}: a shard of {min(shard_clips, len(jobs))} clips x {ticks} ticks at {resolution} px "
                        f"needs {needed / 2**30:.1f} GiB of memory, {available / 2**30:.1f} GiB are free; "
                        "pass a smaller --shard-clips, --ticks or --resolution")
    plan = {"worlds": worlds, "clips_per_world": clips_per_world, "ticks": ticks, "split": split,
            "seed_start": seed_start, "policy": policy, "resolution": resolution, "fov_deg": fov_deg,
            "tick_hz": tick_hz, "shard_clips": shard_clips}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out, exc) from None
    keep = resume and _resumable_shards(out, plan)
    if not keep and rank == 0:
        _atomic_json(plan, out / PLAN_FILE)
    shards: list[str] = []
    buf: dict[str, list] = {"frames": [], "depth": [], "actions": [], "poses": [], "seeds": [], "captions": [],
                            "policies": []}
    bar = ProgressBar(len(jobs), f"dataset {split}") if progress else None

    def flush() -> None:
        if not buf["frames"]:
            return
        name = shard_name(len(shards))
        atomic_save_safetensors({
            "frames": torch.stack(buf["frames"]), "depth": torch.stack(buf["depth"]),
            "actions": torch.stack(buf["actions"]),
            "poses": torch.stack(buf["poses"]), "world_seeds": torch.tensor(buf["seeds"], dtype=torch.int64),
        }, out / name, {"captions": json.dumps(buf["captions"]), "policies": json.dumps(buf["policies"])})
        shards.append(name)
        for v in buf.values():
            v.clear()

    world = None
    for job, (seed, clip) in enumerate(jobs):
        shard = job // shard_clips
        if job % shard_clips == 0 and len(shards) == shard and (
                (keep and (out / shard_name(shard)).is_file()) or shard % world_size != rank):
            shards.append(shard_name(shard))  # written by the interrupted run, or another rank's
        if len(shards) > shard:
            if bar:
                bar.update(1)
            continue
        if world is None or world.seed != seed:
            world = generate_world(seed).to(device)
        rng = random.Random(seed * CLIP_SEED_STRIDE + clip)
        pol = rng.choices(POLICIES, weights=POLICY_WEIGHTS)[0] if policy == "mix" else policy
        traj = make_trajectory(world, ticks, pol, rng, tick_hz)
        frames, depth = render_views_with_depth(world, traj.poses, resolution, fov_deg)
        buf["frames"].append(frames)
        buf["depth"].append(depth.to(DEPTH_DTYPE))
        buf["actions"].append(traj.actions)
        buf["poses"].append(traj.poses)
        buf["seeds"].append(seed)
        buf["captions"].append(world.caption)
        buf["policies"].append(pol)
        if len(buf["frames"]) >= shard_clips:
            flush()
        if bar:
            bar.update(1)
    flush()
    if bar:
        bar.close()
    if world_size > 1:  # rank 0 writes the index once every rank's shards are there
        if rank != 0:
            return {}
        _wait_for(out, shards)
    index = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "resolution": [resolution, resolution],
             "fov_deg": fov_deg, "tick_hz": tick_hz, "split": split, "ticks": ticks, "shards": shards,
             "clips": len(jobs), "world_seeds": [seeds[0], seeds[-1]], "policy": policy}
    _atomic_json(index, out / INDEX_FILE)
    (out / PLAN_FILE).unlink(missing_ok=True)
    return index


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    index = write_dataset(args.out, args.worlds, args.clips_per_world, args.ticks, args.split, args.seed_start,
                          args.policy, args.resolution, args.fov, args.tick_hz, args.shard_clips)
    print(f"wrote {index['clips']} clips x {index['ticks']} ticks in {len(index['shards'])} shards to {args.out}")
    return 0
