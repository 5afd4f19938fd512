"""The product checkpoint: ONE safetensors file with everything play needs (docs/architecture.md §The conventions, in brief).

Tensors: the autoencoder under "ae.", the world model (transformer + text encoder) under "model.".
Metadata (all strings): {"format": "worldmodel.checkpoint", "version": "1", "config": the
WorldModelConfig JSON, "ae_config": the AutoencoderConfig JSON, "vocab": JSON list, "tick_hz",
"train": JSON summary of how it was trained}.

Saving is atomic (temp file in the same folder, fsync, rename), so a crash never leaves half a
checkpoint under the real name. Loading checks everything and raises one `UserError` that says
exactly what is wrong: missing file, not a safetensors file, wrong format/version, a config that does
not match, and every missing, unexpected or wrong-shaped tensor by name.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conventions.atomic import check_output_path
from worldmodel.autoencoder import DEPTH_HEAD_PREFIX, atomic_save_safetensors, Autoencoder, AutoencoderConfig
from worldmodel.config import PLAY_RULE_FIELDS, WorldModelConfig
from conventions.errors import UserError, config_differences
from worldmodel.model import WorldModel

CHECKPOINT_FORMAT = "worldmodel.checkpoint"
CHECKPOINT_VERSION = "1"
MODEL_PREFIX = "model."
AE_PREFIX = "ae."
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.safetensors"
"""The checkpoint that ships in the repository (trained by the lead; <= 50 MB)."""
HASH_CHUNK = 1 << 20
MAX_LISTED = 8
"""At most this many tensor names are listed per kind of mismatch in an error message."""


def checkpoint_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file (recorded in action logs so a replay knows which model made it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _ae_config_json(autoencoder: nn.Module) -> str:
    cfg = getattr(autoencoder, "config", None)
    if cfg is None or not hasattr(cfg, "to_json"):
        raise TypeError("autoencoder must be a worldmodel.autoencoder.Autoencoder (config with to_json)")
    return cfg.to_json()


def save_checkpoint(path: str | Path, model: WorldModel, autoencoder: nn.Module,
                    train_summary: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write model + autoencoder + metadata to `path` atomically; returns the path.

    `dtype` is the storage type of floating-point weights (bfloat16 halves the file; loading always
    returns float32 modules).
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in ((MODEL_PREFIX, model), (AE_PREFIX, autoencoder)):
        for name, t in module.state_dict().items():
            t = t.detach().cpu()
            if t.is_floating_point():
                t = t.to(dtype)
            tensors[prefix + name] = t.contiguous().clone()
    cfg = model.config
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_json(),
        "ae_config": _ae_config_json(autoencoder),
        "vocab": json.dumps(cfg.vocab),
        "tick_hz": repr(float(cfg.tick_hz)),
        "train": json.dumps(train_summary or {}, sort_keys=True),
    }
    atomic_save_safetensors(tensors, path, metadata)
    return path


def checkpoint_float_dtype(path: str | Path) -> torch.dtype:
    """The storage type of a checkpoint's floating-point weights (float32, or bfloat16 for a halved
    file): a tool that rewrites part of a checkpoint keeps the rest as it was stored."""
    from safetensors import safe_open

    _open(Path(path))  # UserError for a missing or foreign file
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            t = f.get_slice(name).get_dtype()
            if t in STORED_FLOAT_DTYPES:
                return STORED_FLOAT_DTYPES[t]
    return torch.float32


STORED_FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
"""safetensors' names of the floating-point storage types a checkpoint may have."""


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The metadata dict of a checkpoint (UserError for a missing/non-safetensors/foreign file)."""
    path = Path(path)
    meta, _ = _open(path)
    return meta


def _open(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    from safetensors import safe_open

    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: not a readable safetensors checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: format is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r} "
                        f"(an autoencoder-only or foreign file?)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {meta.get('version')!r}, this program reads "
                        f"version {CHECKPOINT_VERSION!r}")
    for key in ("config", "ae_config"):
        if key not in meta:
            raise UserError(f"{path}: metadata has no {key!r}")
    return meta, shapes


def _check_tensors(path: Path, prefix: str, module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    expected = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
    present = {k: v for k, v in shapes.items() if k.startswith(prefix)}
    problems = []
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    wrong = sorted(k for k in set(expected) & set(present) if expected[k] != present[k])
    if missing:
        problems.append(f"missing tensors {missing[:MAX_LISTED]}" + (" ..." if len(missing) > MAX_LISTED else ""))
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:MAX_LISTED]}"
                        + (" ..." if len(unexpected) > MAX_LISTED else ""))
    for k in wrong[:MAX_LISTED]:
        problems.append(f"tensor {k} has shape {list(present[k])}, expected {list(expected[k])}")
    return problems


def build_autoencoder(ae_config_json: str, source: str) -> nn.Module:
    """An untrained Autoencoder of the stored config (UserError when the config cannot be read)."""
    try:
        return Autoencoder(AutoencoderConfig.from_json(ae_config_json))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: bad autoencoder config in metadata ({exc})") from None


CONFIG_LABELS = ("checkpoint", "expected")
"""How a config mismatch names its two sides: the file's config and the one asked for."""


