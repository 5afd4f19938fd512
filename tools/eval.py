"""`worldmodel eval`: score the generator against the procedural ground truth (docs/architecture.md §Metrics).

For a log (or every log of a built-in suite on held-out worlds) the model starts from the true render
at the start pose with the world's caption as prompt, is fed the log's actions, and every generated
frame is scored against the oracle's render at the logged pose. Two baselines bound what the numbers
mean: "hold the start frame" (a model that ignores actions) and "shuffled actions" (the same model
driven by the actions of another log, so it cannot simply follow the camera). For logs that revisit
places, the return ticks are scored against the truth and against the model's own frame at the first
visit, with memory on and off. `--prefill N` feeds the first N ticks from the true renders (teacher
forcing), so retrieval can be judged apart from generation. Rollouts long enough for docs/architecture.md §Metrics drift
(the drift suite: 1100 ticks of chained walk/look/revisit/retrace segments) report the mean PSNR of
ticks 1000-1100 against that of ticks 1-100.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from scenes.render import render_views, render_views_with_depth
from scenes.scene import Scene, load_scene
from scenes.trajectories import chained_trajectory, make_trajectory, revisit_ticks
from scenes.world import HELDOUT_SEED_START, World, generate_world
from conventions.camera import DEFAULT_FOV_DEG, CameraPose, integrate_sequence
from worldmodel.config import DEFAULT_PRECISION, PRECISION_NAMES
from conventions.depth import depth_errors
from conventions.errors import UserError
from conventions.metrics import (DRIFT_EARLY_TICKS, DRIFT_LATE_TICKS, detail_ratio, drift_scores, masked_psnr, psnr,
                                 ssim)
from tools.recipe import EvalRecipe
from tools.common import add_hint_setting_flags, add_threads_flag, apply_threads, hint_settings
from conventions.atomic import atomic_write_text, check_output_path
from conventions.limits import MAX_SEED, flag_type
from game.action_log import read_action_log
from memory.map_view import draw_memory_map
from tools.plot import line_chart, save_image_atomic
from worldmodel.checkpoint import checkpoint_sha256, DEFAULT_CHECKPOINT
from worldmodel.reproject import reproject
from worldmodel.runtime import ModelFrameSource

ACTION_SUITE_SEEDS = tuple(HELDOUT_SEED_START + 100 + i for i in range(8))
ACTION_SUITE_TICKS = 64
ACTION_SUITE_HORIZONS = (16, 64)
REVISIT_SUITE_SEEDS = tuple(HELDOUT_SEED_START + 200 + i for i in range(8))
REVISIT_SUITE_POLICIES = ("revisit", "retrace")
"""Each revisit-suite world is played twice: back to the start view (which the sink also holds) and a
retrace of the outbound walk (views only the memory holds)."""
REVISIT_SUITE_TICKS = 160
REVISIT_OUTBOUND_FRACTION = 0.5
"""Suite revisit: prefill covers the first half of the clip (the outbound walk and the turn)."""
DRIFT_SUITE_SEEDS = tuple(HELDOUT_SEED_START + 300 + i for i in range(4))
DRIFT_WINDOWS = (DRIFT_EARLY_TICKS, DRIFT_LATE_TICKS)
"""Tick windows (early, late) of the drift score; docs/architecture.md §Metrics's, changed only by tests."""
DRIFT_EARLY_SHARE = 1 / 3
"""The reduced suite's drift probe compares its first third of ticks with its last third."""
DEPTH_CHOICES = ("head", "oracle")
SUITES = ("action", "revisit", "drift", "reduced")
"""reduced: a few worlds of each of the others (action, revisit without prefill, a 300-tick drift
probe), as `worldmodel train --stage all` ends with; --limit does not apply to it."""
START_VIEW_CHUNK = 128
"""Ticks whose start-view masks are reprojected in one batched call (bounds its memory on drift logs)."""
SHUFFLE_SEED_OFFSET = 7777
"""'Another log' for the shuffled baseline: a walk in the same world from this RNG offset."""


