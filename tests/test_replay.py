"""Replay: logs -> frames. The oracle replays bit-identically, equal to render_views at the logged
poses; a recorded session replays to the frames that were shown; exports are atomic and decodable."""

from __future__ import annotations

import json
import math
import os

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"

import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from game.action_log import FIRST_TICK, ActionLogWriter, make_header  # noqa: E402
from game.frame_source import OracleFrameSource  # noqa: E402
from game.loop import GameConfig, run_game  # noqa: E402
from game.replay import export_replay, load_replay, output_kind, replay_in_window  # noqa: E402
from game.session import PlaySession  # noqa: E402
from conventions.errors import UserError  # noqa: E402

RES = 16
WORLD_SEED = 5
TICKS = 6


def png_frames(folder) -> list[np.ndarray]:
    files = sorted(folder.glob("frame_*.png"))
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def hand_written_log(path, scene: str = f"procedural:{WORLD_SEED}", start=None, ticks: int = TICKS,
                     resolution: int = RES, torn_tail: str | None = None, shift_from: int | None = None):
    """A version-1 log written by hand (json.dumps), not by ActionLogWriter."""
    from scenes.world import generate_world

    start = start or generate_world(WORLD_SEED).spawn_pose()
    header = {"format": "worldmodel.actions", "version": 1, "scene": scene, "prompt": "hand written",
              "image_sha256": None, "checkpoint_sha256": None, "backend": "oracle", "seed": 1, "tick_hz": 10.0,
              "resolution": [resolution, resolution], "start_pose": start.as_list()}
    lines, pose = [json.dumps(header)], start
    for i in range(ticks):
        action = [0.2, 0.05 * (i % 2), 0.0, 0.15, -0.02]
        pose = pose.step(action)
        logged = pose.as_list()
        if shift_from is not None and i >= shift_from:
            logged[2] += 0.75
        lines.append(json.dumps({"t": FIRST_TICK + i, "action": action, "pose": logged}))
    text = "\n".join(lines) + "\n"
    if torn_tail is not None:
        text += torn_tail
    path.write_text(text)
    return path


def truth(path) -> torch.Tensor:
    """render_views at the start pose and every logged pose: uint8 [T+1, H, W, 3]."""
    from game.action_log import read_action_log
    from scenes.render import render_views
    from scenes.world import generate_world

    log = read_action_log(path)
    poses = torch.cat([torch.tensor([log.header["start_pose"]]), log.poses]).float()  # [T+1, 5]
    return render_views(generate_world(WORLD_SEED), poses, RES)


def test_hand_written_procedural_log_replays_to_render_views(tmp_path):
    log = hand_written_log(tmp_path / "hand.jsonl")
    result = export_replay(log, str(tmp_path / "frames") + "/", progress=False)
    frames = png_frames(tmp_path / "frames")
    assert result.frames == TICKS + 1 == len(frames)
    expected = truth(log).numpy()
    for i, frame in enumerate(frames):
        assert np.array_equal(frame, expected[i]), f"frame {i} differs from render_views"
    # bit-identical run to run
    export_replay(log, str(tmp_path / "again") + "/", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(frames, png_frames(tmp_path / "again")))


def test_recorded_session_replays_to_the_frames_shown(tmp_path):
    from scenes.scene import load_scene

    scene = load_scene("courtyard")
    shown: list[np.ndarray] = []

    class Remember(OracleFrameSource):
        def reset(self, *a):
            shown.clear()
            shown.append(super().reset(*a))
            return shown[-1]

        def step(self, action, pose):
            shown.append(super().step(action, pose))
            return shown[-1]

    session = PlaySession(Remember(RES), scene, scene_spec="courtyard", tick_hz=20.0,
                          recordings_dir=tmp_path / "rec")
    calls = {"n": 0}
    script = {0: [pygame.K_w, pygame.K_LEFT], 3: [pygame.K_a]}

    def events(_tick):
        for k in script.get(calls["n"], []):
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="", scancode=0))
        calls["n"] += 1
        return pygame.event.get()

    log = tmp_path / "session.jsonl"
    run_game(GameConfig(session=session, event_source=events, max_ticks=5, realtime=False, window=64,
                        record=str(log)))
    assert len(shown) == 6
    export_replay(log, str(tmp_path / "out") + "/", progress=False)
    replayed = png_frames(tmp_path / "out")
    assert len(replayed) == 6
    for i, (a, b) in enumerate(zip(shown, replayed)):
        assert np.array_equal(a, b), f"frame {i}"