def load_checkpoint(path: str | Path, expected_config: WorldModelConfig | None = None,
                    device: torch.device | str = "cpu") -> tuple[WorldModel, nn.Module, WorldModelConfig]:
    """-> (world model, autoencoder, config), both modules in eval mode, float32, on `device`.

    With `expected_config`, any difference is an error that names the fields.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta, shapes = _open(path)
    config = WorldModelConfig.from_json(meta["config"], source=f"{path}")
    if expected_config is not None:
        diff = config_differences(config, expected_config, CONFIG_LABELS)
        if diff:
            raise UserError(f"{path}: config does not match: " + "; ".join(diff))
    model = WorldModel(config)
    autoencoder = build_autoencoder(meta["ae_config"], str(path))
    ae_cfg = autoencoder.config
    for name, mine in (("latent_channels", config.latent_channels), ("resolution", config.resolution)):
        theirs = getattr(ae_cfg, name, mine)
        if theirs != mine:
            raise UserError(f"{path}: autoencoder {name} {theirs} does not match the model's {mine}")
    problems = _check_tensors(path, MODEL_PREFIX, model, shapes) + _check_tensors(path, AE_PREFIX, autoencoder, shapes)
    foreign = sorted(k for k in shapes if not k.startswith((MODEL_PREFIX, AE_PREFIX)))
    if foreign:
        problems.append(f"tensors outside model./ae. {foreign[:MAX_LISTED]}")
    if problems:
        raise UserError(f"{path}: checkpoint does not fit its config: " + "; ".join(problems))
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # truncated data section
        raise UserError(f"{path}: tensor data unreadable ({type(exc).__name__}: {exc})") from None
    check_finite_tensors(tensors, str(path))
    for prefix, module in ((MODEL_PREFIX, model), (AE_PREFIX, autoencoder)):
        state = {k[len(prefix):]: v.float() if v.is_floating_point() else v
                 for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
    return model.to(device).eval(), autoencoder.to(device).eval(), config


def check_finite_tensors(tensors: dict[str, torch.Tensor], source: str) -> None:
    """UserError naming the first tensor with a NaN or an infinity: one damaged weight would make
    every generated frame after the first black, so such a file is refused rather than played."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{source}: tensor {name} has {bad} non-finite value{'s' if bad != 1 else ''} "
                            "(NaN or inf); the checkpoint is damaged")


