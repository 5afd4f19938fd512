"""`worldmodel train --stage all`: a world model from nothing in one command, within a time budget.

    worldmodel train --stage all --preset cpu --budget-minutes 60 --out runs/cpu60
    worldmodel train --stage all --resume runs/cpu60          # after an interruption
    worldmodel train --stage all --preset gpu --device cuda --budget-minutes 6 --out runs/h200

The stages, in order (docs/training.md "One command"):
  data         the oracle renders worlds and clips on the training device: mixed walks, retrace clips
               (the memory curriculum's returns) and held-out clips, into RUN_DIR/data
  ae           the autoencoder (RGB), then depth: its depth head (everything else frozen)
  latents      every clip encoded once, with the views the geometric hint is built from
  world        the hint + memory world model from scratch (revisit-focused segments)
  memory       from it: returns with the recent frames hidden (window dropout)
  rollouts     the memory model's own closed-loop rollouts through the play session
  closed_loop  from the memory model: its rollouts as context, the truth as targets
  export       the mean of the memory and closed-loop weights, as a bf16 RUN_DIR/world_model.safetensors
  eval         the reduced suites (action, revisit, a short drift probe): RUN_DIR/eval.json, eval.md

The budget rule: `--budget-minutes` covers the stages up to the export (the eval after it is sized by
the preset, not the budget). When a stage starts it gets the budget left times its share
(`[budget]` in the preset) over the shares of the stages still to run, so time one stage did not use
goes to the later ones. A training stage times a few steps of its real batch first (the probe) and
takes as many steps as fit; the data stage renders as many clips as fit with their encoding.

Resuming: RUN_DIR/run.json records the preset, the budget and each stage's plan (steps, clips) and
whether it is done. Every stage writes resumable state at least once a minute (training states,
data shards, latent chunks, rollout chunks), so `--resume RUN_DIR` (or the same command again)
loses at most a minute and takes the same steps. Under torchrun the world-model stages train with
DDP, every rank renders its share of the data shards, and rank 0 alone runs the other stages while
the other ranks wait for run.json to say they are done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from conventions.atomic import atomic_write_text, check_output_folder
from conventions.camera import DEFAULT_FOV_DEG
from conventions.errors import UserError
from scenes.render import render_views_with_depth
from scenes.trajectories import make_trajectory
from scenes.world import generate_world
from tools.dataset import write_dataset
from tools.eval import reduced_eval, reduced_markdown
from tools.recipe import EvalRecipe, Recipe, STAGE_NAMES, load_recipe, recipe_from_json, recipe_to_json
from worldmodel.autoencoder import Autoencoder, AutoencoderConfig, file_sha256, load_autoencoder
from worldmodel.batches import attach_hints, load_latents, step_batch, StepSampler
from worldmodel.checkpoint import average_checkpoints
from worldmodel.closed_loop import rollout_clips, write_rollouts
from worldmodel.config import WorldModelConfig, default_config, tiny_config
from worldmodel.data import ClipDataset, encode_dataset, FrameSampler, read_dataset_info
from worldmodel.distributed import distributed_session, read_launch_env
from worldmodel.hint import HintAugment
from worldmodel.model import WorldModel
from worldmodel.run_io import resolve_device
from worldmodel.text import Tokenizer
from worldmodel.train import TrainOptions, train_world_model, world_model_loss
from worldmodel.train_autoencoder import AutoencoderLossConfig, reconstruction_loss, train_autoencoder
from worldmodel.train_depth import DepthTrainConfig, depth_loss, train_depth_head

RUN_FILE = "run.json"
RUN_FORMAT = "worldmodel.run"
FINAL_CHECKPOINT = "world_model.safetensors"
EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
SAVE_INTERVAL_S = 60.0
"""The most wall time between two resumable states of a stage: what an interruption can lose."""
PROBE_STEPS = 3
"""Timed steps of a stage's probe (after one untimed warm-up step)."""
STEP_OVERHEAD = 0.9
"""Share of a training stage's time spent in steps; the rest goes to checkpoints and validation."""
WAIT_POLL_S = 2.0
"""How often ranks other than 0 look at run.json while rank 0 runs a one-process stage."""
HEARTBEAT_FILE = ".rank0-heartbeat"
HEARTBEAT_S = 10.0
"""Under torchrun rank 0 touches RUN_DIR/HEARTBEAT_FILE this often, so the waiting ranks know it lives."""
HEARTBEAT_STALE_S = 300.0
"""A waiting rank stops when rank 0's heartbeat is this old (rank 0 died without torchrun ending it)."""
SMOKE_CLIPS = 8
"""Mixed clips a --max-steps smoke run renders (its batches repeat clips; only the shapes matter)."""
ALL_STAGES = STAGE_NAMES + ("export", "eval")
DDP_STAGES = ("world", "memory", "closed_loop")

