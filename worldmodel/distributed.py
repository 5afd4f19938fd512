"""Multi-process training: the torchrun environment, the process group, DDP / FSDP wrapping.

`worldmodel train` runs unchanged as one process or under `torchrun --nproc_per_node N`:

- `distributed_session(device)` reads WORLD_SIZE / RANK / LOCAL_RANK (set by torchrun), starts the
  process group (gloo on CPU, NCCL on CUDA, one GPU per LOCAL_RANK) and always destroys it on the way
  out, also when training raises, so no rank is left holding sockets or NCCL communicators.
  Without torchrun it yields a one-process context and starts nothing.
- `ParallelModel` is what the training step calls: `forward_joint` goes through DistributedDataParallel
  (gradients all-reduced during backward) or through FSDP2 (`fully_shard`: parameters, gradients and
  optimizer state sharded across ranks, each transformer block gathered only while it runs), so
  `worldmodel.train.world_model_loss` works unchanged on either.
- Rank-0-only work (validation, checkpoint writing) is followed by `DistContext.agree`, a collective
  that makes every rank raise when rank 0 failed, instead of the others waiting in the next
  collective until the process-group timeout.

How the data is split (the sampling plan itself lives in worldmodel.train): a step's global batch of
B samples is a fixed list of B slots, each with its own clip and its own random stream derived from
(seed, step, slot); rank r of W takes slots [r*B/W, (r+1)*B/W). The union of the ranks' samples is
therefore exactly the one-process batch of the same seed, whatever W is.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from conventions.errors import UserError

ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_RANK = "RANK"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
MAIN_RANK = 0
CPU_BACKEND = "gloo"
CUDA_BACKEND = "nccl"
DEFAULT_TIMEOUT_S = 1800.0
"""How long a rank waits in a collective (e.g. while rank 0 validates or writes a checkpoint)."""

FSDP_BLOCK_METHODS = ("mods", "qkv_tokens", "memory_kv", "finish")
"""The methods through which WorldModel.forward_joint runs a Block (a Block has no forward). Each is
registered with FSDP so its parameters are gathered before the call; a new Block method called from
forward_joint must be added here (the FSDP test fails otherwise)."""
FSDP_ROOT_METHOD = "forward_joint"

_VIEW_WARNING = r"FSDP2-wrapped module .* returned a view tensor"
"""FSDP2 warns when a registered method returns a view; Block.mods returns unbind views that are
only used out of place, which is safe (the warning is about in-place ops on them)."""


# --------------------------------------------------------------------------------------------------
# environment and process group
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun told this process: None when not launched by torchrun."""

    world_size: int
    rank: int
    local_rank: int
    local_world_size: int


def _env_int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment: {name}={raw!r} is not an integer (set by torchrun)") from None


def read_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """Parse the torchrun variables; None without them (plain `python -m` / `worldmodel`)."""
    env = os.environ if env is None else env
    if ENV_WORLD_SIZE not in env and ENV_RANK not in env:
        return None
    for name in (ENV_WORLD_SIZE, ENV_RANK):
        if name not in env:
            raise UserError(f"environment: {name} is missing but "
                            f"{ENV_RANK if name == ENV_WORLD_SIZE else ENV_WORLD_SIZE} is set; launch with torchrun")
    world, rank = _env_int(env, ENV_WORLD_SIZE), _env_int(env, ENV_RANK)
    local = _env_int(env, ENV_LOCAL_RANK) if ENV_LOCAL_RANK in env else rank
    local_world = _env_int(env, ENV_LOCAL_WORLD_SIZE) if ENV_LOCAL_WORLD_SIZE in env else world
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"environment: RANK={rank} WORLD_SIZE={world} is not a valid rank")
    if local_world < 1 or not 0 <= local < local_world:
        raise UserError(f"environment: LOCAL_RANK={local} LOCAL_WORLD_SIZE={local_world} is not a valid rank")
    return LaunchEnv(world, rank, local, local_world)


