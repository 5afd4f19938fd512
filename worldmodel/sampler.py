"""Few-step flow-matching sampler for x0-predicting models (1-4 steps per frame).

Flow matching path: x_t = (1 - t) * x0 + t * eps, t in [0, 1] (t = 1 is pure noise). The network
predicts x0; one deterministic DDIM/Euler update from level t to level s < t reuses the implied noise
    eps_hat = (x_t - (1 - t) * x0_hat) / t,    x_s = (1 - s) * x0_hat + s * eps_hat,
so the last step (s = 0) returns x0_hat itself. x0 prediction keeps 1-2 step sampling sharp enough
for play because the very first pass already produces a usable frame.

Randomness only comes from a `torch.Generator` the caller owns, so a session seed reproduces every
frame bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch

MIN_LEVEL = 1e-4
"""Levels are clamped away from 0 before dividing by t."""


def noise_levels(steps: int, shift: float = 1.0) -> list[float]:
    """Descending noise levels [t_0 = 1, ..., t_{steps-1}, 0] (steps + 1 numbers).

    Uniform in u, warped by t = shift*u / (1 + (shift - 1)*u): shift > 1 spends more steps at high
    noise (coarse layout), shift < 1 at low noise (detail).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    levels = []
    for i in range(steps):
        u = 1.0 - i / steps
        levels.append(shift * u / (1.0 + (shift - 1.0) * u))
    return levels + [0.0]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor | float) -> torch.Tensor:
    """The flow-matching interpolation x_t = (1 - t) x0 + t eps (level broadcast over trailing dims)."""
    if isinstance(level, torch.Tensor):
        level = level.reshape(*level.shape, *([1] * (x0.dim() - level.dim())))
    return (1.0 - level) * x0 + level * noise


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """Move from level t to level s < t given the model's x0 estimate (deterministic)."""
    if s <= 0.0:
        return x0_hat
    eps_hat = (x_t - (1.0 - t) * x0_hat) / max(t, MIN_LEVEL)
    return (1.0 - s) * x0_hat + s * eps_hat


def sample(denoise: Callable[[torch.Tensor, float, int], torch.Tensor], noise: torch.Tensor,
           levels: list[float]) -> torch.Tensor:
    """Run the sampler: `denoise(x_t, t, step_index) -> x0_hat`, starting from x_{levels[0]} = noise.

    The caller's `denoise` may do extra work in a given step (the runtime commits the previous frame
    inside step 0), which is why the step index is passed.
    """
    x = noise  # levels[0] is 1: the path starts at pure noise
    for i in range(len(levels) - 1):
        t, s = levels[i], levels[i + 1]
        x0_hat = denoise(x, t, i)
        x = ddim_step(x, x0_hat, t, s)
    return x
