"""ModelFrameSource: the learned generator behind the game's FrameSource protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wm_helpers import randomized_model, tiny_autoencoder, walking_poses

from conventions.camera import CameraPose
from worldmodel.checkpoint import checkpoint_sha256, save_checkpoint
from worldmodel.config import tiny_config
from conventions.errors import UserError
from worldmodel.runtime import ModelFrameSource


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    return save_checkpoint(path, randomized_model(tiny_config(window_frames=2)), tiny_autoencoder())


def _scene(size: int = 96):
    from scenes.scene import Scene

    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 90)], -1).astype(np.uint8)
    return Scene(name="test", prompt="a walled courtyard", start_pose=CameraPose(), fov_deg=90.0,
                 world_seed=None, image=image, path=None)


def _play(source: ModelFrameSource, ticks: int, seed: int = 0) -> np.ndarray:
    actions, poses = walking_poses(ticks + 1, 0)
    first = source.reset(_scene(), CameraPose.from_sequence(poses[0].tolist()), "a walled courtyard", seed)
    frames = [first] + [source.step(actions[t].tolist(), CameraPose.from_sequence(poses[t].tolist()))
                        for t in range(1, ticks + 1)]
    return np.stack(frames)


def test_frame_source_protocol_and_frames(checkpoint: Path) -> None:
    from game.frame_source import FrameSource

    source = ModelFrameSource(checkpoint)
    assert isinstance(source, FrameSource) and source.name == "model" and source.resolution == 64
    assert source.checkpoint_sha256 == checkpoint_sha256(checkpoint)
    frames = _play(source, 12)
    assert frames.shape == (13, 64, 64, 3) and frames.dtype == np.uint8
    assert frames[0, 0, 0, 1] < frames[0, -1, -1, 1]  # the start image (resized), not a generated frame
    assert 1 <= len(source.memory) <= 12 and len(source.pose_history) == 13  # near-identical views merge
    assert source.timing.passes >= 1 and source.timing.decode_ms > 0


def test_same_seed_same_frames_other_seed_other_frames(checkpoint: Path) -> None:
    a = _play(ModelFrameSource(checkpoint), 6, seed=4)
    b = _play(ModelFrameSource(checkpoint), 6, seed=4)
    c = _play(ModelFrameSource(checkpoint), 6, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a[1:], c[1:])


def test_observed_frames_are_fed_instead_of_generated(checkpoint: Path) -> None:
    source = ModelFrameSource(checkpoint)
    actions, poses = walking_poses(4, 0)
    source.reset(_scene(), CameraPose(), "", 0)
    observed = np.full((80, 80, 3), 200, dtype=np.uint8)
    out = source.step(actions[1].tolist(), CameraPose.from_sequence(poses[1].tolist()), observed=observed)
    assert out.shape == (64, 64, 3) and (out == 200).all()
    assert source.session.tick == 1 and source.session.timing.passes <= 1
    nxt = source.step(actions[2].tolist(), CameraPose.from_sequence(poses[2].tolist()))
    assert nxt.shape == (64, 64, 3) and len(source.memory) >= 1
    assert 1 in source.memory.ticks().tolist() or 2 in source.memory.ticks().tolist()


def test_saved_memory_can_be_loaded_into_a_new_session(checkpoint: Path, tmp_path: Path) -> None:
    from memory.store import MemoryConfig, MemoryStore

    source = ModelFrameSource(checkpoint)
    _play(source, 30)
    saved = source.memory.save(tmp_path / "world")
    other = ModelFrameSource(checkpoint)
    _play(other, 2)
    other.memory = MemoryStore.load(saved)
    assert len(other.memory) == len(source.memory)
    out = other.step([0.1, 0, 0, 0, 0], CameraPose(0.0, 1.6, -0.1, 0.0, 0.0))
    assert out.shape == (64, 64, 3)
    wrong = MemoryStore(MemoryConfig(payload_shape=(4, 2, 2)))
    wrong.add(torch.zeros(4, 2, 2), torch.zeros(5), 1)
    with pytest.raises(UserError, match="another model"):
        other.memory = wrong


def test_memory_off_never_fills_memory_slots(checkpoint: Path) -> None:
    source = ModelFrameSource(checkpoint, use_memory=False)
    _play(source, 10)
    cache = source.session.cache
    assert not cache.valid[:, cache.memory_start: cache.window_start].any()
    assert source.timing.memory_entries == 0


def test_missing_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        ModelFrameSource(tmp_path / "nope.safetensors")


def test_bfloat16_play_matches_float32_closely(checkpoint: Path) -> None:
    a = _play(ModelFrameSource(checkpoint), 4).astype(np.float32)
    b = _play(ModelFrameSource(checkpoint, dtype=torch.bfloat16), 4).astype(np.float32)
    assert np.abs(a - b).mean() < 8.0  # mean absolute pixel difference (0..255)
    c = _play(ModelFrameSource(checkpoint, precision="bf16"), 4).astype(np.float32)
    assert np.array_equal(b, c)  # the precision name and the dtype are the same thing


def test_precision_names(checkpoint: Path) -> None:
    assert ModelFrameSource(checkpoint).precision == "fp32"
    assert ModelFrameSource(checkpoint, dtype=torch.bfloat16).precision == "bf16"
    assert ModelFrameSource(checkpoint, precision="bf16").session.dtype == torch.bfloat16
    with pytest.raises(UserError, match="--precision: unknown precision 'fp16' \\(choose from fp32, bf16\\)"):
        ModelFrameSource(checkpoint, precision="fp16")
