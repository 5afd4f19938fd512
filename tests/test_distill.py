"""Self Forcing + DMD distillation: play-identical rollouts, the DMD gradient, the loop, resume, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_helpers import randomized_model, tiny_autoencoder, walking_poses, write_latent_clips

from conventions.camera import CameraPose
from worldmodel.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from worldmodel.config import tiny_config
from worldmodel.distill import (DISTILL_STATE, DistillModels, DistillOptions, RolloutBatch, dmd_gradient,
                                dmd_loss, distill, generator_step, self_forcing_rollout,
                                student_config)
from conventions.errors import UserError
from worldmodel.kv_cache import KVCache
from worldmodel.model import ROLE_CURRENT
from worldmodel.runtime import ModelFrameSource, WorldModelSession
from worldmodel.text import Tokenizer
from worldmodel.train import LOG_FILE, PRODUCT_CHECKPOINT

PROMPT = "a walled courtyard of red brick on grass"
CLIP_TICKS = 12


def _config():
    """Tiny, with a per-frame schedule (3 steps for the first 2 frames, then 2) and a 3-frame window."""
    return tiny_config(sample_steps=2, warmup_steps=3, warmup_frames=2)


def _batch(config, frames: int, seeds: list[int], truth: bool = False) -> RolloutBatch:
    """Walks with turns from walking_poses (one per seed) and random start latents."""
    acts, poses = zip(*(walking_poses(frames + 1, s) for s in seeds))
    g = torch.Generator().manual_seed(11)
    shape = (config.latent_channels, config.latent_size, config.latent_size)
    lat = torch.randn(len(seeds), frames + 1, *shape, generator=g)  # [B, F + 1, C, h, w]
    return RolloutBatch(lat[:, 0], torch.stack(acts), torch.stack(poses), [PROMPT] * len(seeds), seeds,
                        lat if truth else None)


# --- the rollout is the play loop ---------------------------------------------------------------
def test_rollout_equals_the_play_session_frames() -> None:
    c = _config()
    model = randomized_model(c)
    # WorldModelSession casts the model in place (`.to(dtype)`, which also turns the float64 RoPE
    # tables into float32); build the sessions first so both sides run the very same weights/tables.
    immediate, deferred = WorldModelSession(model, defer_commit=False), WorldModelSession(model)
    batch = _batch(c, 9, [3, 8])
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    single = RolloutBatch(batch.start[:1], batch.actions[:1], batch.poses[:1], [PROMPT], [3])
    with torch.no_grad():
        one = self_forcing_rollout(model, single, tok)
        out = self_forcing_rollout(model, batch, tok)
    assert out.steps == [3, 3] + [2] * 7 and out.exit_steps == [2, 2] + [1] * 7
    assert max(out.memory_entries) > 0  # frames older than the window came back through the memory store
    immediate.reset(batch.start[0], batch.poses[0, 0], PROMPT, 3)
    assert torch.equal(immediate.rollout(batch.actions[0, 1:], batch.poses[0, 1:]), one.frames[0])  # bit for bit
    for i, seed in enumerate(batch.seeds):
        for session in (immediate, deferred):
            session.reset(batch.start[i], batch.poses[i, 0], PROMPT, seed)
            ref = session.rollout(batch.actions[i, 1:], batch.poses[i, 1:])  # [F, C, h, w]
            # deferred commit / batched rows: the same maths in another summation order
            torch.testing.assert_close(ref, out.frames[i], atol=1e-5, rtol=1e-5)
    assert not torch.equal(out.frames[0], out.frames[1])  # seeds matter


def test_gradient_pass_equals_the_play_pass_and_carries_gradients() -> None:
    c = _config()
    model = randomized_model(c)
    batch = _batch(c, 6, [1])
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    with torch.no_grad():
        plain = self_forcing_rollout(model, batch, tok)
    graded = self_forcing_rollout(model, batch, tok, grad_from=3)
    assert torch.equal(graded.frames.detach(), plain.frames)
    assert graded.frames.requires_grad
    graded.frames[:, -1].square().mean().backward()
    def moved(prefix: str) -> bool:
        return any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for n, p in model.named_parameters() if n.startswith(prefix))

    # the exit pass reaches attention, the action conditioning and the prompt encoder
    assert moved("blocks.0.qkv") and moved("action_mlp") and moved("text_encoder")
    # one pass against a filled cache: the gradient mode gives the play pass's numbers
    cache = KVCache(c)
    with torch.no_grad():
        self_forcing_rollout(model, batch, tok, cache=cache)
        ids, mask = tok.encode_batch([PROMPT])
        text = model.text_condition(ids, mask)
    x = torch.randn(1, 1, c.latent_channels, c.latent_size, c.latent_size)
    args = (x, torch.full((1, 1), 0.5), batch.actions[:, -1:], batch.poses[:, -1:])
    with torch.no_grad():
        ref = model.forward_cached(cache, *args, [7], text, [ROLE_CURRENT])
        mine = model.forward_cached(cache, *args, [7], text, [ROLE_CURRENT], grad=True, attention_backend="sdpa")
    assert torch.equal(ref, mine)


def test_teacher_forced_rollout_commits_the_truth() -> None:
    c = _config()
    model = randomized_model(c)
    batch = _batch(c, 7, [2], truth=True)
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    last_exit = [s - 1 for s in (3, 3, 2, 2, 2, 2, 2)]
    early = [0] * 6 + [last_exit[-1]]  # other exits change frames 1..6, not what is committed
    with torch.no_grad():
        tf_a = self_forcing_rollout(model, batch, tok, exit_steps=last_exit, teacher_forced=True)
        tf_b = self_forcing_rollout(model, batch, tok, exit_steps=early, teacher_forced=True)
        sf_a = self_forcing_rollout(model, batch, tok, exit_steps=last_exit)
        sf_b = self_forcing_rollout(model, batch, tok, exit_steps=early)
    assert torch.equal(tf_a.context, batch.truth)
    assert not torch.equal(tf_a.frames[:, 0], tf_b.frames[:, 0])
    assert torch.equal(tf_a.frames[:, -1], tf_b.frames[:, -1])  # the last frame only saw the truth
    assert not torch.equal(sf_a.frames[:, -1], sf_b.frames[:, -1])  # a self rollout sees its own frames


# --- DMD -------------------------------------------------------------------------------------------
def test_dmd_gradient_formula() -> None:
    x = torch.zeros(1, 2, 1, 2, 2)
    real = torch.ones_like(x) * 2.0  # mean|x - real| = 2
    fake = torch.ones_like(x) * 3.0
    assert torch.allclose(dmd_gradient(x, real, fake), torch.full_like(x, 0.5))
    assert float(dmd_gradient(x, real, real).abs().max()) == 0.0
    xg = x.clone().requires_grad_(True)
    loss, _ = dmd_loss(xg, real, fake)
    loss.backward()
    assert torch.allclose(xg.grad, torch.full_like(x, 0.5 / x.numel()))  # d loss / dx = grad / numel


def _models(fake_shift: float = 0.0) -> DistillModels:
    c = _config()
    teacher = randomized_model(c)
    for p in teacher.parameters():
        p.requires_grad_(False)
    fake = copy.deepcopy(teacher)
    with torch.no_grad():
        fake.patch_out.bias.add_(fake_shift)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    s_c = student_config(c, DistillOptions(student_steps=1, warmup_steps=2, warmup_frames=1))
    student.config = s_c
    return DistillModels(student, fake, teacher, s_c, c, Tokenizer(c.vocab, c.max_text_tokens))


@pytest.mark.parametrize("self_rollout", [True, False])
def test_dmd_gradient_is_zero_when_the_fake_score_equals_the_real_one(self_rollout: bool) -> None:
    opts = DistillOptions(rollout_frames=6, self_rollout=self_rollout, amp=False)
    batch = _batch(_config(), 6, [4, 5], truth=True)
    for shift, zero in ((0.0, True), (0.05, False)):
        models = _models(shift)
        loss, metrics = generator_step(models, batch, opts, torch.Generator().manual_seed(0), amp=False)
        loss.backward()
        total = sum(float(p.grad.abs().sum()) for p in models.student.parameters() if p.grad is not None)
        if zero:
            assert float(loss.detach()) == 0.0 and total == 0.0 and metrics["real_fake_gap"] == 0.0
        else:
            assert float(loss.detach()) > 0.0 and total > 0.0


# --- the loop --------------------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    c = tiny_config()
    teacher = save_checkpoint(tmp_path / "teacher.safetensors", randomized_model(c), tiny_autoencoder(),
                              {"autoencoder_sha256": "ab" * 32})
    return {"teacher": teacher, "dir": tmp_path,
            "data": write_latent_clips(tmp_path / "train.safetensors", 4, CLIP_TICKS, c, 0, "ab" * 32),
            "val": write_latent_clips(tmp_path / "val.safetensors", 2, CLIP_TICKS, c, 1, "ab" * 32)}


def _opts(**kw) -> DistillOptions:
    base = dict(steps=3, batch=2, rollout_frames=6, fake_steps=1, student_steps=1, log_every=1, ckpt_every=2,
                val_every=3, val_clips=1, val_rollout_ticks=2, amp=False)
    base.update(kw)
    return DistillOptions(**base)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]


def _scene():
    from scenes.scene import Scene

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    return Scene(name="test", prompt=PROMPT, start_pose=CameraPose(), fov_deg=90.0, world_seed=None,
                 image=image, path=None)


def test_distill_changes_the_student_resumes_exactly_and_plays(files: dict[str, Path]) -> None:
    straight, sliced = files["dir"] / "straight", files["dir"] / "sliced"
    path = distill(files["teacher"], files["data"], straight, _opts(), val_latents_path=files["val"], progress=False)
    distill(files["teacher"], files["data"], sliced, _opts(), val_latents_path=files["val"], progress=False,
            stop_after=2)
    assert [r["step"] for r in _log(sliced)] == [1, 2]
    distill(files["teacher"], files["data"], sliced, _opts(), val_latents_path=files["val"], progress=False)
    a, b = _log(straight), _log(sliced)
    timing = ("it_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]
    sa = torch.load(straight / DISTILL_STATE, weights_only=False)
    sb = torch.load(sliced / DISTILL_STATE, weights_only=False)
    for key in ("student", "fake", "ema"):
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key])
    # the student moved away from the teacher; the fake score too
    teacher, _, t_config = load_checkpoint(files["teacher"])
    student, _, s_config = load_checkpoint(path)
    assert s_config == t_config.replace(sample_steps=1) and s_config.warmup_steps == 4
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(student.parameters(), teacher.parameters()))
    assert moved > 0.0
    logged = a[-2]
    assert logged["step"] == 3 and logged["dmd_loss"] > 0 and logged["memory_frames"] >= 0
    assert "val_rollout_psnr" in a[-1]
    meta = json.loads(read_checkpoint_metadata(path)["train"])
    assert meta["stage"] == "distill" and meta["step"] == 3 and meta["options"]["self_rollout"] is True
    # the product checkpoint plays in the game's frame source with the student's schedule
    source = ModelFrameSource(path)
    actions, poses = walking_poses(6, 0)
    source.reset(_scene(), CameraPose.from_sequence(poses[0].tolist()), PROMPT, 0)
    frames = [source.step(actions[t].tolist(), CameraPose.from_sequence(poses[t].tolist())) for t in range(1, 6)]
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert source.timing.passes == 1  # tick 5 > warmup_frames: one step per frame


def test_distill_refuses_foreign_runs_and_data(files: dict[str, Path]) -> None:
    run = files["dir"] / "run"
    distill(files["teacher"], files["data"], run, _opts(steps=1), progress=False)
    with pytest.raises(UserError, match="self_rollout"):
        distill(files["teacher"], files["data"], run, _opts(steps=2, self_rollout=False), progress=False)
    with pytest.raises(UserError, match="sample_steps"):
        distill(files["teacher"], files["data"], run, _opts(steps=2, student_steps=2), progress=False)
    other = write_latent_clips(files["dir"] / "other.safetensors", 2, CLIP_TICKS, tiny_config(), 0, "cd" * 32)
    with pytest.raises(UserError, match="another autoencoder"):
        distill(files["teacher"], other, files["dir"] / "x", _opts(steps=1), progress=False)
    with pytest.raises(UserError, match="grad_step"):
        distill(files["teacher"], files["data"], files["dir"] / "y", _opts(grad_step="first"), progress=False)


def test_distill_command(files: dict[str, Path]) -> None:
    from tools.cli import main

    out, export = files["dir"] / "cli", files["dir"] / "ship" / "student.safetensors"
    common = ["distill", "--teacher", str(files["teacher"]), "--data", str(files["data"]), "--steps", "1",
              "--batch", "1", "--rollout-frames", "5", "--fake-steps", "1", "--opt", "amp=false", "--threads", "1"]
    assert main(common + ["--out", str(out), "--student-steps", "2", "--no-self-rollout", "--export", str(export)]) == 0
    assert (out / PRODUCT_CHECKPOINT).exists() and export.exists()
    assert load_checkpoint(export)[2].sample_steps == 2
    assert json.loads(read_checkpoint_metadata(export)["train"])["options"]["self_rollout"] is False
    assert main(common + ["--out", str(out)]) == 2  # another recipe in the same folder: one-line error
    assert main(common + ["--out", str(files["dir"] / "z"), "--opt", "nonsense=1"]) == 2
    with pytest.raises(SystemExit):
        main(common + ["--out", str(out), "--student-steps", "3"])
