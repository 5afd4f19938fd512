"""The geometric hint: one source rule and one builder for training and play (worldmodel.hint)."""

from __future__ import annotations

import json

import pytest
import torch

from wm_helpers import randomized_model
from worldmodel.autoencoder import Autoencoder, AutoencoderConfig
from worldmodel.config import tiny_config
from conventions.errors import UserError
from worldmodel.hint import HintAugment, build_hint, hint_source_ticks
from worldmodel.runtime import WorldModelSession, pack_memory_payload, unpack_memory_payload


def _ae_with_depth() -> Autoencoder:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(resolution=64, latent_channels=16, stem_factor=2, encoder_widths=(8, 8, 8),
                            encoder_blocks=1, decoder_widths=(8, 8, 8), decoder_blocks=1, norm_groups=4,
                            depth_widths=(8, 8, 8))
    ae = Autoencoder(cfg).eval()
    with torch.no_grad():  # depth around a few metres, a little sky
        ae.depth_decoder.head.conv.bias.add_(1.2)
    return ae


def test_source_order():
    assert hint_source_ticks(1, [], 2) == [0]
    assert hint_source_ticks(10, [3, 1], 2) == [9, 8, 3, 1, 0]
    assert hint_source_ticks(2, [], 3) == [1, 0]


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory):
    from tools.dataset import write_dataset
    from worldmodel.data import encode_dataset

    root = tmp_path_factory.mktemp("hint")
    write_dataset(root / "ds", worlds=1, clips_per_world=1, ticks=40, policy="retrace", progress=False)
    ae = _ae_with_depth()
    path = encode_dataset(ae, root / "ds", root / "views.safetensors", batch=16, progress=False)
    return path, ae


@pytest.mark.parametrize("splat_levels, start_radius, sampling", [
    (False, 0.0, "nearest"), (True, 0.0, "nearest"), (False, 1.0, "nearest"), (False, 1.0, "bilinear-start"),
    (True, 0.0, "bilinear")])
def test_training_hint_equals_play_hint(latent_cache, splat_levels, start_radius, sampling):
    """The hint a training batch builds for a clip's frame is the one a play session builds when it is
    fed the same frames (teacher forcing) and poses: same sources, same views, same function (with
    the reprojection's coarse levels or without, with the start frame preferred near its pose or not,
    with nearest or bilinear colours)."""
    from worldmodel.batches import hint_sources, load_latents, select_training_memory

    path, ae = latent_cache
    config = tiny_config(hint=True, window_frames=3, memory_entries=2, hint_recent=2, hint_splat_levels=splat_levels,
                         hint_start_radius=start_radius, hint_sampling=sampling)
    data = load_latents(path, config)
    assert data.view_rgb is not None
    model = randomized_model(config)
    session = WorldModelSession(model, autoencoder=ae)
    session.reset(data.latents[0, 0].float(), data.poses[0, 0], data.captions[0], seed=0)
    kept = data.memory_candidates(0, config)
    compared_with_memory = 0
    preferred_ticks = 0
    for t in range(1, data.ticks):
        pose = data.poses[0, t]
        session._prepare_memory(pose, t)
        play = session.build_hint(pose, t)
        memory = select_training_memory(data.poses[0], t, config, kept)
        src = hint_sources(data, 0, [t], [memory], config, torch.Generator().manual_seed(0), HintAugment(0, 0, 0))
        assert int(src["hint_preferred"].sum()) == (start_radius > 0 and
                                                    float((pose[:3] - data.poses[0, 0, :3]).norm()) <= start_radius)
        preferred_ticks += int(src["hint_preferred"].sum())
        train = build_hint(ae, src["hint_rgb"], src["hint_depth"], src["hint_poses"], src["hint_valid"],
                           src["hint_target"], config.fov_deg, splat_levels=config.hint_splat_levels,
                           preferred=src["hint_preferred"], bilinear=src["hint_bilinear"])[0]  # as attach_hints
        assert len(session._memory_views) == len(memory), f"tick {t}: play retrieved other memory"
        compared_with_memory += bool(memory)
        assert torch.allclose(play, train, atol=1e-3), f"tick {t}: max diff {float((play - train).abs().max())}"
        session.step(data.actions[0, t], pose, observed=data.latents[0, t].float())
    assert compared_with_memory > 5
    assert (0 < preferred_ticks < data.ticks - 1) == (start_radius > 0)  # both sides of the radius


