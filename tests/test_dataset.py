import json

import pytest
import torch
from safetensors import safe_open

from scenes.render import render_views
from scenes.world import HELDOUT_SEED_START, generate_world
from tools.dataset import write_dataset
from conventions.camera import integrate
from conventions.errors import UserError


def test_dataset_format_and_content(tmp_path):
    index = write_dataset(tmp_path / "d", worlds=2, clips_per_world=2, ticks=12, resolution=16,
                          shard_clips=3, progress=False)
    assert index["format"] == "worldmodel.dataset" and index["version"] == 1
    assert index["clips"] == 4 and len(index["shards"]) == 2
    on_disk = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert on_disk == index
    with safe_open(str(tmp_path / "d" / index["shards"][0]), "pt") as f:
        frames, actions, poses = f.get_tensor("frames"), f.get_tensor("actions"), f.get_tensor("poses")
        seeds = f.get_tensor("world_seeds")
        meta = f.metadata()
    assert frames.shape == (3, 12, 16, 16, 3) and frames.dtype == torch.uint8
    assert actions.shape == poses.shape == (3, 12, 5) and torch.all(actions[:, 0] == 0)
    assert torch.allclose(integrate(poses[:, :-1], actions[:, 1:]), poses[:, 1:], atol=1e-4)
    captions = json.loads(meta["captions"])
    assert captions[0] == generate_world(int(seeds[0])).caption
    truth = render_views(generate_world(int(seeds[0])), poses[0], 16)
    assert torch.equal(truth, frames[0])


def test_heldout_and_train_seeds_are_separate(tmp_path):
    index = write_dataset(tmp_path / "h", worlds=1, clips_per_world=1, ticks=3, split="heldout",
                          resolution=8, progress=False)
    assert index["world_seeds"][0] >= HELDOUT_SEED_START
    with pytest.raises(UserError, match="held-out"):
        write_dataset(tmp_path / "t", worlds=2, clips_per_world=1, ticks=3, seed_start=HELDOUT_SEED_START - 1,
                      resolution=8, progress=False)
    with pytest.raises(UserError, match="already exists"):
        write_dataset(tmp_path / "h", worlds=1, clips_per_world=1, ticks=3, resolution=8, progress=False)
