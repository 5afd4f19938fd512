"""Self Forcing through the play session (worldmodel.self_forcing, WorldModelSession.step_with_grad)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conventions.errors import UserError
from test_hint import _ae_with_depth
from tools.cli import main
from wm_helpers import randomized_model
from worldmodel.batches import load_latents
from worldmodel.checkpoint import load_checkpoint, save_checkpoint
from worldmodel.config import tiny_config
from worldmodel.runtime import WorldModelSession
import worldmodel.self_forcing as sf


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from tools.dataset import write_dataset
    from worldmodel.data import encode_dataset

    root = tmp_path_factory.mktemp("sf")
    write_dataset(root / "ds", worlds=2, clips_per_world=1, ticks=12, policy="walk", progress=False)
    ae = _ae_with_depth()
    views = encode_dataset(ae, root / "ds", root / "views.safetensors", batch=16, progress=False)
    config = tiny_config(hint=True, window_frames=3, memory_entries=2)
    hint = save_checkpoint(root / "hint.safetensors", randomized_model(config), ae)
    plain = save_checkpoint(root / "plain.safetensors", randomized_model(tiny_config()), ae)
    return {"views": views, "hint": hint, "plain": plain}


def test_step_with_grad_is_the_play_step_with_gradients(files):
    """The frames of a rollout of `step_with_grad` are exactly those of `step` (same session, seed,
    actions), and each one's loss reaches the weights."""
    model, ae, config = load_checkpoint(files["hint"])
    data = load_latents(files["views"], config)
    play = WorldModelSession(model, autoencoder=ae, defer_commit=False)
    trained = WorldModelSession(model, autoencoder=ae, defer_commit=False)
    for session in (play, trained):
        with torch.no_grad():
            session.reset(data.latents[0, 0].float(), data.poses[0, 0], data.captions[0], 3)
    for t in range(1, 6):
        shown = play.step(data.actions[0, t], data.poses[0, t])
        x0 = trained.step_with_grad(data.actions[0, t], data.poses[0, t])
        assert torch.equal(shown, x0.detach()) and x0.requires_grad
        model.zero_grad()
        x0.pow(2).mean().backward()
        assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    assert set(trained.views) == set(play.views) and len(trained.memory) == len(play.memory)
    with pytest.raises(ValueError, match="defer_commit=False"):
        WorldModelSession(model, autoencoder=ae).step_with_grad(data.actions[0, 1], data.poses[0, 1])


def test_self_forcing_trains_resumes_and_plays(files, tmp_path, monkeypatch):
    """A run changes the weights, writes a checkpoint that plays and a log; interrupted and started
    again it ends with the weights of an uninterrupted run."""
    options = sf.SelfForcingOptions(steps=3, batch=2, frames=3, ckpt_every=1, log_every=1, warmup_steps=1)
    straight = sf.train_self_forcing(files["hint"], [files["views"]], tmp_path / "a", options)
    real = sf.self_forcing_backward
    calls = [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sf, "self_forcing_backward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sf.train_self_forcing(files["hint"], [files["views"]], tmp_path / "b", options)
    monkeypatch.setattr(sf, "self_forcing_backward", real)
    resumed = sf.train_self_forcing(files["hint"], [files["views"]], tmp_path / "b", options)
    a, b, base = (load_checkpoint(p)[0].state_dict() for p in (straight, resumed, files["hint"]))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)
    logged = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["loss_first"] > 0 for r in logged if "loss" in r)
    with pytest.raises(UserError, match="another checkpoint, data or settings"):
        sf.train_self_forcing(files["hint"], [files["views"]], tmp_path / "b",
                              sf.SelfForcingOptions(steps=3, batch=2, frames=2))
    assert main(["play", "--checkpoint", str(straight), "--max-ticks", "3"]) == 0


def test_self_forcing_refuses_what_it_cannot_train(files, tmp_path, capsys):
    assert main(["train", "--stage", "self-forcing", "--data", str(files["views"]), "--out", str(tmp_path / "x"),
                 "--checkpoint", str(files["plain"]), "--steps", "1"]) == 2
    assert "has none (train it with --set hint=true first)" in capsys.readouterr().err
    assert main(["train", "--stage", "self-forcing", "--data", str(files["views"]), "--out", str(tmp_path / "x"),
                 "--checkpoint", str(files["hint"]), "--ticks", "40"]) == 2
    assert "a segment of 40 frames needs 41" in capsys.readouterr().err
    assert main(["train", "--stage", "self-forcing", "--data", str(files["views"]), "--out", str(tmp_path / "x"),
                 "--steps", "1"]) == 2
    assert "--checkpoint PATH" in capsys.readouterr().err
    assert main(["train", "--stage", "self-forcing", "--data", str(files["views"]), "--out", str(tmp_path / "x"),
                 "--checkpoint", str(files["hint"]), "--set", "layers=3"]) == 2
    assert "--set does not apply" in capsys.readouterr().err
    with pytest.raises(UserError, match="batch must be a positive integer"):
        sf.SelfForcingOptions(batch=0).validate()
