"""Saving and resuming a played world: a resumed session continues exactly as if it never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wm_helpers import randomized_model, tiny_autoencoder, walking_poses

from conventions.camera import CameraPose
from worldmodel.checkpoint import save_checkpoint
from worldmodel.config import tiny_config
from conventions.errors import UserError
from worldmodel.runtime import ModelFrameSource
from worldmodel.world_state import load_world, read_world_meta, save_world

TICKS, SPLIT = 14, 7


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    return save_checkpoint(path, randomized_model(tiny_config(window_frames=2)), tiny_autoencoder())


def _scene():
    from scenes.scene import Scene

    yy, xx = np.mgrid[0:64, 0:64]
    image = np.stack([xx * 4, yy * 4, np.full_like(xx, 90)], -1).astype(np.uint8)
    return Scene(name="t", prompt="a walled courtyard", start_pose=CameraPose(), fov_deg=90.0, world_seed=None,
                 image=image, path=None)


def _steps(source: ModelFrameSource, lo: int, hi: int) -> list[np.ndarray]:
    actions, poses = walking_poses(TICKS + 1, 3)
    return [source.step(actions[t].tolist(), CameraPose.from_sequence(poses[t].tolist())) for t in range(lo, hi)]


def _start(source: ModelFrameSource) -> None:
    _, poses = walking_poses(TICKS + 1, 3)
    source.reset(_scene(), CameraPose.from_sequence(poses[0].tolist()), "a walled courtyard", 5)


def test_resumed_world_continues_bit_identically(checkpoint: Path, tmp_path: Path) -> None:
    straight = ModelFrameSource(checkpoint)
    _start(straight)
    reference = _steps(straight, 1, TICKS + 1)

    first = ModelFrameSource(checkpoint)
    _start(first)
    _steps(first, 1, SPLIT + 1)
    save_world(first, tmp_path / "w", {"scene": "test", "pose_history": list(first.pose_history)})
    assert read_world_meta(tmp_path / "w")["tick"] == SPLIT

    second = ModelFrameSource(checkpoint)
    _start(second)
    meta = load_world(second, tmp_path / "w")
    assert meta["scene"] == "test" and len(second.memory) == len(first.memory)
    np.testing.assert_array_equal(second.current_frame(), first.current_frame())
    resumed = _steps(second, SPLIT + 1, TICKS + 1)
    for a, b in zip(resumed, reference[SPLIT:]):
        np.testing.assert_array_equal(a, b)
    # Saving again over the same folder keeps exactly one session file.
    save_world(second, tmp_path / "w", {"scene": "test"})
    assert len(list((tmp_path / "w").glob("session-*.safetensors"))) == 1


def test_damaged_or_foreign_saves_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    source = ModelFrameSource(checkpoint)
    _start(source)
    _steps(source, 1, 4)
    save_world(source, tmp_path / "w", {})
    session_file = next((tmp_path / "w").glob("session-*.safetensors"))
    other = ModelFrameSource(checkpoint)
    _start(other)
    data = bytearray(session_file.read_bytes())
    data[-5] ^= 0xFF
    session_file.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        load_world(other, tmp_path / "w")
    session_file.unlink()
    with pytest.raises(UserError, match="missing"):
        load_world(other, tmp_path / "w")
    state = json.loads((tmp_path / "w" / "memory.json").read_text())
    state["extra"]["checkpoint_sha256"] = "0" * 64
    (tmp_path / "w" / "memory.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="checkpoint"):
        load_world(other, tmp_path / "w")
    with pytest.raises(UserError, match="no saved world"):
        load_world(other, tmp_path / "nowhere")


def test_play_session_saves_on_request_and_resumes(checkpoint: Path, tmp_path: Path) -> None:
    from game.session import PlaySession

    def session() -> PlaySession:
        s = PlaySession(ModelFrameSource(checkpoint), _scene(), scene_spec="test", seed=2,
                        recordings_dir=tmp_path / "rec")
        s.reset()
        return s

    a = session()
    for _ in range(5):
        a.step([0.1, 0.0, 0.0, 0.05, 0.0])
    a.save_world(tmp_path / "w")
    b = session()
    b.load_world(tmp_path / "w")
    assert b.tick == 5 and b.pose == a.pose
    np.testing.assert_array_equal(a.step([0.1, 0, 0, 0, 0]), b.step([0.1, 0, 0, 0, 0]))


def test_game_loop_saves_on_f5_and_quit_and_resumes(checkpoint: Path, tmp_path: Path) -> None:
    import os

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import pygame

    from game.loop import GameConfig, run_game
    from game.session import PlaySession

    def session() -> PlaySession:
        return PlaySession(ModelFrameSource(checkpoint), _scene(), scene_spec="test", seed=1,
                           recordings_dir=tmp_path / "rec")

    def events(script):
        def source(tick):
            for ev in script.get(tick, []):
                pygame.event.post(ev)
            return pygame.event.get()
        return source

    f5 = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_F5, mod=0, unicode="", scancode=0)
    w = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_w, mod=0, unicode="w", scancode=0)
    world = tmp_path / "world"
    first = run_game(GameConfig(session=session(), event_source=events({0: [w], 2: [f5]}), max_ticks=4,
                                realtime=False, window=64, save_world=str(world), screenshots_dir=tmp_path))
    assert first.ticks == 4 and read_world_meta(world)["tick"] == 4  # quit saved over the F5 save
    second = run_game(GameConfig(session=session(), event_source=events({}), max_ticks=6, realtime=False,
                                 window=64, load_world=str(world), screenshots_dir=tmp_path))
    assert second.ticks == 6  # continued from tick 4
    assert second.final_pose.z < 0  # walked forward before the save, standing since


def test_hint_model_world_resumes_bit_identically_and_old_worlds_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    """A hint model's saved world keeps the views its next hints reproject; a world saved by a model
    without the hint cannot be continued by one with it (its memory has no views) and says so."""
    from test_hint import _ae_with_depth

    hint_ckpt = save_checkpoint(tmp_path / "hint.safetensors", randomized_model(tiny_config(window_frames=2, hint=True)),
                                _ae_with_depth())
    straight = ModelFrameSource(hint_ckpt)
    _start(straight)
    reference = _steps(straight, 1, TICKS + 1)
    first = ModelFrameSource(hint_ckpt)
    _start(first)
    _steps(first, 1, SPLIT + 1)
    save_world(first, tmp_path / "w", {"scene": "test"})
    second = ModelFrameSource(hint_ckpt)
    _start(second)
    load_world(second, tmp_path / "w")
    for a, b in zip(_steps(second, SPLIT + 1, TICKS + 1), reference[SPLIT:]):
        np.testing.assert_array_equal(a, b)
    old = ModelFrameSource(checkpoint)
    _start(old)
    _steps(old, 1, 4)
    save_world(old, tmp_path / "old", {})
    with pytest.raises(UserError, match="saved by another|checkpoint"):
        load_world(second, tmp_path / "old")
