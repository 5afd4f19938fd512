"""Training presets of `worldmodel train --stage all`: the whole recipe as data (docs/training.md).

A preset is a TOML file (tools/presets/{tiny,cpu,gpu}.toml, or any file a user writes) read into the
`Recipe` dataclass below. It says how big the network is, how much data the oracle renders, what
each stage trains with, and how the time budget is split between the stages (`[budget]`: shares of
`--budget-minutes`). The pipeline (tools/train_all.py) has one code path; the presets differ only in
these numbers, so a new machine needs a new TOML file, not new code.

Unknown keys are refused with the file and the key named: a typo in a preset must not silently train
the default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conventions.errors import UserError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESET_NAMES = ("tiny", "cpu", "gpu")
STAGE_NAMES = ("data", "ae", "depth", "latents", "world", "memory", "rollouts", "closed_loop")
"""The stages of one run, in order; each has a share of the budget. Export and eval follow them."""


@dataclass(frozen=True)
class DataRecipe:
    """What the oracle renders (worlds, clips, ticks), scaled to the data stage's share of the budget."""

    ticks: int = 160
    clips_per_world: int = 2
    train_clips_min: int = 8
    train_clips_max: int = 400
    retrace_share: float = 0.25
    """Retrace clips (out, back, the same way again) per mixed clip: the memory curriculum's returns."""
    heldout_clips: int = 16
    shard_clips: int = 32
    """Clips per shard and per latent cache: the unit an interruption loses at most."""
    seed_start: int = 2000
    """First training world seed (a held-out set uses scenes.world's held-out seed range)."""


@dataclass(frozen=True)
class AutoencoderRecipe:
    encoder_widths: tuple[int, ...] = (48, 96, 192)
    decoder_widths: tuple[int, ...] = (96, 48, 24)
    depth_widths: tuple[int, ...] = (96, 48, 24)
    latent_channels: int = 16
    batch: int = 32
    lr: float = 2e-3
    depth_batch: int = 32
    depth_lr: float = 3e-3
    steps_min: int = 20
    steps_max: int = 100_000
    depth_steps_min: int = 10
    depth_steps_max: int = 50_000


@dataclass(frozen=True)
class WorldRecipe:
    """The world model (any WorldModelConfig field in `config`) and its three training runs: `world`
    (from scratch, mixed + retrace clips), `memory` (from it: returns, window dropout) and
    `closed_loop` (from the memory run: its own rollouts as context, the truth as targets)."""

    config: dict[str, Any] = field(default_factory=dict)
    config_base: str = "default"
    """'default' (the shipped size) or 'tiny' (the tests' size), before `config` is applied."""
    batch: int = 8
    lr: float = 8e-4
    warmup_steps: int = 100
    revisit_focus: float = 0.3
    memory_lr: float = 5e-4
    memory_revisit_focus: float = 0.5
    memory_window_dropout: float = 0.5
    closed_loop_lr: float = 2e-4
    closed_loop_revisit_focus: float = 0.3
    steps_min: int = 10
    steps_max: int = 200_000
    val_clips: int = 8
    amp: bool = True
    loader_workers: int = 0
    """Processes building batches ahead of the training loop (a GPU needs them; see TrainOptions)."""
    compile: bool = False
    """torch.compile the joint forward (GPU presets; needs a working compiler toolchain)."""


@dataclass(frozen=True)
class RolloutRecipe:
    ticks: int = 48
    clips_min: int = 4
    clips_max: int = 120
    chunk_clips: int = 8
    composite: float = 0.75
    """The play-time compositing weight the rollouts (and the shipped model) use."""


@dataclass(frozen=True)
class EvalRecipe:
    """The reduced eval after training (a few worlds of each suite; the full suites are `worldmodel eval`)."""

    action_worlds: int = 4
    revisit_worlds: int = 2
    drift_worlds: int = 1
    drift_ticks: int = 300
    """A short drift probe: early ticks 1-100 against the last 100 ticks of this many."""


@dataclass(frozen=True)
class ExportRecipe:
    dtype: str = "bf16"
    max_mib: float = 16.0


