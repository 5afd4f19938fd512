"""`worldmodel replay`: replay an action log to a video file, PNG frames or the game window.

    worldmodel replay LOG [--out run.mp4|run.gif|DIR/] [--backend oracle|model] [--fps F] [--size 256]
                          [--hint on|off] [--memory on|off] [--steps N]

Replay follows the logged poses. With --out it runs headless (progress bar on stderr) and writes
the file atomically; frames stay at their native resolution unless --size (nearest upscaling).
Without --out it plays the log in the game window.
"""

from __future__ import annotations

import argparse
import sys

from game.frame_source import BACKEND_CHOICES
from conventions.errors import UserError
from tools.common import add_threads_flag, apply_threads
from conventions.limits import flag_type
from game.loop import display_available
from game.replay import export_replay, replay_in_window

NO_DISPLAY_EXIT = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", help="action log (.jsonl) written by `worldmodel play`")
    p.add_argument("--out", default=None,
                   help="run.mp4, run.gif or a folder DIR/ of frame_00000.png ... (default: show in a window)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="frame source (default: the one the log was recorded with)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--hint", default=None, choices=("on", "off"),
                   help="the model's geometric hint (default: as the log was recorded)")
    p.add_argument("--memory", default=None, choices=("on", "off"),
                   help="the model's memory (default: as the log was recorded)")
    p.add_argument("--steps", type=flag_type("sample_steps"), default=None,
                   help="the model's denoising steps per frame (default: as the log was recorded)")
    p.add_argument("--fps", type=flag_type("fps"), default=None, help="playback frame rate (default: the log's tick rate)")
    p.add_argument("--size", type=flag_type("size"), default=None,
                   help="output side in pixels, nearest upscaling (default: native resolution)")
    p.add_argument("--window", type=flag_type("window"), default=None, help="window side when replaying in a window")
    add_threads_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if args.out is not None:
        result = export_replay(args.log, args.out, backend=args.backend, fps=args.fps, size=args.size,
                               checkpoint=args.checkpoint, progress=not args.quiet, hint=_hint(args),
                               memory=_memory(args), steps=args.steps)
        print(f"wrote {result.path} ({result.frames} frames, {result.ms_per_frame:.1f} ms/frame)", file=sys.stderr)
        return 0
    if not display_available():
        print("worldmodel replay: no display here (DISPLAY/WAYLAND_DISPLAY unset); export instead: "
              f"worldmodel replay {args.log} --out run.mp4", file=sys.stderr)
        return NO_DISPLAY_EXIT
    if args.size is not None:
        raise UserError("--size applies to --out exports; use --window for the window size")
    replay_in_window(args.log, backend=args.backend, checkpoint=args.checkpoint, window=args.window, fps=args.fps,
                     hint=_hint(args), memory=_memory(args), steps=args.steps)
    return 0


def _hint(args: argparse.Namespace) -> bool | None:
    return None if args.hint is None else args.hint == "on"


def _memory(args: argparse.Namespace) -> bool | None:
    return None if args.memory is None else args.memory == "on"