@dataclass
class EvalLog:
    """Everything needed to score one rollout: start, actions, true poses and frames, prompt."""

    name: str
    world: World
    start_pose: CameraPose
    prompt: str
    actions: torch.Tensor  # [T, 5] actions of ticks 1..T
    poses: torch.Tensor  # [T, 5] poses after each action
    truth: torch.Tensor  # uint8 [T + 1, H, W, 3]: tick 0 (start) .. T
    seed: int = 0
    policy: str = "log"
    sample_seed: int | None = None
    """The generator's sampling seed for this log (None: `seed`); `--seed-offset` moves it, so a suite
    can be run again with other noise on the same worlds and walks."""

    def scene(self) -> Scene:
        """The scene a frame source starts this log from: its world, prompt, start pose and true start frame."""
        return Scene(name=self.name, prompt=self.prompt, start_pose=self.start_pose, fov_deg=DEFAULT_FOV_DEG,
                     world_seed=self.world.seed, image=self.truth[0].numpy(), path=None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", type=Path, help="an action log (scene procedural:<seed> or a bundled scene)")
    p.add_argument("--suite", choices=SUITES, help="built-in suite on held-out worlds")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the shipped one)")
    p.add_argument("--memory", choices=("on", "off", "both"), default=None,
                   help="memory on/off (default: on for --log and action, both for revisit and drift)")
    p.add_argument("--prefill", type=flag_type("ticks"), default=None,
                   help="feed the first N ticks from the true renders (default 0; revisit suite: the outbound half)")
    p.add_argument("--steps", type=flag_type("sample_steps"), default=None,
                   help="sampling steps per frame (default: the checkpoint's)")
    p.add_argument("--hint", choices=("on", "off"), default=None,
                   help="the model's geometric hint (default: on when the checkpoint reads one)")
    add_hint_setting_flags(p, "the hint's")
    p.add_argument("--depth", choices=DEPTH_CHOICES, default="head",
                   help="the depth of the hint's views: head (as play) or oracle (the ray caster's at each view's "
                        "pose; an upper bound no play has, to measure what better depth is worth)")
    p.add_argument("--precision", choices=PRECISION_NAMES, default=None, help="model arithmetic: fp32 (default) or bf16")
    p.add_argument("--limit", type=flag_type("count"), default=None, help="use only the first N worlds of a suite")
    p.add_argument("--seed-offset", type=flag_type("seed"), default=0,
                   help="added to every log's sampling seed (default 0): the same worlds and walks with other "
                        "noise, to see how much of a difference between two checkpoints is sampling noise")
    add_threads_flag(p)
    p.add_argument("--json", type=Path, default=None, help="write the summary JSON here")
    p.add_argument("--plot", type=Path, default=None,
                   help="write PSNR-over-ticks PNG here (and the memory map next to it, *_memory.png)")


# --- logs -------------------------------------------------------------------------------------------
def _truth(world: World, start: CameraPose, poses: torch.Tensor, resolution: int, fov: float) -> torch.Tensor:
    all_poses = torch.cat([start.as_tensor()[None], poses])
    return render_views(world, all_poses, resolution, fov)


def log_from_file(path: Path, resolution: int, fov: float) -> EvalLog:
    log = read_action_log(path)
    for w in log.warnings:
        print(f"warning: {w}", file=sys.stderr)
    spec = log.header.get("scene")
    try:
        scene: Scene = load_scene(str(spec))
    except UserError as exc:
        raise UserError(f"{path}: header scene {spec!r}: {exc}") from None
    if scene.world_seed is None:
        raise UserError(f"{path}: scene {spec!r} has no procedural world, so there is no ground truth to score against")
    world = generate_world(scene.world_seed)
    start = CameraPose.from_sequence(log.header["start_pose"])
    if len(log.actions) == 0:
        raise UserError(f"{path}: the log has no ticks to evaluate")
    return EvalLog(name=str(path), world=world, start_pose=start, prompt=world.caption,
                   actions=log.actions.float(), poses=log.poses.float(),
                   truth=_truth(world, start, log.poses.float(), resolution, fov), seed=int(log.header.get("seed", 0)))


def suite_logs(suite: str, resolution: int, fov: float, limit: int | None = None) -> list[EvalLog]:
    """The suite's logs; `limit` keeps the first N worlds (the revisit suite has two logs per world)."""
    if suite == "drift":
        worlds = {seed: generate_world(seed) for seed in DRIFT_SUITE_SEEDS[:limit]}
        return [long_log(f"drift:{seed}", world, DRIFT_WINDOWS[1][1], resolution, fov) for seed, world in worlds.items()]
    seeds = ACTION_SUITE_SEEDS if suite == "action" else REVISIT_SUITE_SEEDS
    ticks = ACTION_SUITE_TICKS if suite == "action" else REVISIT_SUITE_TICKS
    policies = ("walk",) if suite == "action" else REVISIT_SUITE_POLICIES
    worlds = {seed: generate_world(seed) for seed in seeds[:limit]}
    return [trajectory_log(f"{suite}:{seed}" if suite == "action" else f"{policy}:{seed}", world, policy, ticks,
                           resolution, fov)
            for policy in policies for seed, world in worlds.items()]


