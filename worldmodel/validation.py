"""Validation of a world model during training: teacher-forced next-frame PSNR and a short free-rollout
PSNR in pixel space on held-out clips (against the autoencoder's decoding of the true latents), plus the
copy-last-frame baseline for scale."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldmodel.config import WorldModelConfig
from worldmodel.hint import HintAugment
from worldmodel.model import WorldModel
from worldmodel.sampler import noise_levels
from worldmodel.sampler import sample as sample_frames
from worldmodel.text import Tokenizer
from conventions.metrics import psnr
from worldmodel.runtime import WorldModelSession
from worldmodel.batches import attach_hints, build_sample, collate, LatentData


@dataclass
class ValidationSet:
    """Fixed held-out probes: (clip, tick) pairs for teacher forcing and clips for free rollouts."""

    data: LatentData
    probes: list[tuple[int, int]]
    rollout_clips: list[int]
    rollout_ticks: int


def make_validation_set(data: LatentData, config: WorldModelConfig, clips: int, rollout_ticks: int,
                        seed: int = 0) -> ValidationSet:
    rng = random.Random(seed)
    chosen = rng.sample(range(data.clips), min(clips, data.clips))
    probes = [(n, rng.randint(1, data.ticks - 1)) for n in chosen]
    return ValidationSet(data, probes, chosen, min(rollout_ticks, data.ticks - 1))


@torch.no_grad()
def teacher_forced_predictions(model: WorldModel, vset: ValidationSet, config: WorldModelConfig,
                               device: torch.device, autoencoder: torch.nn.Module | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate each probe frame from its true context with the play sampler.

    -> (predicted latents [P, C, h, w], true latents [P, C, h, w], previous true latents [P, C, h, w]).
    """
    c = config
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    gen = torch.Generator().manual_seed(0)
    preds, trues, prevs = [], [], []
    for clip, tick in vset.probes:
        ids = torch.tensor(tok.encode(vset.data.captions[clip]))
        levels = noise_levels(c.steps_for_frame(tick), c.schedule_shift)
        ctx = torch.full((c.window_frames + 1,), c.ctx_noise_play)
        sample = build_sample(vset.data, clip, tick, c, ids, torch.ones(1), ctx, gen, 1,
                              hint_augment=HintAugment(0.0, 0.0, 0.0))

        def denoise(x_t: torch.Tensor, level: float, _step: int) -> torch.Tensor:
            sample["latents"][-1] = x_t[0]
            sample["noise"][-1] = level
            batch = attach_hints(collate([sample], ids.shape[0], 1).to(device), autoencoder, c)
            return model.forward_joint(batch.joint)[0, -1:].float().cpu()

        x = sample_frames(denoise, torch.randn(sample["target_x0"].shape, generator=gen), levels)  # [1, C, h, w]
        preds.append(x[0])
        trues.append(sample["target_x0"][0])
        prevs.append(vset.data.latents[clip, tick - 1].float())
    return torch.stack(preds), torch.stack(trues), torch.stack(prevs)


@torch.no_grad()
def rollout_predictions(model: WorldModel, vset: ValidationSet, device: torch.device,
                        autoencoder: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Free rollouts with the play-time session (hint on for hint models): -> predicted and true
    latents [R, T, C, h, w]."""
    session = WorldModelSession(model, device=device, dtype=torch.float32, use_memory=True, autoencoder=autoencoder)
    preds, trues = [], []
    n = vset.rollout_ticks
    for clip in vset.rollout_clips:
        d = vset.data
        session.reset(d.latents[clip, 0].float(), d.poses[clip, 0], d.captions[clip], seed=clip)
        preds.append(session.rollout(d.actions[clip, 1: n + 1], d.poses[clip, 1: n + 1]))
        trues.append(d.latents[clip, 1: n + 1].float())
    return torch.stack(preds), torch.stack(trues)


@torch.no_grad()
def validate(model: WorldModel, autoencoder: torch.nn.Module | None, vset: ValidationSet,
             config: WorldModelConfig, device: torch.device) -> dict[str, float]:
    """Teacher-forced next-frame and free-rollout PSNR (dB, pixels) + latent MSEs + copy baseline."""
    was_training = model.training
    model.eval()
    pred, true, prev = teacher_forced_predictions(model, vset, config, device, autoencoder)
    r_pred, r_true = rollout_predictions(model, vset, device, autoencoder)
    model.train(was_training)
    out = {"val_tf_latent_mse": float(F.mse_loss(pred, true)),
           "val_copy_latent_mse": float(F.mse_loss(prev, true)),
           "val_rollout_latent_mse": float(F.mse_loss(r_pred, r_true))}
    if autoencoder is not None:
        def dec(z: torch.Tensor) -> torch.Tensor:
            return autoencoder.decode(z.reshape(-1, *z.shape[-3:]).to(device)).float().cpu().clamp(0, 1)

        out["val_tf_psnr"] = float(psnr(dec(pred), dec(true), channel_dim=1).mean())
        out["val_copy_psnr"] = float(psnr(dec(prev), dec(true), channel_dim=1).mean())
        out["val_rollout_psnr"] = float(psnr(dec(r_pred), dec(r_true), channel_dim=1).mean())
    return out
