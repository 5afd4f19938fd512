"""The `worldmodel` console command: one subcommand per program in `tools/` (and the game).

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported lazily so `worldmodel --help` stays fast and a broken optional part cannot
stop the others from starting.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from worldmodel.errors import UserError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("tools.play", "play a scene in a window (keyboard + mouse)"),
    "replay": ("tools.replay", "replay an action log to a window, a video file or PNG frames"),
    "dataset": ("tools.dataset", "write training clips from procedural worlds"),
    "train": ("tools.train", "train the autoencoder and the world model"),
    "distill": ("tools.distill", "distil the teacher into a 1-2 step student (Self Forcing + DMD)"),
    "average": ("tools.average", "average fine-tuned checkpoints' weights into a new checkpoint"),
    "eval": ("tools.eval", "score the model against the procedural ground truth"),
    "bench": ("tools.bench", "benchmark the oracle renderer and the play loop"),
    "strip": ("tools.strip", "a picture strip of a rollout (truth / hint on / hint off, or a picture's depth)"),
    "plot-train": ("tools.plot_train", "draw a training run's curves (losses, lr, validation PSNR, steps/s)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldmodel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a part not built yet / missing optional dependency
            p.set_defaults(_import_error=str(exc))
            continue
        module.add_arguments(p)
    return parser


SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so every `finally` and abort path runs (temp files of an
    export or a save are removed) as for Ctrl-C. A BaseException: `except Exception` must not catch it."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_import_error", None):
        print(f"worldmodel {args.command}: unavailable ({args._import_error})", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return SIGINT_EXIT
    except Terminated:
        print("terminated (SIGTERM); nothing half-written was left behind", file=sys.stderr)
        return SIGTERM_EXIT
    except BrokenPipeError:  # `worldmodel ... | head`: the reader left; not an error of ours
        # Python would flush stdout again at exit and print a second BrokenPipeError: point it at devnull
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