def long_log(name: str, world: World, ticks: int, resolution: int, fov: float) -> EvalLog:
    """`ticks` actions of a `chained_trajectory` from the world's spawn pose (RNG seeded by the world
    seed) with its truth: the long, play-like rollout that drift is measured on."""
    tr = chained_trajectory(world, ticks + 1, random.Random(world.seed))
    start = CameraPose.from_sequence(tr.poses[0].tolist())
    return EvalLog(name=name, world=world, start_pose=start, prompt=world.caption, actions=tr.actions[1:],
                   poses=tr.poses[1:], truth=render_views(world, tr.poses, resolution, fov), seed=world.seed,
                   policy=tr.policy)


def trajectory_log(name: str, world: World, policy: str, ticks: int, resolution: int, fov: float) -> EvalLog:
    """A `policy` trajectory of `ticks` actions in `world` (RNG seeded by the world seed) with its truth."""
    tr = make_trajectory(world, ticks + 1, policy, random.Random(world.seed))
    start = CameraPose.from_sequence(tr.poses[0].tolist())
    return EvalLog(name=name, world=world, start_pose=start, prompt=world.caption, actions=tr.actions[1:],
                   poses=tr.poses[1:], truth=render_views(world, tr.poses, resolution, fov), seed=world.seed,
                   policy=policy)


def other_actions(log: EvalLog, resolution: int) -> torch.Tensor:
    """Actions of another log of the same length (a different walk in the same world)."""
    tr = make_trajectory(log.world, len(log.actions) + 1, "walk", random.Random(log.seed + SHUFFLE_SEED_OFFSET))
    return tr.actions[1:]


