"""Few-step causal student from the many-step teacher: Self Forcing rollouts + DMD (docs/architecture.md §The generator).

Roles (all three are the same `WorldModel` architecture, so one checkpoint format serves them all):

* teacher (frozen, "real score"): the causal world model trained by `worldmodel train` with per-frame
  independent noise levels (diffusion forcing). Run with many sampler steps it is the quality bar.
  Why not a bidirectional teacher: `WorldModel.forward_joint` hard-wires the play-time block-causal
  mask, the teacher's training already covers every (context, noise level) pair the student meets,
  and a causal score p(x_t | x_<t, actions) applied along the student's own rollout matches the joint
  distribution by the chain rule. A bidirectional teacher would need a second training stage and a
  mask the model does not expose, for no gain that this setup could measure.
* fake score: a copy of the teacher trained online with the teacher's own flow-matching x0 loss
  (`worldmodel.train.world_model_loss`) on the student's generated frames, so it tracks the score of
  the student's distribution.
* student (generator): initialised from the teacher, sampled with 1-2 steps per frame (the first
  `warmup_frames` frames get `warmup_steps`: the per-frame schedule of `WorldModelConfig.steps_for_frame`,
  the same rule the runtime uses).

Self Forcing rollout (`self_forcing_rollout`): the student generates F frames autoregressively with the
play-time machinery itself: the preallocated `KVCache` (sink written once, ring-buffer window
committed frame by frame with `ctx_noise_play` context noise, sink re-timing), memory retrieved from a
real `MemoryStore` per clip with the play-time `select_memory` rule and written with
`WorldModel.write_memory`, the few-step sampler's DDIM updates and the session's seeded generators.
With every frame denoised to the end and no gradients it produces exactly the frames of
`WorldModelSession` (tests/test_distill.py). During training each frame stops at an exit step (the
last one, or a random one per frame as in the Self Forcing paper); all passes before it run under
no_grad through `WorldModel.forward_cached`, the exit pass runs through `forward_cached(..., grad=True)`: the same
computation with gradients (the cached context is detached, as in Self Forcing).

DMD (DMD2 style): the student's frames x are noised to a random level t, both scores predict x0 in one
joint pass over [sink | the rollout's frames as clean context | the noisy frames] (the teacher's
training layout, built by `worldmodel.train.build_sample`, so every frame sees exactly the context,
window and memory it was generated with), and the generator's gradient on x is
    (fake_x0 - real_x0) / mean|x - real_x0|       (per frame)
applied through 0.5 * ||x - stopgrad(x - grad)||^2. The fake score gets `fake_steps` updates per
generator step (two time-scale rule), each on a fresh rollout of the current student.

Ablation "without self-rollout" (`self_rollout=False`): the student generates every frame from the
TRUE previous frames (their latents are committed to the cache and memory instead of its own
outputs): teacher-forced DMD, which leaves the train/play mismatch that Self Forcing removes.

`distill(...)` is the resumable loop: atomic train state (`distill_state.pt`: student, fake score,
EMA, both optimisers, step, RNG), the product checkpoint (EMA student + the teacher's autoencoder via
`worldmodel.checkpoint.save_checkpoint`, loadable by `ModelFrameSource`), a JSONL log and a progress bar.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from conventions.camera import ACTION_DIM
from worldmodel.config import WorldModelConfig
from conventions.errors import UserError
from worldmodel.kv_cache import KVCache
from worldmodel.model import ROLE_CURRENT, ROLE_SINK, ROLE_WINDOW, WorldModel
from worldmodel.runtime import (CTX_SEED_OFFSET, GRAD_ATTENTION_BACKEND, MEMORY_PAYLOAD_DTYPE, make_memory_store,
                                prepare_memory)
from worldmodel.sampler import add_noise, ddim_step, noise_levels
from worldmodel.text import Tokenizer
from worldmodel.scalars import ScalarLog
from worldmodel.batches import build_sample, collate, LatentData, TrainBatch
from worldmodel.run_io import atomic_torch_save, load_run_state, update_ema
from worldmodel.train import PRODUCT_CHECKPOINT, world_model_loss
from conventions.progress import ProgressBar
from worldmodel.checkpoint import checkpoint_sha256, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from worldmodel.batches import load_latents
from worldmodel.run_io import resolve_device
from worldmodel.validation import make_validation_set, validate

DISTILL_STATE = "distill_state.pt"
STATE_FORMAT = "worldmodel.distill_state"
SEED_RANGE = 2 ** 31 - 1
"""Per-clip rollout seeds are drawn uniformly from [0, SEED_RANGE)."""
GRAD_STEP_MODES = ("random", "last")
NORMALISER_EPS = 1e-6
"""Floor of the DMD normaliser mean|x - real_x0| (a frame the teacher reproduces exactly)."""
RESUME_FREE_OPTIONS = ("steps", "log_every", "ckpt_every", "val_every", "val_clips", "val_rollout_ticks")
"""Options that may change when a run is resumed; every other one shapes the run and must match."""


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------
@dataclass
class DistillOptions:
    """One distillation run (stored in the train state; recipe fields must match on resume)."""

    steps: int = 1000
    """Generator updates (each preceded by `fake_steps` fake-score updates)."""
    batch: int = 4
    """Clips per rollout."""
    rollout_frames: int = 12
    """F frames generated per clip and step; > window_frames so the ring buffer wraps and memory is used."""
    grad_frames: int = 0
    """Only the last N frames get an exit pass with gradients and a DMD loss (0 = all), as Self Forcing
    does for long rollouts; earlier frames are generated under no_grad and serve as context."""
    student_steps: int = 2
    """Sampler steps per frame of the student after the warmup frames (1 or 2)."""
    warmup_steps: int = 4
    """Sampler steps of the student's first `warmup_frames` frames (they set the scene up)."""
    warmup_frames: int = 2
    self_rollout: bool = True
    """False = the ablation: the student generates each frame from the true previous frames."""
    grad_step: str = "random"
    """Which denoising step of a frame carries the gradient (and ends the frame): 'random' (Self Forcing)
    or 'last' (always the full schedule)."""
    fake_steps: int = 5
    """Fake-score updates per generator update (DMD2's two time-scale rule)."""
    lr: float = 1e-4
    fake_lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.999)
    """Adam betas of both optimisers; beta1 = 0 as in DMD2 / Self Forcing (the fake score moves)."""
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    """EMA of the student's weights; the product checkpoint holds the EMA."""
    dmd_min_level: float = 0.02
    dmd_max_level: float = 0.98
    """Noise levels for the DMD scores are uniform in [min, max] per frame (DMD2's range); the fake score
    is trained at the same levels."""
    real_guidance: float = 1.0
    """Classifier-free guidance of the real score over the prompt (1 = none; the teacher was trained
    with caption dropout, so the empty prompt is its unconditional branch)."""
    log_every: int = 10
    ckpt_every: int = 100
    val_every: int = 250
    val_clips: int = 16
    val_rollout_ticks: int = 16
    seed: int = 0
    amp: bool = True
    """bf16 autocast (CPU and CUDA), as in `worldmodel train`."""

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)

    def validate(self) -> "DistillOptions":
        """UserError naming every bad field (these come from the command line)."""
        bad = []
        for name in ("steps", "batch", "rollout_frames", "student_steps", "warmup_steps", "fake_steps",
                     "log_every", "ckpt_every", "val_every"):
            if getattr(self, name) < 1:
                bad.append(f"{name} must be >= 1")
        for name in ("grad_frames", "warmup_frames", "val_clips", "val_rollout_ticks", "weight_decay"):
            if getattr(self, name) < 0:
                bad.append(f"{name} must be >= 0")
        if self.grad_step not in GRAD_STEP_MODES:
            bad.append(f"grad_step must be one of {GRAD_STEP_MODES}")
        if not 0.0 < self.dmd_min_level <= self.dmd_max_level <= 1.0:
            bad.append("need 0 < dmd_min_level <= dmd_max_level <= 1")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad.append("betas must be two numbers in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            bad.append("ema_decay must be in [0, 1)")
        if self.lr <= 0 or self.fake_lr <= 0 or self.grad_clip <= 0 or self.real_guidance <= 0:
            bad.append("lr, fake_lr, grad_clip and real_guidance must be > 0")
        if bad:
            raise UserError("distill: " + "; ".join(bad))
        return self


def student_config(teacher: WorldModelConfig, options: DistillOptions) -> WorldModelConfig:
    """The student's config: the teacher's network with the few-step per-frame schedule."""
    return teacher.replace(sample_steps=options.student_steps, warmup_steps=options.warmup_steps,
                           warmup_frames=options.warmup_frames).validate()


# --------------------------------------------------------------------------------------------------
# the exit pass: forward_cached for the current frame, with gradients
# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# Self Forcing rollout
# --------------------------------------------------------------------------------------------------
@dataclass
class RolloutBatch:
    """B clip segments to roll out: tick 0 is the sink (start frame), ticks 1..F are generated.

    start [B, C, h, w] the start latent; actions [B, F + 1, 5] (actions[:, 0] = 0; actions[:, t]
    moves poses[:, t-1] -> poses[:, t]); poses [B, F + 1, 5]; captions: B prompts; seeds: B session
    seeds (frame noise and context noise, exactly as `WorldModelSession.reset`); truth [B, F + 1, C, h, w]
    the true latents (needed by the teacher-forced ablation; None otherwise).
    """

    start: torch.Tensor
    actions: torch.Tensor
    poses: torch.Tensor
    captions: list[str]
    seeds: list[int]
    truth: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        return self.actions.shape[1] - 1

    @property
    def size(self) -> int:
        return self.start.shape[0]


@dataclass
class RolloutResult:
    """frames [B, F, C, h, w]: each frame's output (x0 at its exit step; differentiable for the frames
    that had a gradient pass). context [B, F + 1, C, h, w] (detached): what entered the cache: the start
    latent, then the student's frames (self rollout) or the true ones (teacher forced). exit_steps [F]
    and steps [F]: exit index and schedule length per frame; memory_entries [F]: most entries any clip
    retrieved for that frame."""

    frames: torch.Tensor
    context: torch.Tensor
    exit_steps: list[int]
    steps: list[int]
    memory_entries: list[int] = field(default_factory=list)


def _seeded_noise(generators: list[torch.Generator], config: WorldModelConfig) -> torch.Tensor:
    """One latent of noise per clip from its own generator -> [B, C, h, w] (the session's draw order)."""
    c = config
    return torch.cat([torch.randn(1, 1, c.latent_channels, c.latent_size, c.latent_size, generator=g)[0]
                      for g in generators])


def _cached_pass(model: WorldModel, cache: KVCache, latents: torch.Tensor, level: float, actions: torch.Tensor,
                 poses: torch.Tensor, tick: int, text_cond: torch.Tensor, role: str) -> torch.Tensor:
    """One play-time pass of one frame per clip: latents [B, C, h, w] -> x0 [B, C, h, w] (no grad)."""
    dev = cache.device
    b = latents.shape[0]
    noise = torch.full((b, 1), level, device=dev, dtype=torch.float32)  # [B, 1]
    out = model.forward_cached(cache, latents[:, None].to(dev, torch.float32), noise,
                               actions[:, None].to(dev, torch.float32), poses[:, None].to(dev), [tick],
                               text_cond, [role])
    return out[:, 0].float()


def sample_exit_steps(config: WorldModelConfig, frames: int, mode: str, gen: torch.Generator) -> list[int]:
    """Exit step per frame (ticks 1..frames): the last step of its schedule, or a uniform random one."""
    out = []
    for tick in range(1, frames + 1):
        n = config.steps_for_frame(tick)
        out.append(n - 1 if mode == "last" else int(torch.randint(n, (1,), generator=gen)))
    return out


def self_forcing_rollout(model: WorldModel, batch: RolloutBatch, tokenizer: Tokenizer, *,
                         exit_steps: list[int] | None = None, grad_from: int | None = None,
                         teacher_forced: bool = False, use_memory: bool = True,
                         cache: KVCache | None = None) -> RolloutResult:
    """Generate F frames per clip with the play-time cache, memory and sampler (see module doc).

    exit_steps [F]: the step that ends each frame (None = every frame runs its whole schedule).
    grad_from: frames with index >= grad_from (0-based) get their exit pass with gradients (None = no
    gradients at all; the rollout is then exactly `WorldModelSession` with `defer_commit=False`).
    teacher_forced: commit the true latents `batch.truth[:, t]` instead of the generated frames.
    """
    c = model.config
    dev = next(model.parameters()).device
    b, f = batch.size, batch.frames
    if teacher_forced and batch.truth is None:
        raise ValueError("teacher-forced rollout needs batch.truth")
    if cache is None or cache.batch != b:
        cache = KVCache(c, batch=b, device=dev, dtype=torch.float32)
    cache.reset()
    stores = [make_memory_store(c) if c.use_memory else None for _ in range(b)]
    gen_frame = [torch.Generator().manual_seed(int(s)) for s in batch.seeds]
    gen_ctx = [torch.Generator().manual_seed(int(s) + CTX_SEED_OFFSET) for s in batch.seeds]
    ids, mask = tokenizer.encode_batch(batch.captions)
    ids, mask = ids.to(dev), mask.to(dev)
    with torch.no_grad():
        text_nograd = model.text_condition(ids, mask)  # [B, cond]
    text_grad = model.text_condition(ids, mask) if grad_from is not None else None

    def commit(latent: torch.Tensor, action: torch.Tensor, pose: torch.Tensor, tick: int, role: str) -> None:
        noised = add_noise(latent, _seeded_noise(gen_ctx, c).to(latent.device), c.ctx_noise_play)
        _cached_pass(model, cache, noised, c.ctx_noise_play, action, pose, tick, text_nograd, role)

    start = batch.start.float().to(dev)  # [B, C, h, w]
    commit(start, torch.zeros(b, ACTION_DIM), batch.poses[:, 0], 0, ROLE_SINK)
    frames, context, used_exits, steps, mem_counts = [], [start], [], [], []
    for j in range(f):
        tick = j + 1
        action, pose = batch.actions[:, tick].float(), batch.poses[:, tick].float()  # [B, 5] each
        gathered = prepare_memory(model, cache, stores if use_memory else [None] * b, pose, tick)
        mem_counts.append(max(gathered.found, default=0))
        model.retime_sink(cache, tick)
        levels = noise_levels(c.steps_for_frame(tick), c.schedule_shift)
        n = len(levels) - 1
        exit_at = n - 1 if exit_steps is None else min(int(exit_steps[j]), n - 1)
        x = _seeded_noise(gen_frame, c).to(dev)  # [B, C, h, w]
        x0 = x
        for i in range(exit_at + 1):
            if grad_from is not None and j >= grad_from and i == exit_at:
                lv = torch.full((b, 1), levels[i], device=dev)
                x0 = model.forward_cached(cache, x[:, None], lv, action[:, None].to(dev), pose[:, None].to(dev),
                                          [tick], text_grad, [ROLE_CURRENT], grad=True,
                                          attention_backend=GRAD_ATTENTION_BACKEND)[:, 0].float()
            else:
                x0 = _cached_pass(model, cache, x, levels[i], action, pose, tick, text_nograd, ROLE_CURRENT)
            if i < exit_at:
                x = ddim_step(x, x0, levels[i], levels[i + 1])
        frames.append(x0)
        kept = batch.truth[:, tick].float().to(dev) if teacher_forced else x0.detach()
        context.append(kept)
        for i, store in enumerate(stores):
            if store is not None:
                store.add(kept[i].to(MEMORY_PAYLOAD_DTYPE).cpu(), pose[i].cpu(), tick)
        commit(kept, action, pose, tick, ROLE_WINDOW)
        cache.advance_window(tick)
        used_exits.append(exit_at)
        steps.append(n)
    return RolloutResult(torch.stack(frames, 1), torch.stack(context, 1).detach(), used_exits, steps, mem_counts)


def sample_rollout_batch(data: LatentData, frames: int, batch: int, gen: torch.Generator) -> RolloutBatch:
    """B random clip segments of F + 1 ticks (the first becomes the sink), seeds from `gen`."""
    if data.ticks < frames + 1:
        raise ValueError(f"clips have {data.ticks} ticks, a rollout of {frames} frames needs {frames + 1}")
    lat, act, pos, caps, seeds = [], [], [], [], []
    for _ in range(batch):
        clip = int(torch.randint(data.clips, (1,), generator=gen))
        first = int(torch.randint(data.ticks - frames, (1,), generator=gen))
        span = slice(first, first + frames + 1)
        lat.append(data.latents[clip, span].float())
        a = data.actions[clip, span].clone()
        a[0] = 0.0  # the sink has no action (as at play)
        act.append(a)
        pos.append(data.poses[clip, span])
        caps.append(data.captions[clip])
        seeds.append(int(torch.randint(SEED_RANGE, (1,), generator=gen)))
    truth = torch.stack(lat)  # [B, F + 1, C, h, w]
    return RolloutBatch(truth[:, 0], torch.stack(act), torch.stack(pos), caps, seeds, truth)


# --------------------------------------------------------------------------------------------------
# scores and losses
# --------------------------------------------------------------------------------------------------
def score_batch(context: torch.Tensor, targets: torch.Tensor, batch: RolloutBatch, levels: torch.Tensor,
                config: WorldModelConfig, tokenizer: Tokenizer, gen: torch.Generator) -> TrainBatch:
    """The teacher's training layout over a rollout: one joint pass scores the last K frames.

    context [B, F + 1, C, h, w] (clean; tick 0 = sink), targets [B, K, C, h, w] = the frames at ticks
    F-K+1..F to score (detached), levels [B, K] their noise levels. Context frames enter at
    `ctx_noise_play` (as they entered the play cache), memory per target by the play-time rule over
    the context's poses. Returns a TrainBatch whose target_x0 are `targets`.
    """
    b, k = targets.shape[:2]
    f = context.shape[1] - 1
    data = LatentData(context.detach().float().cpu(), batch.actions.float(), batch.poses.float(),
                      list(batch.captions), "rollout")
    ctx_levels = torch.full((config.window_frames + f + 1,), config.ctx_noise_play)
    eps = torch.randn(targets.shape, generator=gen)  # [B, K, C, h, w]
    noisy = add_noise(targets.detach().float().cpu(), eps, levels.cpu())  # [B, K, C, h, w]
    samples = []
    for i in range(b):
        ids = torch.tensor(tokenizer.encode(batch.captions[i]))
        s = build_sample(data, i, f - k + 1, config, ids, levels[i].cpu(), ctx_levels, gen, k)
        s["latents"][-k:] = noisy[i]  # the targets are the generated frames (differ in teacher forcing)
        s["target_x0"] = targets[i].detach().float().cpu()
        samples.append(s)
    max_len = max(int(s["text_ids"].shape[0]) for s in samples)
    return collate(samples, max_len, k)


def predict_targets(model: WorldModel, batch: TrainBatch) -> torch.Tensor:
    """x0 predictions of a TrainBatch's targets -> [B, K, C, h, w] float32."""
    return model.forward_joint(batch.joint).index_select(1, batch.target_index).float()


def real_score(teacher: WorldModel, batch: TrainBatch, guidance: float, tokenizer: Tokenizer) -> torch.Tensor:
    """Teacher x0 of the targets [B, K, C, h, w], with classifier-free guidance over the prompt when
    guidance != 1 (unconditional branch = the empty prompt, as in caption dropout)."""
    cond = predict_targets(teacher, batch)
    if guidance == 1.0:
        return cond
    j = batch.joint
    ids, mask = tokenizer.encode_batch([""] * j.text_ids.shape[0])
    uncond_joint = dataclasses.replace(j, text_ids=ids.to(j.text_ids.device), text_mask=mask.to(j.text_mask.device))
    uncond = predict_targets(teacher, TrainBatch(uncond_joint, batch.target_x0, batch.target_index,
                                                 batch.target_noise))
    return uncond + guidance * (cond - uncond)


def dmd_gradient(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """DMD2's normalised distribution-matching gradient on generated frames x0 [..., C, h, w]:
    (fake_x0 - real_x0) / mean|x0 - real_x0| per frame. Zero when the two scores agree."""
    x0, real_x0, fake_x0 = x0.detach().float(), real_x0.float(), fake_x0.float()
    norm = (x0 - real_x0).abs().mean(dim=(-3, -2, -1), keepdim=True).clamp_min(NORMALISER_EPS)
    return torch.nan_to_num((fake_x0 - real_x0) / norm)


def dmd_loss(x0: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 * mse(x0, stopgrad(x0 - grad)): its gradient w.r.t. x0 is grad / numel (DMD2)."""
    grad = dmd_gradient(x0, real_x0, fake_x0)
    loss = 0.5 * F.mse_loss(x0.float(), (x0.detach().float() - grad))
    return loss, {"dmd_loss": float(loss.detach()), "dmd_grad_abs": float(grad.abs().mean()),
                  "real_fake_gap": float((real_x0.float() - fake_x0.float()).abs().mean())}


# --------------------------------------------------------------------------------------------------
# the two update steps
# --------------------------------------------------------------------------------------------------
@dataclass
class DistillModels:
    """The three networks of a run and what they share."""

    student: WorldModel
    fake: WorldModel
    teacher: WorldModel
    student_config: WorldModelConfig
    teacher_config: WorldModelConfig
    tokenizer: Tokenizer
    cache: KVCache | None = None


def _rollout(models: DistillModels, batch: RolloutBatch, opts: DistillOptions, gen: torch.Generator,
             grad: bool) -> RolloutResult:
    exits = sample_exit_steps(models.student_config, batch.frames, opts.grad_step, gen)
    grad_from = None
    if grad:
        grad_from = 0 if opts.grad_frames == 0 else max(0, batch.frames - opts.grad_frames)
    dev = next(models.student.parameters()).device
    if models.cache is None or models.cache.batch != batch.size or models.cache.device != dev:
        models.cache = KVCache(models.student_config, batch=batch.size, device=dev, dtype=torch.float32)
    return self_forcing_rollout(models.student, batch, models.tokenizer, exit_steps=exits, grad_from=grad_from,
                                teacher_forced=not opts.self_rollout, cache=models.cache)


def dmd_levels(opts: DistillOptions, batch: int, frames: int, gen: torch.Generator) -> torch.Tensor:
    """Noise levels [B, K], uniform in [dmd_min_level, dmd_max_level]: where the generator queries both
    scores, and therefore also where the fake score is trained (it must be accurate exactly there)."""
    span = opts.dmd_max_level - opts.dmd_min_level
    return opts.dmd_min_level + span * torch.rand(batch, frames, generator=gen)


def _scored_frames(opts: DistillOptions, frames: int) -> int:
    return frames if opts.grad_frames == 0 else min(frames, opts.grad_frames)


def generator_step(models: DistillModels, batch: RolloutBatch, opts: DistillOptions, gen: torch.Generator,
                   amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Student rollout with gradients + DMD loss (not yet backpropagated) -> (loss, metrics)."""
    dev = next(models.student.parameters()).device
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        result = _rollout(models, batch, opts, gen, grad=True)
        k = _scored_frames(opts, batch.frames)
        x0 = result.frames[:, -k:]  # [B, K, C, h, w]
        levels = dmd_levels(opts, batch.size, k, gen)  # [B, K]
        scored = score_batch(result.context, x0.detach(), batch, levels, models.teacher_config,
                             models.tokenizer, gen).to(dev)
        with torch.no_grad():
            real = real_score(models.teacher, scored, opts.real_guidance, models.tokenizer)
            fake = predict_targets(models.fake, scored)
    loss, metrics = dmd_loss(x0, real, fake)
    metrics["exit_mean"] = sum(result.exit_steps) / len(result.exit_steps)
    metrics["memory_frames"] = sum(1 for m in result.memory_entries if m > 0)
    if batch.truth is not None:
        truth = batch.truth[:, 1:].to(dev)
        metrics["rollout_latent_mse"] = float(F.mse_loss(result.frames.detach().float(), truth))
    return loss, metrics


def fake_score_step(models: DistillModels, batch: RolloutBatch, opts: DistillOptions, gen: torch.Generator,
                    amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Student rollout without gradients + the fake score's flow-matching x0 loss on its frames (the
    teacher's own objective, `world_model_loss`, at the DMD levels)."""
    dev = next(models.student.parameters()).device
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            result = _rollout(models, batch, opts, gen, grad=False)
        k = _scored_frames(opts, batch.frames)
        levels = dmd_levels(opts, batch.size, k, gen)  # [B, K]
        scored = score_batch(result.context, result.frames[:, -k:], batch, levels, models.teacher_config,
                             models.tokenizer, gen).to(dev)
        loss, metrics = world_model_loss(models.fake, scored, models.teacher_config)
    return loss, {"fake_" + key: value for key, value in metrics.items()}


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def _optimizer(model: WorldModel, lr: float, opts: DistillOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=opts.betas,
                             weight_decay=opts.weight_decay)


def _load_state(path: Path, config: WorldModelConfig, teacher_sha: str, opts: DistillOptions) -> dict[str, Any]:
    """The saved state of a run in OUT; UserError when it belongs to another teacher/config/recipe."""
    state = load_run_state(path, config, STATE_FORMAT, "distillation state (written by `worldmodel distill`)")
    if state.get("teacher_sha256") != teacher_sha:
        raise UserError(f"{path}: the run there distils another teacher; use another --out or --no-resume")
    mine = asdict(opts)
    theirs = dict(state.get("options", {}))
    if "betas" in theirs:
        theirs["betas"] = tuple(theirs["betas"])
    diff = [f"{k}: saved {theirs.get(k)!r} vs now {v!r}" for k, v in mine.items()
            if k not in RESUME_FREE_OPTIONS and theirs.get(k) != v]
    if diff:
        raise UserError(f"{path}: the run there used other options (" + "; ".join(diff)
                        + "); use another --out or --no-resume")
    return state


def distill(teacher_path: str | Path, latents_path: str | Path, out_dir: str | Path,
            options: DistillOptions | None = None, val_latents_path: str | Path | None = None,
            resume: bool = True, device: str = "auto", progress: bool = True,
            stop_after: int | None = None) -> Path:
    """Distil (or resume distilling) the teacher checkpoint into a few-step student; -> the product
    checkpoint OUT/world_model.safetensors (EMA student + the teacher's autoencoder).

    `stop_after` ends this invocation after that many generator steps (state saved), so a run can be
    done in slices and continued with the same command.
    """
    opts = (options or DistillOptions()).validate()
    dev = resolve_device(device)
    teacher_path = Path(teacher_path)
    teacher, autoencoder, t_config = load_checkpoint(teacher_path)
    teacher_sha = checkpoint_sha256(teacher_path)
    s_config = student_config(t_config, opts)
    data = load_latents(latents_path, t_config)
    frames = min(opts.rollout_frames, data.ticks - 1)

    try:
        t_summary = json.loads(read_checkpoint_metadata(teacher_path).get("train", "{}"))
    except json.JSONDecodeError:
        t_summary = {}
    t_ae = t_summary.get("autoencoder_sha256") if isinstance(t_summary, dict) else None
    if data.autoencoder_sha256 and t_ae and data.autoencoder_sha256 != t_ae:
        raise UserError(f"{latents_path}: latents were encoded by another autoencoder "
                        f"({data.autoencoder_sha256[:12]}) than the teacher's ({t_ae[:12]})")
    vset = None
    if val_latents_path is not None:
        autoencoder = autoencoder.to(dev)
        vdata = load_latents(val_latents_path, t_config)
        vset = make_validation_set(vdata, s_config, opts.val_clips, opts.val_rollout_ticks, seed=opts.seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = WorldModel(s_config).to(dev)
    student.load_state_dict(teacher.state_dict())
    fake = copy.deepcopy(teacher).train()
    for p in fake.parameters():
        p.requires_grad_(True)
    ema = copy.deepcopy(student).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optim_s = _optimizer(student, opts.lr, opts)
    optim_f = _optimizer(fake, opts.fake_lr, opts)
    gen = torch.Generator().manual_seed(opts.seed)
    tokenizer = Tokenizer(s_config.vocab, s_config.max_text_tokens)
    models = DistillModels(student, fake, teacher, s_config, t_config, tokenizer)
    step = 0
    state_path = out / DISTILL_STATE
    if resume and state_path.exists():
        state = _load_state(state_path, s_config, teacher_sha, opts)
        student.load_state_dict(state["student"])
        fake.load_state_dict(state["fake"])
        ema.load_state_dict(state["ema"])
        optim_s.load_state_dict(state["optimizer_student"])
        optim_f.load_state_dict(state["optimizer_fake"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    elif not resume and state_path.exists():
        state_path.unlink()
    scalars = ScalarLog(out, resume_step=step)  # log.jsonl (+ TensorBoard events when installed)
    amp = opts.amp and dev.type in ("cpu", "cuda")

    def save(step_now: int, metrics: dict[str, Any]) -> Path:
        atomic_torch_save({"format": STATE_FORMAT, "step": step_now, "config": s_config.to_json(),
                           "teacher_sha256": teacher_sha, "options": asdict(opts),
                           "student": student.state_dict(), "fake": fake.state_dict(), "ema": ema.state_dict(),
                           "optimizer_student": optim_s.state_dict(), "optimizer_fake": optim_f.state_dict(),
                           "generator": gen.get_state(), "torch_rng": torch.get_rng_state()}, state_path)
        summary = {"stage": "distill", "step": step_now, "options": asdict(opts), "data": str(latents_path),
                   "teacher": str(teacher_path), "teacher_sha256": teacher_sha, "rollout_frames": frames,
                   "autoencoder_sha256": t_ae or data.autoencoder_sha256, **metrics}
        return save_checkpoint(out / PRODUCT_CHECKPOINT, ema, autoencoder, summary)

    last_val: dict[str, Any] = {}
    t_start = time.perf_counter()
    t_window, n_window = time.perf_counter(), 0
    bar = ProgressBar(opts.steps, "distill", start=step) if progress else None
    end = opts.steps if stop_after is None else min(opts.steps, step + max(0, stop_after))
    while step < end:
        fake_metrics: dict[str, float] = {}
        fake_norm = 0.0
        for _ in range(opts.fake_steps):
            rb = sample_rollout_batch(data, frames, opts.batch, gen)
            loss_f, fake_metrics = fake_score_step(models, rb, opts, gen, amp)
            optim_f.zero_grad(set_to_none=True)
            loss_f.backward()
            fake_norm = float(torch.nn.utils.clip_grad_norm_(fake.parameters(), opts.grad_clip))
            optim_f.step()
        rb = sample_rollout_batch(data, frames, opts.batch, gen)
        loss_g, metrics = generator_step(models, rb, opts, gen, amp)
        optim_s.zero_grad(set_to_none=True)
        loss_g.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), opts.grad_clip))
        optim_s.step()
        update_ema(ema, student, min(opts.ema_decay, (1 + step) / (10 + step)))
        step += 1
        n_window += 1
        metrics.update(fake_metrics)
        if bar is not None:
            bar.update(1, dmd=metrics["dmd_loss"], fake=metrics.get("fake_loss", float("nan")),
                       **{k: v for k, v in last_val.items() if k.endswith("psnr")})
        if step % opts.log_every == 0 or step == opts.steps:
            now = time.perf_counter()
            scalars.write({"step": step, "lr": opts.lr, "fake_lr": opts.fake_lr, "grad_norm": grad_norm,
                           "fake_grad_norm": fake_norm, "it_s": n_window / (now - t_window),
                           "elapsed_s": now - t_start, **metrics})
            t_window, n_window = now, 0
        if vset is not None and (step % opts.val_every == 0 or step == opts.steps):
            last_val = validate(ema, autoencoder, vset, s_config, dev)
            scalars.write({"step": step, **last_val})
        if step % opts.ckpt_every == 0 or step == end:
            save(step, last_val)
    if bar is not None:
        bar.close()
    scalars.close()
    product = out / PRODUCT_CHECKPOINT
    if not product.exists():  # resumed a finished run, or stopped before the first step
        save(step, last_val)
    return product