def average_checkpoints(paths: list[str | Path], out: str | Path, weights: list[float] | None = None,
                        dtype: torch.dtype = torch.float32, extra_summary: dict[str, Any] | None = None,
                        first_depth_head: bool = False, play_rules: dict[str, Any] | None = None) -> Path:
    """Write the weighted mean of checkpoints' world-model weights to `out` (atomically; returns it).

    Why: two fine-tunes of one model (e.g. one that leans on its memory, one that follows actions
    better) sit in the same basin, and the mean of their weights can keep most of both (a "model
    soup", Wortsman et al. 2022); measure it like any checkpoint. The configs and the autoencoders
    must be identical, else UserError naming the file; only the training-only config fields
    (`WorldModelConfig.TRAINING_ONLY_FIELDS`, e.g. the context noise a fine-tune used) may differ, and
    the result keeps the first checkpoint's. The train summary records every input (path, sha256,
    weight, and its own summary). `dtype` is the storage type of the floating-point weights.

    `first_depth_head`: the autoencoders may differ in their depth heads (or lack one), and the
    result bundles the first checkpoint's. A depth head is trained with the rest of the autoencoder
    frozen (`worldmodel train --stage depth`), so such autoencoders give the same latents and their
    world models stay averageable: e.g. a fine-tune made before the shipped head was trained longer.

    `play_rules` {field: value}: play rules (config.PLAY_RULE_FIELDS) the result's config carries
    instead of the first checkpoint's, e.g. the memory key scale it was measured to play best with;
    no weight depends on them, and the train summary records them.
    """
    if len(paths) < 2:
        raise UserError("average needs at least two checkpoints")
    play_rules = dict(play_rules or {})
    other = sorted(set(play_rules) - set(PLAY_RULE_FIELDS))
    if other:
        raise UserError(f"average: {other[0]} is not a play rule; only {', '.join(PLAY_RULE_FIELDS)} can be set "
                        f"(every other field is the models' own)")
    check_output_path(out, inputs=paths, flag="--out")
    weights = [1.0 / len(paths)] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or not all(math.isfinite(w) and w >= 0 for w in weights) \
            or abs(sum(weights) - 1.0) > 1e-6:
        raise UserError(f"weights must be {len(paths)} non-negative numbers summing to 1, got {weights}")
    first_model, first_ae, first_config = load_checkpoint(paths[0])
    try:
        played = first_config.replace(**play_rules).validate()
    except (TypeError, ValueError) as exc:
        raise UserError(f"average: the play rules {play_rules}: {exc}") from None
    total = {k: v.double() * weights[0] for k, v in first_model.state_dict().items() if v.is_floating_point()}
    ae_state = first_ae.state_dict()

    def must_match(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The autoencoder weights every input must share: all, or all but the depth head."""
        return {k: v for k, v in state.items() if not (first_depth_head and k.startswith(DEPTH_HEAD_PREFIX))}

    shared_ae = must_match(ae_state)
    inputs = []
    for i, (path, w) in enumerate(zip(paths, weights)):
        model, ae, config = (first_model, first_ae, first_config) if i == 0 else load_checkpoint(path)
        if config.with_training_fields_of(first_config).to_json() != first_config.to_json():
            raise UserError(f"{path}: its config differs from {paths[0]}'s; only fine-tunes of one model can be averaged")
        theirs = must_match(ae.state_dict())
        if theirs.keys() != shared_ae.keys() or any(not torch.equal(v, shared_ae[k]) for k, v in theirs.items()):
            advice = "" if first_depth_head else " (if only the depth heads differ: --first-depth-head)"
            raise UserError(f"{path}: its autoencoder differs from {paths[0]}'s; the latents would not match{advice}")
        if i > 0:
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    total[k] += v.double() * w
        meta = read_checkpoint_metadata(path)
        inputs.append({"path": str(path), "sha256": checkpoint_sha256(path), "weight": w,
                       "train": json.loads(meta.get("train", "{}"))})
    state = first_model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in total.items()})
    first_model.load_state_dict(state)
    first_model.config = played
    summary = {"average_of": inputs, **({"play_rules": play_rules} if play_rules else {}), **(extra_summary or {})}
    return save_checkpoint(out, first_model, first_ae, summary, dtype=dtype)
