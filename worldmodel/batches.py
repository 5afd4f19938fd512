"""Training batches of the world model: latent clips -> segments with their memory, hint sources and
noise, the same global batch for any number of ranks (docs/architecture.md §The generator).

One training sample is a segment of a latent clip (worldmodel.data.LatentClips):
    G = [ sink (tick 0) | W + K - 1 clean context frames | K noisy target frames ]
see worldmodel/train.py for how the loop uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from worldmodel.config import WorldModelConfig
from conventions.errors import UserError
from worldmodel.hint import HintAugment, bilinear_sources, build_hint, hint_source_ticks, start_preferred
from worldmodel.model import JointBatch
from worldmodel.sampler import add_noise, noise_levels
from worldmodel.text import Tokenizer
from conventions.metrics import revisit_matrix
from memory.retrieval import select_memory
from memory.store import kept_ticks
from worldmodel.data import LatentClips
from worldmodel.runtime import memory_config


PAD_TICK = -(10 ** 6)
"""Tick of padding frames: far from every real tick, so no window ever includes them."""


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
    world_seeds: torch.Tensor | None = None
    """int64 [N]: the procedural world of each clip (what the oracle renders its truth from), or None."""
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
                          if closed else None,
                          torch.cat([p.world_seeds for p in parts]) if all(p.world_seeds is not None for p in parts)
                          else None)

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
                      clips.view_rgb, clips.view_depth, clips.target_latents, clips.world_seeds.long())


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
    target = data.poses[clip][tgt_ticks]
    preferred = start_preferred(ticks, valid, target, data.poses[clip][:1].expand(k, -1), c.hint_start_radius)
    bilinear = bilinear_sources(ticks, valid, c.hint_sampling)
    return dict(hint_rgb=data.view_rgb[clip][ticks], hint_depth=data.view_depth[clip][ticks].float(),
                hint_poses=data.poses[clip][ticks], hint_valid=valid, hint_target=target,
                hint_noise=noise, hint_preferred=torch.zeros_like(valid) if preferred is None else preferred,
                hint_bilinear=torch.zeros_like(valid) if bilinear is None else bilinear)


HINT_KEYS = ("hint_rgb", "hint_depth", "hint_poses", "hint_valid", "hint_target", "hint_noise",
             "hint_preferred", "hint_bilinear")


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
                      flat["hint_target"], config.fov_deg, noise=flat["hint_noise"],
                      splat_levels=config.hint_splat_levels, preferred=flat["hint_preferred"],
                      bilinear=flat["hint_bilinear"]).view(b, k, -1, *batch.target_x0.shape[-2:])
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
