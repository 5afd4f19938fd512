"""`worldmodel train`: everything from nothing in one command (stage all, tools/train_all.py), or one
stage: train the autoencoder (stage ae), cache latents (stage latents), train the world model (stage world).

    worldmodel train --stage all --preset cpu --budget-minutes 60 --out runs/cpu60

    worldmodel train --stage ae      --data data/train --val data/heldout --out runs/ae --steps 3000
    worldmodel train --stage latents --data data/train --autoencoder runs/ae/autoencoder.safetensors \\
                     --out data/train_latents.safetensors
    worldmodel train --stage world   --data data/train_latents.safetensors --val data/heldout_latents.safetensors \\
                     --autoencoder runs/ae/autoencoder.safetensors --out runs/world --steps 3000
    worldmodel train --stage world   --data data/train_latents.safetensors data/retrace_latents.safetensors \
                     --autoencoder runs/ae/autoencoder.safetensors --out runs/memory --steps 2000 \
                     --opt init_from=worldmodel/checkpoints/default.safetensors --opt revisit_focus=0.5
    worldmodel train --stage self-forcing --data data/train_latents.safetensors \
                     --checkpoint worldmodel/checkpoints/default.safetensors --out runs/sf --steps 200 --ticks 6
    torchrun --nproc_per_node 8 -m tools.cli train --stage world ... [--fsdp]

The ae and world stages resume from OUT when it holds a training state of the same config (--no-resume
starts over), print a progress bar on stderr and write their curves to OUT/log.jsonl (and OUT/tensorboard/
with the `tensorboard` extra; `worldmodel plot-train OUT` draws them). The world stage writes
OUT/world_model.safetensors: the one checkpoint `worldmodel play --checkpoint` loads. Only the world
stage runs under torchrun (DDP, or FSDP with --fsdp; --batch is then the global batch); the other two
refuse to start in more than one process rather than do the same work N times. See docs/training.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from conventions.errors import UserError
from tools.common import add_threads_flag, apply_threads, parse_overrides
from conventions.atomic import atomic_write, check_output_path
from conventions.limits import flag_type
from worldmodel.autoencoder import file_sha256, load_autoencoder
from worldmodel.closed_loop import write_rollout_cache
from worldmodel.config import default_config, tiny_config, WorldModelConfig
from worldmodel.data import DEFAULT_ENCODE_BATCH, encode_dataset
from worldmodel.distributed import read_launch_env
from worldmodel.run_io import resolve_device
from worldmodel.self_forcing import SelfForcingOptions, train_self_forcing
from worldmodel.train import train_world_model, TrainOptions
from worldmodel.train_autoencoder import train_autoencoder
from worldmodel.train_depth import DepthTrainConfig, train_depth_head
from tools.train_all import add_arguments as add_all_arguments, run_from_args as run_all_from_args

PRESETS = ("default", "tiny")
"""--preset of --stage world: the model config. --stage all takes a recipe preset (tools/recipe.py)."""
STAGES = ("all", "ae", "depth", "latents", "world", "rollouts", "self-forcing")
ROLLOUT_TICKS = 48
"""--ticks of --stage rollouts when not given."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=STAGES, required=True,
                   help="all: every stage from nothing within --budget-minutes (tools/train_all.py); "
                        "ae: the autoencoder; depth: its depth head (everything else frozen); latents: "
                        "encode a data set with it; world: the world model; rollouts: a closed-loop cache of "
                        "a checkpoint's own rollouts (then --stage world on it); self-forcing: fine-tune a hint "
                        "checkpoint on rollouts of the play session made by its current weights, gradient "
                        "through each frame's last denoising pass (worldmodel/self_forcing.py)")
    p.add_argument("--data", type=Path, default=None, nargs="+",
                   help="ae, latents: a clip data set folder; world: one or more latent caches (.safetensors), "
                        "trained on together")
    p.add_argument("--val", type=Path, default=None,
                   help="held-out data of the same kind (ae: folder, world: latent cache)")
    p.add_argument("--out", type=Path, default=None,
                   help="all, ae, world: run folder (checkpoints, log.jsonl); latents: the cache file to write")
    p.add_argument("--steps", type=flag_type("count"), default=None, help="total optimisation steps")
    p.add_argument("--batch", type=flag_type("count"), default=None,
                   help="batch size (world: the global batch, split over the torchrun processes)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:1 ... (default auto; under torchrun auto/cuda = cuda:LOCAL_RANK)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a run")
    add_threads_flag(p)
    p.add_argument("--autoencoder", type=Path, default=None,
                   help="latents: the autoencoder to encode with; world: the one the latents were encoded "
                        "with (bundled into the checkpoint); depth: the autoencoder whose head is trained, or a "
                        "world-model checkpoint (OUT then also gets world_model.safetensors with the new head)")
    p.add_argument("--preset", default=None,
                   help="world: model config preset (default, tiny; default default); all: the recipe "
                        "(tiny, cpu, gpu, or a .toml file written like tools/presets/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="world: override a WorldModelConfig field (JSON value), e.g. --set layers=6")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="world: override a TrainOptions field, e.g. --opt val_every=200")
    p.add_argument("--stop-after", type=flag_type("ticks"), default=None,
                   help="world: stop this run after N steps (resume later with the same command)")
    p.add_argument("--export", type=Path, default=None,
                   help="world: also copy the final checkpoint here (e.g. the shipped default path)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="rollouts: the world-model checkpoint to roll out; self-forcing: the one to fine-tune")
    p.add_argument("--clips", type=flag_type("count"), default=120, help="rollouts: clips to roll out (default 120)")
    p.add_argument("--ticks", type=flag_type("count"), default=None,
                   help=f"rollouts: ticks per rollout (default {ROLLOUT_TICKS}); self-forcing: generated frames per "
                        f"segment (default {SelfForcingOptions.frames})")
    p.add_argument("--seed", type=flag_type("seed"), default=0,
                   help="rollouts: sampler seed offset; self-forcing: the segment sampler's seed (default 0)")
    add_all_arguments(p)
    p.add_argument("--fsdp", action="store_true",
                   help="world, under torchrun: shard parameters, gradients and optimizer state across the "
                        "processes (FSDP) instead of replicating the model (DDP)")


def _run_world(args: argparse.Namespace) -> int:
    if args.autoencoder is None:
        raise UserError("train --stage world: --autoencoder PATH is required (the checkpoint bundles it)")
    overrides = parse_overrides(args.set, WorldModelConfig, "--set")
    try:
        config = (tiny_config if args.preset == "tiny" else default_config)(**overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--set: {exc}") from None
    opt_over = parse_overrides(args.opt, TrainOptions, "--opt")
    for flag, key in (("steps", "steps"), ("batch", "batch"), ("lr", "lr")):
        value = getattr(args, flag)
        if value is not None:
            opt_over[key] = value
    if args.fsdp:
        opt_over["fsdp"] = True
    options = TrainOptions(**opt_over)
    path = train_world_model(list(args.data), args.out, args.autoencoder, options, config, val_latents_path=args.val,
                             resume=not args.no_resume, device=args.device, stop_after=args.stop_after)
    if not _is_main_process():
        return 0  # rank 0 reports and exports
    print(f"world model checkpoint: {path}")
    if args.export is not None:
        export_checkpoint(path, args.export)
    return 0


def export_checkpoint(path: Path, export: Path) -> None:
    """Copy a finished checkpoint to `export` (e.g. the shipped default path) atomically."""
    check_output_path(export, inputs=(path,), flag="--export")
    atomic_write(export, lambda tmp: shutil.copyfile(path, tmp))
    print(f"exported to {export}")


def _is_main_process() -> bool:
    launch = read_launch_env()
    return launch is None or launch.rank == 0


def _refuse_multi_process(stage: str) -> None:
    launch = read_launch_env()
    if launch is not None and launch.world_size > 1:
        raise UserError(f"train --stage {stage} runs in one process; start it without torchrun "
                        f"(WORLD_SIZE is {launch.world_size}); only --stage world trains distributed")


def _run_latents(args: argparse.Namespace) -> int:
    if args.autoencoder is None:
        raise UserError("train --stage latents: --autoencoder PATH is required")
    if args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; --stage latents writes one .safetensors file")
    batch = args.batch if args.batch is not None else DEFAULT_ENCODE_BATCH
    dev = resolve_device(args.device)
    autoencoder = load_autoencoder(args.autoencoder).to(dev)
    path = encode_dataset(autoencoder, args.data, args.out, batch=batch,
                          autoencoder_sha256=file_sha256(args.autoencoder))
    print(f"latent cache: {path}")
    return 0


ROLLOUT_SETTINGS: tuple[str, ...] = ("hint_composite", "memory_key_scale")
"""The config fields `--set` may change for --stage rollouts: play-time rules no weight depends on (how
the played frames are composited, how softly the memory is attended to)."""


def _run_rollouts(args: argparse.Namespace) -> int:
    if args.checkpoint is None:
        raise UserError("train --stage rollouts: --checkpoint PATH (the model to roll out) is required")
    overrides = parse_overrides(args.set, WorldModelConfig, "--set") if args.set else {}
    other = sorted(set(overrides) - set(ROLLOUT_SETTINGS))
    if other:
        raise UserError(f"train --stage rollouts: --set {other[0]} does not apply; the rollouts play the checkpoint "
                        f"as it is, and only {', '.join(ROLLOUT_SETTINGS)} can be changed for them")
    composite = overrides.get("hint_composite")
    ticks = ROLLOUT_TICKS if args.ticks is None else args.ticks
    write_rollout_cache(args.checkpoint, list(args.data), args.out, args.clips, ticks, args.seed, composite,
                        memory_key_scale=overrides.get("memory_key_scale"))
    return 0


def _run_self_forcing(args: argparse.Namespace) -> int:
    if args.checkpoint is None:
        raise UserError("train --stage self-forcing: --checkpoint PATH (the hint model to fine-tune) is required")
    ignored = [flag for flag, value in (("--val", args.val), ("--autoencoder", args.autoencoder), ("--set", args.set),
                                        ("--opt", args.opt), ("--export", args.export),
                                        ("--stop-after", args.stop_after), ("--fsdp", args.fsdp)) if value]
    if ignored:
        raise UserError(f"train --stage self-forcing: {ignored[0]} does not apply; the checkpoint brings its config "
                        f"and autoencoder, and the stage takes --data, --checkpoint, --out, --steps, --batch, "
                        f"--lr, --ticks and --seed")
    over = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("lr", args.lr), ("frames", args.ticks))
            if v is not None}
    path = train_self_forcing(args.checkpoint, list(args.data), args.out,
                              SelfForcingOptions(seed=args.seed, **over), device=args.device,
                              resume=not args.no_resume)
    print(f"checkpoint: {path}")
    return 0


def _run_depth(args: argparse.Namespace) -> int:
    if args.autoencoder is None:
        raise UserError("train --stage depth: --autoencoder PATH is required (an autoencoder, or a world-model "
                        "checkpoint whose autoencoder gets the depth head)")
    over = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("lr", args.lr)) if v is not None}
    path = train_depth_head(args.data, args.out, args.autoencoder, args.val, DepthTrainConfig(**over),
                            device=args.device, resume=not args.no_resume)
    print(f"autoencoder with depth head: {path}")
    return 0


