"""Distributed training: the rank split of the sampling plan, torchrun environment handling, and real
2-process runs (gloo on CPU) under torchrun: DDP and FSDP against the one-process run with the same
global batch, and exact resume of a distributed run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from wm_helpers import tiny_autoencoder, write_latent_clips

from worldmodel.checkpoint import read_checkpoint_metadata
from worldmodel.config import tiny_config
from worldmodel.distributed import DistContext, rank_device, read_launch_env, reduce_weighted_means
from conventions.errors import UserError
from worldmodel.model import JointBatch
from worldmodel.text import Tokenizer
from worldmodel.batches import load_latents, rank_slots, step_batch, StepSampler
from worldmodel.train import LOG_FILE, PRODUCT_CHECKPOINT, TRAIN_STATE, train_world_model, TrainOptions

TICKS = 24
CLIPS = 6
WORKER = Path(__file__).with_name("dist_worker.py")
LAUNCH_TIMEOUT_S = 180
"""A hung collective must fail the test, not the CI job."""
LAUNCH_ATTEMPTS = 2
TRANSPORT_FAILURE = (r"EADDRINUSE|[Aa]ddress already in use|DistNetworkError|RendezvousError|"
                     r"gloo::IoException|Connection reset by peer")
"""Launcher/socket failures (a port taken between choosing and binding it, a connection dropped on a
loaded machine) get one more launch on a new port; a Python error or a wrong number never does."""
LOSS_RTOL = 1e-5
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5
OPTIONS = dict(steps=3, batch=4, lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=1, val_every=3, val_clips=1,
               val_rollout_ticks=2, amp=False, caption_dropout=0.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from worldmodel.autoencoder import save_autoencoder
    from worldmodel.checkpoint import checkpoint_sha256

    d = tmp_path_factory.mktemp("dist")
    c = tiny_config()
    ae = save_autoencoder(tiny_autoencoder(), d / "ae.safetensors")
    sha = checkpoint_sha256(ae)
    return {"dir": d, "ae": ae, "train": write_latent_clips(d / "train.safetensors", CLIPS, TICKS, c, 0, sha),
            "val": write_latent_clips(d / "val.safetensors", 2, TICKS, c, 1, sha)}


# --- the sampling plan ----------------------------------------------------------------------------
def _batch_tensors(batch) -> dict[str, torch.Tensor]:
    out = {f.name: getattr(batch.joint, f.name) for f in fields(JointBatch)}
    out.update(target_x0=batch.target_x0, target_noise=batch.target_noise)
    return {k: v for k, v in out.items() if v is not None}


def test_ranks_together_build_exactly_the_global_batch(files: dict[str, Path]) -> None:
    c = tiny_config()
    data = load_latents(files["train"], c)
    # prompts of different lengths, so caption dropout and text padding are exercised
    data.captions = ["a walled courtyard of red brick on grass", "snow", "a plaza", "blue orchard at sunset",
                     "gardens", "a fort of stone with towers and a gate"]
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    sampler = StepSampler(data.clips, 4, seed=3)
    for step in (0, 1, 7):
        whole = _batch_tensors(step_batch(data, c, tok, sampler, step, caption_dropout=0.5))
        for world in (2, 4):
            parts = [_batch_tensors(step_batch(data, c, tok, sampler, step, r, world, caption_dropout=0.5))
                     for r in range(world)]
            for key, value in whole.items():
                joined = torch.cat([p[key] for p in parts])
                assert torch.equal(joined, value), (step, world, key)
    # a step is reproducible, and another step draws another batch
    again = _batch_tensors(step_batch(data, c, tok, StepSampler(data.clips, 4, seed=3), 7, caption_dropout=0.5))
    assert all(torch.equal(again[k], v) for k, v in whole.items())
    other = _batch_tensors(step_batch(data, c, tok, sampler, 8, caption_dropout=0.5))
    assert not torch.equal(other["latents"], whole["latents"])


def test_every_epoch_visits_every_clip_once() -> None:
    clips, batch = 10, 4
    sampler = StepSampler(clips, batch, seed=1)
    seen = [sampler.clip(step, slot) for step in range(15) for slot in range(batch)]  # 6 epochs
    epochs = [seen[i: i + clips] for i in range(0, len(seen), clips)]
    assert all(sorted(e) == list(range(clips)) for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    other_seed = StepSampler(clips, batch, seed=2)
    assert [other_seed.clip(s // batch, s % batch) for s in range(clips)] != epochs[0]


def test_rank_slots_split_the_global_batch() -> None:
    assert [list(rank_slots(8, r, 4)) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(UserError, match="--batch 6 is the global batch.*divisible by the 4 processes"):
        rank_slots(6, 0, 4)


# --- environment ------------------------------------------------------------------------------------
def test_launch_environment_is_parsed_and_checked() -> None:
    assert read_launch_env({}) is None
    env = read_launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (env.world_size, env.rank, env.local_rank, env.local_world_size) == (4, 3, 1, 2)
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        read_launch_env({"WORLD_SIZE": "two", "RANK": "0"})
    with pytest.raises(UserError, match="RANK is missing"):
        read_launch_env({"WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="RANK=2 WORLD_SIZE=2 is not a valid rank"):
        read_launch_env({"WORLD_SIZE": "2", "RANK": "2"})
    assert rank_device("cpu", env) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert rank_device("auto", env) == torch.device("cpu")
        with pytest.raises(UserError, match="CUDA is not available"):
            rank_device("cuda", env)


def test_metrics_are_weighted_means() -> None:
    ctx = DistContext(1, 0, 0, torch.device("cpu"), group=False)
    out = reduce_weighted_means(ctx, {"loss": (0.5, 8.0), "mse_high_noise": (0.0, 0.0)})
    assert out == {"loss": 0.5}  # a metric nobody measured is left out, not logged as 0


def test_fsdp_and_multi_process_stages_need_torchrun(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="--fsdp shards the model across processes; launch with torchrun"):
        train_world_model(files["train"], files["dir"] / "nofsdp", files["ae"], TrainOptions(steps=1, batch=1,
                          fsdp=True, amp=False), tiny_config(), progress=False)
    from tools.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--stage", "ae", "--data", str(files["dir"]), "--out", str(files["dir"] / "ae")]) == 2


def test_latents_stage_writes_a_cache_the_world_stage_reads(tmp_path: Path) -> None:
    from ae_helpers import tiny_ae_config, write_synthetic_dataset

    from worldmodel.autoencoder import Autoencoder, file_sha256, save_autoencoder
    from tools.cli import main
    from worldmodel.data import LatentClips

    write_synthetic_dataset(tmp_path / "data", clips=3, ticks=4)
    torch.manual_seed(0)
    ae = save_autoencoder(Autoencoder(tiny_ae_config()), tmp_path / "ae.safetensors")
    out = tmp_path / "latents.safetensors"
    assert main(["train", "--stage", "latents", "--data", str(tmp_path / "data"), "--autoencoder", str(ae),
                 "--out", str(out), "--device", "cpu"]) == 0
    cache = LatentClips(out, expected_autoencoder_sha256=file_sha256(ae))
    assert tuple(cache.latents.shape) == (3, 4, 8, 2, 2)
    assert main(["train", "--stage", "latents", "--data", str(tmp_path / "data"), "--out", str(out)]) == 2


# --- resume across versions -------------------------------------------------------------------------
def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / LOG_FILE).read_text().splitlines()) if "loss" in r}


def test_resume_from_a_positional_optimizer_state(files: dict[str, Path]) -> None:
    """Runs saved before the optimizer state was keyed by parameter name still resume exactly."""
    c, opts = tiny_config(), TrainOptions(**{**OPTIONS, "val_every": 100})
    straight, sliced = files["dir"] / "pos_straight", files["dir"] / "pos_sliced"
    train_world_model(files["train"], straight, files["ae"], opts, c, progress=False)
    train_world_model(files["train"], sliced, files["ae"], opts, c, progress=False, stop_after=2)
    state = torch.load(sliced / TRAIN_STATE, weights_only=False)
    named = state["optimizer"]
    names = [n for g in named["param_groups"] for n in g["params"]]
    state["optimizer"] = {"state": {names.index(n): s for n, s in named["state"].items()},
                          "param_groups": [{**g, "params": [names.index(n) for n in g["params"]]}
                                           for g in named["param_groups"]]}
    torch.save(state, sliced / TRAIN_STATE)
    train_world_model(files["train"], sliced, files["ae"], opts, c, progress=False)
    assert _losses(sliced) == _losses(straight)


# --- real multi-process runs ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's own connections on the loopback interface
    for attempt in range(LAUNCH_ATTEMPTS):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
        output = proc.stdout[-3000:] + proc.stderr[-6000:]
        if proc.returncode == 0 or not re.search(TRANSPORT_FAILURE, output):
            break
    assert proc.returncode == 0, output


@pytest.fixture(scope="module")
def single_run(files: dict[str, Path]) -> Path:
    """The one-process reference: global batch 4, three steps, validation at the end."""
    out = files["dir"] / "single"
    train_world_model(files["train"], out, files["ae"], TrainOptions(**OPTIONS), tiny_config(),
                      val_latents_path=files["val"], progress=False)
    return out


def _assert_same_run(run: Path, reference: Path, exact: bool) -> None:
    a, b = _losses(run), _losses(reference)
    assert a.keys() == b.keys() == {1, 2, 3}  # rank 0 alone wrote the log: one line per step
    for s in a:
        assert a[s] == b[s] if exact else abs(a[s] - b[s]) <= LOSS_RTOL * abs(b[s]), (s, a[s], b[s])
    got = torch.load(run / TRAIN_STATE, weights_only=False)
    ref = torch.load(reference / TRAIN_STATE, weights_only=False)
    assert got["step"] == ref["step"] == 3
    for part in ("model", "ema"):
        assert got[part].keys() == ref[part].keys()
        for name, value in ref[part].items():
            if exact:
                assert torch.equal(got[part][name], value), (part, name)
            else:
                torch.testing.assert_close(got[part][name], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)
    vals = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines() if "val_tf_psnr" in line]
    assert len(vals) == 1 and vals[0]["step"] == 3


def test_ddp_two_processes_match_one_and_resume_exactly(files: dict[str, Path], single_run: Path) -> None:
    d = files["dir"]
    spec = {"train": str(files["train"]), "val": str(files["val"]), "ae": str(files["ae"]), "options": OPTIONS,
            "runs": [{"out": str(d / "ddp_straight")},
                     {"out": str(d / "ddp_sliced"), "stop_after": 2}, {"out": str(d / "ddp_sliced")}]}
    (d / "ddp_spec.json").write_text(json.dumps(spec))
    _torchrun([str(WORKER), str(d / "ddp_spec.json")], d)
    _assert_same_run(d / "ddp_straight", single_run, exact=False)
    _assert_same_run(d / "ddp_sliced", d / "ddp_straight", exact=True)
    summary = json.loads(read_checkpoint_metadata(d / "ddp_straight" / PRODUCT_CHECKPOINT)["train"])
    assert summary["world_size"] == 2 and summary["step"] == 3


def test_fsdp_two_processes_resume_a_one_process_run_and_match_it(files: dict[str, Path], single_run: Path) -> None:
    """`worldmodel train --fsdp` under torchrun picks up a state the one-process run wrote after step 1
    (unsharded, read back sharded) and finishes steps 2-3 as that run did."""
    d = files["dir"]
    out = d / "fsdp"
    train_world_model(files["train"], out, files["ae"], TrainOptions(**OPTIONS), tiny_config(),
                      val_latents_path=files["val"], progress=False, stop_after=1)
    opt_flags = [x for k in ("warmup_steps", "log_every", "ckpt_every", "val_every", "val_clips",
                             "val_rollout_ticks", "caption_dropout", "amp")
                 for x in ("--opt", f"{k}={json.dumps(OPTIONS[k])}")]
    _torchrun(["-m", "tools.cli", "train", "--stage", "world", "--fsdp", "--device", "cpu", "--preset", "tiny",
               "--data", str(files["train"]), "--val", str(files["val"]), "--autoencoder", str(files["ae"]),
               "--out", str(out), "--steps", "3", "--batch", "4", "--lr", str(OPTIONS["lr"]), *opt_flags], d)
    _assert_same_run(out, single_run, exact=False)


@pytest.mark.slow
def test_stage_all_under_torchrun_renders_by_rank_and_trains_with_ddp(tmp_path: Path) -> None:
    """`worldmodel train --stage all` under torchrun: both ranks render data shards, the world-model
    stages train with 2 processes, rank 0 alone runs the rest, and the run finishes with its eval."""
    out = tmp_path / "all"
    _torchrun(["-m", "tools.cli", "train", "--stage", "all", "--preset", "tiny", "--device", "cpu",
               "--max-steps", "2", "--out", str(out)], Path(__file__).resolve().parent.parent)
    record = json.loads((out / "run.json").read_text())
    assert all(v.get("done") for v in record["stages"].values()) and "eval" in record["stages"]
    summary = json.loads(read_checkpoint_metadata(out / "world" / "world_model.safetensors")["train"])
    assert summary["world_size"] == 2 and summary["step"] == 2
    assert (out / "eval.json").exists() and (out / "world_model.safetensors").exists()
