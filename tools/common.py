"""What several commands share: the `--threads` flag and its one application."""

from __future__ import annotations

import argparse

import torch

from conventions.limits import flag_type

THREADS_HELP = ("CPU threads for torch (default: torch's choice; 1 is often fastest for 64 px frames on a busy "
                "machine)")


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=flag_type("threads"), default=None, help=THREADS_HELP)


def apply_threads(args: argparse.Namespace) -> None:
    """torch.set_num_threads(--threads) when given (the range is checked at parsing)."""
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