def _run_ae(args: argparse.Namespace) -> int:
    kwargs: dict[str, Any] = dict(val_dir=args.val, resume=not args.no_resume, device=args.device)
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.batch is not None:
        kwargs["batch_size"] = args.batch
    if args.lr is not None:
        kwargs["lr"] = args.lr
    path = train_autoencoder(args.data, args.out, **kwargs)
    print(f"autoencoder checkpoint: {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if args.stage == "all":
        given = [flag for flag, value in (("--data", args.data), ("--val", args.val), ("--steps", args.steps),
                                          ("--batch", args.batch), ("--lr", args.lr), ("--set", args.set),
                                          ("--opt", args.opt), ("--autoencoder", args.autoencoder),
                                          ("--checkpoint", args.checkpoint), ("--export", args.export),
                                          ("--stop-after", args.stop_after)) if value]
        if given:
            raise UserError(f"train --stage all: {given[0]} does not apply; the recipe comes from the preset "
                            f"(copy tools/presets/cpu.toml, change it, pass --preset my.toml)")
        return run_all_from_args(args)
    if args.budget_minutes is not None or args.max_steps is not None or args.resume is not None:
        raise UserError("--budget-minutes, --max-steps and --resume belong to --stage all")
    if args.preset is not None and args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset}: --stage {args.stage} takes {' or '.join(PRESETS)} "
                        f"(the recipe presets tiny, cpu, gpu are for --stage all)")
    if args.data is None or args.out is None:
        raise UserError(f"train --stage {args.stage}: --data and --out are required")
    if args.stage == "rollouts":
        _refuse_multi_process(args.stage)
        return _run_rollouts(args)
    if args.stage == "self-forcing":
        _refuse_multi_process(args.stage)
        return _run_self_forcing(args)
    if args.stage != "world":
        _refuse_multi_process(args.stage)
        if len(args.data) != 1:
            raise UserError(f"train --stage {args.stage}: --data takes one folder, got {len(args.data)}")
        args.data = args.data[0]
        if args.fsdp:
            raise UserError(f"--fsdp: only --stage world trains distributed, not --stage {args.stage}")
    if args.stage == "ae":
        return _run_ae(args)
    if args.stage == "latents":
        return _run_latents(args)
    if args.stage == "depth":
        return _run_depth(args)
    return _run_world(args)