# --------------------------------------------------------------------------------------------------
# the run's record
# --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """RUN_DIR and its run.json: the recipe, the budget, each stage's plan and state."""

    root: Path
    recipe: Recipe
    budget_s: float
    max_steps: int | None
    device: str
    stages: dict[str, dict[str, Any]]
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def save(self) -> None:
        if not self.main:
            return
        doc = {"format": RUN_FORMAT, "recipe": recipe_to_json(self.recipe), "budget_minutes": self.budget_s / 60,
               "max_steps": self.max_steps, "device": self.device, "stages": self.stages}
        atomic_write_text(self.root / RUN_FILE, json.dumps(doc, indent=1))

    def reload_stages(self) -> None:
        self.stages = _read_run_file(self.root)["stages"]

    def done(self, stage: str) -> bool:
        return bool(self.stages.get(stage, {}).get("done"))

    def used_s(self) -> float:
        return sum(float(v.get("seconds", 0.0)) for v in self.stages.values())

    def allotment(self, stage: str, also: tuple[str, ...] = ()) -> float:
        """Seconds for `stage` (and the stages in `also` it sizes): the budget left times their shares
        over the shares of every stage of the budget still to run."""
        shares = self.recipe.shares()
        todo = [s for s in STAGE_NAMES if not self.done(s)]
        rest = sum(shares[s] for s in todo)
        mine = sum(shares[s] for s in (stage,) + also)
        left = max(0.0, self.budget_s - self.used_s())
        return left * mine / rest if rest > 0 else 0.0

    def cap(self, steps: int) -> int:
        return steps if self.max_steps is None else min(steps, self.max_steps)


def _read_run_file(root: Path) -> dict[str, Any]:
    path = root / RUN_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: no run here ({RUN_FILE} not found); start one with --preset and --out") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the run record ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or not isinstance(doc.get("stages"), dict):
        raise UserError(f"{path}: not a run record of `worldmodel train --stage all`")
    return doc


def _recorded_run(out: Path, doc: dict[str, Any], device: str, rank: int, world: int) -> Run:
    """The run that run.json (`doc`) records, as process `rank` of `world` sees it."""
    return Run(out, recipe_from_json(doc["recipe"], str(out / RUN_FILE)), float(doc["budget_minutes"]) * 60,
               doc.get("max_steps"), doc.get("device", device), doc["stages"], rank, world)


def open_run(out: Path, preset: str | None, budget_minutes: float | None, device: str, max_steps: int | None,
             resume: bool) -> Run:
    """A new run in `out` (an empty or new folder), or the run recorded there (`resume`, or the
    same preset and budget given again)."""
    launch = read_launch_env()
    rank, world = (launch.rank, launch.world_size) if launch else (0, 1)
    if rank != 0:  # rank 0 checks the arguments and writes run.json; the others follow it
        # (torchrun ends every rank when one fails, so no rank waits for a run that was refused)
        while not (out / RUN_FILE).exists():
            time.sleep(WAIT_POLL_S)
        return _recorded_run(out, _read_run_file(out), device, rank, world)
    if (out / RUN_FILE).exists():
        doc = _read_run_file(out)
        run = _recorded_run(out, doc, device, rank, world)
        recipe = run.recipe
        if not resume:
            asked = load_recipe(preset) if preset else None
            if asked is not None and recipe_to_json(dataclasses.replace(asked, source=recipe.source)) != \
                    recipe_to_json(recipe):
                raise UserError(f"{out}: holds a run of another preset ({recipe.name}); use --resume {out} to "
                                f"continue it, or another --out")
            if budget_minutes is not None and abs(budget_minutes - doc["budget_minutes"]) > 1e-9:
                raise UserError(f"{out}: holds a run with a budget of {doc['budget_minutes']:g} minutes; "
                                f"use --resume {out} to continue it, or another --out")
        return run
    if resume:
        raise UserError(f"{out}: no run here ({RUN_FILE} not found); start one with --preset and --out")
    if preset is None:
        raise UserError("train --stage all: --preset tiny|cpu|gpu (or a .toml file) is required for a new run")
    recipe = load_recipe(preset)
    if rank == 0:
        check_output_folder(out, lambda entry: False)
        out.mkdir(parents=True, exist_ok=True)
    run = Run(out, recipe, (budget_minutes if budget_minutes is not None else recipe.budget_minutes) * 60,
              max_steps, device, {}, rank, world)
    if run.budget_s <= 0:
        raise UserError(f"--budget-minutes must be > 0, got {run.budget_s / 60:g}")
    run.save()
    return run


