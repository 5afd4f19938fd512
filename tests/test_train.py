"""Checkpoint file, training loop (loss goes down, exact resume), data checks and the train command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wm_helpers import randomized_model, tiny_autoencoder, write_latent_clips

from worldmodel.checkpoint import (CHECKPOINT_FORMAT, checkpoint_sha256, load_checkpoint,
                                   read_checkpoint_metadata, save_checkpoint)
from worldmodel.config import WorldModelConfig, tiny_config
from conventions.errors import UserError
from worldmodel.text import Tokenizer
from worldmodel.batches import load_latents, step_batch, StepSampler
from worldmodel.train import LOG_FILE, train_world_model, TrainOptions, world_model_loss

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


def test_average_checkpoints_is_the_weighted_mean_and_refuses_strangers(tmp_path: Path) -> None:
    import dataclasses

    from worldmodel.checkpoint import average_checkpoints
    from tools.cli import main

    c = tiny_config()
    ae = tiny_autoencoder()
    a = save_checkpoint(tmp_path / "a.safetensors", randomized_model(c, seed=1), ae, {"step": 1})
    b = save_checkpoint(tmp_path / "b.safetensors", randomized_model(c, seed=2), ae, {"step": 2})
    out = average_checkpoints([a, b], tmp_path / "ab.safetensors", [0.25, 0.75])
    ma, mb, (mo, ae_o, co) = load_checkpoint(a)[0], load_checkpoint(b)[0], load_checkpoint(out)
    assert co == c
    for k, v in mo.state_dict().items():
        want = 0.25 * ma.state_dict()[k].double() + 0.75 * mb.state_dict()[k].double()
        assert torch.allclose(v.double(), want, atol=1e-6), k
    for k, v in ae_o.state_dict().items():
        assert torch.equal(v, ae.state_dict()[k])
    inputs = json.loads(read_checkpoint_metadata(out)["train"])["average_of"]
    assert [i["weight"] for i in inputs] == [0.25, 0.75] and inputs[1]["train"] == {"step": 2}
    assert inputs[0]["sha256"] == checkpoint_sha256(a)
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "cli.safetensors")]) == 0
    other = save_checkpoint(tmp_path / "other.safetensors", randomized_model(dataclasses.replace(c, layers=c.layers + 1)), ae)
    with pytest.raises(UserError, match="other.safetensors.*config differs"):
        average_checkpoints([a, other], tmp_path / "x.safetensors")
    torch.manual_seed(5)
    ae2 = tiny_autoencoder()
    with torch.no_grad():
        next(ae2.parameters()).add_(1.0)
    stranger = save_checkpoint(tmp_path / "s.safetensors", randomized_model(c, seed=3), ae2)
    with pytest.raises(UserError, match="s.safetensors.*autoencoder differs"):
        average_checkpoints([a, stranger], tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="weights"):
        average_checkpoints([a, b], tmp_path / "x.safetensors", [0.5, 0.6])
    with pytest.raises(UserError, match="weights"):
        average_checkpoints([a, b], tmp_path / "x.safetensors", [float("nan"), 1.0])
    assert not (tmp_path / "x.safetensors").exists()


def test_average_with_first_depth_head_keeps_the_first_head_and_refuses_other_differences(tmp_path: Path) -> None:
    from worldmodel.checkpoint import average_checkpoints
    from worldmodel.train_depth import with_depth_head
    from tools.cli import main

    c = tiny_config()
    ae = tiny_autoencoder()
    torch.manual_seed(1)
    ae_a = with_depth_head(ae, (8, 8, 8))
    torch.manual_seed(2)
    ae_b = with_depth_head(ae, (8, 8, 8))  # the same autoencoder, another depth head
    a = save_checkpoint(tmp_path / "a.safetensors", randomized_model(c, seed=1), ae_a)
    b = save_checkpoint(tmp_path / "b.safetensors", randomized_model(c, seed=2), ae_b)
    headless = save_checkpoint(tmp_path / "h.safetensors", randomized_model(c, seed=3), ae)
    with pytest.raises(UserError, match="b.safetensors.*autoencoder differs.*--first-depth-head"):
        average_checkpoints([a, b], tmp_path / "x.safetensors")
    for other in (b, headless):
        out = average_checkpoints([a, other], tmp_path / f"with_{other.stem}.safetensors", [0.75, 0.25],
                                  first_depth_head=True)
        model_o, ae_o, _ = load_checkpoint(out)
        assert ae_o.state_dict().keys() == ae_a.state_dict().keys()
        for k, v in ae_a.state_dict().items():
            assert torch.equal(ae_o.state_dict()[k], v), k
        want = {k: 0.75 * v.double() + 0.25 * load_checkpoint(other)[0].state_dict()[k].double()
                for k, v in load_checkpoint(a)[0].state_dict().items() if v.is_floating_point()}
        for k, v in want.items():
            assert torch.allclose(model_o.state_dict()[k].double(), v, atol=1e-6), k
    assert main(["average", str(a), str(b), "--first-depth-head", "--out", str(tmp_path / "cli.safetensors")]) == 0
    with torch.no_grad():
        next(ae_b.encoder.parameters()).add_(1.0)  # now the latents differ too
    moved = save_checkpoint(tmp_path / "m.safetensors", randomized_model(c, seed=4), ae_b)
    with pytest.raises(UserError, match="m.safetensors.*autoencoder differs"):
        average_checkpoints([a, moved], tmp_path / "y.safetensors", first_depth_head=True)
    assert not (tmp_path / "y.safetensors").exists()


def test_average_sets_play_rules_only(tmp_path: Path) -> None:
    """`average --set` writes play rules (no weight depends on them) into the result's config and its
    train summary, and refuses any other field and an invalid value before writing anything."""
    from worldmodel.checkpoint import average_checkpoints
    from tools.cli import main

    c = tiny_config()
    ae = tiny_autoencoder()
    a = save_checkpoint(tmp_path / "a.safetensors", randomized_model(c, seed=1), ae)
    b = save_checkpoint(tmp_path / "b.safetensors", randomized_model(c, seed=2), ae)
    out = tmp_path / "ab.safetensors"
    assert main(["average", str(a), str(b), "--out", str(out), "--set", "memory_key_scale=0.8",
                 "--set", "hint_sampling=nearest"]) == 0
    config = load_checkpoint(out)[2]
    assert config.memory_key_scale == 0.8 and config.hint_sampling == "nearest"
    assert config.replace(memory_key_scale=c.memory_key_scale, hint_sampling=c.hint_sampling) == c
    summary = json.loads(read_checkpoint_metadata(out)["train"])
    assert summary["play_rules"] == {"memory_key_scale": 0.8, "hint_sampling": "nearest"}
    plain = average_checkpoints([a, b], tmp_path / "plain.safetensors")
    assert "play_rules" not in json.loads(read_checkpoint_metadata(plain)["train"])
    with pytest.raises(UserError, match="layers is not a play rule"):
        average_checkpoints([a, b], tmp_path / "x.safetensors", play_rules={"layers": 3})
    with pytest.raises(UserError, match="play rules"):
        average_checkpoints([a, b], tmp_path / "x.safetensors", play_rules={"memory_key_scale": float("nan")})
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "x.safetensors"), "--set", "hint_sampling=cubic"]) != 0
    assert not (tmp_path / "x.safetensors").exists()


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
    probe = step_batch(data, c, Tokenizer(c.vocab, c.max_text_tokens), StepSampler(data.clips, 8, seed=5), step=0)
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


def test_loader_workers_train_on_the_same_batches(run_files: dict[str, Path]) -> None:
    """Batches built ahead by worker processes (a GPU run's setting) are the loop's own batches:
    the same losses step for step, and a run resumed with workers continues the one without."""
    c = tiny_config()
    plain, ahead = run_files["dir"] / "plain", run_files["dir"] / "ahead"
    train_world_model(run_files["train"], plain, run_files["ae"], _opts(), c, progress=False)
    train_world_model(run_files["train"], ahead, run_files["ae"], _opts(), c, progress=False, stop_after=2)
    train_world_model(run_files["train"], ahead, run_files["ae"], _opts(loader_workers=2), c, progress=False)
    a = {r["step"]: r["loss"] for r in _log(plain)}
    b = {r["step"]: r["loss"] for r in _log(ahead)}
    assert a.keys() == b.keys() and all(a[s] == b[s] for s in a), (a, b)


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
    from tools.cli import main

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


def test_training_writes_its_curves_and_plot_train_draws_them(run_files: dict[str, Path]) -> None:
    """log.jsonl beside the checkpoint holds the loss terms, lr, steps/s and validation PSNR (and, with
    tensorboard installed, the same as TensorBoard events); `worldmodel plot-train RUN` draws them."""
    from test_plot import assert_png

    from tools.cli import main
    from worldmodel.scalars import TENSORBOARD_DIR, ScalarLog

    c = tiny_config()
    out = run_files["dir"] / "curves"
    train_world_model(run_files["train"], out, run_files["ae"], _opts(steps=3, val_every=3), c,
                      val_latents_path=run_files["val"], progress=False)
    log = _log(out)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(k in steps[0] for k in ("lr", "it_s", "mse_high_noise", "mse_low_noise", "grad_norm"))
    assert "val_tf_psnr" in log[-1] and (out / "world_model.safetensors").exists()
    with ScalarLog(run_files["dir"] / "probe") as probe:  # tensorboard installed or not
        assert (out / TENSORBOARD_DIR).is_dir() == probe.tensorboard
    assert main(["plot-train", str(out)]) == 0
    assert_png(out / "curves.png")


# --- memory curriculum: several caches, revisit-focused segments, fine-tuning ----------------------
def test_returning_ticks_finds_places_seen_long_before() -> None:
    from worldmodel.batches import returning_ticks

    poses = torch.zeros(60, 5)
    poses[:, 0] = torch.arange(60.0)  # walk away along x (1 m per tick) ...
    poses[50:, 0] = torch.tensor([3.0, 3.2, 15.0, 4.0, 4.1, 5.0, 30.0, 31.0, 5.0, 5.0])  # ... and come back
    poses[55, 3] = 3.0  # at tick 55 the place is right but the view is turned away
    got = returning_ticks(poses, min_gap=40).tolist()
    assert got == [50, 51, 53, 54, 58, 59]  # ticks 52, 56, 57 were last there fewer than 40 ticks ago
    poses[56:58, 0] = 0.0  # tick 0 is the sink, always in the cache: not a return
    assert 56 not in returning_ticks(poses, min_gap=40).tolist()


def test_training_memory_is_what_the_play_store_would_retrieve() -> None:
    """Each target's memory comes from the frames the play-time store holds (its keep-first dedup
    drops later views of a place), so at a return the first visit's frames are the candidates, as in
    play. Checked against a real store fed the same path tick by tick."""
    import random

    from scenes.trajectories import make_trajectory
    from scenes.world import generate_world
    from worldmodel.runtime import make_memory_store
    from worldmodel.batches import memory_candidates, select_training_memory

    c = WorldModelConfig()
    world = generate_world(7)
    poses = make_trajectory(world, 161, "retrace", random.Random(7)).poses  # [161, 5]
    kept = memory_candidates(poses, c)
    assert kept is not None and not kept[0] and 10 < int(kept.sum()) < 150  # later views of a place dropped
    store = make_memory_store(c)
    payload = torch.zeros(c.latent_channels, c.latent_size, c.latent_size)
    for t in range(1, poses.shape[0]):
        got = store.retrieve_batch(poses[t], c.memory_entries, current_tick=t, min_age=c.window_frames + 1)
        assert select_training_memory(poses, t, c, kept) == got.ticks.tolist(), f"tick {t}"
        store.add(payload, poses[t], t)


def test_revisit_focus_puts_returning_ticks_among_the_targets(run_files: dict[str, Path]) -> None:
    from worldmodel.batches import segment_start

    c = tiny_config()
    data = load_latents(run_files["train"], c)
    data.poses[0, 14:] = data.poses[0, 2:2 + TICKS - 14]  # clip 0 walks the same poses again from tick 14
    ticks = set(data.revisit_ticks(10)[0].tolist())
    assert ticks and ticks <= set(range(14, TICKS))
    k = 3
    g = torch.Generator().manual_seed(0)
    starts = [segment_start(data, 0, k, g, 1.0, 10) for _ in range(200)]
    assert all(on and ticks & set(range(s, s + k)) for s, on in starts)
    assert not segment_start(data, 1, k, g, 1.0, 10)[1]  # clip 1 never comes back: a uniform segment
    uniform = [segment_start(data, 0, k, torch.Generator().manual_seed(i))[0] for i in range(200)]
    assert 1 <= min(uniform) and max(uniform) <= TICKS - k and not all(ticks & set(range(s, s + k)) for s in uniform)


def test_training_on_several_caches_and_from_a_checkpoint(run_files: dict[str, Path]) -> None:
    c = tiny_config()
    both = load_latents([run_files["train"], run_files["val"]], c)
    assert both.clips == 8 and len(both.captions) == 8
    other = write_latent_clips(run_files["dir"] / "short.safetensors", 2, TICKS - 4, c, 0,
                               load_latents(run_files["train"], c).autoencoder_sha256)
    with pytest.raises(UserError, match="same clip length"):
        load_latents([run_files["train"], other], c)
    base = train_world_model(run_files["train"], run_files["dir"] / "base", run_files["ae"], _opts(steps=2), c,
                             progress=False)
    tuned_dir = run_files["dir"] / "tuned"
    tuned = train_world_model([run_files["train"], run_files["val"]], tuned_dir, run_files["ae"],
                              _opts(steps=1, lr=1e-12, warmup_steps=1, init_from=str(base), revisit_focus=0.5,
                                    revisit_min_gap=5), c, progress=False)
    start, tuned_model = load_checkpoint(base)[0], load_checkpoint(tuned)[0]
    for (name, a), b in zip(start.state_dict().items(), tuned_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # lr ~0: the run starts from the checkpoint's weights
    with pytest.raises(UserError, match="config does not match"):
        train_world_model(run_files["train"], run_files["dir"] / "bad", run_files["ae"],
                          _opts(steps=1, init_from=str(base)), tiny_config(layers=3), progress=False)
    with pytest.raises(UserError, match="revisit_focus"):
        train_world_model(run_files["train"], run_files["dir"] / "bad2", run_files["ae"],
                          _opts(steps=1, revisit_focus=2.0), c, progress=False)


def test_a_pool_memory_checkpoint_starts_an_equivalent_patch_memory_model(tmp_path: Path) -> None:
    from worldmodel.model import WorldModel
    from worldmodel.train import initial_weights

    c = tiny_config()
    pool = randomized_model(c)
    path = save_checkpoint(tmp_path / "pool.safetensors", pool, tiny_autoencoder(), {})
    patch = WorldModel(c.replace(memory_compression="patch")).eval()
    patch.load_state_dict(initial_weights(path, patch.config))
    latents = torch.randn(2, 3, c.latent_channels, c.latent_size, c.latent_size)
    with torch.no_grad():
        assert torch.allclose(pool.compress_memory(latents), patch.compress_memory(latents), atol=1e-5)
    with pytest.raises(UserError, match="config does not match"):
        initial_weights(path, c.replace(layers=3))


def test_a_fine_tune_may_change_only_the_training_objective_fields(tmp_path: Path) -> None:
    from worldmodel.train import initial_weights

    c = tiny_config()
    base = randomized_model(c)
    path = save_checkpoint(tmp_path / "base.safetensors", base, tiny_autoencoder(), {})
    state = initial_weights(path, c.replace(ctx_noise_max=0.5, schedule_time_prob=0.5))  # stronger context noise
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items())
    for play_field in ({"ctx_noise_play": c.ctx_noise_play + 0.05}, {"sample_steps": c.sample_steps + 1},
                       {"window_frames": c.window_frames + 1}):
        with pytest.raises(UserError, match="config does not match"):
            initial_weights(path, c.replace(**play_field))


def test_window_dropout_hides_the_recent_frames_from_the_targets(run_files: dict[str, Path]) -> None:
    from worldmodel.batches import build_sample

    c = tiny_config()
    data = load_latents(run_files["train"], c)
    k, g = 2, torch.Generator().manual_seed(0)
    args = (data, 0, 10, c, torch.tensor([2, 3]), torch.full((k,), 0.5), torch.zeros(c.window_frames + k), g, k)
    kept, dropped = build_sample(*args), build_sample(*args, drop_window=True)
    assert kept["valid"].all()
    assert dropped["valid"].tolist() == [True] + [False] * (c.window_frames + k - 1) + [True] * k
    assert torch.equal(kept["mem_valid"], dropped["mem_valid"])  # the memory stays


def test_new_content_weight_moves_the_loss_towards_cells_the_hint_does_not_cover() -> None:
    from types import SimpleNamespace

    b, g, c, h, w = 1, 2, 3, 2, 2
    target = torch.zeros(b, 1, c, h, w)
    hint = torch.zeros(b, g, c + 1, h, w)
    hint[:, 1, -1] = 1.0
    hint[:, 1, -1, 0, 0] = 0.0  # one of the target's 4 cells is new content
    joint = SimpleNamespace(hint=hint)

    def loss(err_cells: torch.Tensor, weight: float) -> float:
        pred = torch.zeros(b, g, c, h, w)
        pred[:, 1] = err_cells.sqrt()  # squared error = err_cells in every channel
        batch = SimpleNamespace(joint=joint, target_x0=target, target_index=torch.tensor([1]),
                                target_noise=torch.tensor([[0.5]]))
        model = SimpleNamespace(forward_joint=lambda _: pred)
        return float(world_model_loss(model, batch, tiny_config(), new_content_weight=weight)[0])

    uniform = torch.ones(h, w)
    new_only = torch.zeros(h, w)
    new_only[0, 0] = 4.0
    seen_only = 4.0 / 3 * (1 - new_only / 4)
    assert loss(uniform, 3.0) == pytest.approx(loss(uniform, 0.0)) == pytest.approx(1.0)
    assert loss(new_only, 0.0) == pytest.approx(loss(seen_only, 0.0)) == pytest.approx(1.0)
    # weights 4 (new) and 1 (seen), mean 7/4: the new cell's error counts 16/7, the seen cells' 4/7
    assert loss(new_only, 3.0) == pytest.approx(16 / 7)
    assert loss(seen_only, 3.0) == pytest.approx(4 / 7)
    joint.hint = None  # a hint-free model: the weight has nothing to act on
    assert loss(new_only, 3.0) == pytest.approx(1.0)
