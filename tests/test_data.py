import json

import pytest
import torch
from safetensors.torch import save_file

from ae_helpers import tiny_ae_config, write_synthetic_dataset
from worldmodel.autoencoder import Autoencoder, file_sha256, save_autoencoder
from worldmodel.data import (ClipDataset, FrameSampler, LatentClips, encode_dataset, fixed_frames,
                             read_dataset_info)
from conventions.errors import UserError


@pytest.fixture()
def dataset(tmp_path):
    return tmp_path / "ds", write_synthetic_dataset(tmp_path / "ds", clips=6, ticks=8, resolution=16,
                                                    shard_clips=4)


def test_clip_dataset_reads_back_what_was_written(dataset):
    path, truth = dataset
    ds = ClipDataset(path, expected_resolution=16)
    assert len(ds) == 6 and ds.ticks == 8 and ds.resolution == 16 and ds.num_frames == 48
    for i in (0, 3, 4, 5, -1):  # both shards, negative index
        clip = ds[i]
        j = i % 6
        assert torch.equal(clip.frames, truth["frames"][j])
        assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (8, 16, 16, 3)
        assert torch.equal(clip.actions, truth["actions"][j]) and torch.equal(clip.poses, truth["poses"][j])
        assert clip.world_seed == int(truth["world_seeds"][j])
        assert clip.caption == truth["captions"][j] and clip.policy == truth["policies"][j]
    assert torch.equal(ds.frame(5, 7), truth["frames"][5, 7])
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(IndexError):
        ds.frame(0, 8)


def test_frame_sampler_is_reproducible_and_resumable(dataset):
    path, truth = dataset
    ds = ClipDataset(path)
    a, b = FrameSampler(ds, seed=3), FrameSampler(ds, seed=3)
    first = a.sample(10)
    assert first.shape == (10, 16, 16, 3) and first.dtype == torch.uint8
    assert torch.equal(first, b.sample(10))
    state = a.state()
    nxt = a.sample(7)
    a.set_state(state)
    assert torch.equal(a.sample(7), nxt)
    # every sampled frame is a real frame of the data set
    flat = truth["frames"].reshape(-1, 16 * 16 * 3)
    for f in first:
        assert (flat == f.reshape(1, -1)).all(1).any()
    assert not torch.equal(FrameSampler(ds, seed=4).sample(10), first)
    assert torch.equal(fixed_frames(ds, 12, seed=1), fixed_frames(ds, 12, seed=1))
    assert fixed_frames(ds, 1000).shape[0] == ds.num_frames  # capped at the data set size


def _edit_index(path, **changes):
    index = json.loads((path / "dataset.json").read_text())
    index.update(changes)
    (path / "dataset.json").write_text(json.dumps(index))


