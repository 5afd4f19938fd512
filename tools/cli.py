"""The `worldmodel` console command: one subcommand per program in `tools/` (and the game).

Each subcommand lives in its own module of this package exposing `add_arguments(parser)` and
`run(args) -> int`. This module is the top of the import graph (docs/architecture.md §Packages):
it imports every tool, and no package below imports it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import ModuleType

from conventions.errors import UserError
from tools import (average, bench, dataset, distill, eval as eval_tool, export_autoencoder, play, plot_train, replay,
                   strip, train)
from worldmodel.allocator import keep_freed_memory

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "play": (play, "play a scene in a window (keyboard + mouse)"),
    "replay": (replay, "replay an action log to a window, a video file or PNG frames"),
    "dataset": (dataset, "write training clips from procedural worlds"),
    "train": (train, "train the autoencoder and the world model"),
    "distill": (distill, "distil the teacher into a 1-2 step student (Self Forcing + DMD)"),
    "average": (average, "average fine-tuned checkpoints' weights into a new checkpoint"),
    "export-autoencoder": (export_autoencoder, "write the autoencoder a world-model checkpoint bundles as its own file"),
    "eval": (eval_tool, "score the model against the procedural ground truth"),
    "bench": (bench, "benchmark the oracle renderer and the play loop"),
    "strip": (strip, "a picture strip of a rollout (truth / hint on / hint off, or a picture's depth)"),
    "plot-train": (plot_train, "draw a training run's curves (losses, lr, validation PSNR, steps/s)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldmodel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
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
    keep_freed_memory()  # before the first tensor: the allocator settings every command runs best with
    parser = build_parser()
    args = parser.parse_args(argv)
    module = args._module
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