def test_hint_model_needs_a_depth_head_and_payloads_round_trip():
    config = tiny_config(hint=True)
    model = randomized_model(config)
    from wm_helpers import tiny_autoencoder

    with pytest.raises(UserError, match="depth head"):
        WorldModelSession(model, autoencoder=tiny_autoencoder())
    ae = _ae_with_depth()
    session = WorldModelSession(model, autoencoder=ae)
    latent = torch.randn(16, 8, 8).to(torch.bfloat16).float()
    view = session.frame_view(latent, torch.tensor([1.0, 1.6, 2.0, 0.3, 0.0]))
    payload = pack_memory_payload(latent, view, config)
    back, back_view = unpack_memory_payload(payload, config, view.pose)
    assert torch.equal(back, latent)
    assert torch.equal(back_view.rgb, view.rgb)
    assert torch.equal(back_view.depth, view.depth.half().float())


def test_hint_changes_generation_and_off_is_the_empty_hint():
    config = tiny_config(hint=True)
    model = randomized_model(config)
    ae = _ae_with_depth()
    start = torch.randn(16, 8, 8)
    pose0 = torch.tensor([0.0, 1.6, 0.0, 0.0, 0.0])
    frames = {}
    for use_hint in (True, False):
        s = WorldModelSession(model, autoencoder=ae, use_hint=use_hint)
        s.reset(start, pose0, "a walled courtyard", seed=3)
        frames[use_hint] = torch.stack([s.step([0.1, 0, 0, 0.05, 0]) for _ in range(3)])
    assert not torch.allclose(frames[True], frames[False])


def test_hint_on_for_a_checkpoint_without_it_is_refused_clearly(tmp_path):
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.runtime import ModelFrameSource
    from wm_helpers import tiny_autoencoder

    path = save_checkpoint(tmp_path / "plain.safetensors", randomized_model(tiny_config()), tiny_autoencoder())
    with pytest.raises(UserError, match="--hint on needs a checkpoint trained with the geometric hint"):
        ModelFrameSource(path, hint=True)
    assert ModelFrameSource(path).hint is False


def test_hint_settings_with_the_hint_off_are_refused_in_one_place(tmp_path):
    """ModelFrameSource refuses the hint's play-time settings when the hint is off (by --hint off or
    by a checkpoint without it), so play, replay, eval, bench and strip cannot measure a setting that
    did nothing; None settings (what replay passes for a hint-off log) are accepted."""
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.runtime import ModelFrameSource
    from wm_helpers import tiny_autoencoder

    hinted = save_checkpoint(tmp_path / "hint.safetensors", randomized_model(tiny_config(hint=True)),
                             _ae_with_depth())
    with pytest.raises(UserError, match=r"hint.safetensors: --composite, --sampling set the geometric hint, "
                                        r"which is off here \(--hint off\)"):
        ModelFrameSource(hinted, hint=False, composite=0.5, sampling="nearest")
    for name, value in (("splat_levels", True), ("point_cache", 64), ("start_radius", 1.0)):
        with pytest.raises(UserError, match="--" + name.replace("_", "-")):
            ModelFrameSource(hinted, hint=False, **{name: value})
    assert ModelFrameSource(hinted, hint=False, start_radius=None, sampling=None).hint is False
    assert ModelFrameSource(hinted, composite=0.5).session.composite == 0.5
    plain = save_checkpoint(tmp_path / "plain.safetensors", randomized_model(tiny_config()), tiny_autoencoder())
    with pytest.raises(UserError, match="this checkpoint has no hint"):
        ModelFrameSource(plain, start_radius=2.0)


def test_a_data_set_with_bad_depth_names_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from tools.dataset import write_dataset
    from worldmodel.data import ClipDataset

    write_dataset(tmp_path / "ds", worlds=1, clips_per_world=1, ticks=4, progress=False)
    shard = tmp_path / "ds" / "shard-00000.safetensors"
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(shard))
    tensors["depth"][0, 2, 5, 5] = float("nan")
    save_file(tensors, str(shard), metadata=meta)
    ds = ClipDataset(tmp_path / "ds")
    with pytest.raises(UserError, match=r"shard-00000.safetensors clip 0: depth has 1 NaN"):
        ds[0]
    with pytest.raises(UserError, match=r"shard-00000.safetensors clip 0 tick 2: depth has 1 NaN"):
        ds.frame_depth(0, 2)