def test_killed_recording_replays_up_to_the_last_complete_tick(tmp_path):
    log = hand_written_log(tmp_path / "killed.jsonl", torn_tail='{"t": 7, "action": [0.2, 0.0, 0.')
    replay = load_replay(log)
    assert replay.log.tick_count() == TICKS and replay.frame_count == TICKS + 1
    frames = list(replay.frames())
    assert len(frames) == TICKS + 1
    assert any("incomplete last line" in w for w in replay.warnings)


def test_writer_killed_mid_line_replays(tmp_path):
    """Simulate a kill between flushes: the writer's file with a partial last line appended."""
    from scenes.world import generate_world

    path = tmp_path / "w.jsonl"
    start = generate_world(WORLD_SEED).spawn_pose()
    header = make_header(scene=f"procedural:{WORLD_SEED}", prompt="p", backend="oracle", seed=0, tick_hz=20.0,
                         resolution=RES, start_pose=start)
    with ActionLogWriter(path, header) as w:
        pose = start
        for _ in range(3):
            pose = pose.step([0.1, 0, 0, 0.1, 0])
            w.write([0.1, 0, 0, 0.1, 0], pose)
    with open(path, "a") as fh:
        fh.write('{"t": 4, "action": [0.1')
    frames = list(load_replay(path).frames())
    assert len(frames) == 4


def test_replay_uses_logged_poses_with_one_warning(tmp_path):
    log = hand_written_log(tmp_path / "moved.jsonl", shift_from=3)
    replay = load_replay(log)
    frames = np.stack(list(replay.frames()))
    assert sum("logged poses" in w for w in replay.warnings) == 1
    assert np.array_equal(frames, truth(log).numpy())


def test_mp4_and_gif_exports_are_decodable_with_the_right_frame_count(tmp_path):
    import imageio_ffmpeg

    log = hand_written_log(tmp_path / "hand.jsonl")
    mp4 = export_replay(log, str(tmp_path / "run.mp4"), progress=False, size=64).path
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = reader.__next__()
    assert tuple(meta["size"]) == (64, 64) and meta["fps"] == pytest.approx(10.0)
    decoded = [np.frombuffer(f, np.uint8).reshape(64, 64, 3) for f in reader]
    assert len(decoded) == TICKS + 1
    expected = truth(log).numpy()
    big = expected[0].repeat(4, 0).repeat(4, 1).astype(np.float64)
    assert 20 * math.log10(255 / math.sqrt(np.mean((decoded[0] - big) ** 2) + 1e-12)) > 25  # lossy but close
    gif = export_replay(log, str(tmp_path / "run.gif"), progress=False).path
    with Image.open(gif) as im:
        assert im.n_frames == TICKS + 1 and im.size == (RES, RES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hand.jsonl", "run.gif", "run.mp4"]  # no temp files


def test_size_upscales_nearest(tmp_path):
    log = hand_written_log(tmp_path / "hand.jsonl", ticks=1)
    export_replay(log, str(tmp_path / "big") + "/", size=RES * 3, progress=False)
    frames = png_frames(tmp_path / "big")
    expected = truth(log).numpy()
    assert np.array_equal(frames[1], expected[1].repeat(3, 0).repeat(3, 1))


def test_png_folder_export_replaces_an_old_export_but_not_other_files(tmp_path):
    log = hand_written_log(tmp_path / "hand.jsonl", ticks=2)
    out = tmp_path / "frames"
    out.mkdir()
    for i in range(5):  # an older, longer export
        (out / f"frame_{i:05d}.png").write_bytes(b"old")
    export_replay(log, str(out), progress=False)
    assert len(png_frames(out)) == 3
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_replay(log, str(out), progress=False)
    assert (out / "notes.txt").exists()


def test_bad_log_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "worldmodel.actions", "version": 1}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 1: header lacks"):
        export_replay(bad, str(tmp_path / "run.mp4"), progress=False)
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))