@dataclass(frozen=True)
class DeviceEstimate:
    """The device a preset is sized for, for the time and memory estimate printed before a run
    (`--max-steps` smoke runs of the gpu preset on a CPU): assumed numbers, not measured ones."""

    name: str = "cpu"
    peak_tflops: float = 0.0
    """Dense bf16 peak of the device (0: no estimate, the run's own probes are the numbers)."""
    utilisation: float = 0.15
    """Share of the peak a small model at these batches reaches (an assumption; small matmuls)."""
    memory_gib: float = 0.0
    render_frames_per_s: float = 0.0
    """Oracle frames/s at 64x64 assumed for the device (0: measured by the probe)."""


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str = ""
    budget_minutes: float = 60.0
    budget: dict[str, float] = field(default_factory=dict)
    """Share of the budget per stage (STAGE_NAMES); normalised to sum to 1."""
    resolution: int = 64
    threads: int = 0
    """Torch threads on a CPU (0: torch's default)."""
    data: DataRecipe = DataRecipe()
    autoencoder: AutoencoderRecipe = AutoencoderRecipe()
    world: WorldRecipe = WorldRecipe()
    rollouts: RolloutRecipe = RolloutRecipe()
    eval: EvalRecipe = EvalRecipe()
    export: ExportRecipe = ExportRecipe()
    device: DeviceEstimate = DeviceEstimate()
    source: str = ""

    def shares(self) -> dict[str, float]:
        total = sum(self.budget.get(s, 0.0) for s in STAGE_NAMES)
        return {s: self.budget.get(s, 0.0) / total for s in STAGE_NAMES}


_SECTIONS: dict[str, type] = {"data": DataRecipe, "autoencoder": AutoencoderRecipe, "world": WorldRecipe,
                              "rollouts": RolloutRecipe, "eval": EvalRecipe, "export": ExportRecipe,
                              "device": DeviceEstimate}


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = known[key].default
        if isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{where}: {key} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{where}: {key} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise UserError(f"{where}: {key} must be an integer, got {value!r}")
            if value < 0:
                raise UserError(f"{where}: {key} must be >= 0, got {value!r}")
        values[key] = value
    return cls(**values)


def preset_path(name_or_path: str) -> Path:
    """A preset name (tiny, cpu, gpu) or the path of a TOML file written like them."""
    if name_or_path in PRESET_NAMES:
        return PRESETS_DIR / f"{name_or_path}.toml"
    path = Path(name_or_path)
    if path.suffix != ".toml":
        raise UserError(f"--preset {name_or_path}: not a preset ({', '.join(PRESET_NAMES)}) or a .toml file")
    return path


def load_recipe(name_or_path: str) -> Recipe:
    """Read and check a preset; UserError naming the file for a missing file, bad TOML or a bad key."""
    path = preset_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: preset file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return _recipe({"name": path.stem, **raw, "source": str(path)}, str(path))


def _recipe(raw: dict[str, Any], where: str) -> Recipe:
    """A Recipe from its parsed form (a preset's TOML or a run record's JSON), every value checked."""
    budget = raw.get("budget", {})
    if not isinstance(budget, dict) or set(budget) - set(STAGE_NAMES):
        raise UserError(f"{where} [budget]: keys must be stage names ({', '.join(STAGE_NAMES)})")
    if any(not isinstance(v, (int, float)) or v < 0 for v in budget.values()) or sum(budget.values()) <= 0:
        raise UserError(f"{where} [budget]: shares must be numbers >= 0 with a positive sum")
    sections = {k: _build(cls, raw.get(k, {}), f"{where} [{k}]") for k, cls in _SECTIONS.items()}
    top = {k: v for k, v in raw.items() if k not in _SECTIONS and k != "budget"}
    recipe = dataclasses.replace(_build(Recipe, top, where), budget=dict(budget), **sections)
    if recipe.world.config_base not in ("default", "tiny"):
        raise UserError(f"{where} [world]: config_base must be 'default' or 'tiny', got {recipe.world.config_base!r}")
    if recipe.export.dtype not in ("bf16", "fp32"):
        raise UserError(f"{where} [export]: dtype must be 'bf16' or 'fp32', got {recipe.export.dtype!r}")
    return recipe


def recipe_to_json(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain JSON (kept in RUN_DIR/run.json, so a resumed run uses the same numbers)."""
    return dataclasses.asdict(recipe)


def recipe_from_json(raw: dict[str, Any], where: str) -> Recipe:
    """The recipe a run record holds (recipe_to_json's output), checked like a preset."""
    return _recipe(raw, where)