def test_closed_loop_cache_holds_own_rollouts_and_the_truth(latent_cache, tmp_path):
    """The rollouts stage writes the play session's own frames as context and the truth as targets,
    and a training sample built from it takes its targets from the truth; it records each clip's
    world (not its index: world seed 7 is clip 0 here), from which the oracle renders the truth."""
    from tools.dataset import write_dataset
    from worldmodel.checkpoint import save_checkpoint
    from worldmodel.closed_loop import write_rollout_cache
    from worldmodel.data import LatentClips, encode_dataset
    from worldmodel.batches import build_sample, load_latents

    _, ae = latent_cache
    write_dataset(tmp_path / "ds", worlds=1, clips_per_world=1, ticks=14, policy="walk", progress=False,
                  seed_start=7)
    path = encode_dataset(ae, tmp_path / "ds", tmp_path / "views.safetensors", batch=16, progress=False)
    config = tiny_config(hint=True, window_frames=3, memory_entries=2)
    ckpt = save_checkpoint(tmp_path / "hint.safetensors", randomized_model(config), ae)
    out = write_rollout_cache(ckpt, [path], tmp_path / "roll.safetensors", clips=1, ticks=12)
    truth = load_latents(path, config)
    roll = load_latents(out, config)
    assert roll.ticks == 13 and roll.target_latents is not None
    assert torch.equal(roll.target_latents[0], truth.latents[0, :13])
    assert torch.equal(roll.latents[0, 0], truth.latents[0, 0])  # play starts from the true frame
    assert not torch.equal(roll.latents[0, 1:], truth.latents[0, 1:13])  # then feeds on its own frames
    assert roll.world_seeds.tolist() == [7]
    assert LatentClips(out).world_seeds_valid
    sample = build_sample(roll, 0, 6, config, torch.tensor([2, 3]), torch.full((2,), 0.5),
                          torch.zeros(config.window_frames + 2), torch.Generator().manual_seed(0), 2)
    assert torch.equal(sample["target_x0"], truth.latents[0, 6:8].float())
    # a play-time rule the rollouts may be made with: the memory key scale (the config's by default)
    same = write_rollout_cache(ckpt, [path], tmp_path / "same.safetensors", clips=1, ticks=12,
                               memory_key_scale=config.memory_key_scale)
    assert torch.equal(load_latents(same, config).latents, roll.latents)
    soft = write_rollout_cache(ckpt, [path], tmp_path / "soft.safetensors", clips=1, ticks=12, memory_key_scale=0.1)
    assert not torch.equal(load_latents(soft, config).latents, roll.latents)
    from tools.cli import main
    base = ["train", "--stage", "rollouts", "--data", str(path), "--checkpoint", str(ckpt), "--clips", "1",
            "--ticks", "12"]
    assert main(base + ["--out", str(tmp_path / "cli.safetensors"), "--set", "memory_key_scale=0.1"]) == 0
    assert torch.equal(load_latents(tmp_path / "cli.safetensors", config).latents, load_latents(soft, config).latents)
    assert main(base + ["--out", str(tmp_path / "no.safetensors"), "--set", "layers=3"]) != 0
    assert not (tmp_path / "no.safetensors").exists()


