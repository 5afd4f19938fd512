"""Training of the causal world model (teacher forcing + per-frame noise levels, docs/architecture.md §The generator).

One training sample is a segment of a latent clip (worldmodel.data.LatentClips):
    G = [ sink (tick 0) | W + K - 1 clean context frames | K noisy target frames ]
The clean copies get a small noise augmentation (level ~ U[0, ctx_noise_max], told to the model), the
targets get independent flow-matching noise levels (diffusion-forcing style), and every target gets its
own memory entries chosen by the play-time rules: among the clip's frames the play store would hold
(`memory_candidates`: the store's own add-time dedup, run over the clip's poses) and older than the
window, by memory.retrieval.select_memory. One joint pass with `build_joint_mask` gives every frame
exactly the keys it would see at play time, and the loss is the MSE of the predicted clean latents of
the targets.

Memory curriculum: in mixed data only a few percent of ticks return to a place seen long before, and
only there does the memory matter, so `TrainOptions.revisit_focus` places that share of the segments
on returning ticks (`returning_ticks`), and `window_dropout` hides the recent frames from some of those,
so the targets must be copied from the memory. `init_from` starts a run from a checkpoint (fine-tuning;
a 2x2-pooling memory checkpoint can start a learned-patch one, see `initial_weights`), and several
latent caches (e.g. the mixed data plus extra `retrace` clips) train together.

`world_model_loss(model, batch, config)` is the pure step function (reused by distillation / DDP);
`train_world_model(...)` is the resumable loop: AdamW + warmup/cosine, EMA of weights, bf16 autocast,
atomic checkpoints (`train_state.pt`: model, EMA, optimizer, step, RNG) every `ckpt_every` steps, the
product checkpoint (EMA weights + autoencoder, one safetensors) next to it, a JSONL log and a text
progress bar on stderr. The same loop runs as one process or under torchrun (DDP, or FSDP with
`TrainOptions.fsdp`; see worldmodel.distributed): `StepSampler` + `step_batch` give every step a fixed
global batch of `batch` slots, each slot with its own clip and random stream, and rank r of W builds
only its W-th of the slots, so a run's batches (and, up to float rounding, its weights) do not depend on
how many processes share the work. Only rank 0 logs, validates and writes; every rank resumes.

Validation: teacher-forced next-frame PSNR and a short free-rollout PSNR in pixel space on held-out
clips (against the autoencoder's decoding of the true latents, i.e. the best the model could do
through this autoencoder), plus the copy-last-frame baseline for scale.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from conventions.atomic import atomic_write
from worldmodel.config import WorldModelConfig, default_config
from worldmodel.distributed import (DistContext, ParallelModel, distributed_session, full_state_dict,
                                    load_full_state_dict, load_optimizer_state, optimizer_state,
                                    reduce_weighted_means, shard_model)
from conventions.errors import UserError, config_differences
from worldmodel.hint import HintAugment, build_hint, hint_source_ticks
from worldmodel.model import JointBatch, WorldModel
from worldmodel.sampler import add_noise, noise_levels
from worldmodel.sampler import sample as sample_frames
from worldmodel.scalars import LOG_FILE, ScalarLog  # noqa: F401  (LOG_FILE: the run's log, for callers)
from worldmodel.text import Tokenizer
from conventions.metrics import psnr, revisit_matrix
from conventions.progress import ProgressBar
from memory.retrieval import select_memory
from memory.store import kept_ticks
from worldmodel.autoencoder import load_autoencoder
from worldmodel.checkpoint import CONFIG_LABELS, checkpoint_sha256, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from worldmodel.data import LatentClips
from worldmodel.runtime import memory_config, WorldModelSession

TRAIN_STATE = "train_state.pt"
PRODUCT_CHECKPOINT = "world_model.safetensors"
PAD_TICK = -(10 ** 6)
"""Tick of padding frames: far from every real tick, so no window ever includes them."""
HIGH_NOISE_LEVEL = 0.5
"""Targets noisier than this count towards mse_high_noise, the others towards mse_low_noise."""
TRAIN_STATE_FORMAT = "worldmodel.train_state"


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
    view_rgb: torch.Tensor | None = None
    """uint8 [N, T, H, W, 3]: every frame decoded, as play has it for the geometric hint (or None)."""
    view_depth: torch.Tensor | None = None
    """float16 [N, T, H, W]: the depth head's depth of every frame's latent (or None)."""
    target_latents: torch.Tensor | None = None
    """bf16 [N, T, C, h, w]: the truth of a closed-loop cache whose `latents` (context, memory, hint
    sources) are the model's own rollouts (worldmodel.closed_loop); None: the latents are the truth."""
    _revisits: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)
    _kept: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def clips(self) -> int:
        return self.latents.shape[0]

    def revisit_ticks(self, min_gap: int) -> list[torch.Tensor]:
        """Per clip, the ticks whose view was seen at least `min_gap` ticks earlier (computed once)."""
        if min_gap not in self._revisits:
            self._revisits[min_gap] = [returning_ticks(p, min_gap) for p in self.poses]
        return self._revisits[min_gap]

    def memory_candidates(self, clip: int, config: WorldModelConfig) -> torch.Tensor | None:
        """bool [T]: the frames of clip `clip` the play-time store would hold (`memory_candidates`;
        computed once per clip)."""
        if clip not in self._kept:
            self._kept[clip] = memory_candidates(self.poses[clip], config)
        return self._kept[clip]

    @property
    def ticks(self) -> int:
        return self.latents.shape[1]


