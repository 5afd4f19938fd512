"""Self Forcing fine-tune of a hint model through the play session itself (`worldmodel train --stage
self-forcing`; docs/architecture.md "Training", docs/training.md).

Why: teacher-forced training shows the model true context frames and hints built from true frames; at
play its context, its memory and its hints are its own frames, so its errors compound. The closed-loop
stage (worldmodel.closed_loop) narrows that gap with rollouts cached once from an earlier checkpoint
and the teacher-forced loss at random noise levels. Here every step rolls the CURRENT weights out
through `WorldModelSession` itself (KV cache, memory store, geometric hint, compositing, the few-step
sampler and its seeded noise): B clip segments, each from a true start frame along its true actions
for F frames, and the loss is the mean squared error of each frame's last denoising pass (its x0)
against the true latent, with gradients through that pass only (`WorldModelSession.step_with_grad`:
everything before it, and the context the pass reads, is detached, as in Self Forcing, Huang et al.
2025). The frames the session keeps are the detached outputs, so the rollout is exactly what play
would generate with these weights and seeds.

Cost on a CPU: a step is B x F play ticks plus B x F backward passes of one frame against the cache.

What a run leaves in OUT_DIR: world_model.safetensors (the checkpoint, written atomically every
`ckpt_every` steps and at the end), log.jsonl (loss, the first and the last frame's loss, gradient
norm, learning rate) and train_state.pt (weights, optimizer, step and the segment sampler's RNG): the
same command again continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from conventions.errors import UserError
from conventions.progress import ProgressBar
from worldmodel.batches import LatentData, load_latents
from worldmodel.checkpoint import checkpoint_sha256, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from worldmodel.run_io import atomic_torch_save, read_state_file, resolve_device, warmup_cosine
from worldmodel.runtime import WorldModelSession
from worldmodel.scalars import ScalarLog
from worldmodel.train import PRODUCT_CHECKPOINT

STATE_NAME = "train_state.pt"
STATE_FORMAT = "worldmodel.self_forcing_state"
SEED_RANGE = 2 ** 31 - 1
"""Each segment's session seed is drawn uniformly from [0, SEED_RANGE)."""
RESUME_FREE = ("steps", "log_every", "ckpt_every")
"""Options that may change when a run is resumed; every other one shapes the run and must match."""