def test_strip_tool_writes_truth_hint_on_and_off_rows_and_an_image_depth_strip(tmp_path):
    import argparse

    from PIL import Image

    from tools.strip import CELL_SCALE, GAP, run
    from worldmodel.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "hint.safetensors", randomized_model(tiny_config(hint=True)), _ae_with_depth())
    args = argparse.Namespace(out=tmp_path / "s.png", checkpoint=ckpt, ticks="0,3", image=None, prompt="a yard",
                              threads=None, splat_levels=None, point_cache=None, composite=None, start_radius=None,
                              sampling=None, oracle_row=False, memory_off_row=False, revisit=0)
    assert run(args) == 0
    side = 64 * CELL_SCALE
    assert Image.open(args.out).size == (2 * side + GAP, 3 * side + 2 * GAP)
    # the hint-on row once more with the memory off
    args.out, args.memory_off_row = tmp_path / "m.png", True
    assert run(args) == 0
    assert Image.open(args.out).size == (2 * side + GAP, 4 * side + 3 * GAP)
    args.memory_off_row = False
    # the hint-on row once more with exact depth, the hint's settings as eval takes them
    args.out, args.oracle_row, args.point_cache, args.splat_levels = tmp_path / "o.png", True, 4096, "on"
    assert run(args) == 0
    assert Image.open(args.out).size == (2 * side + GAP, 4 * side + 3 * GAP)
    args.oracle_row, args.point_cache, args.splat_levels = False, None, None
    picture = tmp_path / "photo.png"
    Image.fromarray((torch.rand(80, 100, 3) * 255).to(torch.uint8).numpy()).save(picture)
    args.image, args.out = picture, tmp_path / "img.png"
    assert run(args) == 0
    assert Image.open(args.out).size == (2 * side + GAP, 2 * side + GAP)
    args.revisit = 2  # a picture has no world to come back to
    with pytest.raises(UserError, match="--revisit"):
        run(args)
    # two return ticks, each after its first visit: 4 columns; truth / memory on / memory off
    args.image, args.out = None, tmp_path / "r.png"
    assert run(args) == 0
    assert Image.open(args.out).size == (4 * side + 3 * GAP, 3 * side + 2 * GAP)
    # a checkpoint without memory: the truth and the model
    args.checkpoint = save_checkpoint(tmp_path / "nomem.safetensors",
                                      randomized_model(tiny_config(hint=True, use_memory=False)), _ae_with_depth())
    args.out = tmp_path / "r1.png"
    assert run(args) == 0
    assert Image.open(args.out).size == (4 * side + 3 * GAP, 2 * side + GAP)


def test_composite_shows_the_reprojected_pixels_where_the_hint_covers():
    config = tiny_config(hint=True, hint_composite=1.0)
    model = randomized_model(config)
    ae = _ae_with_depth()
    s = WorldModelSession(model, autoencoder=ae)
    assert s.composite == 1.0
    s.reset(torch.randn(16, 8, 8), torch.tensor([0.0, 1.6, 0.0, 0.0, 0.0]), "a walled courtyard", seed=3)
    s.step([0.05, 0, 0, 0.02, 0])
    warp = s._last_warp
    covered = warp.coverage[0, 0] > 0
    assert float(covered.float().mean()) > 0.3
    shown = s.views[1].rgb.float()
    expected = (warp.rgb[0].permute(1, 2, 0) * 255).round()
    assert torch.equal(shown[covered], expected[covered])
    decoded = ae.decode_uint8(s.last_latent.to(torch.bfloat16).float()[None])[0].float()
    assert torch.equal(shown[~covered], decoded[~covered])
    assert WorldModelSession(model, autoencoder=ae, use_hint=False).composite == 0.0


