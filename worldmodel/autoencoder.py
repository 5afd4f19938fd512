"""Latent autoencoder: 64x64 RGB frames <-> 8x8 grids of 16-channel latent tokens (docs/architecture.md §The generator).

The world model never sees pixels: it denoises these latents, and the game decodes one latent frame
per tick, so the decoder has to be cheap on a CPU (a few ms per frame) while the encoder, which only
runs once per frame when caching data sets or taking in a start image, may be heavier.

Design choices (and why):
- Deterministic (no VAE sampling): sampling noise would only blur reconstructions; a small L2 penalty
  on the latents during training keeps them bounded instead.
- Space-to-depth stem / depth-to-space head (pixel (un)shuffle): the convolutions never run at the
  full 64x64 resolution, which is where most of the cost of a plain conv autoencoder sits.
- Parameter-free space-to-channel shortcuts around every resolution/width change (as in DC-AE) and
  residual blocks that start as the identity. Measured: on a tiny run the shortcuts alone gave
  20.7 vs 15.8 dB at equal steps; a 750-step CPU run on rendered worlds reached 28.8 dB held-out
  vs 26.6 dB for a plain conv autoencoder of similar cost, and 2400 steps (18 min, one core)
  reach 31.8 dB, so the short trainings this project can afford meet the 30 dB target.
- Widths are multiples of 12 (= 3 * stem_factor**2) and of the latent channels so that every
  shortcut applies; the decoder (96-48-24) is about 5x lighter than the encoder.
- Normalised latents: `encode` returns (z - mean) / scale with per-channel statistics measured on
  training data and kept as buffers (so they live in the checkpoint); the diffusion model then works
  on roughly unit-variance latents whatever the autoencoder's raw range is.

Checkpoint = safetensors with metadata {"format": "worldmodel.autoencoder", "version": "1",
"config": <json of AutoencoderConfig>}; `load_autoencoder` checks all of it and names what does not
match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from conventions.atomic import atomic_write
from conventions.camera import DEFAULT_RESOLUTION
from conventions.depth import MAX_DEPTH, MIN_DEPTH, SKY_DEPTH
from conventions.errors import UserError, config_differences

CHECKPOINT_FORMAT = "worldmodel.autoencoder"
CHECKPOINT_VERSION = "1"
RGB_CHANNELS = 3
UINT8_MAX = 255.0
STATS_EPS = 1e-6
"""Floor for a latent channel's standard deviation, so a dead channel cannot blow up normalisation."""
HASH_CHUNK_BYTES = 1 << 20
SAFETENSORS_LENGTH_BYTES = 8
"""A safetensors file starts with its JSON header's length, a little-endian u64."""


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the autoencoder; stored verbatim in every checkpoint.

    The spatial reduction is `stem_factor * 2 ** len(encoder_widths[1:])` and must divide the
    resolution. Widths are listed from the highest resolution (just after the stem) to the latent
    grid; the decoder mirrors the encoder but is lighter.
    """

    resolution: int = DEFAULT_RESOLUTION
    latent_channels: int = 16
    stem_factor: int = 2
    """Pixel-unshuffle factor of the first layer (and pixel-shuffle factor of the last)."""
    encoder_widths: tuple[int, ...] = (48, 96, 192)
    encoder_blocks: int = 1
    """Residual blocks per encoder resolution level."""
    decoder_widths: tuple[int, ...] = (96, 48, 24)
    """Decoder widths from the latent grid upwards (mirrors encoder_widths)."""
    decoder_blocks: int = 1
    norm_groups: int = 8
    depth_widths: tuple[int, ...] = ()
    """Widths of the depth head (a light second decoder from the same latent to per-pixel depth and
    a sky flag, conventions.depth); () = no depth head (checkpoints from before it)."""
    shortcuts: bool = True
    """Parameter-free space-to-channel shortcuts around every resolution change (DC-AE style):
    pixel-(un)shuffle plus channel averaging/repetition. They give the network a good linear path
    from the first step, which is what makes short CPU trainings reach high PSNR."""

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "encoder_widths", tuple(int(w) for w in self.encoder_widths))
        object.__setattr__(self, "decoder_widths", tuple(int(w) for w in self.decoder_widths))
        object.__setattr__(self, "depth_widths", tuple(int(w) for w in self.depth_widths))
        problems = []
        if self.depth_widths and len(self.depth_widths) != len(self.decoder_widths):
            problems.append("depth_widths must have as many levels as decoder_widths (or be empty)")
        if len(self.encoder_widths) != len(self.decoder_widths) or not self.encoder_widths:
            problems.append("encoder_widths and decoder_widths must have the same non-zero length")
        if self.resolution % self.downsample:
            problems.append(f"resolution {self.resolution} is not divisible by the downsample factor "
                            f"{self.downsample}")
        for w in (*self.encoder_widths, *self.decoder_widths, *self.depth_widths):
            if w % self.norm_groups:
                problems.append(f"width {w} is not divisible by norm_groups {self.norm_groups}")
        if self.latent_channels <= 0 or self.stem_factor <= 0:
            problems.append("latent_channels and stem_factor must be positive")
        if problems:
            raise ValueError("invalid AutoencoderConfig: " + "; ".join(problems))

    @property
    def downsample(self) -> int:
        return self.stem_factor * 2 ** (len(self.encoder_widths) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the square latent grid (8 for 64x64 frames at 8x reduction)."""
        return self.resolution // self.downsample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AutoencoderConfig":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("config is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return cls(**data)