def oracle_depth(world: World, resolution: int, fov: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """pose [5] -> the ray caster's depth [H, W] at that pose (`--depth oracle`)."""
    def depth(pose: torch.Tensor) -> torch.Tensor:
        return render_views_with_depth(world, pose[None].float().cpu(), resolution, fov)[1][0]
    return depth


# --- rollouts ---------------------------------------------------------------------------------------
def rollout(source, log: EvalLog, actions: torch.Tensor, poses: torch.Tensor, prefill: int,
            depths: list | None = None) -> torch.Tensor:
    """Generated frames uint8 [T, H, W, 3] for ticks 1..T; ticks <= prefill are teacher-forced.
    `depths` (a list) receives each tick's depth as play keeps it (`current_depth`; None without)."""
    source.reset(log.scene(), log.start_pose, log.prompt, log.seed if log.sample_seed is None else log.sample_seed)
    frames = []
    for t in range(len(actions)):
        pose = CameraPose.from_sequence(poses[t].tolist())
        observed = log.truth[t + 1].numpy() if t + 1 <= prefill else None
        frames.append(torch.from_numpy(np.asarray(source.step(actions[t].tolist(), pose, observed=observed))))
        if depths is not None:
            depths.append(source.current_depth())
    return torch.stack(frames)


def true_depth(log: EvalLog, fov: float) -> torch.Tensor:
    """The oracle's depth [T, H, W] at the poses of ticks 1..T."""
    res = log.truth.shape[1]
    return torch.cat([render_views_with_depth(log.world, log.poses[lo: lo + START_VIEW_CHUNK].float(), res, fov)[1]
                      for lo in range(0, len(log.poses), START_VIEW_CHUNK)])


def depth_scores(depths: list, truth: torch.Tensor, prefill: int) -> dict[str, float]:
    """The play-time depth of the generated frames (what their views are reprojected with in later
    hints) against the oracle's, abs-rel and delta<1.25 on the truth's non-sky pixels and the sky
    flag's accuracy, over ticks prefill+1..h for each action-suite horizon h and over the drift
    windows the log reaches (docs/architecture.md §Metrics). depths: T tensors [H, W], truth [T, H, W]."""
    pred = torch.stack(depths).float()
    out: dict[str, float] = {}
    windows = [(str(h), prefill + 1, h) for h in ACTION_SUITE_HORIZONS]
    windows += [(name, lo, hi) for name, (lo, hi) in zip(("early", "late"), DRIFT_WINDOWS) if lo > prefill]
    for name, lo, hi in windows:
        if len(pred) >= hi:
            errors = depth_errors(pred[lo - 1: hi], truth[lo - 1: hi])
            out.update({f"{k}_{name}": v for k, v in errors.items()})
    return out


def start_view(log: EvalLog, fov: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The true start frame reprojected with its true depth into each tick's pose (the one
    reprojection function, as the hint, sampled bilinearly): -> (seen bool [T, H, W], the pixels of
    ticks 1..T it shows; frames uint8 [T, H, W, 3], the reprojection where it shows them and the held
    start frame elsewhere). The rest of `seen` is new content: what the model had to make up, or
    carry along from its own earlier frames. Splitting the error this way says whether a loss comes
    from keeping what was seen or from inventing what was not, and the frames are the no-model bound
    on the first part (docs/architecture.md §Metrics)."""
    res = log.truth.shape[1]
    start = log.start_pose.as_tensor()[None].float()
    depth = render_views_with_depth(log.world, start, res, fov)[1]  # [1, H, W]
    first = log.truth[:1].permute(0, 3, 1, 2).float() / 255  # [1, 3, H, W]
    masks, frames = [], []
    for lo in range(0, len(log.poses), START_VIEW_CHUNK):
        targets = log.poses[lo: lo + START_VIEW_CHUNK].float()
        n = len(targets)
        warp = reproject(log.truth[:1][None].expand(n, 1, -1, -1, -1), depth[None].expand(n, 1, -1, -1),
                         start[None].expand(n, 1, -1), targets, fov_deg=fov,
                         bilinear=torch.ones(n, 1, dtype=torch.bool))
        rgb = warp.rgb * warp.coverage + first * (1 - warp.coverage)  # [n, 3, H, W]
        masks.append(warp.coverage[:, 0] > 0)
        frames.append((rgb * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(masks), torch.cat(frames)


def split_scores(frames: torch.Tensor, truth: torch.Tensor, seen: torch.Tensor, prefill: int) -> dict[str, float]:
    """PSNR on the start view's pixels and on new content (`start_view`) and the share of new
    content, each over ticks prefill+1..h for every action-suite horizon h the log reaches."""
    start_view = masked_psnr(frames, truth, seen)
    new_content = masked_psnr(frames, truth, ~seen)
    share = (~seen).float().flatten(1).mean(1)
    out = {}
    for h in ACTION_SUITE_HORIZONS:
        if len(frames) >= h:
            out[f"psnr_start_view_{h}"] = float(start_view[prefill:h].nanmean())
            out[f"psnr_new_content_{h}"] = float(new_content[prefill:h].nanmean())
            out[f"new_content_share_{h}"] = float(share[prefill:h].mean())
    return out


def frame_scores(frames: torch.Tensor, truth: torch.Tensor) -> tuple[list[float], list[float]]:
    return psnr(frames, truth).tolist(), ssim(frames, truth).tolist()


def _mean(values: list[float], lo: int = 0, hi: int | None = None) -> float:
    v = values[lo:hi]
    return float(sum(v) / len(v)) if v else float("nan")


def first_visit_warped(frames: torch.Tensor, log: EvalLog, pairs: list[tuple[int, int]], fov: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first-visit frames of `pairs` moved into their return poses: frames uint8 [T + 1, H, W, 3]
    (index = tick), (t, f) pairs -> (warped uint8 [n, H, W, 3], covered bool [n, H, W], warped
    truth uint8 [n, H, W, 3]).

    Why: a return pose lies up to 0.5 m and 15 degrees from the first visit's nearest pose, so even
    the true views differ there (the truth scores ~25 dB against its own first visit on this suite,
    docs/model_card.md). Moving the first-visit frame into the return camera with the oracle's depth
    at the first visit (the one reprojection function, bilinear) removes that difference, so what is
    left is whether the model brought the place back as it made it, not where the camera stands."""
    ticks = [t for t, _ in pairs]
    firsts = [f for _, f in pairs]
    all_poses = torch.cat([log.start_pose.as_tensor()[None], log.poses]).float()
    res = frames.shape[1]
    depth = render_views_with_depth(log.world, all_poses[firsts], res, fov)[1]  # [n, H, W]
    n = len(pairs)
    both = torch.stack([frames[firsts], log.truth[firsts]], 1)  # [n, 2, H, W, 3]
    warp = reproject(both.reshape(n * 2, 1, res, res, 3), depth.repeat_interleave(2, 0)[:, None],
                     all_poses[firsts].repeat_interleave(2, 0)[:, None], all_poses[ticks].repeat_interleave(2, 0),
                     fov_deg=fov, bilinear=torch.ones(n * 2, 1, dtype=torch.bool))
    rgb = (warp.rgb * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(n, 2, res, res, 3)
    covered = warp.coverage[:, 0].reshape(n, 2, res, res)[:, 0] > 0
    return rgb[:, 0], covered, rgb[:, 1]


def revisit_scores(frames: torch.Tensor, log: EvalLog, prefill: int, fov: float = DEFAULT_FOV_DEG) -> dict:
    """Return ticks (docs/architecture.md §Metrics / issue: within 0.5 m and 15 deg of a pose >= 100 ticks earlier), scored
    against the truth and against the model's own frame of the first visit (`revisit_ticks`), and
    against that frame moved into the return pose (`first_visit_warped`), on the pixels it covers."""
    all_poses = torch.cat([log.start_pose.as_tensor()[None], log.poses])
    pairs = [(t, f) for t, f in revisit_ticks(all_poses) if t > prefill]
    if not pairs:
        return {"return_ticks": 0}
    gen = torch.cat([log.truth[:1], frames])  # index = tick; tick 0 is the given start image
    ticks = [t for t, _ in pairs]
    firsts = [f for _, f in pairs]
    earliest = [f for t, f in revisit_ticks(all_poses, match="earliest") if t > prefill]
    warped, covered, warped_truth = first_visit_warped(gen, log, pairs, fov)
    warped_scores = {  # NaN-free means over the return ticks the warp covers at all
        "psnr_vs_first_visit_warped": float(masked_psnr(gen[ticks], warped, covered).nanmean()),
        "truth_psnr_vs_first_visit_warped": float(masked_psnr(log.truth[ticks], warped_truth, covered).nanmean()),
        "first_visit_warped_coverage": float(covered.float().mean())}
    # what a perfect model would score against its first visit: the true views themselves differ a
    # little, since the return pose is within 0.5 m and 15 degrees of the first visit, not on it
    return {"return_ticks": len(pairs), "first_return_tick": ticks[0],
            "psnr_vs_truth": float(psnr(gen[ticks], log.truth[ticks]).mean()),
            "ssim_vs_truth": float(ssim(gen[ticks], log.truth[ticks]).mean()),
            "psnr_vs_first_visit": float(psnr(gen[ticks], gen[firsts]).mean()),
            "ssim_vs_first_visit": float(ssim(gen[ticks], gen[firsts]).mean()),
            "truth_psnr_vs_first_visit": float(psnr(log.truth[ticks], log.truth[firsts]).mean()),
            # the same against the first visit's earliest tick (the rule before 2026-11-29)
            "psnr_vs_first_visit_earliest": float(psnr(gen[ticks], gen[earliest]).mean()),
            "truth_psnr_vs_first_visit_earliest": float(psnr(log.truth[ticks], log.truth[earliest]).mean()),
            **warped_scores}


def evaluate_log(make_source, log: EvalLog, memory_modes: list[bool], prefill: int, baselines: bool,
                 fov: float) -> dict:
    T = len(log.actions)
    truth = log.truth[1:]
    out: dict = {"log": log.name, "policy": log.policy, "world_seed": log.world.seed, "ticks": T, "prefill": prefill,
                 "runs": {}}
    seen, warped = start_view(log, fov) if T >= min(ACTION_SUITE_HORIZONS) else (None, None)
    depth_truth = None
    for mem in memory_modes:
        source = make_source(mem)
        t0 = time.perf_counter()
        depths: list = []
        frames = rollout(source, log, log.actions, log.poses, prefill, depths)
        ms = (time.perf_counter() - t0) / T * 1000
        p, s = frame_scores(frames, truth)
        run = {"mean_psnr": _mean(p, prefill), "mean_ssim": _mean(s, prefill), "psnr": p, "ssim": s,
               "ms_per_frame": ms, "revisit": revisit_scores(frames, log, prefill, fov),
               "detail": detail_ratio(frames[prefill:], truth[prefill:])}
        for h in ACTION_SUITE_HORIZONS:
            if T >= h:
                run[f"psnr_{h}"] = _mean(p, prefill, h)
                run[f"ssim_{h}"] = _mean(s, prefill, h)
        if seen is not None:
            run["split"] = split_scores(frames, truth, seen, prefill)
        if depths and all(d is not None for d in depths):
            depth_truth = true_depth(log, fov) if depth_truth is None else depth_truth
            run["depth"] = depth_scores(depths, depth_truth, prefill)
        drift = drift_scores(p, s, *DRIFT_WINDOWS) if prefill < DRIFT_WINDOWS[0][0] else None
        if drift is not None:
            lo, hi = DRIFT_WINDOWS[1]
            drift["late_detail"] = detail_ratio(frames[lo - 1: hi], truth[lo - 1: hi])
            run["drift"] = drift
        out["runs"]["memory_on" if mem else "memory_off"] = run
        out["_memory_source"] = source if mem else out.get("_memory_source")
        out["_frames"] = frames
    if baselines:
        hold = log.truth[:1].expand_as(truth)
        hp, hs = frame_scores(hold, truth)
        other = other_actions(log, truth.shape[1])
        other_poses = integrate_sequence(log.start_pose.as_tensor(), other)
        sp_frames = rollout(make_source(memory_modes[0]), log, other, other_poses, prefill)
        sp, ss = frame_scores(sp_frames, truth)
        out["baselines"] = {"hold_start_frame": {"mean_psnr": _mean(hp, prefill), "mean_ssim": _mean(hs, prefill),
                                                 "psnr": hp},
                            "shuffled_actions": {"mean_psnr": _mean(sp, prefill), "mean_ssim": _mean(ss, prefill),
                                                 "psnr": sp}}
        if warped is not None:
            wp, ws = frame_scores(warped, truth)
            out["baselines"]["reproject_start_frame"] = {
                "mean_psnr": _mean(wp, prefill), "mean_ssim": _mean(ws, prefill), "psnr": wp,
                "split": split_scores(warped, truth, seen, prefill)}
        for h in ACTION_SUITE_HORIZONS:
            if T >= h:
                out["baselines"]["hold_start_frame"][f"psnr_{h}"] = _mean(hp, prefill, h)
                out["baselines"]["shuffled_actions"][f"psnr_{h}"] = _mean(sp, prefill, h)
                if warped is not None:
                    out["baselines"]["reproject_start_frame"][f"psnr_{h}"] = _mean(wp, prefill, h)
    return out


def summarise(results: list[dict]) -> dict:
    """Means over logs of every scalar metric, per run and baseline; with logs of several policies
    (the revisit suite) also per policy, under `<policy>/`."""
    summary = _means(results)
    policies = sorted({r.get("policy", "log") for r in results})
    if len(policies) > 1:
        for pol in policies:
            summary.update({f"{pol}/{k}": v for k, v in _means([r for r in results if r.get("policy") == pol]).items()})
    return summary


def _means(results: list[dict]) -> dict:
    summary: dict = {}

    def acc(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v)):
                summary.setdefault(f"{prefix}{k}", []).append(float(v))
            elif isinstance(v, dict):
                acc(f"{prefix}{k}.", v)

    for r in results:
        for name, run in r["runs"].items():
            acc(f"{name}.", run)
        for name, b in r.get("baselines", {}).items():
            acc(f"{name}.", b)
    return {k: sum(v) / len(v) for k, v in sorted(summary.items())}


SUMMARY_PRINTED = ("psnr", "ssim", "psnr_16", "psnr_64", "ssim_16", "ssim_64", "ms_per_frame", "psnr_vs_truth",
                   "psnr_vs_first_visit", "psnr_vs_first_visit_warped", "truth_psnr_vs_first_visit",
                   "truth_psnr_vs_first_visit_warped", "return_ticks", "early_psnr", "late_psnr", "drift_db", "detail",
                   "late_detail", "psnr_start_view_16", "psnr_start_view_64", "psnr_new_content_16",
                   "psnr_new_content_64", "new_content_share_16", "new_content_share_64", "depth.abs_rel_16",
                   "depth.abs_rel_64", "depth.abs_rel_early", "depth.abs_rel_late")
POLICY_SUMMARY_PRINTED = ("revisit.psnr_vs_truth", "revisit.psnr_vs_first_visit", "revisit.truth_psnr_vs_first_visit",
                          "revisit.psnr_vs_first_visit_warped", "revisit.truth_psnr_vs_first_visit_warped")
"""Per-policy (`<policy>/...`) keys printed: only the revisit scores; the JSON has them all."""


def _print_summary(summary: dict) -> None:
    for k, v in summary.items():
        if k.endswith(POLICY_SUMMARY_PRINTED if "/" in k else SUMMARY_PRINTED):
            print(f"  {k:56s} {v:8.3f}")


# --- the reduced suite ------------------------------------------------------------------------------
def reduced_eval(checkpoint: Path, e: EvalRecipe, name: str = "", device: str = "cpu", parts: Path | None = None
                 ) -> dict[str, Any]:
    """The reduced suites on held-out worlds: action (with the hold-start baseline), revisit without
    prefill (memory on and off), and a drift probe (first third vs last third of its ticks, beside
    holding the start frame). With `parts`, each suite's result is kept there as it is done, so an
    interrupted eval redoes one suite at most."""
    probe = ModelFrameSource(checkpoint=checkpoint, device=device)
    res, fov = probe.resolution, probe.config.fov_deg
    sha = checkpoint_sha256(checkpoint)

    def make_source(mem: bool) -> ModelFrameSource:
        return ModelFrameSource(checkpoint=checkpoint, use_memory=mem, device=device)

    def action() -> dict[str, Any]:
        results = [evaluate_log(make_source, log, [True], 0, True, fov)
                   for log in suite_logs("action", res, fov, e.action_worlds)]
        return {"logs": len(results), "summary": summarise(results)}

    def revisit() -> dict[str, Any]:
        results = [evaluate_log(make_source, log, [True, False], 0, False, fov)
                   for log in suite_logs("revisit", res, fov, e.revisit_worlds)]
        return {"logs": len(results), "summary": summarise(results)}

    def drift() -> dict[str, Any]:
        third = max(1, int(e.drift_ticks * DRIFT_EARLY_SHARE))
        early, late = (1, third), (e.drift_ticks - third + 1, e.drift_ticks)
        results, probes = [], []
        for seed in DRIFT_SUITE_SEEDS[:e.drift_worlds]:
            log = long_log(f"drift:{seed}", generate_world(seed), e.drift_ticks, res, fov)
            r = evaluate_log(make_source, log, [True], 0, False, fov)
            p, ss = r["runs"]["memory_on"]["psnr"], r["runs"]["memory_on"]["ssim"]
            scores = drift_scores(p, ss, early, late) or {}
            hold = frame_scores(log.truth[:1].expand_as(log.truth[1:]), log.truth[1:])[0]
            scores["late_detail"] = detail_ratio(r["_frames"][late[0] - 1:late[1]], log.truth[late[0]:late[1] + 1])
            scores["late_hold_psnr"] = sum(hold[late[0] - 1:late[1]]) / third
            results.append(r)
            probes.append(scores)
        return {"logs": len(results), "summary": summarise(results), "windows": {"early": list(early), "late": list(late)},
                "scores": {k: sum(q[k] for q in probes) / len(probes) for k in probes[0]}}

    out: dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha, "recipe": name,
                           "eval": dataclasses.asdict(e), "suites": {}}
    t0 = time.perf_counter()
    for suite_name, suite in (("action", action), ("revisit", revisit), ("drift_probe", drift)):
        part = parts / f"{suite_name}.json" if parts is not None else None
        if part is not None and part.exists():
            kept = json.loads(part.read_text())
            if kept.get("checkpoint_sha256") == sha and kept.get("eval") == out["eval"]:
                out["suites"][suite_name] = kept["result"]
                continue
        out["suites"][suite_name] = suite()
        if part is not None:
            part.parent.mkdir(exist_ok=True)
            atomic_write_text(part, json.dumps({"checkpoint_sha256": sha, "eval": out["eval"],
                                                "result": out["suites"][suite_name]}))
    out["seconds"] = time.perf_counter() - t0
    return out