def memory_candidates(poses: torch.Tensor, config: WorldModelConfig) -> torch.Tensor | None:
    """bool [T] over one clip's ticks (poses [T, 5]): the frames the play-time MemoryStore keeps
    (`memory.store.kept_ticks` with the runtime's `memory_config`), or None when its dedup rule is not
    prefix-stable ("newest" replaces entries later) and every earlier frame stays a candidate."""
    mc = memory_config(config)
    if mc.dedup_keep != "first" or poses.shape[0] > mc.budget_entries:
        return None
    return kept_ticks(poses, mc)


def returning_ticks(poses: torch.Tensor, min_gap: int) -> torch.Tensor:
    """Ticks t of one clip (poses [T, 5]) that revisit (conventions.metrics.revisit_matrix, the rule of
    docs/architecture.md §Metrics) a pose at some tick in [1, t - min_gap]: the frames only memory can explain (the sink,
    tick 0, is left out because it is always in the cache)."""
    close = revisit_matrix(poses, min_gap)
    close[:, 0] = False
    return torch.nonzero(close.any(1)).flatten()


def load_latents(path: str | Path | list[str | Path], config: WorldModelConfig) -> LatentData:
    """Read one latent cache written by worldmodel.data.encode_dataset, or several (concatenated, e.g.
    the mixed data set plus extra retrace clips), and check they fit `config` and each other."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise UserError("train: no latent cache given")
        parts = [load_latents(p, config) for p in path]
        if len(parts) == 1:
            return parts[0]
        for p in parts[1:]:
            if p.ticks != parts[0].ticks:
                raise UserError(f"{p.source}: clips have {p.ticks} ticks, {parts[0].source} has "
                                f"{parts[0].ticks}; caches trained together need the same clip length")
            if p.autoencoder_sha256 != parts[0].autoencoder_sha256:
                raise UserError(f"{p.source}: encoded by another autoencoder than {parts[0].source} "
                                f"({(p.autoencoder_sha256 or '?')[:12]} vs {(parts[0].autoencoder_sha256 or '?')[:12]})")
        views = all(p.view_rgb is not None for p in parts)
        closed = any(p.target_latents is not None for p in parts)
        return LatentData(torch.cat([p.latents for p in parts]), torch.cat([p.actions for p in parts]),
                          torch.cat([p.poses for p in parts]), [c for p in parts for c in p.captions],
                          ",".join(p.source for p in parts), parts[0].autoencoder_sha256,
                          torch.cat([p.view_rgb for p in parts]) if views else None,
                          torch.cat([p.view_depth for p in parts]) if views else None,
                          torch.cat([p.latents if p.target_latents is None else p.target_latents for p in parts])
                          if closed else None)

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
    if config.hint and clips.view_rgb is None:
        raise UserError(f"{path}: this latent cache holds no decoded views, which a hint model (hint=true) "
                        f"trains on; encode it again with an autoencoder that has a depth head "
                        f"(worldmodel train --stage depth, then --stage latents)")
    return LatentData(latents, clips.actions.float(), clips.poses.float(), captions, str(path), sha,
                      clips.view_rgb, clips.view_depth, clips.target_latents)


@dataclass
class TrainBatch:
    """A joint pass plus what the loss needs: targets' clean latents [B, K, C, h, w], their slots in G
    ([K] int64) and noise levels [B, K]."""

    joint: JointBatch
    target_x0: torch.Tensor
    target_index: torch.Tensor
    target_noise: torch.Tensor
    hint_sources: dict[str, torch.Tensor] | None = None
    """What `attach_hints` builds the targets' hints from (hint models only; see `hint_sources`)."""

    def to(self, device: torch.device | str) -> "TrainBatch":
        return TrainBatch(self.joint.to(device), self.target_x0.to(device), self.target_index.to(device),
                          self.target_noise.to(device),
                          None if self.hint_sources is None else {k: v.to(device) for k, v in self.hint_sources.items()})


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


