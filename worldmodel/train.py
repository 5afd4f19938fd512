"""Training of the causal world model (teacher forcing + per-frame noise levels, DESIGN §4).

One training sample is a segment of a latent clip (worldmodel.data.LatentClips):
    G = [ sink (tick 0) | W + K - 1 clean context frames | K noisy target frames ]
The clean copies get a small noise augmentation (level ~ U[0, ctx_noise_max], told to the model), the
targets get independent flow-matching noise levels (diffusion-forcing style), and every target gets its
own memory entries chosen from the clip's frames older than the window by the play-time rule
(memory.retrieval.select_memory). One joint pass with `build_joint_mask` gives every frame exactly the
keys it would see at play time, and the loss is the MSE of the predicted clean latents of the targets.

`world_model_loss(model, batch, config)` is the pure step function (reused by distillation / DDP);
`train_world_model(...)` is the resumable loop: AdamW + warmup/cosine, EMA of weights, bf16 autocast,
atomic checkpoints (`train_state.pt`: model, EMA, optimizer, step, RNG) every `ckpt_every` steps, the
product checkpoint (EMA weights + autoencoder, one safetensors) next to it, a JSONL log and a text
progress bar on stderr. Validation: teacher-forced next-frame PSNR and a short free-rollout PSNR in
pixel space on held-out clips (against the autoencoder's decoding of the true latents, i.e. the best
the model could do through this autoencoder), plus the copy-last-frame baseline for scale.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from worldmodel.config import WorldModelConfig, default_config
from worldmodel.errors import UserError
from worldmodel.model import JointBatch, WorldModel
from worldmodel.sampler import add_noise, noise_levels
from worldmodel.sampler import sample as sample_frames
from worldmodel.text import Tokenizer

TRAIN_STATE = "train_state.pt"
PRODUCT_CHECKPOINT = "world_model.safetensors"
LOG_FILE = "log.jsonl"
PAD_TICK = -(10 ** 6)
"""Tick of padding frames: far from every real tick, so no window ever includes them."""


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
@dataclass
class LatentData:
    """Latent clips held in memory: latents bf16 [N, T, C, h, w], actions/poses float32 [N, T, 5]."""

    latents: torch.Tensor
    actions: torch.Tensor
    poses: torch.Tensor
    captions: list[str]
    source: str
    autoencoder_sha256: str | None = None

    @property
    def clips(self) -> int:
        return self.latents.shape[0]

    @property
    def ticks(self) -> int:
        return self.latents.shape[1]


def load_latents(path: str | Path, config: WorldModelConfig) -> LatentData:
    """Read a latent cache written by worldmodel.data.encode_dataset and check it fits `config`."""
    from worldmodel.data import LatentClips

    path = Path(path)
    clips = LatentClips(path)
    latents = clips.latents
    if latents.dim() != 5:
        raise UserError(f"{path}: latents have shape {list(latents.shape)}, expected [N, T, C, h, w]")
    n, t, ch, h, w = latents.shape
    want = (config.latent_channels, config.latent_size, config.latent_size)
    if (ch, h, w) != want:
        raise UserError(f"{path}: latent frames are {[ch, h, w]}, the model needs {list(want)} "
                        f"(resolution {config.resolution}); re-encode with the matching autoencoder")
    if t < 2:
        raise UserError(f"{path}: clips have {t} ticks; training needs at least 2")
    if tuple(clips.actions.shape) != (n, t, 5) or tuple(clips.poses.shape) != (n, t, 5):
        raise UserError(f"{path}: actions/poses must be [N, T, 5] matching latents [N, T] = {[n, t]}")
    captions = list(clips.captions)
    if len(captions) != n:
        raise UserError(f"{path}: {len(captions)} captions for {n} clips")
    sha = getattr(clips, "autoencoder_sha256", None)
    return LatentData(latents, clips.actions.float(), clips.poses.float(), captions, str(path), sha)


@dataclass
class TrainBatch:
    """A joint pass plus what the loss needs: targets' clean latents [B, K, C, h, w], their slots in G
    ([K] int64) and noise levels [B, K]."""

    joint: JointBatch
    target_x0: torch.Tensor
    target_index: torch.Tensor
    target_noise: torch.Tensor

    def to(self, device: torch.device | str) -> "TrainBatch":
        return TrainBatch(self.joint.to(device), self.target_x0.to(device), self.target_index.to(device),
                          self.target_noise.to(device))


def sample_target_levels(config: WorldModelConfig, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Noise levels for targets: logit-normal (or uniform), mixed with the sampler's own levels."""
    if config.time_sampling == "logit_normal":
        z = torch.randn(shape, generator=gen) * config.logit_normal_std + config.logit_normal_mean
        t = torch.sigmoid(z)
    else:
        t = torch.rand(shape, generator=gen)
    visited = sorted({lvl for steps in {config.sample_steps, config.warmup_steps}
                      for lvl in noise_levels(steps, config.schedule_shift)[:-1]})
    choice = torch.tensor(visited)[torch.randint(len(visited), shape, generator=gen)]
    use = torch.rand(shape, generator=gen) < config.schedule_time_prob
    return torch.where(use, choice, t).clamp(1e-3, 1.0)


