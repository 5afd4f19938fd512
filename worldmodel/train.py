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

This file is the step function and the loop, read top to bottom; the batches (segments, memory,
hint sources, the rank-independent sampling plan) are `worldmodel.batches`, validation is
`worldmodel.validation`, and what the train, distill and autoencoder loops share (device, EMA,
atomic torch.save, resumable state) is `worldmodel.run_io`; curves go through `worldmodel.scalars`.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from worldmodel.config import WorldModelConfig, default_config
from worldmodel.distributed import (DistContext, ParallelModel, distributed_session, full_state_dict,
                                    load_full_state_dict, load_optimizer_state, optimizer_state,
                                    reduce_weighted_means, shard_model)
from conventions.errors import UserError
from worldmodel.hint import HintAugment
from worldmodel.model import WorldModel
from worldmodel.scalars import LOG_FILE, ScalarLog  # noqa: F401  (LOG_FILE: the run's log, for callers)
from worldmodel.text import Tokenizer
from conventions.progress import ProgressBar
from worldmodel.autoencoder import load_autoencoder
from worldmodel.checkpoint import checkpoint_sha256, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from worldmodel.batches import attach_hints, load_latents, rank_slots, step_batch, StepSampler, TrainBatch
from worldmodel.run_io import atomic_torch_save, load_run_state, TRAIN_STATE_FORMAT, update_ema
from worldmodel.validation import make_validation_set, validate

TRAIN_STATE = "train_state.pt"
PRODUCT_CHECKPOINT = "world_model.safetensors"
HIGH_NOISE_LEVEL = 0.5
"""Targets noisier than this count towards mse_high_noise, the others towards mse_low_noise."""


# --------------------------------------------------------------------------------------------------
# the step function
# --------------------------------------------------------------------------------------------------
def world_model_loss(model: WorldModel | ParallelModel, batch: TrainBatch, config: WorldModelConfig,
                     new_content_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Pure step function: x0-prediction MSE of the noisy targets -> (loss, metrics).

    `model` is anything with `forward_joint`: a WorldModel, or the DDP/FSDP-wrapped ParallelModel.
    `new_content_weight` (hint models, TrainOptions.new_content_weight): a latent cell the hint does
    not cover counts 1 + this much more than a covered one, within each target's mean (so a target's
    loss keeps its scale and only its share between copying and inventing moves)."""
    pred = model.forward_joint(batch.joint)  # [B, G, C, h, w]
    pred_t = pred.index_select(1, batch.target_index).float()  # [B, K, C, h, w]
    err = (pred_t - batch.target_x0.float()).pow(2).mean(2)  # [B, K, h, w]
    if new_content_weight > 0 and batch.joint.hint is not None:
        coverage = batch.joint.hint.index_select(1, batch.target_index)[:, :, -1].float()  # [B, K, h, w]
        weight = 1.0 + new_content_weight * (1.0 - coverage)
        err = err * (weight / weight.mean((-2, -1), keepdim=True))
    err = err.flatten(2).mean(-1)  # [B, K]
    loss = err.mean()
    high = batch.target_noise > HIGH_NOISE_LEVEL
    metrics = {"loss": float(loss.detach())}
    if bool(high.any()):
        metrics["mse_high_noise"] = float(err.detach()[high].mean())
    if bool((~high).any()):
        metrics["mse_low_noise"] = float(err.detach()[~high].mean())
    return loss, metrics


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
    new_content_weight: float = 0.0
    """Hint models: extra loss weight of the latent cells the hint does not cover (`world_model_loss`).
    Most of a frame is the hint's to copy; what play lacks is the new content (`worldmodel eval`'s
    split: ~18 dB there against ~27 dB on what the start frame shows)."""
    loader_workers: int = 0
    """Processes that build the next batches while the device trains (0: built in the loop). A batch
    depends only on its step (StepSampler), so the workers give the same batches in the same order;
    a GPU needs them, since building 128 samples with their memory and hint sources takes the CPU
    longer than the GPU takes for the step."""
    compile: bool = False
    """torch.compile the joint training pass (GPU runs; the first steps pay for the compilation)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state across the torchrun processes (FSDP2) instead
    of replicating the model in each (DDP): for models that do not fit one GPU. Needs torchrun."""


def learning_rate(step: int, opts: TrainOptions) -> float:
    """Linear warmup then cosine decay to min_lr_ratio * lr."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    span = max(1, opts.steps - opts.warmup_steps)
    progress = min(1.0, (step - opts.warmup_steps) / span)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


class _StepBatches(torch.utils.data.Dataset):
    """Step t -> its batch, for a DataLoader whose workers build batches ahead of the loop."""

    def __init__(self, build: Callable[[int], TrainBatch], start: int, end: int) -> None:
        self.build, self.start, self.end = build, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> TrainBatch:
        return self.build(self.start + i)


def _as_is(batch: TrainBatch) -> TrainBatch:
    return batch


LOADER_PREFETCH = 4
"""Batches each loader worker builds ahead."""


def step_batches(build: Callable[[int], TrainBatch], start: int, end: int, workers: int) -> Iterator[TrainBatch]:
    """The batches of steps start..end-1 in order: built in the loop, or by `workers` processes."""
    workers = min(workers, os.cpu_count() or 1)  # more processes than cores only adds switching
    if workers <= 0:
        return (build(t) for t in range(start, end))
    loader = torch.utils.data.DataLoader(_StepBatches(build, start, end), batch_size=None, shuffle=False,
                                         num_workers=workers, prefetch_factor=LOADER_PREFETCH, collate_fn=_as_is)
    return iter(loader)


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
    if opts.compile:  # an instance attribute: the state dict and the EMA copy above are unaffected
        model.forward_joint = torch.compile(model.forward_joint)
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

    def build(at: int) -> TrainBatch:
        return step_batch(data, config, tokenizer, sampler, at, ctx.rank, ctx.world_size, opts.caption_dropout,
                          opts.revisit_focus, opts.revisit_min_gap, opts.window_dropout, hint_augment)

    batches = step_batches(build, step, end, opts.loader_workers)
    while step < end:
        batch = next(batches).to(dev)
        attach_hints(batch, autoencoder, config)
        lr = learning_rate(step, opts)
        for group in optim.param_groups:
            group["lr"] = lr
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, metrics = world_model_loss(net, batch, config, opts.new_content_weight)
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