def select_training_memory(poses: torch.Tensor, tick: int, config: WorldModelConfig,
                           kept: torch.Tensor | None = None) -> list[int]:
    """Clip frames (ticks) the play-time rule would retrieve for the frame at `tick`: among the frames
    the play store holds (`kept` bool [T] from `memory_candidates`; None = all), older than the window
    (age >= W + 1), excluding the sink, best view overlap first, deduplicated."""
    first_old = tick - config.window_frames - 1
    if first_old < 1:
        return []
    cand_ticks = torch.arange(1, first_old + 1)
    if kept is not None:
        cand_ticks = cand_ticks[kept[1: first_old + 1]]
        if cand_ticks.numel() == 0:
            return []
    idx = select_memory(poses[tick], poses[cand_ticks], cand_ticks, current_tick=tick,
                        max_entries=config.memory_entries, min_age=config.window_frames + 1,
                        fov_deg=config.fov_deg)
    return [int(cand_ticks[i]) for i in idx.tolist()]


def build_sample(data: LatentData, clip: int, start: int, config: WorldModelConfig, tokenizer_ids: torch.Tensor,
                 target_levels: torch.Tensor, ctx_levels: torch.Tensor, gen: torch.Generator, targets: int,
                 use_memory: bool = True, drop_window: bool = False,
                 hint_augment: HintAugment | None = None) -> dict[str, torch.Tensor]:
    """One sample: targets at ticks start .. start+targets-1 of clip `clip` (see module doc).
    `drop_window` hides the clean context frames, so the targets see only the sink and their memory."""
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
    valid = [True] + [False] * pad + [not drop_window] * len(ctx_ticks) + [True] * k
    clean = [True] * (1 + n_ctx) + [False] * k
    idx = torch.tensor(real)
    x0 = lat[idx]  # [1 + len(ctx) + K, C, h, w]
    if data.target_latents is not None:  # closed loop: own context, true targets
        x0[-k:] = data.target_latents[clip, tgt_ticks].float()
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
        kept = data.memory_candidates(clip, c) if use_memory else None
        chosen_all = []
        for j, tick in enumerate(tgt_ticks):
            chosen = select_training_memory(poses_all, tick, c, kept) if use_memory else []
            chosen_all.append(chosen)
            for i in range(e):
                slot = j * e + i
                m_owner[slot] = g_total - k + j
                if i < len(chosen):
                    m_lat[slot] = lat[chosen[i]]
                    m_pose[slot] = poses_all[chosen[i]]
                    m_valid[slot] = True
        out.update(mem_latents=m_lat, mem_poses=m_pose, mem_owner=m_owner, mem_valid=m_valid)
    else:
        chosen_all = [[] for _ in tgt_ticks]
    if c.hint:
        out.update(hint_sources(data, clip, tgt_ticks, chosen_all, c, gen, hint_augment or HintAugment(),
                                drop_recent=drop_window))
    return out


def hint_sources(data: LatentData, clip: int, tgt_ticks: list[int], memory_ticks: list[list[int]],
                 config: WorldModelConfig, gen: torch.Generator, augment: HintAugment,
                 drop_recent: bool = False) -> dict[str, torch.Tensor]:
    """What the hints of a sample's targets are built from (the play rule, worldmodel.hint):
    hint_rgb uint8 [K, S, H, W, 3], hint_depth [K, S, H, W], hint_poses [K, S, 5], hint_valid [K, S],
    hint_target [K, 5], hint_noise [K, 3, H, W], with S = 1 + memory_entries + hint_recent sources.
    Augmentation (drawn from `gen`): dropped sources, empty hints, noise on the warped RGB."""
    if data.view_rgb is None or data.view_depth is None:
        raise UserError(f"{data.source}: no decoded views for the geometric hint")
    c = config
    s_max = 1 + c.memory_entries + c.hint_recent
    k = len(tgt_ticks)
    h, w = data.view_rgb.shape[2:4]
    ticks = torch.zeros(k, s_max, dtype=torch.long)
    valid = torch.zeros(k, s_max, dtype=torch.bool)
    for j, tick in enumerate(tgt_ticks):
        src = hint_source_ticks(tick, memory_ticks[j], 0 if drop_recent else c.hint_recent)
        ticks[j, :len(src)] = torch.tensor(src)
        valid[j, :len(src)] = True
    drop = (torch.rand(k, s_max, generator=gen) < augment.drop_source) & (ticks != 0)  # the start frame stays
    empty = torch.rand(k, generator=gen) < augment.empty
    valid &= ~drop & ~empty[:, None]
    noise = torch.randn(k, 3, h, w, generator=gen) * (torch.rand(k, 1, 1, 1, generator=gen) * augment.noise_max)
    return dict(hint_rgb=data.view_rgb[clip][ticks], hint_depth=data.view_depth[clip][ticks].float(),
                hint_poses=data.poses[clip][ticks], hint_valid=valid, hint_target=data.poses[clip][tgt_ticks],
                hint_noise=noise)


HINT_KEYS = ("hint_rgb", "hint_depth", "hint_poses", "hint_valid", "hint_target", "hint_noise")