def resize_channels(x: torch.Tensor, channels: int) -> torch.Tensor | None:
    """Parameter-free channel change [B, c, h, w] -> [B, channels, h, w]: average groups of
    neighbouring channels (fewer) or repeat each channel (more); None when neither divides."""
    c = x.shape[1]
    if c == channels:
        return x
    if c % channels == 0:
        return x.unflatten(1, (channels, c // channels)).mean(2)
    if channels % c == 0:
        return x.repeat_interleave(channels // c, dim=1)
    return None


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1 if the width changes) skip.

    The second conv starts at zero, so every block starts as the identity: measured to reach a
    given PSNR in roughly half the steps of the default initialisation.
    """

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, c_in, h, w] -> [B, c_out, h, w]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Down(nn.Module):
    """Strided 3x3 conv [B, c_in, h, w] -> [B, c_out, h/2, w/2], plus (optionally) the
    space-to-channel shortcut: pixel-unshuffle then channel averaging."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.shortcut = shortcut and (4 * c_in % c_out == 0 or c_out % (4 * c_in) == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.shortcut:
            y = y + resize_channels(F.pixel_unshuffle(x, 2), y.shape[1])
        return y


class Up(nn.Module):
    """Nearest 2x upsample + 3x3 conv [B, c_in, h, w] -> [B, c_out, 2h, 2w], plus (optionally)
    the channel-to-space shortcut: channel repetition/averaging then pixel-shuffle."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.shortcut = shortcut and (4 * c_out % c_in == 0 or c_in % (4 * c_out) == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        if self.shortcut:
            y = y + F.pixel_shuffle(resize_channels(x, 4 * y.shape[1]), 2)
        return y


class ShortcutConv(nn.Module):
    """A 3x3 conv that changes width [B, c_in, h, w] -> [B, c_out, h, w], optionally pre-activated
    (GroupNorm -> SiLU before the conv), plus (optionally) the parameter-free channel resize of its
    un-normalised input, so the shortcut carries the features themselves."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool, norm_groups: int | None = None) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, c_in) if norm_groups else None
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.shortcut = shortcut and (c_in % c_out == 0 or c_out % c_in == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.silu(self.norm(x)) if self.norm is not None else x)
        return y + resize_channels(x, y.shape[1]) if self.shortcut else y


class Encoder(nn.Module):
    """frames in [-1, 1], [B, 3, H, W] -> raw latents [B, C, H/d, W/d]."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        widths, g = cfg.encoder_widths, cfg.norm_groups
        self.stem_factor = cfg.stem_factor
        self.stem = ShortcutConv(RGB_CHANNELS * cfg.stem_factor ** 2, widths[0], cfg.shortcuts)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            layers += [ResBlock(w, w, g) for _ in range(cfg.encoder_blocks)]
            if i + 1 < len(widths):
                layers.append(Down(w, widths[i + 1], cfg.shortcuts))
        self.body = nn.Sequential(*layers)
        self.head = ShortcutConv(widths[-1], cfg.latent_channels, cfg.shortcuts, norm_groups=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(F.pixel_unshuffle(x, self.stem_factor))))


class Decoder(nn.Module):
    """raw latents [B, C, h, w] -> images in about [-1, 1], [B, 3, h*d, w*d] (unclamped); with other
    `widths` / `out_channels`, the depth head ([B, 2, H, W]: log-depth and sky logit)."""

    def __init__(self, cfg: AutoencoderConfig, widths: tuple[int, ...] | None = None,
                 out_channels: int = RGB_CHANNELS, extra_in: int = 0) -> None:
        super().__init__()
        widths, g = widths or cfg.decoder_widths, cfg.norm_groups
        self.stem_factor = cfg.stem_factor
        self.stem = ShortcutConv(cfg.latent_channels + extra_in, widths[0], cfg.shortcuts)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            layers += [ResBlock(w, w, g) for _ in range(cfg.decoder_blocks)]
            if i + 1 < len(widths):
                layers.append(Up(w, widths[i + 1], cfg.shortcuts))
        self.body = nn.Sequential(*layers)
        self.head = ShortcutConv(widths[-1], out_channels * cfg.stem_factor ** 2, cfg.shortcuts, norm_groups=g)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.head(self.body(self.stem(z))), self.stem_factor)


DEPTH_OUTPUTS = 2
"""Depth head channels: log of depth in metres, and the sky logit (> 0 = sky)."""
DEPTH_COORD_CHANNELS = 2
"""The depth head also reads each latent cell's (row, column) in [-1, 1]: depth depends on where in the
image a surface is (a floor's depth is a function of the row), which convolutions see only through
their padding. Measured: a head without them underfit (train and held-out abs-rel both ~0.25)."""
DEFAULT_DEPTH_WIDTHS = (96, 48, 24)
"""The depth head that ships: as wide as the RGB decoder."""
DEPTH_HEAD_PREFIX = "depth_decoder."
"""State-dict prefix of the depth head: the one part of an autoencoder trained after the rest
(`worldmodel train --stage depth`, everything else frozen), so two autoencoders that differ only
under it give the same latents."""


def coordinate_channels(batch: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[B, 2, size, size]: row and column of each cell in [-1, 1]."""
    axis = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows, cols])[None].expand(batch, -1, -1, -1)


class Autoencoder(nn.Module):
    """Frames <-> normalised latents. See the module docstring for the design."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or AutoencoderConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.depth_decoder = (Decoder(self.config, self.config.depth_widths, DEPTH_OUTPUTS, DEPTH_COORD_CHANNELS)
                              if self.config.depth_widths else None)
        c = self.config.latent_channels
        # Normalisation statistics of the raw latents (identity until measured on training data).
        self.register_buffer("latent_mean", torch.zeros(c))  # [C]
        self.register_buffer("latent_scale", torch.ones(c))  # [C]

    # --- pixels <-> network range ----------------------------------------------------------------
    def to_input(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] or float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [-1, 1]."""
        res = self.config.resolution
        if frames.dtype == torch.uint8:
            if frames.ndim != 4 or frames.shape[-1] != RGB_CHANNELS:
                raise ValueError(f"uint8 frames must be [B, H, W, 3], got {tuple(frames.shape)}")
            x = frames.permute(0, 3, 1, 2).float() / UINT8_MAX
        elif frames.is_floating_point():
            if frames.ndim != 4 or frames.shape[1] != RGB_CHANNELS:
                raise ValueError(f"float frames must be [B, 3, H, W], got {tuple(frames.shape)}")
            x = frames.float()
        else:
            raise ValueError(f"frames must be uint8 or floating point, got {frames.dtype}")
        if tuple(x.shape[-2:]) != (res, res):
            raise ValueError(f"frames must be {res}x{res} for this autoencoder, got "
                             f"{tuple(x.shape[-2:])}")
        device = self.latent_mean.device
        return x.to(device) * 2.0 - 1.0

    # --- public API --------------------------------------------------------------------------------
    def encode_raw(self, frames: torch.Tensor) -> torch.Tensor:
        """Un-normalised latents [B, C, h, w] (used by training and to measure the statistics)."""
        return self.encoder(self.to_input(frames))

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """raw latents [B, C, h, w] -> normalised [B, C, h, w]."""
        return (raw - self.latent_mean[:, None, None]) / self.latent_scale[:, None, None]

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, h, w] -> raw [B, C, h, w]."""
        return latents * self.latent_scale[:, None, None] + self.latent_mean[:, None, None]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] or float [B, 3, H, W] in [0, 1] -> normalised latents [B, C, h, w]."""
        return self.normalise(self.encode_raw(frames))

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """raw latents [B, C, h, w] -> unclamped images in about [-1, 1], [B, 3, H, W] (training)."""
        return self.decoder(raw)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, h, w] -> float images [B, 3, H, W] in [0, 1]."""
        self._check_latents(latents)
        raw = self.denormalise(latents.to(self.latent_mean.device, self.latent_mean.dtype))
        return (self.decoder(raw).float() * 0.5 + 0.5).clamp(0.0, 1.0)

    @property
    def has_depth(self) -> bool:
        return self.depth_decoder is not None

    def depth_outputs(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """normalised latents [B, C, h, w] -> (log depth [B, H, W], sky logit [B, H, W]) (training)."""
        if self.depth_decoder is None:
            raise UserError("this autoencoder has no depth head (train one: worldmodel train --stage depth)")
        raw = self.denormalise(latents.to(self.latent_mean.device, self.latent_mean.dtype))
        coords = coordinate_channels(raw.shape[0], raw.shape[-1], raw.device, raw.dtype)
        out = self.depth_decoder(torch.cat([raw, coords], dim=1)).float()
        return out[:, 0], out[:, 1]

    def decode_depth(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, h, w] -> depth [B, H, W] in the conventions.depth convention
        (metres along -z, clamped to [MIN_DEPTH, MAX_DEPTH]; SKY_DEPTH where the head sees sky)."""
        self._check_latents(latents)
        log_depth, sky_logit = self.depth_outputs(latents)
        depth = log_depth.clamp(math.log(MIN_DEPTH), math.log(MAX_DEPTH)).exp()
        return torch.where(sky_logit > 0, torch.full_like(depth, SKY_DEPTH), depth)

    def decode_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, h, w] -> uint8 frames [B, H, W, 3] (what the game displays)."""
        img = self.decode(latents)  # [B, 3, H, W]
        return (img * UINT8_MAX).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Round trip for convenience: frames -> reconstruction in [0, 1], [B, 3, H, W]."""
        return self.decode(self.encode(frames))

    def set_latent_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-channel statistics [C] of raw latents measured on training data."""
        c = self.config.latent_channels
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"latent statistics must be [{c}], got {tuple(mean.shape)}, {tuple(std.shape)}")
        self.latent_mean.copy_(mean)
        self.latent_scale.copy_(std.clamp(min=STATS_EPS))

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.config.latent_shape:
            raise ValueError(f"latents must be [B, {', '.join(map(str, self.config.latent_shape))}], "
                             f"got {tuple(latents.shape)}")


# --- checkpoints -----------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes: how action logs and latent caches name the checkpoint they used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (`conventions.atomic.atomic_write`): never half a file under
    `path`, one UserError naming it on a failed write. The one safetensors writer of the engine. The
    same tensors and metadata always make the same bytes (`_sort_header`), so a file's sha256 names
    its content: latent caches and action logs name the checkpoint they used by it."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(cpu, str(tmp), metadata=metadata)
        _sort_header(tmp)

    return atomic_write(path, write)


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys sorted, in place. safetensors' writer
    emits the metadata in hash-map order, which changes from one save to the next (measured: 5
    different files from 6 saves of the same dict), so before this two exports of one checkpoint
    had different sha256 and their latent caches refused to mix. Only the order changes, so the
    header keeps its length and the tensor data stays where it is (its offsets are relative to the
    data section)."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(SAFETENSORS_LENGTH_BYTES))
        header = json.loads(f.read(length))
        sorted_header = json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
        if len(sorted_header) > length:  # not the writer's compact JSON: leave the valid file as it is
            return
        f.seek(SAFETENSORS_LENGTH_BYTES)
        f.write(sorted_header.ljust(length, b" "))  # the writer pads its header with spaces too


def save_autoencoder(model: Autoencoder, path: str | os.PathLike,
                     extra_metadata: dict[str, str] | None = None) -> Path:
    """Atomically write `model` (weights + normalisation buffers + config) to a safetensors file."""
    metadata = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    return atomic_save_safetensors(dict(model.state_dict()), path, metadata)


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an autoencoder checkpoint, with format and version checked (UserError if not)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: autoencoder checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an autoencoder checkpoint (metadata format is "
                        f"{metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}; a world-model "
                        f"checkpoint bundles one: `worldmodel export-autoencoder {path} --out AE.safetensors`)")
    if metadata.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: autoencoder checkpoint version {metadata.get('version')!r} is not "
                        f"supported (expected {CHECKPOINT_VERSION!r})")
    return metadata


def load_autoencoder(path: str | os.PathLike, expected_config: AutoencoderConfig | None = None,
                     device: str | torch.device = "cpu") -> Autoencoder:
    """Load a checkpoint written by `save_autoencoder`, checking everything a user could get wrong.

    `expected_config` is what the caller needs (e.g. the config a world-model checkpoint was trained
    with); every differing field is named. Then every tensor's name and shape is compared with the
    architecture the stored config describes.
    """
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_checkpoint_metadata(path)
    try:
        config = AutoencoderConfig.from_json(metadata.get("config", ""))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: invalid autoencoder config in metadata ({exc})") from exc
    if expected_config is not None and config != expected_config:
        raise UserError(f"{path}: autoencoder config does not match the expected one: "
                        + "; ".join(config_differences(config, expected_config)))
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # truncated data section, etc.
        raise UserError(f"{path}: cannot read tensors ({exc})") from exc
    model = Autoencoder(config)
    wanted = model.state_dict()
    problems = []
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    for name in sorted(set(wanted) & set(tensors)):
        if tuple(tensors[name].shape) != tuple(wanted[name].shape):
            problems.append(f"{name} has shape {tuple(tensors[name].shape)}, expected "
                            f"{tuple(wanted[name].shape)}")
        elif not tensors[name].is_floating_point():
            problems.append(f"{name} has dtype {tensors[name].dtype}, expected floating point")
    if problems:
        raise UserError(f"{path}: checkpoint does not match its config: " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    bad = [n for n, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"{path}: non-finite values in tensors {bad[:5]}")
    return model.to(device).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(model: Autoencoder) -> str:
    """One line for logs: parameter counts and latent shape."""
    cfg = model.config
    return (f"autoencoder {cfg.resolution}x{cfg.resolution} -> {cfg.latent_shape} "
            f"(encoder {count_parameters(model.encoder) / 1e6:.2f}M, decoder "
            f"{count_parameters(model.decoder) / 1e6:.2f}M params"
            + (f", depth head {count_parameters(model.depth_decoder) / 1e6:.2f}M" if model.has_depth else "")
            + f", {math.prod(cfg.latent_shape)} "
            f"numbers per frame)")


@torch.inference_mode()
def benchmark_decode(model: Autoencoder, iterations: int = 200, warmup: int = 20,
                     batch: int = 1) -> dict[str, float]:
    """Wall time of `decode_uint8` on random latents [batch, C, h, w] (what the game pays per tick):
    {"p50_ms", "p90_ms", "mean_ms"} per call, on the model's device, in the current thread setting."""
    z = torch.randn(batch, *model.config.latent_shape, device=model.latent_mean.device)
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model.decode_uint8(z)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        model.decode_uint8(z)
        times.append((time.perf_counter() - start) * 1e3)
    model.train(was_training)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p90_ms": times[int(len(times) * 0.9)],
            "mean_ms": sum(times) / len(times)}
