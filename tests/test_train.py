"""Checkpoint file, training loop (loss goes down, exact resume), data checks and the train command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wm_helpers import randomized_model, tiny_autoencoder, write_latent_clips

from worldmodel.checkpoint import (CHECKPOINT_FORMAT, checkpoint_sha256, load_checkpoint,
                                   read_checkpoint_metadata, save_checkpoint)
from worldmodel.config import tiny_config
from worldmodel.errors import UserError
from worldmodel.text import Tokenizer
from worldmodel.train import (LOG_FILE, TrainOptions, load_latents, sample_batch,
                              train_world_model, world_model_loss)

TICKS = 24


# --- checkpoint -----------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    c = tiny_config()
    model, ae = randomized_model(c), tiny_autoencoder()
    path = save_checkpoint(tmp_path / "ck.safetensors", model, ae, {"step": 7})
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == CHECKPOINT_FORMAT and json.loads(meta["train"])["step"] == 7
    assert json.loads(meta["vocab"]) == c.vocab
    m2, ae2, c2 = load_checkpoint(path)
    assert c2 == c
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ae.state_dict().values(), ae2.state_dict().values()):
        assert torch.equal(a, b)
    assert len(checkpoint_sha256(path)) == 64
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temp file left behind


def test_checkpoint_errors_name_the_problem(tmp_path: Path) -> None:
    c = tiny_config()
    model, ae = randomized_model(c), tiny_autoencoder()
    good = save_checkpoint(tmp_path / "ck.safetensors", model, ae)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_checkpoint(junk)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(UserError, match="trunc.safetensors"):
        load_checkpoint(truncated)
    from worldmodel.autoencoder import save_autoencoder

    ae_only = save_autoencoder(ae, tmp_path / "ae.safetensors")
    with pytest.raises(UserError, match="format is 'worldmodel.autoencoder'"):
        load_checkpoint(ae_only)
    with pytest.raises(UserError, match="layers: checkpoint 2 vs expected 3"):
        load_checkpoint(good, expected_config=tiny_config(layers=3))
    # tensors that do not fit the stored config are listed by name
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(good))
    meta = read_checkpoint_metadata(good)
    del tensors["model.blocks.1.qkv.weight"]
    tensors["model.extra.weight"] = torch.zeros(1)
    tensors["model.patch_in.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(UserError) as err:
        load_checkpoint(bad)
    msg = str(err.value)
    assert "model.blocks.1.qkv.weight" in msg and "model.extra.weight" in msg and "model.patch_in.weight" in msg


# --- training -----------------------------------------------------------------------------------
@pytest.fixture()
def run_files(tmp_path: Path) -> dict[str, Path]:
    from worldmodel.autoencoder import save_autoencoder

    c = tiny_config()
    ae_path = save_autoencoder(tiny_autoencoder(), tmp_path / "ae.safetensors")
    sha = checkpoint_sha256(ae_path)
    return {"ae": ae_path, "train": write_latent_clips(tmp_path / "train.safetensors", 6, TICKS, c, 0, sha),
            "val": write_latent_clips(tmp_path / "val.safetensors", 2, TICKS, c, 1, sha), "dir": tmp_path}


def _opts(**kw) -> TrainOptions:
    base = dict(steps=6, batch=2, lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=2, val_every=100,
                val_clips=2, val_rollout_ticks=3, amp=False)
    base.update(kw)
    return TrainOptions(**base)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_a_playable_checkpoint(run_files: dict[str, Path]) -> None:
    c = tiny_config()
    data = load_latents(run_files["train"], c)
    probe = sample_batch(data, c, Tokenizer(c.vocab, c.max_text_tokens), 8, torch.Generator().manual_seed(5))
    from worldmodel.model import WorldModel

    torch.manual_seed(0)
    with torch.no_grad():
        before, _ = world_model_loss(WorldModel(c).eval(), probe, c)
    out = run_files["dir"] / "run"
    path = train_world_model(run_files["train"], out, run_files["ae"], _opts(steps=25, val_every=25, ema_decay=0.5),
                             c, val_latents_path=run_files["val"], progress=False)
    model, ae, c2 = load_checkpoint(path)
    assert c2 == c
    with torch.no_grad():
        after, _ = world_model_loss(model, probe, c)
    assert float(after) < 0.7 * float(before), (float(before), float(after))
    log = _log(out)
    assert [r["step"] for r in log if "loss" in r][-1] == 25
    val = [r for r in log if "val_tf_psnr" in r][-1]
    for key in ("val_tf_psnr", "val_rollout_psnr", "val_copy_psnr", "val_tf_latent_mse"):
        assert key in val and val[key] == val[key]  # present and not NaN
    assert json.loads(read_checkpoint_metadata(path)["train"])["step"] == 25


def test_resume_reproduces_the_next_step_exactly(run_files: dict[str, Path]) -> None:
    c = tiny_config()
    straight, sliced = run_files["dir"] / "straight", run_files["dir"] / "sliced"
    train_world_model(run_files["train"], straight, run_files["ae"], _opts(), c, progress=False)
    train_world_model(run_files["train"], sliced, run_files["ae"], _opts(), c, progress=False, stop_after=3)
    assert [r["step"] for r in _log(sliced)] == [1, 2, 3]
    train_world_model(run_files["train"], sliced, run_files["ae"], _opts(), c, progress=False)
    a = {r["step"]: r["loss"] for r in _log(straight)}
    b = {r["step"]: r["loss"] for r in _log(sliced)}
    assert a.keys() == b.keys() == set(range(1, 7))
    assert all(a[s] == b[s] for s in a), (a, b)


def test_training_refuses_mismatched_data_and_runs(run_files: dict[str, Path]) -> None:
    c = tiny_config()
    wrong = write_latent_clips(run_files["dir"] / "wrong.safetensors", 2, TICKS, c, 0, latent_size=4)
    with pytest.raises(UserError, match=r"latent frames are \[16, 4, 4\]"):
        load_latents(wrong, c)
    other_ae = write_latent_clips(run_files["dir"] / "other.safetensors", 2, TICKS, c, 0, "ab" * 32)
    with pytest.raises(UserError, match="another autoencoder"):
        train_world_model(other_ae, run_files["dir"] / "x", run_files["ae"], _opts(steps=1), c, progress=False)
    run = run_files["dir"] / "run"
    train_world_model(run_files["train"], run, run_files["ae"], _opts(steps=2), c, progress=False)
    with pytest.raises(UserError, match="another config"):
        train_world_model(run_files["train"], run, run_files["ae"], _opts(steps=4), tiny_config(layers=3),
                          progress=False)


def test_train_command_world_stage(run_files: dict[str, Path]) -> None:
    from worldmodel.cli import main

    out = run_files["dir"] / "cli"
    export = run_files["dir"] / "ship" / "default.safetensors"
    rc = main(["train", "--stage", "world", "--data", str(run_files["train"]), "--autoencoder",
               str(run_files["ae"]), "--out", str(out), "--steps", "2", "--batch", "1", "--preset", "tiny",
               "--set", "window_frames=2", "--opt", "amp=false", "--export", str(export)])
    assert rc == 0 and export.exists()
    assert load_checkpoint(export)[2].window_frames == 2
    assert main(["train", "--stage", "world", "--data", str(run_files["train"]), "--out", str(out),
                 "--steps", "1"]) == 2  # no --autoencoder: one-line error, exit 2
    assert main(["train", "--stage", "world", "--data", str(run_files["train"]), "--autoencoder",
                 str(run_files["ae"]), "--out", str(out), "--set", "nonsense=1"]) == 2