def select_training_memory(poses: torch.Tensor, tick: int, config: WorldModelConfig) -> list[int]:
    """Clip frames (ticks) the play-time rule would retrieve for the frame at `tick`: older than the
    window (age >= W + 1), excluding the sink, best view overlap first, deduplicated."""
    from memory.retrieval import select_memory

    first_old = tick - config.window_frames - 1
    if first_old < 1:
        return []
    cand_ticks = torch.arange(1, first_old + 1)
    idx = select_memory(poses[tick], poses[1: first_old + 1], cand_ticks, current_tick=tick,
                        max_entries=config.memory_entries, min_age=config.window_frames + 1,
                        fov_deg=config.fov_deg)
    return [int(cand_ticks[i]) for i in idx.tolist()]


def build_sample(data: LatentData, clip: int, start: int, config: WorldModelConfig, tokenizer_ids: torch.Tensor,
                 target_levels: torch.Tensor, ctx_levels: torch.Tensor, gen: torch.Generator, targets: int,
                 use_memory: bool = True) -> dict[str, torch.Tensor]:
    """One sample: targets at ticks start .. start+targets-1 of clip `clip` (see module doc)."""
    c = config
    w, k = c.window_frames, targets
    n_ctx = w + k - 1
    lat = data.latents[clip].float()  # [T, C, h, w]
    first_ctx = max(1, start - w)
    ctx_ticks = list(range(first_ctx, start + k - 1))
    pad = n_ctx - len(ctx_ticks)
    tgt_ticks = list(range(start, start + k))
    real = [0] + ctx_ticks + tgt_ticks
    g_ticks = [0] + [PAD_TICK] * pad + ctx_ticks + tgt_ticks
    valid = [True] + [False] * pad + [True] * (len(ctx_ticks) + k)
    clean = [True] * (1 + n_ctx) + [False] * k
    idx = torch.tensor(real)
    x0 = lat[idx]  # [1 + len(ctx) + K, C, h, w]
    noise = torch.randn(x0.shape, generator=gen)
    levels = torch.cat([ctx_levels[: 1 + len(ctx_ticks)], target_levels])
    noisy = add_noise(x0, noise, levels)
    shape = (c.latent_channels, c.latent_size, c.latent_size)
    pad_lat = torch.zeros(pad, *shape)
    latents = torch.cat([noisy[:1], pad_lat, noisy[1:]])
    lv = torch.cat([levels[:1], torch.zeros(pad), levels[1:]])
    acts = torch.cat([data.actions[clip, :1] * 0, torch.zeros(pad, 5), data.actions[clip, idx[1:]]])
    poses_all = data.poses[clip]
    poses = torch.cat([poses_all[:1], poses_all[:1].expand(pad, 5), poses_all[idx[1:]]])
    out = dict(latents=latents, noise=lv, actions=acts, poses=poses, ticks=torch.tensor(g_ticks),
               clean=torch.tensor(clean), sink=torch.tensor([True] + [False] * (n_ctx + k)),
               valid=torch.tensor(valid), text_ids=tokenizer_ids, target_x0=x0[-k:],
               target_noise=target_levels)
    if c.use_memory and c.memory_entries > 0:
        e = c.memory_entries
        m_lat = torch.zeros(k * e, *shape)
        m_pose = torch.zeros(k * e, 5)
        m_owner = torch.zeros(k * e, dtype=torch.long)
        m_valid = torch.zeros(k * e, dtype=torch.bool)
        g_total = 1 + n_ctx + k
        for j, tick in enumerate(tgt_ticks):
            chosen = select_training_memory(poses_all, tick, c) if use_memory else []
            for i in range(e):
                slot = j * e + i
                m_owner[slot] = g_total - k + j
                if i < len(chosen):
                    m_lat[slot] = lat[chosen[i]]
                    m_pose[slot] = poses_all[chosen[i]]
                    m_valid[slot] = True
        out.update(mem_latents=m_lat, mem_poses=m_pose, mem_owner=m_owner, mem_valid=m_valid)
    return out


