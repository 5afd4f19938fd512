"""`worldmodel play`: play a scene in a window with keyboard and mouse.

    worldmodel play [SCENE] [--image PATH --prompt TEXT] [--backend oracle|model] [--record PATH]
                    [--tick-hz F] [--window 512] [--seed N] [--max-ticks N] [--checkpoint PATH]
                    [--precision fp32|bf16] [--hint on|off] [--memory on|off] [--save-world DIR]
                    [--load-world DIR]

SCENE is a bundled scene name, a scene folder or `procedural:<seed>`. Without a display (Linux,
no DISPLAY/WAYLAND_DISPLAY, no SDL_VIDEODRIVER) it says so in one line and exits with 2: record
elsewhere or write a log, then export it with `worldmodel replay LOG --out run.mp4`.
"""

from __future__ import annotations

import argparse
import sys

from game.frame_source import BACKEND_CHOICES, DEFAULT_BACKEND
from conventions.camera import DEFAULT_RESOLUTION, DEFAULT_TICK_HZ
from worldmodel.config import PRECISION_NAMES
from conventions.errors import UserError
from tools.common import add_threads_flag, apply_threads
from conventions.atomic import check_output_path
from conventions.limits import flag_type
from worldmodel.world_state import check_world_target, read_world_meta
from game.loop import DEFAULT_WINDOW, display_available, GameConfig, NO_DISPLAY_MESSAGE, run_game

NO_DISPLAY_EXIT = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", nargs="?", default=None,
                   help="bundled scene name, scene folder or procedural:<seed> (default: the default scene)")
    p.add_argument("--image", default=None, help="start from this picture (PNG/JPEG) instead of the scene's")
    p.add_argument("--prompt", default=None, help="text prompt (default: the scene's)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=DEFAULT_BACKEND,
                   help=f"frame source (default {DEFAULT_BACKEND})")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--precision", default=None, choices=PRECISION_NAMES,
                   help="model arithmetic: fp32 (default) or bf16 (about 10%% faster per frame on a CPU)")
    p.add_argument("--hint", default=None, choices=("on", "off"),
                   help="the model's geometric hint (default: on when the checkpoint reads one)")
    p.add_argument("--memory", default=None, choices=("on", "off"),
                   help="the model's memory of places seen before (default on; off shows what it does)")
    p.add_argument("--steps", type=flag_type("sample_steps"), default=None,
                   help="the model's denoising steps per frame (default: the checkpoint's, 2 for the shipped "
                        "one; 1 is about 20%% faster per frame and drifts more on long walks: docs/model_card.md)")
    p.add_argument("--memory-key-scale", type=flag_type("memory_key_scale"), default=None,
                   help="the memory entries' keys scaled in the model's cache, 1 = as trained (default: the "
                        "checkpoint's, 0.9 for the shipped one: long walks no longer wash out, "
                        "docs/model_card.md)")
    p.add_argument("--record", default=None, metavar="PATH",
                   help="record an action log from the first tick (R records to recordings/ any time)")
    p.add_argument("--tick-hz", type=flag_type("tick_hz"), default=DEFAULT_TICK_HZ,
                   help=f"ticks (= generated frames) per second (default {DEFAULT_TICK_HZ:g})")
    p.add_argument("--window", type=flag_type("window"), default=DEFAULT_WINDOW, help=f"window side in pixels (default {DEFAULT_WINDOW})")
    p.add_argument("--smooth", action="store_true", help="smooth upscaling (default: nearest, crisp pixels)")
    p.add_argument("--resolution", type=flag_type("resolution"), default=DEFAULT_RESOLUTION,
                   help=f"oracle frame size (default {DEFAULT_RESOLUTION}; the model uses its checkpoint's)")
    p.add_argument("--seed", type=flag_type("seed"), default=None,
                   help="sampling seed of the session (default 0, or the saved world's)")
    p.add_argument("--max-ticks", type=flag_type("ticks"), default=None, help="quit after N ticks (automation)")
    p.add_argument("--walk", action="store_true", help="start in walking mode (height kept; F toggles)")
    add_threads_flag(p)
    p.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (H toggles)")
    p.add_argument("--save-world", default=None, metavar="DIR",
                   help="save the world (memory + generator state) to DIR on quit and on F5 (model backend)")
    p.add_argument("--load-world", default=None, metavar="DIR",
                   help="continue a saved world (its scene, prompt and seed unless given; same checkpoint)")


def run(args: argparse.Namespace) -> int:
    apply_threads(args)

    if not display_available():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return NO_DISPLAY_EXIT
    # every output is checked now, before the session starts: a session is never lost at quit
    if args.record is not None:
        check_output_path(args.record, inputs=(args.image, args.checkpoint, args.load_world), flag="--record")
    if args.save_world is not None:
        check_world_target(args.save_world)
    if args.prompt is not None and args.image is None and args.backend == "oracle":
        print("note: the oracle ignores --prompt (it renders the scene's world)", file=sys.stderr)
    if args.load_world is not None:
        if args.backend != "model":
            raise UserError(f"--load-world: a saved world continues with --backend model, not {args.backend}")
        meta = read_world_meta(args.load_world)
        if args.scene is None:
            args.scene = meta.get("scene")
        if args.prompt is None and args.image is None:
            args.prompt = meta.get("prompt")
        if args.image is None and meta.get("image"):
            args.image = meta["image"]
        if args.seed is None and isinstance(meta.get("seed"), int):
            args.seed = meta["seed"]
    if args.seed is None:
        args.seed = 0
    if args.save_world is not None and args.backend != "model":
        raise UserError(f"--save-world: saving a world needs --backend model (the {args.backend} has no memory)")
    config = GameConfig(scene=args.scene, image=args.image, prompt=args.prompt, backend=args.backend,
                        checkpoint=args.checkpoint, precision=args.precision,
                        hint=None if args.hint is None else args.hint == "on",
                        memory=None if args.memory is None else args.memory == "on", sample_steps=args.steps,
                        memory_key_scale=args.memory_key_scale,
                        seed=args.seed, tick_hz=args.tick_hz,
                        resolution=args.resolution, window=args.window, smooth=args.smooth, record=args.record,
                        max_ticks=args.max_ticks, fly=not args.walk, show_hud=not args.no_hud,
                        save_world=args.save_world, load_world=args.load_world)
    result = run_game(config)
    for path in result.recordings:
        print(f"recorded {path}", file=sys.stderr)
    for path in result.screenshots:
        print(f"screenshot {path}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