EVAL_ROWS = (("action", "memory_on.psnr_16", "action following, PSNR at 16 ticks (dB)"),
             ("action", "hold_start_frame.psnr_16", "  hold the start frame, 16 ticks (dB)"),
             ("action", "memory_on.psnr_64", "action following, PSNR at 64 ticks (dB)"),
             ("action", "hold_start_frame.psnr_64", "  hold the start frame, 64 ticks (dB)"),
             ("action", "memory_on.detail", "detail (mean gradient / truth's)"),
             ("revisit", "memory_on.revisit.psnr_vs_first_visit", "revisit, returns vs own first visit, memory on (dB)"),
             ("revisit", "memory_off.revisit.psnr_vs_first_visit", "revisit, memory off (dB)"),
             ("revisit", "memory_on.revisit.psnr_vs_truth", "revisit, returns vs truth, memory on (dB)"))


def reduced_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Reduced eval of `{doc['checkpoint']}`", "",
             f"sha256 `{doc['checkpoint_sha256'][:16]}...`, recipe `{doc['recipe']}`; held-out worlds, closed loop, "
             f"no teacher forcing ({doc['seconds']:.0f} s).", "", "| metric | value |", "|---|---|"]
    for suite, key, label in EVAL_ROWS:
        v = doc["suites"][suite]["summary"].get(key)
        lines.append(f"| {label} | {'n/a' if v is None else f'{v:.2f}'} |")
    dp = doc["suites"]["drift_probe"]
    w = dp["windows"]
    for key, label in (("early_psnr", f"drift probe, ticks {w['early'][0]}-{w['early'][1]} (dB)"),
                       ("late_psnr", f"drift probe, ticks {w['late'][0]}-{w['late'][1]} (dB)"),
                       ("late_hold_psnr", "  hold the start frame, late ticks (dB)"),
                       ("late_detail", "drift probe, late detail (mean gradient / truth's)")):
        v = dp["scores"].get(key)
        lines.append(f"| {label} | {'n/a' if v is None else f'{v:.2f}'} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if (args.log is None) == (args.suite is None):
        raise UserError(f"eval: give exactly one of --log LOG or --suite {'|'.join(SUITES)}")
    ckpt = args.checkpoint or DEFAULT_CHECKPOINT
    for flag, out in (("--json", args.json), ("--plot", args.plot)):  # refused now, not after the eval
        if out is not None:
            check_output_path(out, inputs=(args.log, ckpt), flag=flag)
    if args.suite == "reduced":
        if args.log is not None or args.memory or args.prefill is not None or args.hint or args.precision \
                or args.steps or args.limit or args.plot or args.splat_levels or args.point_cache is not None \
                or args.composite is not None or args.start_radius is not None \
                or args.memory_key_scale is not None or args.sampling is not None or args.depth != "head" \
                or args.seed_offset:
            raise UserError("eval --suite reduced: runs each checkpoint as it plays by default; only "
                            "--checkpoint, --json and --threads apply")
        doc = reduced_eval(ckpt, EvalRecipe(), "reduced")
        print(reduced_markdown(doc))
        if args.json:
            atomic_write_text(args.json, json.dumps(doc, indent=1))
        return 0
    hint = None if args.hint is None else args.hint == "on"
    hint_options = hint_settings(args)
    # refuses hint settings with the hint off
    probe = ModelFrameSource(checkpoint=ckpt, hint=hint, sample_steps=args.steps, **hint_options)
    if not probe.hint and args.depth != "head":
        raise UserError(f"{ckpt}: --depth {args.depth} sets the depth of the geometric hint, which is off here")
    resolution, fov = probe.resolution, probe.config.fov_deg
    memory = args.memory or ("both" if args.suite in ("revisit", "drift") else "on")
    modes = {"on": [True], "off": [False], "both": [True, False]}[memory]
    if args.log is not None:
        logs = [log_from_file(args.log, resolution, fov)]
    else:
        logs = suite_logs(args.suite, resolution, fov, args.limit)
    if args.seed_offset:
        logs = [dataclasses.replace(log, sample_seed=(log.seed + args.seed_offset) % (MAX_SEED + 1)) for log in logs]
    prefill = args.prefill
    # a held start frame or another walk means nothing on returns or 1000 ticks in
    baselines = args.suite not in ("revisit", "drift")

    def make_source(mem: bool, log: EvalLog):
        source = ModelFrameSource(checkpoint=ckpt, use_memory=mem, sample_steps=args.steps, precision=args.precision,
                                  hint=hint, **hint_options)
        if args.depth == "oracle":
            source.session.depth_source = oracle_depth(log.world, resolution, fov)
        return source

    results = []
    for i, log in enumerate(logs):
        pf = prefill if prefill is not None else (
            int(len(log.actions) * REVISIT_OUTBOUND_FRACTION) if args.suite == "revisit" else 0)
        r = evaluate_log(functools.partial(make_source, log=log), log, modes, pf, baselines, fov)
        results.append(r)
        first = next(iter(r["runs"].values()))
        print(f"[{i + 1}/{len(logs)}] {log.name}: mean PSNR {first['mean_psnr']:.2f} dB, SSIM {first['mean_ssim']:.3f}",
              file=sys.stderr)
    summary = summarise(results)
    print(f"eval {'suite ' + args.suite if args.suite else args.log} ({len(logs)} logs), checkpoint {ckpt}:")
    _print_summary(summary)
    if args.plot:
        _write_plots(args.plot, results)
    if args.json:
        doc = {"checkpoint": str(ckpt), "checkpoint_sha256": checkpoint_sha256(ckpt), "suite": args.suite,
               "memory": memory, "precision": args.precision or DEFAULT_PRECISION, "hint": probe.hint,
               "splat_levels": probe.session.splat_levels,
               "point_cache": probe.session.points.max_points if probe.session.points is not None else 0,
               "composite": probe.session.composite, "start_radius": probe.session.start_radius,
               "sampling": probe.session.sampling, "memory_key_scale": probe.memory_key_scale,
               "depth": args.depth, "sample_steps": probe.sample_steps,
               "seed_offset": args.seed_offset,
               "summary": summary,
               "logs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}
        atomic_write_text(args.json, json.dumps(doc, indent=1))
    return 0


def _write_plots(path: Path, results: list[dict]) -> None:
    series: dict[str, list[float]] = {}
    n = min(r["ticks"] for r in results)
    for name in results[0]["runs"]:
        series[f"model ({name.replace('_', ' ')})"] = np.mean([r["runs"][name]["psnr"][:n] for r in results], 0).tolist()
    for name in results[0].get("baselines", {}):
        series[name.replace("_", " ")] = np.mean([r["baselines"][name]["psnr"][:n] for r in results], 0).tolist()
    img = line_chart(series, f"PSNR vs. ground truth, mean over {len(results)} log(s)", "tick", "PSNR dB")
    save_image_atomic(img, path)
    source = results[0].get("_memory_source")
    if source is not None and source.memory is not None:
        from PIL import Image


        store = source.memory
        path_poses = torch.stack([torch.as_tensor(p) for p in source.pose_history]) if source.pose_history \
            else store.poses()
        arr = draw_memory_map(store.poses(), path_poses, path_poses[-1])
        save_image_atomic(Image.fromarray(arr), path.with_name(path.stem + "_memory.png"))