@torch.no_grad()
def attach_hints(batch: "TrainBatch", autoencoder: torch.nn.Module, config: WorldModelConfig) -> "TrainBatch":
    """Build every target's hint from `batch.hint_sources` (worldmodel.hint.build_hint, batched over
    B * K targets) and put it into the joint batch: hint [B, G, C + 1, h, w], zeros for the clean
    frames. A batch without hint sources (a hint-free model) is returned as it is."""
    if batch.hint_sources is None:
        return batch
    b, k = batch.hint_sources["hint_valid"].shape[:2]
    flat = {key: v.flatten(0, 1) for key, v in batch.hint_sources.items()}
    hint = build_hint(autoencoder, flat["hint_rgb"], flat["hint_depth"], flat["hint_poses"], flat["hint_valid"],
                      flat["hint_target"], config.fov_deg, noise=flat["hint_noise"]).view(b, k, -1, *batch.target_x0.shape[-2:])
    g = batch.joint.ticks.shape[1]
    full = torch.zeros(b, g, *hint.shape[2:], dtype=hint.dtype, device=hint.device)
    full[:, batch.target_index.to(full.device)] = hint
    batch.joint.hint = full.to(batch.joint.latents.device)
    return batch


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
    hint_src = {k: st(k) for k in HINT_KEYS} if "hint_rgb" in samples[0] else None
    return TrainBatch(joint, st("target_x0"), torch.arange(g - targets, g), st("target_noise"), hint_src)


# --------------------------------------------------------------------------------------------------
# the sampling plan: the same global batch for any number of ranks
# --------------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1
_SEED_BITS = (1 << 63) - 1
_ORDER_STREAM = 0x6F72646572
"""Salts that keep the clip-order streams and the per-slot sample streams apart."""
_SLOT_STREAM = 0x736C6F74


def _splitmix64(x: int) -> int:
    """One SplitMix64 step: a bijective 64-bit mix, so nearby (seed, step, slot) give unrelated seeds."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_seed(seed: int, salt: int, *keys: int) -> int:
    """A 63-bit generator seed derived from the run seed, a stream salt and integer keys."""
    h = _splitmix64((seed & _MASK64) ^ salt)
    for key in keys:
        h = _splitmix64(h ^ (key & _MASK64))
    return h & _SEED_BITS


def rank_slots(global_batch: int, rank: int, world_size: int) -> range:
    """The slots of a step's global batch that rank `rank` of `world_size` builds (a contiguous W-th)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size}")
    if global_batch % world_size:
        raise UserError(f"--batch {global_batch} is the global batch of one step; it must be divisible by the "
                        f"{world_size} processes (each builds {global_batch} / {world_size} samples)")
    per_rank = global_batch // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