def test_world_stage_trains_and_validates_a_hint_model(latent_cache, tmp_path):
    """The training loop builds the targets' hints every step and validates with the hint on."""
    import json

    from worldmodel.autoencoder import save_autoencoder
    from worldmodel.train import TrainOptions, train_world_model

    path, ae = latent_cache
    ae_path = save_autoencoder(ae, tmp_path / "ae.safetensors")
    opts = TrainOptions(steps=2, batch=2, val_every=2, val_clips=1, val_rollout_ticks=3, log_every=1, amp=False)
    ckpt = train_world_model(path, tmp_path / "run", ae_path, opts, tiny_config(hint=True), val_latents_path=path,
                             device="cpu", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val_rollout_psnr" in r for r in records) and ckpt.is_file()


def test_point_cache_replaces_the_recent_frames_and_keeps_new_pixels_once():
    """With the point cache the hint's sources are the cache, the memory entries and the start frame;
    each tick adds exactly the pixels no source covered, so a tick that turns back to a seen view adds
    (almost) nothing, and a saved session continues with the same cache."""
    config = tiny_config(hint=True, hint_composite=1.0, hint_point_cache=4096)
    model = randomized_model(config)
    ae = _ae_with_depth()
    s = WorldModelSession(model, autoencoder=ae, use_memory=False)
    assert s.points is not None and s.points.max_points == 4096
    start = torch.tensor([0.0, 1.6, 0.0, 0.0, 0.0])
    s.reset(torch.randn(16, 8, 8), start, "a walled courtyard", seed=3)
    assert len(s.points) == 0
    s.step([0.0, 0, 0, 0.3, 0])  # turn: new columns come into view
    warp = s._last_warp
    uncovered = int((warp.coverage[0, 0] == 0).sum())
    assert 0.9 * uncovered <= len(s.points) <= uncovered  # all but cracks
    assert bool((warp.source[warp.coverage[:, 0] > 0] == 0).all())  # the start frame (the cache is empty)
    before = len(s.points)
    s.step([0.0, 0, 0, -0.3, 0])  # back to the start view: the start frame covers it again
    assert len(s.points) - before <= 0.05 * config.resolution ** 2
    state = s.state_dict()
    assert "points.xyz" in state
    s2 = WorldModelSession(model, autoencoder=ae, use_memory=False)
    s2.reset(torch.randn(16, 8, 8), start, "a walled courtyard", seed=3)
    s2.load_state_dict(state)
    assert torch.equal(s2.points.points().xyz, s.points.points().xyz)
    assert WorldModelSession(model, autoencoder=ae, point_cache=0).points is None
    assert WorldModelSession(model, autoencoder=ae, use_hint=False).points is None


def test_action_logs_record_the_start_radius_and_replays_use_it(tmp_path):
    """A replay builds the hints the recording did: the log records hint_start_radius and
    hint_sampling; a log from before either was recorded replays with the rule of its time (0 m,
    nearest); a radius that is no distance, or an unknown sampling, is refused."""
    import numpy as np

    from wm_helpers import log_with_header, record_model_session

    from game.replay import LOGS_BEFORE_SAMPLING, LOGS_BEFORE_START_RADIUS, load_replay
    from worldmodel.checkpoint import save_checkpoint

    config = tiny_config(hint=True, window_frames=3, memory_entries=2, hint_recent=2, hint_start_radius=2.5,
                         hint_sampling="bilinear")
    ckpt = save_checkpoint(tmp_path / "hint.safetensors", randomized_model(config), _ae_with_depth())
    log = tmp_path / "hint.jsonl"
    shown = record_model_session(ckpt, log)
    replay = load_replay(log, checkpoint=str(ckpt))
    assert replay.log.header["hint_start_radius"] == 2.5 and replay.session.source.start_radius == 2.5
    assert replay.log.header["hint_sampling"] == "bilinear" and replay.session.source.sampling == "bilinear"
    assert all(np.array_equal(a, b) for a, b in zip(shown, replay.frames()))
    for value in (None, -1.0, "near"):
        edited = log_with_header(log, tmp_path / f"edited-{value}.jsonl", "hint_start_radius", value)
        if value is None:
            assert load_replay(edited, checkpoint=str(ckpt)).session.source.start_radius == LOGS_BEFORE_START_RADIUS
        else:
            with pytest.raises(UserError, match=r"line 1: \"hint_start_radius\" must be a distance in metres"):
                load_replay(edited, checkpoint=str(ckpt))
    before = log_with_header(log, tmp_path / "before-sampling.jsonl", "hint_sampling", None)
    assert load_replay(before, checkpoint=str(ckpt)).session.source.sampling == LOGS_BEFORE_SAMPLING == "nearest"
    refused = r"line 1: \"hint_sampling\" must be one of \['nearest', 'bilinear-start', 'bilinear'\]"
    with pytest.raises(UserError, match=refused):
        load_replay(log_with_header(log, tmp_path / "cubic.jsonl", "hint_sampling", "cubic"), checkpoint=str(ckpt))


def test_bilinear_sources_follow_the_config_rule():
    """hint_sampling -> which sources reproject samples bilinearly: none, the start frame (tick 0) alone,
    every valid source; an absent source never; an unknown rule is refused by the function and the
    config alike."""
    from worldmodel.config import WorldModelConfig
    from worldmodel.hint import bilinear_sources

    ticks = torch.tensor([[5, 4, 0, -1], [3, 0, -1, -1]])
    valid = torch.tensor([[True, True, True, False], [False, True, False, False]])
    assert bilinear_sources(ticks, valid, "nearest") is None
    assert bilinear_sources(ticks, valid, "bilinear-start").tolist() == [[False, False, True, False],
                                                                          [False, True, False, False]]
    assert torch.equal(bilinear_sources(ticks, valid, "bilinear"), valid)
    with pytest.raises(ValueError, match="hint sampling must be one of"):
        bilinear_sources(ticks, valid, "cubic")
    with pytest.raises(ValueError, match="hint_sampling must be one of"):
        tiny_config(hint=True, hint_sampling="cubic")
    assert WorldModelConfig.hint_sampling == "bilinear-start"


def test_play_steps_are_recorded_and_replays_sample_the_same(tmp_path):
    """`play --steps N` plays with N denoising steps per frame after the warm-up; the log records them
    and a replay samples the same frames; a log from before they were recorded replays with the
    checkpoint's; an absurd count is refused naming the file; `replay --steps` overrides the log's;
    the oracle refuses the flag."""
    import numpy as np

    from wm_helpers import log_with_header, record_model_session

    from game.frame_source import make_frame_source
    from game.replay import load_replay
    from worldmodel.checkpoint import save_checkpoint

    config = tiny_config(hint=True, window_frames=3, memory_entries=2, hint_recent=2, sample_steps=2, warmup_frames=0)
    ckpt = save_checkpoint(tmp_path / "hint.safetensors", randomized_model(config), _ae_with_depth())
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    shown_one = record_model_session(ckpt, one, sample_steps=1)
    shown_two = record_model_session(ckpt, two)
    assert json.loads(one.read_text().splitlines()[0])["sample_steps"] == 1
    assert json.loads(two.read_text().splitlines()[0])["sample_steps"] == 2  # the checkpoint's
    assert not all(np.array_equal(a, b) for a, b in zip(shown_one[-2:], shown_two[-2:]))
    replay = load_replay(one, checkpoint=str(ckpt))
    assert replay.session.source.sample_steps == 1
    assert all(np.array_equal(a, b) for a, b in zip(shown_one, replay.frames()))
    before = log_with_header(one, tmp_path / "before.jsonl", "sample_steps", None)
    assert load_replay(before, checkpoint=str(ckpt)).session.source.sample_steps == 2
    for value in (0, 65, 1.5, True, "2"):
        with pytest.raises(UserError, match=r"bad-.*\.jsonl: line 1: \"sample_steps\" "):
            load_replay(log_with_header(one, tmp_path / f"bad-{value}.jsonl", "sample_steps", value), checkpoint=str(ckpt))
    with pytest.raises(UserError, match="--steps 1: only the model backend samples"):
        make_frame_source("oracle", sample_steps=1)
    # `replay --steps N` asks for other steps than the recording's: the 1-step log replayed with 2
    # shows the 2-step recording's frames (same actions, poses and seed)
    other = load_replay(one, checkpoint=str(ckpt), steps=2)
    assert other.session.source.sample_steps == 2
    assert all(np.array_equal(a, b) for a, b in zip(shown_two, other.frames()))
    with pytest.raises(UserError, match="--steps: 0 is out of range"):
        load_replay(one, checkpoint=str(ckpt), steps=0)
    with pytest.raises(UserError, match="--steps 2: only the model backend samples"):
        load_replay(one, backend="oracle", steps=2)


def test_action_logs_record_the_memory_key_scale_and_replays_use_it(tmp_path):
    """A replay attends its memory as the recording did: the log records memory_key_scale; a log from
    before it was recorded replays with unscaled keys (1); a scale out of range is refused."""
    import numpy as np

    from wm_helpers import log_with_header, record_model_session

    from game.replay import LOGS_BEFORE_MEMORY_KEY_SCALE, load_replay
    from worldmodel.checkpoint import save_checkpoint

    config = tiny_config(hint=True, window_frames=3, memory_entries=2, hint_recent=2, memory_key_scale=0.5)
    ckpt = save_checkpoint(tmp_path / "scaled.safetensors", randomized_model(config), _ae_with_depth())
    log = tmp_path / "scaled.jsonl"
    shown = record_model_session(ckpt, log)
    replay = load_replay(log, checkpoint=str(ckpt))
    assert replay.log.header["memory_key_scale"] == 0.5 and replay.session.source.memory_key_scale == 0.5
    assert all(np.array_equal(a, b) for a, b in zip(shown, replay.frames()))
    before = log_with_header(log, tmp_path / "before.jsonl", "memory_key_scale", None)
    assert load_replay(before, checkpoint=str(ckpt)).session.source.memory_key_scale == LOGS_BEFORE_MEMORY_KEY_SCALE == 1
    for value in (0.0, -1.0, "soft", 1e9):
        with pytest.raises(UserError, match=r"line 1: \"memory_key_scale\""):
            load_replay(log_with_header(log, tmp_path / "bad.jsonl", "memory_key_scale", value), checkpoint=str(ckpt))