def rank_device(device: str, launch: LaunchEnv | None) -> torch.device:
    """The device of this rank: `auto` = this rank's GPU (cuda:LOCAL_RANK) if CUDA exists, else CPU;
    `cuda` = cuda:LOCAL_RANK; an explicit `cuda:N` only with one process per machine (ranks must not
    share a GPU under NCCL)."""
    local = launch.local_rank if launch is not None else 0
    local_world = launch.local_world_size if launch is not None else 1
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = "cuda"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local if launch is not None else torch.cuda.current_device())
        elif local_world > 1:
            raise UserError(f"--device {device}: with {local_world} processes per machine each rank uses "
                            f"cuda:LOCAL_RANK; pass --device cuda (or auto)")
        if dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {dev}: this machine has {torch.cuda.device_count()} GPU(s) "
                            f"(LOCAL_RANK {local}); start at most that many processes per machine")
    return dev


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run. `world_size == 1` and `group is False` for a plain run."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    group: bool
    """True when a process group is up (launched by torchrun, even with one process)."""

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN_RANK

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.group:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks of a CPU vector, in float64 (reduced on this rank's device: gloo
        reduces CPU tensors, NCCL GPU tensors)."""
        if not self.group:
            return values
        t = values.to(self.device, torch.float64)
        dist.all_reduce(t)
        return t.to("cpu")

    def all_equal(self, value: float) -> bool:
        """True when every rank holds the same number (e.g. the step it resumed from)."""
        if not self.group:
            return True
        t = torch.tensor([value, -value], dtype=torch.float64)
        t = self.all_reduce_max(t)
        return bool(t[0] == value and -t[1] == value)

    def all_reduce_max(self, values: torch.Tensor) -> torch.Tensor:
        if not self.group:
            return values
        t = values.to(self.device, torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.to("cpu")

    def agree(self, error: BaseException | None, what: str) -> None:
        """Collective after work some ranks did alone: if any rank failed, every rank raises.

        The failing rank re-raises its own exception (so the CLI prints the real message); the others
        raise a RuntimeError naming the step that failed elsewhere."""
        failed = self.all_reduce_max(torch.tensor([1.0 if error is not None else 0.0]))
        if error is not None:
            raise error
        if float(failed[0]) > 0:
            raise RuntimeError(f"{what} failed on another rank (see rank {MAIN_RANK}'s error above)")


def reduce_weighted_means(ctx: DistContext, values: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Global means from per-rank (mean, weight) pairs: sum(mean * weight) / sum(weight) over ranks.

    Every rank must pass the same keys (use weight 0 for a metric this rank has no sample of); keys
    whose total weight is 0 are left out. With equal per-rank weights this is the mean over the union
    of the ranks' samples, i.e. the number a one-process run with the global batch logs."""
    keys = sorted(values)
    flat = torch.tensor([[values[k][0] * values[k][1], values[k][1]] for k in keys], dtype=torch.float64)
    flat = ctx.all_reduce_sum(flat.reshape(-1)).reshape(len(keys), 2)
    return {k: float(flat[i, 0] / flat[i, 1]) for i, k in enumerate(keys) if float(flat[i, 1]) > 0}


def _import_group_capturing_modules() -> None:
    """Import, before the process group exists, the torch modules that would keep it alive forever.

    torch.distributed.nn.functional evaluates `group=group.WORLD` default arguments at import time, and
    DDP imports it (through torch._dynamo) lazily, after init_process_group. Imported then, those
    defaults hold the world group, so destroy_process_group cannot free it: gloo's worker threads
    outlive the group and run into interpreter shutdown, where one still releasing the last
    collective's Python tensor asks for the GIL and the process dies with SIGABRT ("terminate called
    without an active exception") after training finished. Imported first, the defaults are None, the
    group is freed on destroy and its destructor joins the threads."""
    import torch.distributed.nn.functional  # noqa: F401