class StepSampler:
    """Which clip every slot of every step trains on, and the seed of the slot's random stream.

    Clips are visited in epochs: global sample n = step * batch + slot is clip order_e[n % N] of epoch
    e = n // N, where order_e is a permutation drawn from (seed, e); so each epoch shows every clip
    once, ranks of one step read disjoint clips, and nothing depends on the number of ranks. A slot's
    other randomness (segment start, caption dropout, noise levels, noise) comes from its own
    generator seeded by (seed, step, slot): no generator state has to be saved to resume exactly.
    """

    def __init__(self, clips: int, global_batch: int, seed: int) -> None:
        if clips < 1 or global_batch < 1:
            raise ValueError("StepSampler needs at least one clip and a batch of at least 1")
        self.clips = clips
        self.global_batch = global_batch
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # a step spans at most two epochs; keep the cache tiny
                self._orders.pop(min(self._orders))
            gen = torch.Generator().manual_seed(stream_seed(self.seed, _ORDER_STREAM, epoch))
            self._orders[epoch] = torch.randperm(self.clips, generator=gen)
        return self._orders[epoch]

    def clip(self, step: int, slot: int) -> int:
        n = step * self.global_batch + slot
        return int(self._order(n // self.clips)[n % self.clips])

    def generator(self, step: int, slot: int) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(self.seed, _SLOT_STREAM, step, slot))


def segment_start(data: LatentData, clip: int, targets: int, gen: torch.Generator, revisit_focus: float = 0.0,
                  revisit_min_gap: int = 0) -> tuple[int, bool]:
    """(first target tick, whether it was placed on a return) of a training segment: uniform over the
    clip, or, with probability `revisit_focus` when the clip returns somewhere, placed so a returning
    tick is among the targets (memory only matters on those; in mixed data they are a few percent)."""
    last = data.ticks - targets  # starts in [1, last]
    if revisit_focus <= 0.0:  # (draw nothing extra: the streams of unfocused runs stay as they were)
        return int(torch.randint(1, last + 1, (1,), generator=gen)), False
    focus = float(torch.rand((), generator=gen)) < revisit_focus
    uniform = int(torch.randint(1, last + 1, (1,), generator=gen))
    ticks = data.revisit_ticks(revisit_min_gap)[clip]
    if not focus or len(ticks) == 0:
        return uniform, False
    tick = int(ticks[int(torch.randint(len(ticks), (1,), generator=gen))])
    offset = int(torch.randint(targets, (1,), generator=gen))
    return max(1, min(last, tick - offset)), True


def step_batch(data: LatentData, config: WorldModelConfig, tokenizer: Tokenizer, sampler: StepSampler, step: int,
               rank: int = 0, world_size: int = 1, caption_dropout: float = 0.0, revisit_focus: float = 0.0,
               revisit_min_gap: int = 0, window_dropout: float = 0.0,
               hint_augment: HintAugment | None = None) -> TrainBatch:
    """This rank's part of step `step`'s global batch (all of it when world_size = 1).

    Concatenating the ranks' batches along B gives exactly the one-process batch: the same clips,
    segments, noise levels and noise, and text ids padded to the longest prompt of the whole global
    batch (not just this rank's part), so even the padding does not depend on the split."""
    c = config
    k = min(c.target_frames, data.ticks - 1)
    slots = rank_slots(sampler.global_batch, rank, world_size)
    gens = [sampler.generator(step, s) for s in range(sampler.global_batch)]
    clips = [sampler.clip(step, s) for s in range(sampler.global_batch)]
    # caption dropout is each stream's first draw, so every rank knows every slot's prompt length
    drops = [float(torch.rand((), generator=g)) < caption_dropout for g in gens]
    ids_all = [tokenizer.encode("" if d else data.captions[n]) for d, n in zip(drops, clips)]
    max_len = max(len(i) for i in ids_all)
    samples = []
    for s in slots:
        gen = gens[s]
        start, on_return = segment_start(data, clips[s], k, gen, revisit_focus, revisit_min_gap)
        drop = on_return and window_dropout > 0.0 and float(torch.rand((), generator=gen)) < window_dropout
        tl = sample_target_levels(c, (k,), gen)
        cl = torch.rand(c.window_frames + k, generator=gen) * c.ctx_noise_max
        samples.append(build_sample(data, clips[s], start, c, torch.tensor(ids_all[s]), tl, cl, gen, k,
                                    drop_window=drop, hint_augment=hint_augment))
    return collate(samples, max_len, k)


# --------------------------------------------------------------------------------------------------
# the step function
# --------------------------------------------------------------------------------------------------
def world_model_loss(model: WorldModel | ParallelModel, batch: TrainBatch, config: WorldModelConfig
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Pure step function: x0-prediction MSE of the noisy targets -> (loss, metrics).

    `model` is anything with `forward_joint`: a WorldModel, or the DDP/FSDP-wrapped ParallelModel."""
    pred = model.forward_joint(batch.joint)  # [B, G, C, h, w]
    pred_t = pred.index_select(1, batch.target_index).float()  # [B, K, C, h, w]
    err = (pred_t - batch.target_x0.float()).pow(2).flatten(2).mean(-1)  # [B, K]
    loss = err.mean()
    high = batch.target_noise > HIGH_NOISE_LEVEL
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
                               device: torch.device, autoencoder: torch.nn.Module | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        sample = build_sample(vset.data, clip, tick, c, ids, torch.ones(1), ctx, gen, 1,
                              hint_augment=HintAugment(0.0, 0.0, 0.0))

        def denoise(x_t: torch.Tensor, level: float, _step: int) -> torch.Tensor:
            sample["latents"][-1] = x_t[0]
            sample["noise"][-1] = level
            batch = attach_hints(collate([sample], ids.shape[0], 1).to(device), autoencoder, c)
            return model.forward_joint(batch.joint)[0, -1:].float().cpu()

        x = sample_frames(denoise, torch.randn(sample["target_x0"].shape, generator=gen), levels)  # [1, C, h, w]
        preds.append(x[0])
        trues.append(sample["target_x0"][0])
        prevs.append(vset.data.latents[clip, tick - 1].float())
    return torch.stack(preds), torch.stack(trues), torch.stack(prevs)


@torch.no_grad()
def rollout_predictions(model: WorldModel, vset: ValidationSet, device: torch.device,
                        autoencoder: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Free rollouts with the play-time session (hint on for hint models): -> predicted and true
    latents [R, T, C, h, w]."""
    session = WorldModelSession(model, device=device, dtype=torch.float32, use_memory=True, autoencoder=autoencoder)
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
    was_training = model.training
    model.eval()
    pred, true, prev = teacher_forced_predictions(model, vset, config, device, autoencoder)
    r_pred, r_true = rollout_predictions(model, vset, device, autoencoder)
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
    """The global batch of one step; under torchrun each of the W processes builds batch / W of it."""
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
    revisit_focus: float = 0.0
    """Share of samples whose targets include a tick that returns to a place seen >= revisit_min_gap
    ticks earlier (so the memory path gets a training signal; 0 = uniform segments)."""
    revisit_min_gap: int = 40
    window_dropout: float = 0.0
    """Share of the return-placed samples whose recent frames are hidden, so the targets must come
    from the sink and the memory: at play the window holds the model's own, drifted frames by the
    time it comes back, and the memory is what should win."""
    init_from: str = ""
    """Start a new run from this checkpoint's weights (fine-tuning; same config), not from random."""
    hint_drop_source: float = 0.15
    """Hint models: each hint source but the start frame is left out with this probability."""
    hint_empty: float = 0.1
    """Hint models: share of targets whose hint is empty (the model must still work with --hint off)."""
    hint_noise: float = 0.03
    """Hint models: the warped RGB gets Gaussian noise of std U[0, hint_noise] before it is encoded."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state across the torchrun processes (FSDP2) instead
    of replicating the model in each (DDP): for models that do not fit one GPU. Needs torchrun."""


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
    """ema <- decay * ema + (1 - decay) * model (shard by shard when both are FSDP-sharded alike)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().float(), 1.0 - decay)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save via `conventions.atomic.atomic_write`: a crash never leaves half a state under `path`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_run_state(path: Path, config: WorldModelConfig, state_format: str = TRAIN_STATE_FORMAT,
                   what: str = "world-model training state") -> dict[str, Any]:
    """The resumable state of a run (train or distill) at `path`: read, its format and its config
    checked; UserError naming the file when it is damaged or belongs to another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of a damaged file
        raise UserError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc}); "
                        f"delete it or pass --no-resume") from None
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise UserError(f"{path}: not a {what}")
    saved = WorldModelConfig.from_json(state["config"], source=str(path))
    if saved != config:
        raise UserError(f"{path}: the run there was trained with another config ("
                        + "; ".join(config_differences(saved, config, CONFIG_LABELS)) + "); use another --out or --no-resume")
    return state