# --------------------------------------------------------------------------------------------------
# probes: time a few real steps, count their FLOPs and the memory they need
# --------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    seconds_per_step: float
    flops_per_step: float
    activation_bytes: int
    state_bytes: int

    @property
    def memory_gib(self) -> float:
        return (self.activation_bytes + self.state_bytes) / 2**30

    def estimate(self, recipe: Recipe, seconds: float) -> dict[str, float] | None:
        """On the device the preset is sized for (its [device] table): time per step from the FLOPs
        and steps that fit in `seconds` (the stage's share of the preset's nominal budget)."""
        d = recipe.device
        if d.peak_tflops <= 0:
            return None
        est = self.flops_per_step / (d.peak_tflops * 1e12 * d.utilisation)
        return {"seconds": seconds, "s_per_step": est, "steps": int(seconds * STEP_OVERHEAD / max(est, 1e-12)),
                "memory_gib": self.memory_gib}


def probe_steps(step: Callable[[], None], params: list[torch.nn.Parameter], device: torch.device,
                timed: int = PROBE_STEPS) -> Probe:
    """Time `timed` calls of `step` (one full optimisation step) after a warm-up, count one step's
    FLOPs and the bytes autograd saves for backward (the activation memory the step needs); with
    `timed` 0 the counted step's own time is the estimate."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()  # warm-up (allocations, autotuning)
    t0 = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        step()
    _sync(device)
    counted_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(timed):
        step()
    _sync(device)
    n = sum(p.numel() for p in params)
    seconds = (time.perf_counter() - t0) / timed if timed else counted_s
    # weights, gradients and two AdamW moments in fp32, plus the EMA copy
    return Probe(seconds, float(counter.get_total_flops()), saved[0], n * 4 * 5)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps_for(run: Run, probe: Probe, seconds: float, lo: int, hi: int) -> int:
    return run.cap(max(lo, min(hi, int(seconds * STEP_OVERHEAD / max(probe.seconds_per_step, 1e-9)))))


def _save_every(probe: Probe, steps: int) -> int:
    return max(1, min(steps, int(SAVE_INTERVAL_S / max(probe.seconds_per_step, 1e-9))))


# --------------------------------------------------------------------------------------------------
# the stages
# --------------------------------------------------------------------------------------------------
def _ae_config(recipe: Recipe, depth: bool = False) -> AutoencoderConfig:
    a = recipe.autoencoder
    return AutoencoderConfig(resolution=recipe.resolution, latent_channels=a.latent_channels,
                             encoder_widths=a.encoder_widths, decoder_widths=a.decoder_widths,
                             depth_widths=a.depth_widths if depth else ())


def world_config(recipe: Recipe) -> WorldModelConfig:
    base = tiny_config if recipe.world.config_base == "tiny" else default_config
    ae = _ae_config(recipe)
    fields = {"resolution": recipe.resolution, "latent_channels": ae.latent_channels,
              "latent_size": ae.latent_size, "hint": True, **recipe.world.config}
    try:
        return base(**fields)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{recipe.source} [world] config: {exc}") from None


def _data_dirs(run: Run) -> dict[str, Path]:
    return {split: run.path("data", split) for split in ("train", "retrace", "heldout")}


def stage_data(run: Run, dev: torch.device) -> None:
    """Render the clips. Size: as many clips as the data (and latents) share of the budget renders
    and encodes, at the time per clip measured on one clip here."""
    r, d = run.recipe, run.recipe.data
    if not run.main:  # every rank renders its shards of rank 0's plan
        _wait(run, lambda: "plan" in run.stages.get("data", {}))
    plan = run.stages.setdefault("data", {}).get("plan")
    if plan is None:
        seconds = run.allotment("data", also=("latents",))
        ae = Autoencoder(_ae_config(r, depth=True)).to(dev).eval()
        warm = render_views_with_depth(generate_world(d.seed_start).to(dev), torch.zeros(2, 5), r.resolution)[0]
        with torch.inference_mode():  # warm-up (a GPU's first kernels are slow)
            ae.decode_depth(ae.encode(warm.to(dev)))
        t0 = time.perf_counter()
        world = generate_world(d.seed_start).to(dev)
        traj = make_trajectory(world, d.ticks, "walk", random.Random(0))
        frames, _ = render_views_with_depth(world, traj.poses, r.resolution, DEFAULT_FOV_DEG)
        render_s = time.perf_counter() - t0
        with torch.inference_mode():
            t0 = time.perf_counter()
            z = ae.encode(frames.to(dev))
            ae.decode_uint8(z), ae.decode_depth(z)
            _sync(dev)
            encode_s = time.perf_counter() - t0
        per_clip = (render_s + encode_s) * (1 + d.retrace_share)
        clips = max(d.train_clips_min, min(d.train_clips_max, int(seconds / per_clip) - d.heldout_clips))
        heldout = d.heldout_clips
        if run.max_steps is not None:  # a smoke run: the preset's clip length and batches, little data
            clips, heldout = min(d.train_clips_min, SMOKE_CLIPS), min(heldout, d.clips_per_world)
        worlds = max(1, math.ceil(clips / d.clips_per_world))
        retrace = max(1, round(worlds * d.clips_per_world * d.retrace_share))
        plan = {"train_worlds": worlds, "retrace_clips": retrace, "heldout_clips": heldout,
                "render_s_per_clip": render_s, "encode_s_per_clip": encode_s, "seconds": seconds}
        run.stages["data"]["plan"] = plan
        run.save()
        print(f"data: {render_s * 1e3 / d.ticks:.1f} ms/frame to render, {encode_s * 1e3 / d.ticks:.1f} ms/frame "
              f"to encode here -> {worlds * d.clips_per_world} mixed + {retrace} retrace + {heldout} "
              f"held-out clips of {d.ticks} ticks in {seconds:.0f} s", file=sys.stderr)
    dirs = _data_dirs(run)
    common = dict(ticks=d.ticks, resolution=r.resolution, shard_clips=d.shard_clips, device=dev, rank=run.rank,
                  world_size=run.world_size)
    jobs = [(dirs["train"], dict(worlds=plan["train_worlds"], clips_per_world=d.clips_per_world, split="train",
                                 seed_start=d.seed_start, policy="mix")),
            (dirs["retrace"], dict(worlds=plan["retrace_clips"], clips_per_world=1, split="train",
                                   seed_start=d.seed_start + plan["train_worlds"], policy="retrace")),
            (dirs["heldout"], dict(worlds=max(1, plan["heldout_clips"] // d.clips_per_world),
                                   clips_per_world=d.clips_per_world, split="heldout", seed_start=d.seed_start,
                                   policy="mix"))]
    for folder, kwargs in jobs:
        if not (folder / "dataset.json").exists():
            write_dataset(folder, **kwargs, **common)


def _probe_autoencoder(run: Run, dev: torch.device, depth: bool) -> Probe:
    r = run.recipe
    ds = ClipDataset(_data_dirs(run)["train"])
    sampler = FrameSampler(ds, seed=0)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        model = Autoencoder(_ae_config(r, depth=depth)).to(dev)
        params = list(model.depth_decoder.parameters() if depth else model.parameters())
        cfg = DepthTrainConfig()
        opt = torch.optim.AdamW(params, lr=1e-4)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not depth)

        def step() -> None:  # the frames are read in the step, as the training loops read them
            if depth:
                frames, truth = sampler.sample_with_depth(r.autoencoder.depth_batch)
                frames, truth = frames.to(dev), truth.to(dev)
            else:
                frames = sampler.sample(r.autoencoder.batch).to(dev)
            with autocast:
                if depth:
                    with torch.no_grad():
                        z = model.encode(frames)
                    loss = depth_loss(model, z, truth, cfg)[0]
                else:
                    loss = reconstruction_loss(model, frames, AutoencoderLossConfig())[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return probe_steps(step, params, dev, _probe_timed(run))


def _probe_timed(run: Run) -> int:
    """Timed probe steps: none beyond the counted one in a --max-steps smoke run (its plan is capped
    anyway, and the counted step's time is a fair, slightly high, estimate)."""
    return PROBE_STEPS if run.max_steps is None else 0


def _report(run: Run, stage: str, probe: Probe, steps: int, seconds: float) -> None:
    line = (f"{stage}: {probe.seconds_per_step * 1e3:.0f} ms/step measured here -> {steps} steps "
            f"in its {seconds:.0f} s")
    nominal = run.budget_s * run.recipe.shares()[stage]
    est = probe.estimate(run.recipe, nominal)
    d = run.recipe.device
    if est is not None:
        line += (f"; on {d.name} ~{est['s_per_step'] * 1e3:.1f} ms/step (estimated), ~{est['steps']} steps in "
                 f"its {nominal:.0f} s; memory ~{est['memory_gib']:.2f} GiB of {d.memory_gib:g}")
    print(line, file=sys.stderr)
    run.stages[stage]["estimate"] = est
    need = probe.memory_gib
    if d.memory_gib > 0 and need > d.memory_gib:
        raise UserError(f"{run.recipe.source}: stage {stage} needs ~{need:.1f} GiB, more than the "
                        f"{d.memory_gib:g} GiB of {d.name}; lower its batch")


def _plan_steps(run: Run, stage: str, probe: Callable[[], Probe], lo: int, hi: int) -> dict[str, Any]:
    """The stage's plan, made once (at its first start) from its probe and its share of the budget."""
    st = run.stages.setdefault(stage, {})
    if "plan" not in st:
        seconds = run.allotment(stage)
        measured = probe()
        steps = _steps_for(run, measured, seconds, lo, hi)
        st["plan"] = {"steps": steps, "ckpt_every": _save_every(measured, steps), "seconds": seconds,
                      "s_per_step": measured.seconds_per_step, "flops_per_step": measured.flops_per_step}
        st["probe"] = dataclasses.asdict(measured)
        _report(run, stage, measured, steps, seconds)
        run.save()
    return st["plan"]


def stage_ae(run: Run, dev: torch.device) -> None:
    r, a = run.recipe, run.recipe.autoencoder
    plan = _plan_steps(run, "ae", lambda: _probe_autoencoder(run, dev, depth=False), a.steps_min, a.steps_max)
    dirs = _data_dirs(run)
    train_autoencoder(dirs["train"], run.path("ae"), steps=plan["steps"], batch_size=a.batch, lr=a.lr,
                      val_dir=dirs["heldout"], device=str(dev), ckpt_every=plan["ckpt_every"],
                      log_every=max(1, min(50, plan["steps"] // 10)), config=_ae_config(r),
                      val_frames=256, stats_frames=1024)


def stage_depth(run: Run, dev: torch.device) -> None:
    a = run.recipe.autoencoder
    plan = _plan_steps(run, "depth", lambda: _probe_autoencoder(run, dev, depth=True), a.depth_steps_min,
                       a.depth_steps_max)
    dirs = _data_dirs(run)
    cfg = DepthTrainConfig(steps=plan["steps"], batch=a.depth_batch, lr=a.depth_lr,
                           warmup=max(1, min(50, plan["steps"] // 10)), val_every=plan["steps"],
                           ckpt_every=plan["ckpt_every"])
    train_depth_head(dirs["train"], run.path("depth"), run.path("ae", "autoencoder.safetensors"), dirs["heldout"],
                     cfg, device=str(dev))


def _autoencoder_path(run: Run) -> Path:
    return run.path("depth", "autoencoder.safetensors")


def latent_chunks(run: Run, split: str) -> list[tuple[Path, range]]:
    """The latent caches of a data set and the clips each holds: one per `shard_clips` clips (each a
    short, resumable job); the held-out set in one."""
    n = read_dataset_info(_data_dirs(run)[split]).clips  # the index only
    per = run.recipe.data.shard_clips if split != "heldout" else n
    return [(run.path("latents", f"{split}-{i:05d}.safetensors"), range(start, min(n, start + per)))
            for i, start in enumerate(range(0, n, per))]


def latent_caches(run: Run, split: str) -> list[Path]:
    return [path for path, _ in latent_chunks(run, split)]


def stage_latents(run: Run, dev: torch.device) -> None:
    ae_path = _autoencoder_path(run)
    sha = file_sha256(ae_path)
    ae = load_autoencoder(ae_path).to(dev)
    run.path("latents").mkdir(exist_ok=True)
    made = 0
    for split in ("train", "retrace", "heldout"):
        for path, clips in latent_chunks(run, split):
            if not path.exists():
                encode_dataset(ae, _data_dirs(run)[split], path, autoencoder_sha256=sha, progress=False,
                               bf16_autocast=dev.type == "cuda", clip_range=clips)
            made += 1
    print(f"latents: {made} caches", file=sys.stderr)


def _probe_world(run: Run, dev: torch.device, config: WorldModelConfig, caches: list[Path]) -> Probe:
    w = run.recipe.world
    data = load_latents(caches, config)
    ae = load_autoencoder(_autoencoder_path(run)).to(dev).eval()
    batch = max(1, w.batch // run.world_size)  # what one rank builds per step
    sampler = StepSampler(data.clips, batch, 0)
    tokenizer = Tokenizer(config.vocab, config.max_text_tokens)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        model = WorldModel(config).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        timed = _probe_timed(run)
        t0 = time.perf_counter()
        o = TrainOptions()  # the stages' batches use its defaults for everything but revisit_focus
        augment = HintAugment(o.hint_drop_source, o.hint_empty, o.hint_noise)
        built = [step_batch(data, config, tokenizer, sampler, i, 0, 1, o.caption_dropout, w.revisit_focus,
                            o.revisit_min_gap, o.window_dropout, augment) for i in range(2 + timed)]
        build_s = (time.perf_counter() - t0) / len(built)
        counter = [0]

        def step() -> None:
            b = built[counter[0] % len(built)].to(dev)
            attach_hints(b, ae, config)
            counter[0] += 1
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=w.amp):
                loss = world_model_loss(model, b, config)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        probe = probe_steps(step, list(model.parameters()), dev, timed)
    # batches are built in the loop (adding to the step) or by loader workers beside it (overlapping)
    workers = w.loader_workers
    per_step = probe.seconds_per_step + build_s if workers == 0 else max(probe.seconds_per_step, build_s / workers)
    print(f"world probe: {build_s * 1e3:.0f} ms to build a batch, {probe.seconds_per_step * 1e3:.0f} ms to train "
          f"on it, {workers} loader workers", file=sys.stderr)
    return dataclasses.replace(probe, seconds_per_step=per_step)


def _world_run(run: Run, dev: torch.device, stage: str, caches: list[Path], init_from: Path | None,
               lr: float, revisit_focus: float, window_dropout: float, config: WorldModelConfig,
               probe_from: str | None = None) -> Path:
    """One world-model training stage: plan it (a probe, or another stage's measured step time),
    then train (DDP under torchrun)."""
    w = run.recipe.world

    def probe() -> Probe:
        if probe_from is not None and "probe" in run.stages.get(probe_from, {}):
            return Probe(**run.stages[probe_from]["probe"])
        return _probe_world(run, dev, config, caches)

    if run.main:
        plan = _plan_steps(run, stage, probe, w.steps_min, w.steps_max)
    else:  # the ranks train on rank 0's plan
        _wait(run, lambda: "plan" in run.stages.get(stage, {}))
        plan = run.stages[stage]["plan"]
    steps = plan["steps"]
    opts = TrainOptions(steps=steps, batch=w.batch, lr=lr, warmup_steps=max(1, min(w.warmup_steps, steps // 10)),
                        revisit_focus=revisit_focus, window_dropout=window_dropout,
                        init_from=str(init_from) if init_from else "", ckpt_every=plan["ckpt_every"],
                        val_every=steps, val_clips=w.val_clips, log_every=max(1, min(10, steps // 10)),
                        amp=w.amp, compile=w.compile, loader_workers=w.loader_workers)
    return train_world_model(caches, run.path(stage), _autoencoder_path(run), opts, config,
                             val_latents_path=latent_caches(run, "heldout")[0], device=run.device)


def _train_caches(run: Run) -> list[Path]:
    return latent_caches(run, "train") + latent_caches(run, "retrace")


def stage_world(run: Run, dev: torch.device) -> None:
    w = run.recipe.world
    _world_run(run, dev, "world", _train_caches(run), None, w.lr, w.revisit_focus, 0.0, world_config(run.recipe))


def stage_memory(run: Run, dev: torch.device) -> None:
    w = run.recipe.world
    _world_run(run, dev, "memory", _train_caches(run), run.path("world", "world_model.safetensors"), w.memory_lr,
               w.memory_revisit_focus, w.memory_window_dropout, world_config(run.recipe), probe_from="world")


def rollout_chunks(run: Run) -> list[Path]:
    return sorted(run.path("rollouts").glob("chunk-*.safetensors"))


def stage_rollouts(run: Run, dev: torch.device) -> None:
    """Closed-loop rollouts of the memory model, a chunk of clips at a time until the stage's time
    is spent (at least `clips_min` clips); each chunk is a file, so an interruption loses one."""
    ro = run.recipe.rollouts
    st = run.stages.setdefault("rollouts", {})
    if "plan" not in st:
        ticks = min(ro.ticks, run.recipe.data.ticks - 1)
        if run.max_steps is not None:
            ticks = min(ticks, max(2, run.max_steps))
        st["plan"] = {"seconds": run.allotment("rollouts"), "ticks": ticks}
        run.save()
    plan = st["plan"]
    ckpt = run.path("memory", "world_model.safetensors")
    data = load_latents(_train_caches(run), world_config(run.recipe))  # once, for every chunk
    chosen = rollout_clips(data.clips, ro.clips_max if run.max_steps is None else ro.chunk_clips)
    chunks = [chosen[i:i + ro.chunk_clips] for i in range(0, len(chosen), ro.chunk_clips)]
    need = math.ceil(min(ro.clips_min, len(chosen)) / ro.chunk_clips)
    out = run.path("rollouts")
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    spent = float(st.get("spent_s", 0.0))
    for i, clips in enumerate(chunks):
        path = out / f"chunk-{i:05d}.safetensors"
        if path.exists():
            continue
        if i >= need and spent + (time.perf_counter() - t0) >= plan["seconds"]:
            break
        write_rollouts(ckpt, data, path, clips, plan["ticks"], seed=i, composite=ro.composite, device=str(dev))
        st["spent_s"] = spent + (time.perf_counter() - t0)
        run.save()


def stage_closed_loop(run: Run, dev: torch.device) -> None:
    w, ro = run.recipe.world, run.recipe.rollouts
    config = world_config(run.recipe).replace(hint_composite=ro.composite)
    _world_run(run, dev, "closed_loop", rollout_chunks(run), run.path("memory", "world_model.safetensors"),
               w.closed_loop_lr, w.closed_loop_revisit_focus, 0.0, config, probe_from="world")


def stage_export(run: Run, dev: torch.device) -> None:
    """The mean of the closed-loop and memory weights (the shipped recipe's last step), stored as
    the preset's dtype; refused when over the preset's size limit."""
    out = run.path(FINAL_CHECKPOINT)
    dtype = torch.bfloat16 if run.recipe.export.dtype == "bf16" else torch.float32
    average_checkpoints([run.path("closed_loop", "world_model.safetensors"), run.path("memory", "world_model.safetensors")],
                        out, dtype=dtype, extra_summary={"recipe": run.recipe.name,
                                                         "budget_minutes": run.budget_s / 60})
    mib = out.stat().st_size / 2**20
    if mib > run.recipe.export.max_mib:
        raise UserError(f"{out}: {mib:.1f} MiB is over the preset's {run.recipe.export.max_mib:g} MiB; "
                        f"use a smaller [world] config (sharded exports are not written)")
    run.stages["export"]["mib"] = round(mib, 2)
    print(f"export: {out} ({mib:.1f} MiB, {run.recipe.export.dtype})", file=sys.stderr)


def eval_markdown(doc: dict[str, Any], run: Run) -> str:
    """The reduced eval's table, then the run's stages: their plans and wall times."""
    lines = [reduced_markdown(doc).rstrip("\n"), "", "| stage | plan | wall time (s) |", "|---|---|---|"]
    for s in ALL_STAGES:
        info = run.stages.get(s, {})
        plan = {k: v for k, v in info.get("plan", {}).items() if k in ("steps", "train_worlds", "ticks")}
        lines.append(f"| {s} | {json.dumps(plan) if plan else ''} | {info.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


SMOKE_EVAL = EvalRecipe(action_worlds=1, revisit_worlds=1, drift_worlds=1, drift_ticks=30)
"""The eval of a --max-steps smoke run: it checks that the result plays, not how well."""


def stage_eval(run: Run, dev: torch.device) -> None:
    recipe = run.recipe if run.max_steps is None else dataclasses.replace(run.recipe, eval=SMOKE_EVAL)
    doc = reduced_eval(run.path(FINAL_CHECKPOINT), recipe.eval, recipe.name, str(dev), parts=run.path("eval"))
    atomic_write_text(run.path(EVAL_JSON), json.dumps(doc, indent=1))
    atomic_write_text(run.path(EVAL_MD), eval_markdown(doc, run))
    print(reduced_markdown(doc), file=sys.stderr)


STAGE_FUNCTIONS: dict[str, Callable[[Run, torch.device], None]] = {
    "data": stage_data, "ae": stage_ae, "depth": stage_depth, "latents": stage_latents, "world": stage_world,
    "memory": stage_memory, "rollouts": stage_rollouts, "closed_loop": stage_closed_loop, "export": stage_export,
    "eval": stage_eval}


def _wait(run: Run, ready: Callable[[], bool]) -> None:
    """Ranks other than 0: poll run.json until `ready()` (rank 0 runs a one-process stage). Rank 0's
    heartbeat file says it is alive; a rank whose rank 0 went silent stops instead of waiting forever."""
    beat = run.path(HEARTBEAT_FILE)
    while True:
        run.reload_stages()
        if ready():
            return
        if beat.exists() and time.time() - beat.stat().st_mtime > HEARTBEAT_STALE_S:
            raise UserError(f"{beat}: rank 0 has not been heard from for {HEARTBEAT_STALE_S:.0f} s; "
                            f"rank {run.rank} stops (resume the run with --resume {run.root})")
        time.sleep(WAIT_POLL_S)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    """Rank 0: touch `path` every HEARTBEAT_S until `stop` (a daemon thread beside the stages)."""
    while not stop.wait(HEARTBEAT_S):
        path.touch()


def run_all(run: Run) -> Path:
    """Run every stage not yet done, in order; returns the final checkpoint.

    Under torchrun one process group serves the whole run (the world-model stages use it; a second
    group in the same torchrun job would read the first one's addresses from the launcher's store)."""
    if run.recipe.threads and run.device == "cpu":
        torch.set_num_threads(run.recipe.threads)
    if run.world_size == 1:
        return _run_stages(run, resolve_device(run.device))
    stop = threading.Event()
    if run.main:
        run.path(HEARTBEAT_FILE).touch()
        threading.Thread(target=_heartbeat, args=(run.path(HEARTBEAT_FILE), stop), daemon=True).start()
    try:
        with distributed_session(run.device) as ctx:
            return _run_stages(run, ctx.device)
    finally:
        stop.set()


def _run_stages(run: Run, dev: torch.device) -> Path:
    t_run = time.perf_counter()
    for stage in ALL_STAGES:
        if run.done(stage):
            continue
        everyone = stage in DDP_STAGES or stage == "data"
        if not everyone and not run.main:
            _wait(run, lambda s=stage: run.done(s))
            continue
        t0 = time.perf_counter()
        before = float(run.stages.setdefault(stage, {}).get("seconds", 0.0))
        try:
            STAGE_FUNCTIONS[stage](run, dev)
            if run.main:
                run.stages[stage]["done"] = True
        finally:  # an interrupted stage's time still counts against the budget when it resumes
            if run.main:
                run.stages[stage]["seconds"] = before + time.perf_counter() - t0
                run.save()
        if not run.main:  # rank 0 finishes the stage (the data index, the checkpoint) and says so
            _wait(run, lambda s=stage: run.done(s))
        if run.main and stage in STAGE_NAMES:
            print(f"[{stage} done: {run.stages[stage]['seconds']:.0f} s; {run.used_s() / 60:.1f} of "
                  f"{run.budget_s / 60:g} budget minutes used]", file=sys.stderr)
    if run.main:
        table = estimate_table(run)
        if table:
            print(table, file=sys.stderr)
        print(f"run: {run.path(FINAL_CHECKPOINT)} ({(time.perf_counter() - t_run) / 60:.1f} min in this call)",
              file=sys.stderr)
    return run.path(FINAL_CHECKPOINT)


def estimate_table(run: Run) -> str:
    """Per stage: its share of the preset's budget and, for the training stages, the estimated time
    per step, steps and memory on the preset's device (FLOPs of the probe's real step over the
    assumed throughput). Empty for presets without a [device] estimate."""
    d = run.recipe.device
    if d.peak_tflops <= 0:
        return ""
    shares = run.recipe.shares()
    lines = [f"estimated on {d.name} ({d.peak_tflops:g} TFLOPS bf16 x {d.utilisation:g} assumed, "
             f"{d.memory_gib:g} GiB), budget {run.budget_s / 60:g} min:",
             f"  {'stage':12s} {'share s':>8s} {'ms/step':>8s} {'steps':>7s} {'GiB':>6s}  measured here"]
    for stage in STAGE_NAMES:
        info = run.stages.get(stage, {})
        est, plan = info.get("estimate"), info.get("plan", {})
        here = f"{plan['s_per_step'] * 1e3:.0f} ms/step" if "s_per_step" in plan else f"{info.get('seconds', 0):.0f} s"
        if est:
            lines.append(f"  {stage:12s} {run.budget_s * shares[stage]:8.0f} {est['s_per_step'] * 1e3:8.2f} "
                         f"{est['steps']:7d} {est['memory_gib']:6.2f}  {here}")
        else:
            lines.append(f"  {stage:12s} {run.budget_s * shares[stage]:8.0f} {'':>8s} {'':>7s} {'':>6s}  {here}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of --stage all (added to `worldmodel train`)."""
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="all: wall-time budget of the stages up to the export (default: the preset's)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="all: at most this many steps per training stage and the smallest data (a smoke run "
                        "that checks a preset's shapes, dtypes and memory estimate)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="all: continue the run in RUN_DIR with its recorded preset and budget")


def run_from_args(args: argparse.Namespace) -> int:
    out = args.resume if args.resume is not None else args.out
    if out is None:
        raise UserError("train --stage all: --out RUN_DIR (a new run) or --resume RUN_DIR is required")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.budget_minutes is not None and not (math.isfinite(args.budget_minutes) and args.budget_minutes > 0):
        raise UserError(f"--budget-minutes must be a positive number, got {args.budget_minutes}")
    run = open_run(out, args.preset, args.budget_minutes, args.device, args.max_steps, args.resume is not None)
    path = run_all(run)
    if run.main:
        print(f"world model checkpoint: {path}")
    return 0