@pytest.mark.parametrize("changes, needle", [
    ({"format": "something.else"}, "format"),
    ({"version": 7}, "version 7"),
    ({"resolution": [16]}, "resolution"),
    ({"shards": ["../escape.safetensors"]}, "shards"),
    ({"clips": 99}, "99 clips"),
    ({"ticks": 9}, "ticks 9"),
    ({"split": "test"}, "split"),
])
def test_dataset_index_problems_are_user_errors(dataset, changes, needle):
    path, _ = dataset
    _edit_index(path, **changes)
    with pytest.raises(UserError) as err:
        ClipDataset(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_wrong_resolution_names_the_index(dataset):
    path, _ = dataset
    with pytest.raises(UserError, match=r"dataset\.json: resolution is 16x16, expected 64x64"):
        ClipDataset(path, expected_resolution=64)
    _edit_index(path, resolution=[32, 32])  # header disagrees with the shards
    with pytest.raises(UserError, match=r"shard-00000\.safetensors: tensor 'frames' has shape"):
        ClipDataset(path)


def test_missing_or_broken_files(tmp_path, dataset):
    with pytest.raises(UserError, match="data set index not found"):
        ClipDataset(tmp_path / "nowhere")
    path, _ = dataset
    (path / "dataset.json").write_text("{ not json")
    with pytest.raises(UserError, match="line 1: invalid JSON"):
        read_dataset_info(path)


def test_broken_shards(tmp_path):
    path = tmp_path / "ds"
    write_synthetic_dataset(path, clips=4, ticks=4, resolution=16, shard_clips=2)
    (path / "shard-00001.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="shard-00001.safetensors: not a readable safetensors file"):
        ClipDataset(path)
    (path / "shard-00001.safetensors").unlink()
    with pytest.raises(UserError, match="shard-00001.safetensors: shard listed in dataset.json not found"):
        ClipDataset(path)
    # wrong dtype and a caption list of the wrong length
    save_file({"frames": torch.zeros(2, 4, 16, 16, 3), "actions": torch.zeros(2, 4, 5),
               "poses": torch.zeros(2, 4, 5), "world_seeds": torch.zeros(2, dtype=torch.int64)},
              str(path / "shard-00001.safetensors"), metadata={"captions": "[]", "policies": "[]"})
    with pytest.raises(UserError, match="frames must be uint8"):
        ClipDataset(path)
    save_file({"frames": torch.zeros(2, 4, 16, 16, 3, dtype=torch.uint8), "actions": torch.zeros(2, 4, 5),
               "poses": torch.zeros(2, 4, 5), "world_seeds": torch.zeros(2, dtype=torch.int64)},
              str(path / "shard-00001.safetensors"), metadata={"captions": '["one"]', "policies": "[]"})
    with pytest.raises(UserError, match="metadata 'captions' must be a JSON list of 2 strings"):
        ClipDataset(path)


def _trained_looking_ae(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    ae = Autoencoder(tiny_ae_config(16)).eval()
    ae.set_latent_statistics(torch.randn(8) * 0.1, torch.rand(8) + 0.5)
    return ae


def test_encode_dataset_and_latent_clips(tmp_path, dataset):
    path, truth = dataset
    ae = _trained_looking_ae()
    ckpt = save_autoencoder(ae, tmp_path / "ae.safetensors")
    out = encode_dataset(ckpt, path, tmp_path / "cache" / "latents.safetensors", batch=5, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["latents.safetensors"]  # no temp files left
    cache = LatentClips(out, expected_autoencoder_sha256=file_sha256(ckpt))
    assert len(cache) == 6 and cache.ticks == 8 and cache.latent_shape == (8, 2, 2)
    assert cache.latents.dtype == torch.bfloat16 and cache.latents.shape == (6, 8, 8, 2, 2)
    with torch.inference_mode():
        expected = ae.encode(truth["frames"].reshape(-1, 16, 16, 3)).reshape(6, 8, 8, 2, 2)
    torch.testing.assert_close(cache.latents.float(), expected, atol=0.02 * expected.abs().max().item(),
                               rtol=1e-2)
    assert torch.equal(cache.actions, truth["actions"]) and torch.equal(cache.poses, truth["poses"])
    assert torch.equal(cache.world_seeds, truth["world_seeds"])
    assert cache.captions == truth["captions"] and cache.policies == truth["policies"]
    assert cache.tick_hz == 20.0 and cache.fov_deg == 90.0 and cache.resolution == (16, 16)
    assert cache.split == "train" and json.loads(cache.autoencoder_config)["latent_channels"] == 8
    # a cache made with another autoencoder is refused by name
    with pytest.raises(UserError, match="re-encode"):
        LatentClips(out, expected_autoencoder_sha256="0" * 64)
    # an in-memory model works too; the sha256 is whatever the caller says
    out2 = encode_dataset(ae, path, tmp_path / "l2.safetensors", batch=64, autoencoder_sha256="abc",
                          progress=False)
    assert torch.equal(LatentClips(out2).latents, cache.latents)
    assert LatentClips(out2).autoencoder_sha256 == "abc"
    fast = encode_dataset(ae, path, tmp_path / "l3.safetensors", progress=False, bf16_autocast=True)
    torch.testing.assert_close(LatentClips(fast).latents.float(), cache.latents.float(),
                               atol=0.05 * expected.abs().max().item(), rtol=0.05)


def test_encode_dataset_refuses_other_resolution(tmp_path):
    path = tmp_path / "ds"
    write_synthetic_dataset(path, clips=2, ticks=2, resolution=32)
    with pytest.raises(UserError, match="resolution is 32x32, expected 16x16"):
        encode_dataset(_trained_looking_ae(), path, tmp_path / "x.safetensors", progress=False)
    assert not (tmp_path / "x.safetensors").exists()


def test_latent_clips_rejects_bad_files(tmp_path):
    with pytest.raises(UserError, match="latent cache not found"):
        LatentClips(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="not a readable latent cache"):
        LatentClips(bad)
    save_file({"latents": torch.zeros(1, 2, 4, 2, 2)}, str(bad), metadata={"format": "other"})
    with pytest.raises(UserError, match="format is 'other'"):
        LatentClips(bad)
    save_file({"latents": torch.zeros(1, 2, 4, 2, 2), "actions": torch.zeros(1, 3, 5),
               "poses": torch.zeros(1, 2, 5), "world_seeds": torch.zeros(1, dtype=torch.int64)}, str(bad),
              metadata={"format": "worldmodel.latents", "version": "1", "captions": '["a"]', "policies": '["b"]'})
    with pytest.raises(UserError, match=r"actions has shape \[1, 3, 5\], expected \[1, 2, 5\]"):
        LatentClips(bad)
