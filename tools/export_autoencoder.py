"""`worldmodel export-autoencoder CKPT --out AE`: the autoencoder a world-model checkpoint bundles, as
its own autoencoder checkpoint.

Why: `worldmodel train --stage latents` and `--stage world` take the autoencoder file the latents
were encoded with (its sha256 ties a latent cache to it), while a shipped world-model checkpoint
carries its autoencoder (depth head included) inside. Fine-tuning the shipped model on new data
starts here (docs/training.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from conventions.atomic import check_output_path
from worldmodel.autoencoder import file_sha256, save_autoencoder
from worldmodel.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, nargs="?", default=None,
                   help="a world-model checkpoint (default: the shipped one)")
    p.add_argument("--out", type=Path, required=True, help="where to write the autoencoder checkpoint")


def run(args: argparse.Namespace) -> int:
    ckpt = args.checkpoint or DEFAULT_CHECKPOINT
    check_output_path(args.out, inputs=(ckpt,))
    autoencoder = load_checkpoint(ckpt)[1]
    out = save_autoencoder(autoencoder, args.out, {"exported_from_sha256": file_sha256(ckpt)})
    depth = "with" if autoencoder.has_depth else "without"
    print(f"wrote {out} (autoencoder {depth} a depth head, sha256 {file_sha256(out)[:16]}...)")
    return 0