def initial_weights(path: str | Path, config: WorldModelConfig) -> dict[str, torch.Tensor]:
    """Weights of the checkpoint at `path` for a model of `config` (fine-tuning). The configs must be
    equal, except for the training-only fields (`WorldModelConfig.TRAINING_ONLY_FIELDS`, e.g. a
    fine-tune with stronger context noise), that a hint-free checkpoint may start a hint model (its hint
    layers start at zero, so it starts as the checkpoint), and that a 'pool' memory checkpoint may start
    a 'patch' memory model: its memory projection is spread over the 4 positions of each 2x2 patch (weights / 4),
    which is exactly 2x2 average pooling, so the new model starts as the old one and can learn to use
    the detail."""
    path = Path(path)
    theirs = WorldModelConfig.from_json(read_checkpoint_metadata(path)["config"], source=str(path))
    convert = (theirs.use_memory and theirs.memory_compression == "pool" and config.memory_compression == "patch")
    expected = config.replace(memory_compression=theirs.memory_compression) if convert else config
    add_hint = config.hint and not theirs.hint
    if add_hint:
        expected = expected.replace(hint=False, hint_recent=theirs.hint_recent)
    expected = expected.with_training_fields_of(theirs)
    model = load_checkpoint(path, expected_config=expected)[0]
    state = model.state_dict()
    if add_hint:  # the hint layers start at zero (WorldModel's init): the new model starts as the old one
        with torch.random.fork_rng(devices=[]):
            fresh = WorldModel(config).state_dict()
        state.update({k: v for k, v in fresh.items() if k.startswith(("hint_in.", "hint_out."))})
    if convert:
        factor = 4  # positions of a 2x2 patch; pixel_unshuffle orders features as channel * 4 + position
        state["mem_in.weight"] = state["mem_in.weight"].repeat_interleave(factor, dim=1) / factor
    return state


def _plain_model(config: WorldModelConfig, state: dict[str, torch.Tensor], device: torch.device) -> WorldModel:
    """An unsharded WorldModel holding `state` (rank 0's view of FSDP-sharded EMA weights).

    Built under a forked RNG: the constructor's random init must not move this rank's torch RNG,
    which is part of the training state."""
    with torch.random.fork_rng(devices=[]):
        model = WorldModel(config)
    model.load_state_dict(state)
    return model.to(device).eval()


def _step_metrics(ctx: DistContext, metrics: dict[str, float], batch: TrainBatch) -> dict[str, float]:
    """All-reduce the loss metrics: means over the union of the ranks' targets (what one process
    with the global batch logs), each weighted by how many targets it averages."""
    high = batch.target_noise > HIGH_NOISE_LEVEL  # [B, K]
    n_high = float(high.sum())
    n_all = float(high.numel())
    return reduce_weighted_means(ctx, {
        "loss": (metrics["loss"], n_all),
        "mse_high_noise": (metrics.get("mse_high_noise", 0.0), n_high),
        "mse_low_noise": (metrics.get("mse_low_noise", 0.0), n_all - n_high)})


