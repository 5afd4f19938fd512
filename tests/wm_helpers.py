"""Shared fixtures of the world-model tests: tiny models, tiny autoencoders, synthetic latent clips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from worldmodel.config import WorldModelConfig, tiny_config
from worldmodel.model import WorldModel


def randomized_model(config: WorldModelConfig | None = None, seed: int = 0, scale: float = 0.05) -> WorldModel:
    """A tiny model whose zero-initialised layers are perturbed, so every input matters."""
    torch.manual_seed(seed)
    model = WorldModel(config or tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def tiny_autoencoder():
    from worldmodel.autoencoder import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    cfg = AutoencoderConfig(resolution=64, latent_channels=16, stem_factor=2, encoder_widths=(8, 8, 8),
                            encoder_blocks=1, decoder_widths=(8, 8, 8), decoder_blocks=1, norm_groups=4)
    return Autoencoder(cfg).eval()


def walking_poses(ticks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random walk with turns: actions [T, 5] (actions[0] = 0) and poses [T, 5]."""
    from conventions.camera import integrate

    g = torch.Generator().manual_seed(seed)
    actions = torch.zeros(ticks, 5)
    actions[1:, 0] = 0.1 + 0.05 * torch.rand(ticks - 1, generator=g)
    actions[1:, 3] = 0.15 * torch.sin(torch.arange(1, ticks) / 7.0 + seed)
    poses = torch.zeros(ticks, 5)
    poses[0] = torch.tensor([0.0, 1.6, 0.0, float(seed), 0.0])
    for t in range(1, ticks):
        poses[t] = integrate(poses[t - 1], actions[t])
    return actions, poses


def write_latent_clips(path: Path, clips: int, ticks: int, config: WorldModelConfig, seed: int = 0,
                       autoencoder_sha256: str = "", latent_size: int | None = None) -> Path:
    """A latent cache in worldmodel.data's format whose latents are a smooth function of the pose
    (so next-frame prediction is learnable) plus a little per-clip noise."""
    from safetensors.torch import save_file

    from worldmodel.data import LATENTS_FORMAT, LATENTS_VERSION

    s = latent_size or config.latent_size
    g = torch.Generator().manual_seed(seed)
    acts, poses, lats = [], [], []
    basis = torch.randn(4, config.latent_channels, s, s, generator=g)
    for n in range(clips):
        a, p = walking_poses(ticks, seed * 100 + n)
        feats = torch.stack([torch.sin(p[:, 3]), torch.cos(p[:, 3]), torch.tanh(p[:, 0] / 5), torch.tanh(p[:, 2] / 5)], 1)
        lat = torch.einsum("tf,fchw->tchw", feats, basis) + 0.05 * torch.randn(ticks, config.latent_channels, s, s,
                                                                                generator=g)
        acts.append(a)
        poses.append(p)
        lats.append(lat)
    meta = {"format": LATENTS_FORMAT, "version": LATENTS_VERSION,
            "captions": json.dumps(["a walled courtyard of red brick on grass"] * clips),
            "policies": json.dumps(["walk"] * clips), "autoencoder_sha256": autoencoder_sha256,
            "resolution": json.dumps([config.resolution, config.resolution]), "fov_deg": "90.0",
            "tick_hz": "20.0", "split": "train"}
    save_file({"latents": torch.stack(lats).to(torch.bfloat16), "actions": torch.stack(acts),
               "poses": torch.stack(poses), "world_seeds": torch.arange(clips, dtype=torch.int64)},
              str(path), metadata=meta)
    return path


def rigid_transform(poses: torch.Tensor, yaw: float, shift: tuple[float, float, float]) -> torch.Tensor:
    """Rotate poses [..., 5] about world +y by `yaw` and translate them by `shift`."""
    c, s = math.cos(yaw), math.sin(yaw)
    x, y, z = poses[..., 0], poses[..., 1], poses[..., 2]
    out = poses.clone()
    out[..., 0] = c * x + s * z + shift[0]
    out[..., 1] = y + shift[1]
    out[..., 2] = -s * x + c * z + shift[2]
    out[..., 3] = poses[..., 3] + yaw
    return out


RECORDED_ACTIONS = ([0.1, 0.0, 0.0, 0.05, 0.0], [0.0, 0.1, 0.0, -0.05, 0.02])
"""The two ticks `record_model_session` plays."""


def record_model_session(checkpoint: Path, log: Path, **game_options) -> list:
    """Play the courtyard with the model backend of `checkpoint` (seed 3, plus `game_options` for
    GameConfig), recording RECORDED_ACTIONS to `log`; -> the frames shown (reset frame first)."""
    from game.loop import GameConfig, build_session

    session = build_session(GameConfig(scene="courtyard", backend="model", checkpoint=str(checkpoint), seed=3,
                                       **game_options))
    shown = [session.reset()]
    session.start_recording(log)
    for action in RECORDED_ACTIONS:
        shown.append(session.step(action))
    session.close()
    return shown


def log_with_header(log: Path, out: Path, key: str, value) -> Path:
    """A copy of action log `log` at `out` whose header has `key` set to `value` (None: left out)."""
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    header.pop(key, None)
    if value is not None:
        header[key] = value
    out.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    return out
