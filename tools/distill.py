"""`worldmodel distill`: distil a many-step teacher into a 1-2 step causal student (Self Forcing + DMD).

    worldmodel distill --teacher runs/world/world_model.safetensors --data train_latents.safetensors \\
                       --val heldout_latents.safetensors --out runs/student --steps 1000 --student-steps 1
    worldmodel distill ... --no-self-rollout      # ablation: teacher-forced student (no self rollout)

Resumes from OUT when it holds a distillation state of the same teacher, student config and recipe
(--no-resume starts over); prints a progress bar on stderr and writes its curves to OUT/log.jsonl (and
OUT/tensorboard/ with the `tensorboard` extra; `worldmodel plot-train OUT` draws them). The result,
OUT/world_model.safetensors, is an ordinary checkpoint: `worldmodel play --checkpoint` plays it.
See docs/distillation.md for the recipe and the metrics to report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conventions.errors import UserError
from tools.common import add_threads_flag, apply_threads, parse_overrides
from conventions.limits import flag_type
from tools.train import export_checkpoint
from worldmodel.distill import distill, DistillOptions

STUDENT_STEP_CHOICES = (1, 2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", type=Path, required=True,
                   help="the teacher checkpoint (world_model.safetensors of `worldmodel train --stage world`)")
    p.add_argument("--data", type=Path, required=True, help="latent cache the teacher was trained on (.safetensors)")
    p.add_argument("--val", type=Path, default=None, help="held-out latent cache for validation PSNRs")
    p.add_argument("--out", type=Path, required=True, help="run folder (state, checkpoint, log.jsonl)")
    p.add_argument("--steps", type=flag_type("count"), default=None, help="generator updates (default 1000)")
    p.add_argument("--student-steps", type=int, choices=STUDENT_STEP_CHOICES, default=None,
                   help="sampler steps per frame of the student after the warmup frames (default 2)")
    p.add_argument("--warmup-steps", type=flag_type("ticks"), default=None,
                   help="sampler steps of the student's first frames (default 4)")
    p.add_argument("--warmup-frames", type=flag_type("count"), default=None,
                   help="how many first frames get --warmup-steps (default 2)")
    p.add_argument("--no-self-rollout", action="store_true",
                   help="ablation: the student generates each frame from the true previous frames")
    p.add_argument("--batch", type=flag_type("count"), default=None, help="clips per rollout (default 4)")
    p.add_argument("--rollout-frames", type=flag_type("count"), default=None, help="frames generated per clip (default 12)")
    p.add_argument("--fake-steps", type=flag_type("count"), default=None, help="fake-score updates per generator update (default 5)")
    p.add_argument("--lr", type=float, default=None, help="student learning rate")
    p.add_argument("--fake-lr", type=float, default=None, help="fake-score learning rate")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override any DistillOptions field, e.g. --opt grad_step=last --opt real_guidance=2")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    add_threads_flag(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a run")
    p.add_argument("--stop-after", type=flag_type("ticks"), default=None,
                   help="stop this invocation after N steps (resume later with the same command)")
    p.add_argument("--export", type=Path, default=None, help="also copy the final checkpoint here")


def options_from_args(args: argparse.Namespace):
    """DistillOptions from --opt overrides plus the dedicated flags (flags win)."""
    over = parse_overrides(args.opt, DistillOptions, "--opt")
    for flag in ("steps", "student_steps", "warmup_steps", "warmup_frames", "batch", "rollout_frames",
                 "fake_steps", "lr", "fake_lr"):
        value = getattr(args, flag)
        if value is not None:
            over[flag] = value
    if args.no_self_rollout:
        over["self_rollout"] = False
    try:
        return DistillOptions(**over).validate()
    except TypeError as exc:
        raise UserError(f"--opt: {exc}") from None


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    options = options_from_args(args)
    path = distill(args.teacher, args.data, args.out, options, val_latents_path=args.val,
                   resume=not args.no_resume, device=args.device, stop_after=args.stop_after)
    print(f"student checkpoint: {path}")
    if args.export is not None:
        export_checkpoint(path, args.export)
    return 0
