"""Shared helpers of the autoencoder / data tests: tiny synthetic clip data sets in the agreed format
(docs/architecture.md §The conventions, in brief) and a tiny autoencoder config that trains in seconds on a CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from worldmodel.autoencoder import AutoencoderConfig
from conventions.camera import integrate


def tiny_ae_config(resolution: int = 16) -> AutoencoderConfig:
    """8x reduction (stem 2 x two strided stages) with 8 channels: 16x16 frames -> 8 x 2 x 2.
    Widths are multiples of 12 and 8 so every shortcut of the architecture is exercised."""
    return AutoencoderConfig(resolution=resolution, latent_channels=8, stem_factor=2,
                             encoder_widths=(24, 48, 96), encoder_blocks=1,
                             decoder_widths=(48, 24, 24), decoder_blocks=1, norm_groups=8)


def synthetic_frames(clips: int, ticks: int, resolution: int, seed: int) -> torch.Tensor:
    """Smooth scenes: a vertical sky/ground gradient plus a few coloured discs and boxes that drift
    across the image as the 'camera' turns. uint8 [clips, ticks, H, W, 3]."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, resolution)[:, None].expand(resolution, resolution)
    xs = torch.linspace(0, 1, resolution)[None, :].expand(resolution, resolution)
    out = torch.empty(clips, ticks, resolution, resolution, 3)
    for c in range(clips):
        top, bottom = torch.rand(3, generator=g), torch.rand(3, generator=g)
        shapes = [(torch.rand(2, generator=g), 0.1 + 0.2 * torch.rand(1, generator=g).item(),
                   torch.rand(3, generator=g), bool(torch.rand(1, generator=g) < 0.5)) for _ in range(3)]
        speed = 0.02 * (torch.rand(1, generator=g).item() - 0.5)
        for t in range(ticks):
            img = top[None, None] * (1 - ys[..., None]) + bottom[None, None] * ys[..., None]
            for centre, size, colour, is_disc in shapes:
                cx, cy = (centre[0].item() + speed * t) % 1.0, centre[1].item()
                if is_disc:
                    mask = ((xs - cx) ** 2 + (ys - cy) ** 2) < size ** 2
                else:
                    mask = ((xs - cx).abs() < size) & ((ys - cy).abs() < size * 0.6)
                img[mask] = colour
            out[c, t] = img
    return (out * 255).round().to(torch.uint8)


def walk(ticks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """actions [T, 5] (actions[0] = 0) and the poses [T, 5] they integrate to."""
    g = torch.Generator().manual_seed(seed)
    actions = torch.zeros(ticks, 5)
    actions[1:, 0] = 0.1 * torch.rand(ticks - 1, generator=g)
    actions[1:, 3] = 0.05 * torch.randn(ticks - 1, generator=g)
    poses = torch.zeros(ticks, 5)
    poses[0] = torch.tensor([0.0, 1.6, 0.0, math.pi * torch.rand(1, generator=g).item(), 0.0])
    for t in range(1, ticks):
        poses[t] = integrate(poses[t - 1], actions[t])
    return actions, poses


def write_synthetic_dataset(directory: Path, clips: int = 6, ticks: int = 8, resolution: int = 16,
                            seed: int = 0, shard_clips: int = 4, split: str = "train") -> dict:
    """Write a data set in the agreed on-disk format; returns what was written (for comparisons)."""
    directory.mkdir(parents=True, exist_ok=True)
    frames = synthetic_frames(clips, ticks, resolution, seed)
    walks = [walk(ticks, seed * 1000 + c) for c in range(clips)]
    actions = torch.stack([a for a, _ in walks])
    poses = torch.stack([p for _, p in walks])
    seeds = torch.arange(clips, dtype=torch.int64) + 100 * seed
    captions = [f"a synthetic scene number {c}" for c in range(clips)]
    policies = ["walk" if c % 2 == 0 else "turn" for c in range(clips)]
    shards = []
    for start in range(0, clips, shard_clips):
        sl = slice(start, start + shard_clips)
        name = f"shard-{len(shards):05d}.safetensors"
        save_file({"frames": frames[sl].contiguous(), "actions": actions[sl].contiguous(),
                   "poses": poses[sl].contiguous(), "world_seeds": seeds[sl].contiguous()},
                  str(directory / name),
                  metadata={"captions": json.dumps(captions[sl]), "policies": json.dumps(policies[sl])})
        shards.append(name)
    index = {"format": "worldmodel.dataset", "version": 1, "resolution": [resolution, resolution],
             "fov_deg": 90.0, "tick_hz": 20.0, "split": split, "ticks": ticks, "shards": shards,
             "clips": clips}
    (directory / "dataset.json").write_text(json.dumps(index))
    return {"frames": frames, "actions": actions, "poses": poses, "world_seeds": seeds,
            "captions": captions, "policies": policies, "index": index}