def train_world_model(latents_path: str | Path | list[str | Path], out_dir: str | Path, autoencoder_path: str | Path,
                      options: TrainOptions | None = None, config: WorldModelConfig | None = None,
                      val_latents_path: str | Path | None = None, resume: bool = True, device: str = "auto",
                      progress: bool = True, stop_after: int | None = None) -> Path:
    """Train (or resume) and return the path of the product checkpoint (EMA weights + autoencoder).

    `stop_after` ends this invocation after that many steps (state saved, schedule unchanged), so a
    long run can be done in slices on a shared machine and continued with the same command.
    Under torchrun (WORLD_SIZE/RANK/LOCAL_RANK set) this starts the process group, trains with DDP
    (or FSDP when `options.fsdp`), and destroys the group when it returns or raises; `device` is then
    per rank (`auto`/`cuda` = cuda:LOCAL_RANK). OUT must be a folder every rank sees (a local disk on
    one machine, a shared file system across machines): rank 0 writes there, every rank resumes
    from it.
    """
    with distributed_session(device) as ctx:
        return _train(ctx, latents_path, out_dir, autoencoder_path, options or TrainOptions(), config,
                      val_latents_path, resume, progress, stop_after)


def _train(ctx: DistContext, latents_path: str | Path | list[str | Path], out_dir: str | Path, autoencoder_path: str | Path,
           opts: TrainOptions, config: WorldModelConfig | None, val_latents_path: str | Path | None,
           resume: bool, progress: bool, stop_after: int | None) -> Path:
    config = (config or default_config()).validate()
    if opts.steps < 1 or opts.batch < 1:
        raise UserError("train: --steps and --batch must be >= 1")
    if not (0.0 <= opts.revisit_focus <= 1.0 and 0.0 <= opts.window_dropout <= 1.0) or opts.revisit_min_gap < 1:
        raise UserError(f"train: revisit_focus and window_dropout must be in [0, 1] and revisit_min_gap >= 1, "
                        f"got {opts.revisit_focus}, {opts.window_dropout} and {opts.revisit_min_gap}")
    rank_slots(opts.batch, ctx.rank, ctx.world_size)  # refuse a global batch the ranks cannot split
    if opts.fsdp and not ctx.group:
        raise UserError("--fsdp shards the model across processes; launch with torchrun "
                        "(torchrun --nproc_per_node N -m tools.cli train ... --fsdp)")
    dev = ctx.device
    main = ctx.is_main
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every rank reads and checks the inputs, so a bad file fails all ranks alike (no rank is left
    # waiting in a collective for one that raised)
    # rank 0 validates with the autoencoder, and every rank of a hint model encodes its own targets'
    # hints with it; other ranks of a hint-free model keep it off the GPU
    autoencoder = load_autoencoder(autoencoder_path).to(dev if main or config.hint else "cpu").eval()
    ae_cfg = autoencoder.config
    if getattr(ae_cfg, "latent_channels", config.latent_channels) != config.latent_channels or \
            getattr(ae_cfg, "resolution", config.resolution) != config.resolution:
        raise UserError(f"{autoencoder_path}: autoencoder (resolution {getattr(ae_cfg, 'resolution', '?')}, "
                        f"{getattr(ae_cfg, 'latent_channels', '?')} channels) does not fit the model config")
    if config.hint and not autoencoder.has_depth:
        raise UserError(f"{autoencoder_path}: a hint model (hint=true) needs an autoencoder with a depth head "
                        f"(worldmodel train --stage depth)")
    data = load_latents(latents_path, config)
    ae_sha = checkpoint_sha256(autoencoder_path)
    if data.autoencoder_sha256 and data.autoencoder_sha256 != ae_sha:
        raise UserError(f"{data.source}: latents were encoded by another autoencoder "
                        f"({data.autoencoder_sha256[:12]}), not {autoencoder_path} ({ae_sha[:12]})")
    vset = None
    if val_latents_path is not None:
        vdata = load_latents(val_latents_path, config)
        vset = make_validation_set(vdata, config, opts.val_clips, opts.val_rollout_ticks, seed=opts.seed)

    torch.manual_seed(opts.seed)  # the initial weights belong to the run's seed (identical on all ranks)
    model = WorldModel(config)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    if opts.fsdp:  # fully_shard moves each rank's shard to its device; the full model never has to fit
        shard_model(ema, ctx, forward_methods=False)
    else:
        model.to(dev)
        ema.to(dev)
    net = ParallelModel(model, ctx, fsdp=opts.fsdp)  # DDP / FSDP wrapping (in place for FSDP)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.endswith("_pos") or "embed" in name else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.99))
    sampler = StepSampler(data.clips, opts.batch, opts.seed)
    tokenizer = Tokenizer(config.vocab, config.max_text_tokens)
    hint_augment = HintAugment(opts.hint_drop_source, opts.hint_empty, opts.hint_noise)
    step = 0
    state_path = out / TRAIN_STATE
    scalars: ScalarLog | None = None
    if resume and state_path.exists():
        state = load_run_state(state_path, config)
        load_full_state_dict(model, state["model"], opts.fsdp)
        load_full_state_dict(ema, state["ema"], opts.fsdp)
        load_optimizer_state(model, optim, state["optimizer"], opts.fsdp, str(state_path))
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        del state
    if step == 0 and opts.init_from:
        start_state = initial_weights(opts.init_from, config)
        load_full_state_dict(model, start_state, opts.fsdp)
        load_full_state_dict(ema, start_state, opts.fsdp)
        del start_state
    if not ctx.all_equal(step):
        raise UserError(f"{state_path}: the ranks found different training states here (rank {ctx.rank} is at "
                        f"step {step}); --out must be a folder every rank sees")
    if main:
        if not resume and state_path.exists():
            state_path.unlink()
        scalars = ScalarLog(out, resume_step=step)  # log.jsonl (+ TensorBoard events when installed)
    ctx.barrier()

    amp = opts.amp and dev.type in ("cpu", "cuda")

    def rank0(what: str, work: Any) -> Any:
        """Run `work()` on rank 0 only; every rank raises if it failed there."""
        result, error = None, None
        if main:
            try:
                result = work()
            except Exception as exc:  # re-raised below on rank 0, after telling the other ranks
                error = exc
        ctx.agree(error, what)
        return result

    def ema_for_rank0(device: torch.device) -> WorldModel | None:
        """The EMA weights as an ordinary module on rank 0 (a collective under FSDP)."""
        if not opts.fsdp:
            return ema
        state = full_state_dict(ema, ctx, fsdp=True)
        return _plain_model(config, state, device) if main else None

    def save(step_now: int, metrics: dict[str, Any]) -> None:
        # under FSDP gathering the full states is a collective of all ranks; under DDP the replicas
        # are identical and only rank 0 needs a copy
        gather = opts.fsdp or main
        model_sd = full_state_dict(model, ctx, opts.fsdp) if gather else {}
        optim_sd = optimizer_state(model, optim, ctx, opts.fsdp) if gather else {}
        ema_module = ema_for_rank0(torch.device("cpu"))

        def write() -> None:
            atomic_torch_save({"format": TRAIN_STATE_FORMAT, "step": step_now, "config": config.to_json(),
                                "options": asdict(opts), "world_size": ctx.world_size, "model": model_sd,
                                "ema": {k: v.detach().cpu() for k, v in ema_module.state_dict().items()},
                                "optimizer": optim_sd, "torch_rng": torch.get_rng_state()}, state_path)
            summary = {"step": step_now, "options": asdict(opts), "data": data.source,
                       "clips": data.clips, "ticks": data.ticks, "autoencoder_sha256": ae_sha,
                       "world_size": ctx.world_size, **metrics}
            save_checkpoint(out / PRODUCT_CHECKPOINT, ema_module, autoencoder, summary)

        rank0("writing the checkpoint", write)

    last_val: dict[str, Any] = {}
    t_start = time.perf_counter()
    t_window, n_window = time.perf_counter(), 0
    bar = ProgressBar(opts.steps, "train world", start=step) if progress and main else None
    net.train()
    end = opts.steps if stop_after is None else min(opts.steps, step + max(0, stop_after))
    while step < end:
        batch = step_batch(data, config, tokenizer, sampler, step, ctx.rank, ctx.world_size,
                           opts.caption_dropout, opts.revisit_focus, opts.revisit_min_gap,
                           opts.window_dropout, hint_augment).to(dev)
        attach_hints(batch, autoencoder, config)
        lr = learning_rate(step, opts)
        for group in optim.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = world_model_loss(net, batch, config)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = net.clip_grad_norm(opts.grad_clip)
        optim.step()
        update_ema(ema, model, min(opts.ema_decay, (1 + step) / (10 + step)))
        metrics = _step_metrics(ctx, metrics, batch)
        step += 1
        n_window += 1
        if bar is not None:
            bar.update(1, loss=metrics["loss"], **{k: v for k, v in last_val.items() if k.endswith("psnr")})
        if main and (step % opts.log_every == 0 or step == opts.steps):
            now = time.perf_counter()
            scalars.write({"step": step, "lr": lr, "grad_norm": grad_norm, "it_s": n_window / (now - t_window),
                           "elapsed_s": now - t_start, **metrics})
            t_window, n_window = now, 0
        if vset is not None and (step % opts.val_every == 0 or step == opts.steps):
            val_model = ema_for_rank0(dev)

            def run_validation() -> dict[str, Any]:
                scores = validate(val_model, autoencoder, vset, config, dev)
                scalars.write({"step": step, **scores})
                return scores

            last_val = rank0("validation", run_validation) or last_val
        if step % opts.ckpt_every == 0 or step == end:
            save(step, last_val)
    if bar is not None:
        bar.close()
    if scalars is not None:
        scalars.close()
    product = out / PRODUCT_CHECKPOINT
    # resumed a finished run, or stopped before the first step: rank 0 decides (it is the one that
    # sees the file), every rank joins the save
    missing = ctx.all_reduce_max(torch.tensor([float(main and not product.exists())]))
    if float(missing[0]) > 0:
        save(step, last_val)
    return product
