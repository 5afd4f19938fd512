"""Training the autoencoder's depth head (`worldmodel train --stage depth`).

The depth head is a light second decoder from the same latent to per-pixel depth and a sky flag
(conventions.depth). It is trained on the oracle's depth with everything else of the autoencoder
frozen, so RGB fidelity and every latent are exactly what they were: a world model trained on the
autoencoder's latents stays valid, and the geometric hint gets the depth of any latent (a generated
frame's, or the encoded start picture's).

Loss on a frame: L1 of log depth on the truth's non-sky pixels + the sky flag's binary cross-entropy +
L1 of log-depth finite differences (sharp depth edges make sharp reprojected edges).

What a run leaves in OUT_DIR: autoencoder.safetensors (the autoencoder with its depth head, written
atomically at the end and at every validation), world_model.safetensors when the base was a
world-model checkpoint (that checkpoint with the new head, written at the end: what play and eval
load), log.jsonl (loss terms, validation abs-rel, delta<1.25, sky accuracy) and train_state.pt (the head, its optimizer, the step and the sampler's
RNG, written atomically every `ckpt_every` steps): a run started again with the same arguments
continues from it and takes the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from worldmodel.autoencoder import (DEFAULT_DEPTH_WIDTHS, DEPTH_HEAD_PREFIX, Autoencoder, load_autoencoder,
                                    save_autoencoder)
from worldmodel.autoencoder import read_checkpoint_metadata as read_autoencoder_metadata
from worldmodel.data import ClipDataset, FrameSampler
from conventions.depth import depth_errors, sky_mask
from conventions.errors import UserError
from conventions.progress import ProgressBar
from worldmodel.scalars import LOG_FILE, ScalarLog
from worldmodel.train import PRODUCT_CHECKPOINT
from worldmodel.checkpoint import (CHECKPOINT_FORMAT, checkpoint_float_dtype, checkpoint_sha256, load_checkpoint,
                                   read_checkpoint_metadata, save_checkpoint)
from worldmodel.run_io import atomic_torch_save, read_state_file, resolve_device, warmup_cosine

CHECKPOINT_NAME = "autoencoder.safetensors"
LOG_NAME = LOG_FILE
VAL_SEED = 1234
VAL_FRAMES = 512
EVAL_BATCH = 128


@dataclass(frozen=True)
class DepthTrainConfig:
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 50
    sky_weight: float = 0.5
    edge_weight: float = 0.5
    val_every: int = 500
    seed: int = 0
    ckpt_every: int = 250
    """Steps between resumable states (train_state.pt)."""


def is_world_checkpoint(path: str | Path) -> bool:
    """True for a world-model checkpoint (which bundles an autoencoder), False for anything else."""
    try:
        return read_checkpoint_metadata(path).get("format") == CHECKPOINT_FORMAT
    except UserError:
        return False


def load_base_autoencoder(path: str | Path) -> Autoencoder:
    """An autoencoder checkpoint, or the autoencoder bundled in a world-model checkpoint."""
    if is_world_checkpoint(path):
        return load_checkpoint(path)[1]
    return load_autoencoder(Path(path))


def write_world_checkpoint(base: str | Path, ae: Autoencoder, out: Path, metrics: dict[str, float],
                           steps: int) -> Path:
    """The world-model checkpoint `base` with `ae` (its new depth head) in place of its autoencoder,
    written to `out`: what play, eval and the closed-loop stages load. Only the depth head differs,
    so the world model's latents are still the ones it was trained on. Weights keep `base`'s storage
    type; the train summary keeps `base`'s and records the head's steps and held-out metrics."""
    model, base_ae, _ = load_checkpoint(base)
    changed = [k for k, v in ae.state_dict().items() if not k.startswith(DEPTH_HEAD_PREFIX)
               and not torch.equal(v.cpu(), base_ae.state_dict()[k])]
    if changed:
        raise RuntimeError(f"write_world_checkpoint: the frozen autoencoder changed ({changed[:3]})")
    meta = read_checkpoint_metadata(base)
    summary = {**json.loads(meta.get("train", "{}")),
               "depth_head": {"base": str(base), "base_sha256": checkpoint_sha256(base), "steps": steps,
                              "val": metrics}}
    return save_checkpoint(out, model, ae.cpu(), summary, dtype=checkpoint_float_dtype(base))


def with_depth_head(ae: Autoencoder, widths: tuple[int, ...] = DEFAULT_DEPTH_WIDTHS) -> Autoencoder:
    """`ae` with a fresh depth head (or `ae` itself when it has one)."""
    if ae.has_depth:
        return ae
    cfg = dataclasses.replace(ae.config, depth_widths=tuple(widths))
    out = Autoencoder(cfg)
    missing, unexpected = out.load_state_dict(ae.state_dict(), strict=False)
    if unexpected or any(not k.startswith(DEPTH_HEAD_PREFIX) for k in missing):
        raise RuntimeError(f"with_depth_head: unexpected state {unexpected}, {missing}")
    return out


def depth_loss(ae: Autoencoder, latents: torch.Tensor, truth: torch.Tensor, cfg: DepthTrainConfig
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """latents [B, C, h, w] (normalised), truth depth [B, H, W] -> (loss, terms)."""
    log_d, sky_logit = ae.depth_outputs(latents)
    sky = sky_mask(truth)
    geo = (~sky).float()
    log_t = truth.clamp(min=1e-3).log()
    err = (log_d - log_t) * geo
    l1 = err.abs().sum() / geo.sum().clamp(min=1.0)
    gx = ((err[:, :, 1:] - err[:, :, :-1]).abs() * geo[:, :, 1:] * geo[:, :, :-1]).mean()
    gy = ((err[:, 1:] - err[:, :-1]).abs() * geo[:, 1:] * geo[:, :-1]).mean()
    bce = F.binary_cross_entropy_with_logits(sky_logit, sky.float())
    loss = l1 + cfg.sky_weight * bce + cfg.edge_weight * (gx + gy)
    return loss, {"loss": loss.item(), "log_l1": l1.item(), "sky_bce": bce.item()}


@torch.inference_mode()
def evaluate_depth(ae: Autoencoder, frames: torch.Tensor, depth: torch.Tensor) -> dict[str, float]:
    """Depth metrics (conventions.depth.depth_errors) of the head on frames uint8 [N, H, W, 3]."""
    dev = ae.latent_mean.device
    preds = [ae.decode_depth(ae.encode(frames[i:i + EVAL_BATCH].to(dev))).cpu()
             for i in range(0, frames.shape[0], EVAL_BATCH)]
    return depth_errors(torch.cat(preds), depth)


DEPTH_STATE_NAME = "train_state.pt"
DEPTH_STATE_FORMAT = "worldmodel.depth_train_state"


def _load_depth_state(path: Path, cfg: DepthTrainConfig, base_sha: str) -> dict | None:
    """The resumable state at `path` if it belongs to this run (same settings, same base), else None."""
    if not path.exists():
        return None
    state = read_state_file(path, DEPTH_STATE_FORMAT, "depth-head training state", "delete it to start over")
    if state.get("config") != dataclasses.asdict(cfg) or state.get("base_sha256") != base_sha:
        raise UserError(f"{path}: a depth-head run with other settings or another base autoencoder; "
                        f"use another output folder")
    return state


def train_depth_head(data_dir: str | Path, out_dir: str | Path, base_autoencoder: str | Path,
                     val_dir: str | Path | None = None, cfg: DepthTrainConfig = DepthTrainConfig(),
                     device: str = "cpu", resume: bool = True) -> Path:
    """Train the depth head of `base_autoencoder` on a data set with depth; returns the checkpoint.

    Resumes from OUT/train_state.pt when it holds a run of the same settings (`resume`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = ClipDataset(data_dir)
    if not ds.has_depth:
        raise UserError(f"{ds.path}: this data set stores no depth; make it again with `worldmodel dataset`")
    val_ds = ClipDataset(val_dir) if val_dir is not None else ds
    if not val_ds.has_depth:
        raise UserError(f"{val_ds.path}: this data set stores no depth")
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):  # the head's initial weights belong to cfg.seed, not to the caller
        torch.manual_seed(cfg.seed)
        ae = with_depth_head(load_base_autoencoder(base_autoencoder)).to(dev)
    if ae.config.resolution != ds.resolution:
        raise UserError(f"{ds.path}: frames are {ds.resolution} px, the autoencoder's {ae.config.resolution}")
    for name, p in ae.named_parameters():
        p.requires_grad_(name.startswith(DEPTH_HEAD_PREFIX))
    params = [p for p in ae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sampler = FrameSampler(ds, seed=cfg.seed)
    val_frames, val_depth = FrameSampler(val_ds, seed=VAL_SEED).sample_with_depth(VAL_FRAMES)
    state_path = out / DEPTH_STATE_NAME
    base_sha = checkpoint_sha256(base_autoencoder)
    state = _load_depth_state(state_path, cfg, base_sha) if resume else None
    start = 0
    if state is not None:
        ae.depth_decoder.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        start = int(state["step"])
    scalars = ScalarLog(out, resume_step=start)  # log.jsonl (+ TensorBoard events when installed)
    ckpt = out / CHECKPOINT_NAME
    bar = ProgressBar(cfg.steps, "depth head", start=start)
    t0 = time.perf_counter()
    log = scalars.write

    ae.eval()  # GroupNorm only: eval/train are the same; keeps the frozen parts frozen
    for step in range(start + 1, cfg.steps + 1):
        lr = warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        frames, depth = sampler.sample_with_depth(cfg.batch)
        frames, depth = frames.to(dev), depth.to(dev)
        with torch.no_grad():
            latents = ae.encode(frames)
        loss, terms = depth_loss(ae, latents, depth, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if step % 50 == 0:
            log({"step": step, "lr": lr, **terms, "it_s": (step - start) / (time.perf_counter() - t0)})
        if step % cfg.val_every == 0 or step == cfg.steps:
            metrics = evaluate_depth(ae, val_frames, val_depth)
            log({"step": step, "val": metrics})
            print(f"\nstep {step}: held-out abs-rel {metrics['abs_rel']:.4f}, delta<1.25 "
                  f"{metrics['delta_1_25']:.4f}, sky accuracy {metrics['sky_accuracy']:.4f}", file=sys.stderr)
            save_autoencoder(ae, ckpt, {"depth_val": json.dumps(metrics), "depth_steps": str(step)})
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            atomic_torch_save({"format": DEPTH_STATE_FORMAT, "config": dataclasses.asdict(cfg),
                                "base_sha256": base_sha, "step": step,
                                "head": {k: v.detach().cpu() for k, v in ae.depth_decoder.state_dict().items()},
                                "optimizer": opt.state_dict(), "sampler": sampler.state()}, state_path)
    if not ckpt.exists():  # resumed a finished run whose checkpoint was removed
        save_autoencoder(ae, ckpt, {"depth_val": json.dumps(evaluate_depth(ae, val_frames, val_depth)),
                                    "depth_steps": str(cfg.steps)})
    if is_world_checkpoint(base_autoencoder):
        final = json.loads(read_autoencoder_metadata(ckpt).get("depth_val", "{}"))
        world = write_world_checkpoint(base_autoencoder, ae, out / PRODUCT_CHECKPOINT, final, cfg.steps)
        print(f"world model with this depth head: {world}", file=sys.stderr)
    bar.close()
    scalars.close()
    return ckpt
