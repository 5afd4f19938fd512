"""What the training loops (world model, distillation, autoencoder) share: the device choice, the EMA
update, atomic torch.save and reading a run's resumable state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from conventions.atomic import atomic_write
from worldmodel.config import WorldModelConfig
from conventions.errors import UserError, config_differences
from worldmodel.model import WorldModel
from worldmodel.checkpoint import CONFIG_LABELS


TRAIN_STATE_FORMAT = "worldmodel.train_state"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return dev


@torch.no_grad()
def update_ema(ema: WorldModel, model: WorldModel, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model (shard by shard when both are FSDP-sharded alike)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().float(), 1.0 - decay)


def warmup_cosine(step: int, total: int, lr: float, warmup: int) -> float:
    """The learning rate of 1-based `step` of `total`: a linear warm-up over `warmup` steps times a
    cosine decay to zero at `total` (the depth head's and Self Forcing's schedule)."""
    warm = min(1.0, step / warmup) if warmup else 1.0
    return lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total)))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save via `conventions.atomic.atomic_write`: a crash never leaves half a state under `path`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_state_file(path: Path, state_format: str, what: str, remedy: str = "delete it or pass --no-resume"
                    ) -> dict[str, Any]:
    """A resumable state written by atomic_torch_save: read and its format checked; UserError naming
    the file (and `remedy`) when it is damaged or of another kind."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of a damaged file
        raise UserError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc}); {remedy}") from None
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise UserError(f"{path}: not a {what}")
    return state


def load_run_state(path: Path, config: WorldModelConfig, state_format: str = TRAIN_STATE_FORMAT,
                   what: str = "world-model training state") -> dict[str, Any]:
    """The resumable state of a run (train or distill) at `path`: read, its format and its config
    checked; UserError naming the file when it is damaged or belongs to another run."""
    state = read_state_file(path, state_format, what)
    saved = WorldModelConfig.from_json(state["config"], source=str(path))
    if saved != config:
        raise UserError(f"{path}: the run there was trained with another config ("
                        + "; ".join(config_differences(saved, config, CONFIG_LABELS)) + "); use another --out or --no-resume")
    return state