def collate(samples: list[dict[str, torch.Tensor]], tokenizer_len: int, targets: int) -> TrainBatch:
    """Stack samples (text ids padded to the longest) into a TrainBatch."""
    b = len(samples)
    ids = torch.zeros(b, tokenizer_len, dtype=torch.long)
    mask = torch.zeros(b, tokenizer_len, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = s["text_ids"].shape[0]
        ids[i, :n] = s["text_ids"]
        mask[i, :n] = True

    def st(key: str) -> torch.Tensor | None:
        return torch.stack([s[key] for s in samples]) if key in samples[0] else None

    joint = JointBatch(latents=st("latents"), noise=st("noise"), actions=st("actions"), poses=st("poses"),
                       ticks=st("ticks"), clean=st("clean"), sink=st("sink"), valid=st("valid"),
                       text_ids=ids, text_mask=mask, mem_latents=st("mem_latents"), mem_poses=st("mem_poses"),
                       mem_owner=st("mem_owner"), mem_valid=st("mem_valid"))
    g = joint.ticks.shape[1]
    return TrainBatch(joint, st("target_x0"), torch.arange(g - targets, g), st("target_noise"))


def sample_batch(data: LatentData, config: WorldModelConfig, tokenizer: Tokenizer, batch: int,
                 gen: torch.Generator, caption_dropout: float = 0.0) -> TrainBatch:
    """A random training batch (all randomness from `gen`, so a resumed run draws the same batches)."""
    c = config
    k = min(c.target_frames, data.ticks - 1)
    samples = []
    max_len = 1
    for _ in range(batch):
        clip = int(torch.randint(data.clips, (1,), generator=gen))
        start = int(torch.randint(1, data.ticks - k + 1, (1,), generator=gen))
        drop = float(torch.rand((), generator=gen)) < caption_dropout
        ids = torch.tensor(tokenizer.encode("" if drop else data.captions[clip]))
        max_len = max(max_len, ids.shape[0])
        tl = sample_target_levels(c, (k,), gen)
        cl = torch.rand(c.window_frames + k, generator=gen) * c.ctx_noise_max
        samples.append(build_sample(data, clip, start, c, ids, tl, cl, gen, k))
    return collate(samples, max_len, k)


# --------------------------------------------------------------------------------------------------
# the step function
# --------------------------------------------------------------------------------------------------
def world_model_loss(model: WorldModel, batch: TrainBatch, config: WorldModelConfig
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Pure step function: x0-prediction MSE of the noisy targets -> (loss, metrics)."""
    pred = model.forward_joint(batch.joint)  # [B, G, C, h, w]
    pred_t = pred.index_select(1, batch.target_index).float()  # [B, K, C, h, w]
    err = (pred_t - batch.target_x0.float()).pow(2).flatten(2).mean(-1)  # [B, K]
    loss = err.mean()
    high = batch.target_noise > 0.5
    metrics = {"loss": float(loss.detach())}
    if bool(high.any()):
        metrics["mse_high_noise"] = float(err.detach()[high].mean())
    if bool((~high).any()):
        metrics["mse_low_noise"] = float(err.detach()[~high].mean())
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
@dataclass
class ValidationSet:
    """Fixed held-out probes: (clip, tick) pairs for teacher forcing and clips for free rollouts."""

    data: LatentData
    probes: list[tuple[int, int]]
    rollout_clips: list[int]
    rollout_ticks: int


def make_validation_set(data: LatentData, config: WorldModelConfig, clips: int, rollout_ticks: int,
                        seed: int = 0) -> ValidationSet:
    rng = random.Random(seed)
    chosen = rng.sample(range(data.clips), min(clips, data.clips))
    probes = [(n, rng.randint(1, data.ticks - 1)) for n in chosen]
    return ValidationSet(data, probes, chosen, min(rollout_ticks, data.ticks - 1))


@torch.no_grad()
def teacher_forced_predictions(model: WorldModel, vset: ValidationSet, config: WorldModelConfig,
                               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate each probe frame from its true context with the play sampler.

    -> (predicted latents [P, C, h, w], true latents [P, C, h, w], previous true latents [P, C, h, w]).
    """
    c = config
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    gen = torch.Generator().manual_seed(0)
    preds, trues, prevs = [], [], []
    for clip, tick in vset.probes:
        ids = torch.tensor(tok.encode(vset.data.captions[clip]))
        levels = noise_levels(c.steps_for_frame(tick), c.schedule_shift)
        ctx = torch.full((c.window_frames + 1,), c.ctx_noise_play)
        sample = build_sample(vset.data, clip, tick, c, ids, torch.ones(1), ctx, gen, 1)

        def denoise(x_t: torch.Tensor, level: float, _step: int) -> torch.Tensor:
            sample["latents"][-1] = x_t[0]
            sample["noise"][-1] = level
            batch = collate([sample], ids.shape[0], 1).to(device)
            return model.forward_joint(batch.joint)[0, -1:].float().cpu()

        x = sample_frames(denoise, torch.randn(sample["target_x0"].shape, generator=gen), levels)  # [1, C, h, w]
        preds.append(x[0])
        trues.append(sample["target_x0"][0])
        prevs.append(vset.data.latents[clip, tick - 1].float())
    return torch.stack(preds), torch.stack(trues), torch.stack(prevs)


@torch.no_grad()
def rollout_predictions(model: WorldModel, vset: ValidationSet, device: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Free rollouts with the play-time session: -> predicted and true latents [R, T, C, h, w]."""
    from worldmodel.runtime import WorldModelSession

    session = WorldModelSession(model, device=device, dtype=torch.float32, use_memory=True)
    preds, trues = [], []
    n = vset.rollout_ticks
    for clip in vset.rollout_clips:
        d = vset.data
        session.reset(d.latents[clip, 0].float(), d.poses[clip, 0], d.captions[clip], seed=clip)
        preds.append(session.rollout(d.actions[clip, 1: n + 1], d.poses[clip, 1: n + 1]))
        trues.append(d.latents[clip, 1: n + 1].float())
    return torch.stack(preds), torch.stack(trues)


@torch.no_grad()
def validate(model: WorldModel, autoencoder: torch.nn.Module | None, vset: ValidationSet,
             config: WorldModelConfig, device: torch.device) -> dict[str, float]:
    """Teacher-forced next-frame and free-rollout PSNR (dB, pixels) + latent MSEs + copy baseline."""
    from worldmodel.metrics import psnr

    was_training = model.training
    model.eval()
    pred, true, prev = teacher_forced_predictions(model, vset, config, device)
    r_pred, r_true = rollout_predictions(model, vset, device)
    model.train(was_training)
    out = {"val_tf_latent_mse": float(F.mse_loss(pred, true)),
           "val_copy_latent_mse": float(F.mse_loss(prev, true)),
           "val_rollout_latent_mse": float(F.mse_loss(r_pred, r_true))}
    if autoencoder is not None:
        def dec(z: torch.Tensor) -> torch.Tensor:
            return autoencoder.decode(z.reshape(-1, *z.shape[-3:]).to(device)).float().cpu().clamp(0, 1)

        out["val_tf_psnr"] = float(psnr(dec(pred), dec(true), channel_dim=1).mean())
        out["val_copy_psnr"] = float(psnr(dec(prev), dec(true), channel_dim=1).mean())
        out["val_rollout_psnr"] = float(psnr(dec(r_pred), dec(r_true), channel_dim=1).mean())
    return out


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    """Optimisation settings of one run (stored in the train state and the checkpoint summary)."""

    steps: int = 2000
    """~45-60 min on a 2-core CPU at the default model size and batch (about 1.5 s per step)."""
    batch: int = 8
    lr: float = 8e-4
    """A short CPU budget wants a high peak rate; adaLN-zero + grad clipping keep it stable."""
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    """Horizon of ~200 steps: long enough to smooth, short enough for a 2000-step run."""
    caption_dropout: float = 0.1
    log_every: int = 10
    ckpt_every: int = 100
    val_every: int = 250
    val_clips: int = 16
    val_rollout_ticks: int = 16
    seed: int = 0
    amp: bool = True
    """bf16 autocast (CPU and CUDA)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return dev


def learning_rate(step: int, opts: TrainOptions) -> float:
    """Linear warmup then cosine decay to min_lr_ratio * lr."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    span = max(1, opts.steps - opts.warmup_steps)
    progress = min(1.0, (step - opts.warmup_steps) / span)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: WorldModel, model: WorldModel, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().float(), 1.0 - decay)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_state(path: Path, config: WorldModelConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of a damaged file
        raise UserError(f"{path}: cannot read the training state ({type(exc).__name__}: {exc}); "
                        f"delete it or pass --no-resume") from None
    if not isinstance(state, dict) or state.get("format") != "worldmodel.train_state":
        raise UserError(f"{path}: not a world-model training state")
    saved = WorldModelConfig.from_json(state["config"], source=str(path))
    if saved != config:
        from worldmodel.checkpoint import _config_diff

        raise UserError(f"{path}: the run there was trained with another config ("
                        + "; ".join(_config_diff(saved, config)) + "); use another --out or --no-resume")
    return state


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def train_world_model(latents_path: str | Path, out_dir: str | Path, autoencoder_path: str | Path,
                      options: TrainOptions | None = None, config: WorldModelConfig | None = None,
                      val_latents_path: str | Path | None = None, resume: bool = True, device: str = "auto",
                      progress: bool = True, stop_after: int | None = None) -> Path:
    """Train (or resume) and return the path of the product checkpoint (EMA weights + autoencoder).

    `stop_after` ends this invocation after that many steps (state saved, schedule unchanged), so a
    long run can be done in slices on a shared machine and continued with the same command.
    """
    from worldmodel.autoencoder import load_autoencoder
    from worldmodel.checkpoint import checkpoint_sha256, save_checkpoint
    from worldmodel.progress import ProgressBar

    opts = options or TrainOptions()
    config = (config or default_config()).validate()
    if opts.steps < 1 or opts.batch < 1:
        raise UserError("train: --steps and --batch must be >= 1")
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    autoencoder = load_autoencoder(autoencoder_path).to(dev).eval()
    ae_cfg = autoencoder.config
    if getattr(ae_cfg, "latent_channels", config.latent_channels) != config.latent_channels or \
            getattr(ae_cfg, "resolution", config.resolution) != config.resolution:
        raise UserError(f"{autoencoder_path}: autoencoder (resolution {getattr(ae_cfg, 'resolution', '?')}, "
                        f"{getattr(ae_cfg, 'latent_channels', '?')} channels) does not fit the model config")
    data = load_latents(latents_path, config)
    ae_sha = checkpoint_sha256(autoencoder_path)
    if data.autoencoder_sha256 and data.autoencoder_sha256 != ae_sha:
        raise UserError(f"{latents_path}: latents were encoded by another autoencoder "
                        f"({data.autoencoder_sha256[:12]}), not {autoencoder_path} ({ae_sha[:12]})")
    vset = None
    if val_latents_path is not None:
        vdata = load_latents(val_latents_path, config)
        vset = make_validation_set(vdata, config, opts.val_clips, opts.val_rollout_ticks, seed=opts.seed)

    torch.manual_seed(opts.seed)  # the initial weights belong to the run's seed
    model = WorldModel(config).to(dev)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.endswith("_pos") or "embed" in name else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(opts.seed)
    tokenizer = Tokenizer(config.vocab, config.max_text_tokens)
    step = 0
    state_path = out / TRAIN_STATE
    log_path = out / LOG_FILE
    if resume and state_path.exists():
        state = _load_state(state_path, config)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optim.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    elif not resume and state_path.exists():
        state_path.unlink()
    if step == 0 and log_path.exists():
        log_path.unlink()

    amp = opts.amp and dev.type in ("cpu", "cuda")

    def save(step_now: int, metrics: dict[str, Any]) -> Path:
        _atomic_torch_save({"format": "worldmodel.train_state", "step": step_now, "config": config.to_json(),
                            "options": asdict(opts), "model": model.state_dict(), "ema": ema.state_dict(),
                            "optimizer": optim.state_dict(), "generator": gen.get_state(),
                            "torch_rng": torch.get_rng_state()}, state_path)
        summary = {"step": step_now, "options": asdict(opts), "data": str(latents_path),
                   "clips": data.clips, "ticks": data.ticks, "autoencoder_sha256": ae_sha, **metrics}
        return save_checkpoint(out / PRODUCT_CHECKPOINT, ema, autoencoder, summary)

    last_val: dict[str, Any] = {}
    t_start = time.perf_counter()
    t_window, n_window = time.perf_counter(), 0
    bar = ProgressBar(opts.steps, "train world", start=step) if progress else None
    model.train()
    end = opts.steps if stop_after is None else min(opts.steps, step + max(0, stop_after))
    while step < end:
        batch = sample_batch(data, config, tokenizer, opts.batch, gen, opts.caption_dropout).to(dev)
        lr = learning_rate(step, opts)
        for group in optim.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = world_model_loss(model, batch, config)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip))
        optim.step()
        update_ema(ema, model, min(opts.ema_decay, (1 + step) / (10 + step)))
        step += 1
        n_window += 1
        if bar is not None:
            bar.update(1, loss=metrics["loss"], **{k: v for k, v in last_val.items() if k.endswith("psnr")})
        if step % opts.log_every == 0 or step == opts.steps:
            now = time.perf_counter()
            _log(log_path, {"step": step, "lr": lr, "grad_norm": grad_norm, "it_s": n_window / (now - t_window),
                            "elapsed_s": now - t_start, **metrics})
            t_window, n_window = now, 0
        if vset is not None and (step % opts.val_every == 0 or step == opts.steps):
            last_val = validate(ema, autoencoder, vset, config, dev)
            _log(log_path, {"step": step, **last_val})
        if step % opts.ckpt_every == 0 or step == end:
            save(step, last_val)
    if bar is not None:
        bar.close()
    product = out / PRODUCT_CHECKPOINT
    if not product.exists():  # resumed a finished run, or stopped before the first step
        save(step, last_val)
    return product