def test_output_kinds():
    assert output_kind("a/run.mp4") == "mp4" and output_kind("run.GIF") == "gif"
    assert output_kind("frames/") == "png" and output_kind("frames") == "png"
    with pytest.raises(UserError, match="unknown output type"):
        output_kind("run.avi")


def test_image_session_replays_with_the_picture_first(tmp_path):
    from game.loop import build_session
    from scenes.scene import load_image

    picture = np.full((20, 20, 3), 90, np.uint8)
    picture[5:15, 5:15] = (10, 220, 40)
    image = tmp_path / "pic.png"
    Image.fromarray(picture).save(image)
    session = build_session(GameConfig(scene="courtyard", backend="oracle", image=str(image), resolution=RES))
    shown = [session.reset()]
    log = tmp_path / "img.jsonl"
    session.start_recording(log)
    for _ in range(2):
        shown.append(session.step([0.1, 0.0, 0.0, 0.05, 0.0]))
    session.close()
    export_replay(log, str(tmp_path / "out") + "/", progress=False)
    replayed = png_frames(tmp_path / "out")
    assert np.array_equal(replayed[0], load_image(image, RES))
    assert all(np.array_equal(a, b) for a, b in zip(shown, replayed))
    image.unlink()
    with pytest.raises(UserError, match="not there any more"):
        load_replay(log)


def test_replay_in_window_follows_the_log(tmp_path):
    log = hand_written_log(tmp_path / "hand.jsonl", ticks=3)
    ticks = replay_in_window(log, window=64, exit_when_done=True, event_source=lambda _t: pygame.event.get(),
                             fps=1000.0)
    assert ticks == 3


def test_replay_cli(tmp_path, capsys):
    from tools.cli import main

    log = hand_written_log(tmp_path / "hand.jsonl", ticks=2)
    assert main(["replay", str(log), "--out", str(tmp_path / "cli") + "/"]) == 0
    err = capsys.readouterr().err
    assert "replay: 100%" in err and "wrote" in err  # progress on stderr (plain lines: not a terminal)
    assert len(png_frames(tmp_path / "cli")) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(log.read_text().replace('"t": 2', '"t": 9'))
    assert main(["replay", str(bad), "--out", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl: line 3:" in err[0]
    assert main(["replay", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.gif")]) == 2
    assert "no such action log" in capsys.readouterr().err


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_model_backend_session_replays_to_the_frames_shown(tmp_path, precision):
    """The learned generator (tiny random checkpoint): replay of a recorded session is bit-identical,
    and the log names the checkpoint by sha256 and the precision it ran in, which the replay uses."""
    from wm_helpers import log_with_header, randomized_model, record_model_session, tiny_autoencoder

    from worldmodel.checkpoint import checkpoint_sha256, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", randomized_model(), tiny_autoencoder())
    log = tmp_path / "model.jsonl"
    shown = record_model_session(ckpt, log, precision=precision)
    replay = load_replay(log, checkpoint=str(ckpt))
    assert replay.log.header["checkpoint_sha256"] == checkpoint_sha256(ckpt)
    assert replay.log.header["precision"] == (precision or "fp32")
    assert replay.log.header["backend"] == "model" and replay.warnings == []
    assert replay.session.source.precision == (precision or "fp32")
    replayed = list(replay.frames())
    assert len(replayed) == 3
    for i, (a, b) in enumerate(zip(shown, replayed)):
        assert np.array_equal(a, b), f"frame {i}"
    if precision is None:
        return
    # a log written before precision was recorded ran fp32; a precision nobody knows is refused
    for value, expect in ((None, "fp32"), ("fp8", None)):
        edited = log_with_header(log, tmp_path / f"edited-{value}.jsonl", "precision", value)
        if expect is None:
            with pytest.raises(UserError, match=r"line 1: \"precision\" must be one of \['fp32', 'bf16'\]"):
                load_replay(edited, checkpoint=str(ckpt))
        else:
            assert load_replay(edited, checkpoint=str(ckpt)).session.source.precision == expect


def test_only_the_model_has_a_precision():
    from game.frame_source import make_frame_source

    with pytest.raises(UserError, match="only the model backend has a precision"):
        make_frame_source("oracle", precision="bf16")