@contextlib.contextmanager
def distributed_session(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
                        env: Mapping[str, str] | None = None) -> Iterator[DistContext]:
    """Yield this process's DistContext; under torchrun start the process group first and destroy it
    on exit (normal or not). A group someone else started (a test harness) is used and left alone."""
    launch = read_launch_env(env)
    if launch is None and not dist.is_initialized():
        yield DistContext(1, 0, 0, rank_device(device, None), group=False)
        return
    if launch is None:  # initialised by the caller without torchrun variables
        launch = LaunchEnv(dist.get_world_size(), dist.get_rank(), 0, 1)
    dev = rank_device(device, launch)
    owned = not dist.is_initialized()
    if owned:
        _import_group_capturing_modules()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group(CUDA_BACKEND, timeout=datetime.timedelta(seconds=timeout_s), device_id=dev)
        else:
            dist.init_process_group(CPU_BACKEND, timeout=datetime.timedelta(seconds=timeout_s))
    elif dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = dist.get_backend()
    if dev.type == "cuda" and backend != CUDA_BACKEND or dev.type == "cpu" and backend == CUDA_BACKEND:
        if owned:
            dist.destroy_process_group()
        raise UserError(f"--device {dev}: the process group uses {backend}, which cannot reduce {dev.type} "
                        f"tensors; use --device {'cpu' if backend == CPU_BACKEND else 'cuda'}")
    ctx = DistContext(dist.get_world_size(), dist.get_rank(), launch.local_rank, dev, group=True)
    try:
        yield ctx
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# model wrapping
# --------------------------------------------------------------------------------------------------
class JointForward(nn.Module):
    """`forward` = `WorldModel.forward_joint`, so DDP's forward (which prepares the gradient
    all-reduce of the following backward) runs for the training pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, joint: Any) -> torch.Tensor:
        return self.model.forward_joint(joint)


def _fsdp_mesh(ctx: DistContext) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(ctx.device.type, (ctx.world_size,))


def shard_model(model: nn.Module, ctx: DistContext, forward_methods: bool = True) -> nn.Module:
    """FSDP2 in place: one unit per transformer block, one for the text encoder, the rest at the root.

    `forward_methods` registers the methods forward_joint calls, so they gather their unit's
    parameters first (the EMA copy is only sharded: it is never run while sharded)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if not ctx.group:
        raise UserError("--fsdp shards the model across processes; launch with torchrun "
                        "(torchrun --nproc_per_node N -m tools.cli train ... --fsdp)")
    warnings.filterwarnings("ignore", message=_VIEW_WARNING)
    mesh = _fsdp_mesh(ctx)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
        if forward_methods:
            for name in FSDP_BLOCK_METHODS:
                if hasattr(block, name):
                    register_fsdp_forward_method(block, name)
    fully_shard(model.text_encoder, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if forward_methods:
        register_fsdp_forward_method(model, FSDP_ROOT_METHOD)
    return model


class ParallelModel:
    """The model as the training step sees it: plain, DDP-wrapped or FSDP-sharded.

    `module` is the WorldModel itself (sharded in place under FSDP); `forward_joint` runs the training
    pass through the wrapper's hooks; state dicts are full (unsharded) in every mode, so a checkpoint
    written by one mode resumes in any other and with any number of ranks."""

    def __init__(self, model: nn.Module, ctx: DistContext, fsdp: bool = False) -> None:
        self.module = model
        self.ctx = ctx
        self.fsdp = fsdp
        self._ddp: nn.Module | None = None
        if fsdp:
            shard_model(model, ctx)
        elif ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # static_graph: the same parameters are used every step (a config with memory layers but
            # no memory entries leaves some unused, which a static graph handles without a search);
            # buffers are constants (action_scale): synced once at init, not before every forward
            self._ddp = DistributedDataParallel(JointForward(model), device_ids=[ctx.device.index]
                                                if ctx.device.type == "cuda" else None,
                                                forward_sync_buffers=False, static_graph=True)

    def forward_joint(self, joint: Any) -> torch.Tensor:
        """The training pass [B, G, C, h, w] (DDP/FSDP hooks included)."""
        if self._ddp is not None:
            return self._ddp(joint)
        return self.module.forward_joint(joint)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.module.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module.named_parameters()

    def train(self, mode: bool = True) -> "ParallelModel":
        self.module.train(mode)
        return self

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the global gradient norm (over all shards under FSDP) and return it before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP
            norm = norm.full_tensor()
        return float(norm)


def full_state_dict(module: nn.Module, ctx: DistContext, fsdp: bool) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict. Under FSDP a collective that leaves the result on rank 0 only
    (other ranks get {}); otherwise every rank returns its own (identical) copy."""
    if not fsdp:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor], fsdp: bool) -> None:
    """Load an unsharded state dict (each rank takes its shard under FSDP; every rank passes it)."""
    if not fsdp:
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


# --------------------------------------------------------------------------------------------------
# optimizer state: one portable layout (parameter names, not positions)
# --------------------------------------------------------------------------------------------------
def _param_names(model: nn.Module, optim: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (groups concatenated)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in optim.param_groups for p in g["params"]]


def _is_named(state: dict[str, Any]) -> bool:
    groups = state.get("param_groups") or [{}]
    params = groups[0].get("params") or [0]
    return isinstance(params[0], str)


def optimizer_state(model: nn.Module, optim: torch.optim.Optimizer, ctx: DistContext, fsdp: bool
                    ) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name (the layout torch.distributed.checkpoint
    uses), so it loads into any mode. Under FSDP a collective with the result on rank 0 only."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optim, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
    names = _param_names(model, optim)
    sd = optim.state_dict()
    return {"state": {names[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]}


def load_optimizer_state(model: nn.Module, optim: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool,
                         source: str) -> None:
    """Load a named (or an older positional) optimizer state into `optim`."""
    names = _param_names(model, optim)
    try:
        if not _is_named(state):  # positional layout of runs saved before this module existed
            state = {"state": {names[i]: s for i, s in state["state"].items()},
                     "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                      for g in state["param_groups"]]}
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optim, state, options=StateDictOptions(full_state_dict=True))
            return
        index = {n: i for i, n in enumerate(names)}
        missing = sorted(set(names) - set(n for g in state["param_groups"] for n in g["params"]))
        if missing:
            raise KeyError(f"no optimizer state for {missing[:4]}")
        optim.load_state_dict({"state": {index[n]: s for n, s in state["state"].items()},
                               "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                                for g in state["param_groups"]]})
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"{source}: the optimizer state does not fit this model ({exc}); "
                        f"use another --out or --no-resume") from None