@dataclass(frozen=True)
class SelfForcingOptions:
    steps: int = 200
    batch: int = 4
    """Clip segments rolled out per step."""
    frames: int = 6
    """Generated frames per segment (after its true start frame)."""
    lr: float = 1e-4
    warmup_steps: int = 10
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 5
    ckpt_every: int = 25

    def validate(self) -> "SelfForcingOptions":
        for name in ("steps", "batch", "frames", "log_every", "ckpt_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"self-forcing: {name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise UserError(f"self-forcing: lr and grad_clip must be positive, got {self.lr}, {self.grad_clip}")
        if self.warmup_steps < 0:
            raise UserError(f"self-forcing: warmup_steps must be >= 0, got {self.warmup_steps}")
        return self


@dataclass(frozen=True)
class Segment:
    """One rollout: clip `clip` of the data from its tick `first` (the true start frame) for F frames,
    sampled with session seed `seed`."""

    clip: int
    first: int
    seed: int


def sample_segments(data: LatentData, frames: int, batch: int, gen: torch.Generator) -> list[Segment]:
    """`batch` random segments of frames + 1 ticks."""
    out = []
    for _ in range(batch):
        clip = int(torch.randint(data.clips, (1,), generator=gen))
        first = int(torch.randint(data.ticks - frames, (1,), generator=gen))
        out.append(Segment(clip, first, int(torch.randint(SEED_RANGE, (1,), generator=gen))))
    return out


def self_forcing_backward(sessions: list[WorldModelSession], data: LatentData, segments: list[Segment],
                          frames: int) -> dict[str, float]:
    """Roll every segment out in its own session (`step_with_grad`) and backpropagate the mean
    squared error of its frames' x0 against the truth; gradients accumulate over the segments (one
    backward per segment keeps one segment's graph alive at a time) and average over all frames.
    -> metrics: loss, loss of the first and of the last frame."""
    per_frame = torch.zeros(frames)
    scale = 1.0 / (len(segments) * frames)
    for session, seg in zip(sessions, segments):
        with torch.no_grad():
            session.reset(data.latents[seg.clip, seg.first].float(), data.poses[seg.clip, seg.first],
                          data.captions[seg.clip], seg.seed)
        errors = []
        for j in range(1, frames + 1):
            tick = seg.first + j
            x0 = session.step_with_grad(data.actions[seg.clip, tick], data.poses[seg.clip, tick])  # [C, h, w]
            truth = data.latents[seg.clip, tick].to(x0.device, torch.float32)
            errors.append((x0 - truth).pow(2).mean())
        errors_t = torch.stack(errors)  # [F]
        (errors_t.sum() * scale).backward()
        per_frame += errors_t.detach().cpu()
    per_frame /= len(segments)
    return {"loss": float(per_frame.mean()), "loss_first": float(per_frame[0]), "loss_last": float(per_frame[-1])}


def _shaping(options: SelfForcingOptions) -> dict:
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in RESUME_FREE}


def train_self_forcing(checkpoint: str | Path, latents: list[str | Path], out_dir: str | Path,
                       options: SelfForcingOptions = SelfForcingOptions(), device: str = "cpu",
                       resume: bool = True) -> Path:
    """Fine-tune the hint model `checkpoint` with Self Forcing on the clips of latent caches
    `latents` (encoded true frames with their views, `worldmodel train --stage latents`); returns
    OUT/world_model.safetensors. Resumes from OUT/train_state.pt when it holds a run of the same
    checkpoint, data and shaping options."""
    options.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    model, autoencoder, config = load_checkpoint(checkpoint, device=dev)
    if not config.hint:
        raise UserError(f"{checkpoint}: Self Forcing here rolls out the play session's geometric hint; this "
                        f"checkpoint has none (train it with --set hint=true first)")
    data = load_latents(latents if len(latents) > 1 else latents[0], config)
    if data.target_latents is not None:
        raise UserError(f"{data.source}: a closed-loop rollout cache; Self Forcing makes its own rollouts and needs "
                        f"encoded true frames (worldmodel train --stage latents)")
    if data.ticks < options.frames + 1:
        raise UserError(f"{data.source}: clips have {data.ticks} ticks, a segment of {options.frames} frames "
                        f"needs {options.frames + 1}")
    sessions = [WorldModelSession(model, device=dev, autoencoder=autoencoder, defer_commit=False)
                for _ in range(options.batch)]
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(options.seed)
    base_sha = checkpoint_sha256(checkpoint)
    inputs = [checkpoint_sha256(p) for p in latents]
    state_path = out / STATE_NAME
    start = 0
    if resume and state_path.exists():
        state = read_state_file(state_path, STATE_FORMAT, "Self Forcing training state")
        if state.get("base_sha256") != base_sha or state.get("data_sha256") != inputs \
                or state.get("shaping") != _shaping(options):
            raise UserError(f"{state_path}: a Self Forcing run of another checkpoint, data or settings; use another "
                            f"--out or --no-resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["sampler"])
        start = int(state["step"])
    scalars = ScalarLog(out, resume_step=start)
    ckpt = out / PRODUCT_CHECKPOINT
    summary = {"self_forcing": {"init_from": str(checkpoint), "init_sha256": base_sha,
                                "data": [str(p) for p in latents], "options": dataclasses.asdict(options)},
               "init_train": json.loads(read_checkpoint_metadata(checkpoint).get("train", "{}"))}
    bar = ProgressBar(options.steps, "self forcing", start=start)
    t0 = time.perf_counter()

    def save(step: int) -> None:
        atomic_torch_save({"format": STATE_FORMAT, "base_sha256": base_sha, "data_sha256": inputs,
                           "shaping": _shaping(options), "step": step, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "sampler": gen.get_state()}, state_path)
        save_checkpoint(ckpt, model, autoencoder, {**summary, "steps": step})

    for step in range(start + 1, options.steps + 1):
        lr = warmup_cosine(step, options.steps, options.lr, options.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        metrics = self_forcing_backward(sessions, data, sample_segments(data, options.frames, options.batch, gen),
                                        options.frames)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip))
        opt.step()
        bar.update(1)
        if step % options.log_every == 0 or step == options.steps:
            scalars.write({"step": step, "lr": lr, "grad_norm": norm, **metrics,
                           "s_per_step": (time.perf_counter() - t0) / (step - start)})
        if step % options.ckpt_every == 0 or step == options.steps:
            save(step)
    if not ckpt.exists():  # resumed a finished run whose checkpoint was removed
        save(options.steps)
    bar.close()
    scalars.close()
    return ckpt
