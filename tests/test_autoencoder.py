import json

import pytest
import torch
from safetensors.torch import save_file

from ae_helpers import tiny_ae_config, write_synthetic_dataset
from conventions.metrics import psnr
from worldmodel.autoencoder import (Autoencoder, AutoencoderConfig, load_autoencoder,
                                    read_checkpoint_metadata, save_autoencoder)
from conventions.errors import UserError
from worldmodel.train_autoencoder import (OptimConfig, evaluate_psnr, learning_rate,
                                          train_autoencoder)


def _model(seed: int = 0, config: AutoencoderConfig | None = None) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(config or tiny_ae_config(16)).eval()


def test_default_config_is_64px_to_16x8x8():
    cfg = AutoencoderConfig()
    assert cfg.resolution == 64 and cfg.downsample == 8 and cfg.latent_shape == (16, 8, 8)
    assert AutoencoderConfig.from_json(cfg.to_json()) == cfg
    ae = Autoencoder(cfg).eval()
    with torch.inference_mode():
        z = ae.encode(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
        assert z.shape == (2, 16, 8, 8)
        assert ae.decode(z).shape == (2, 3, 64, 64)


def test_invalid_configs():
    with pytest.raises(ValueError, match="not divisible by the downsample"):
        AutoencoderConfig(resolution=60)
    with pytest.raises(ValueError, match="same non-zero length"):
        AutoencoderConfig(encoder_widths=(32, 64), decoder_widths=(64, 32, 32))
    with pytest.raises(ValueError, match="unknown config fields"):
        AutoencoderConfig.from_json(json.dumps({"latent_channels": 4, "colour": "red"}))


def test_shapes_ranges_and_input_kinds():
    ae = _model()
    frames = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    with torch.inference_mode():
        z = ae.encode(frames)
        assert z.shape == (3, 8, 2, 2) and z.dtype == torch.float32
        as_float = frames.permute(0, 3, 1, 2).float() / 255.0
        torch.testing.assert_close(ae.encode(as_float), z)  # float [B,3,H,W] in [0,1] == uint8 input
        img = ae.decode(z)
        assert img.shape == (3, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
        u8 = ae.decode_uint8(z)
        assert u8.shape == (3, 16, 16, 3) and u8.dtype == torch.uint8
        assert torch.equal(u8, (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
        assert ae(frames).shape == (3, 3, 16, 16)
        with pytest.raises(ValueError, match="16x16"):
            ae.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
            ae.encode(torch.zeros(1, 16, 16, 4, dtype=torch.uint8))
        with pytest.raises(ValueError, match="latents must be"):
            ae.decode(torch.zeros(1, 8, 4, 4))


def test_normalisation_buffers_apply_and_roundtrip_through_a_checkpoint(tmp_path):
    ae = _model()
    frames = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    mean, std = torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8)
    ae.set_latent_statistics(mean, std)
    with torch.inference_mode():
        raw = ae.encode_raw(frames)
        z = ae.encode(frames)
        torch.testing.assert_close(z, (raw - mean[:, None, None]) / std[:, None, None])
        # decode undoes the normalisation before the decoder
        torch.testing.assert_close(ae.decode(z), (ae.decode_raw(raw) * 0.5 + 0.5).clamp(0, 1))
    path = save_autoencoder(ae, tmp_path / "ae.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.safetensors"]  # atomic: no temp file left
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "worldmodel.autoencoder" and meta["version"] == "1"
    assert AutoencoderConfig.from_json(meta["config"]) == ae.config
    loaded = load_autoencoder(path)
    torch.testing.assert_close(loaded.latent_mean, mean)
    torch.testing.assert_close(loaded.latent_scale, std)
    with torch.inference_mode():
        assert torch.equal(loaded.encode(frames), z)
        assert torch.equal(loaded.decode_uint8(z), ae.decode_uint8(z))
    assert not loaded.training


def test_loading_another_config_names_the_mismatch(tmp_path):
    path = save_autoencoder(_model(), tmp_path / "ae.safetensors")
    other = AutoencoderConfig(**{**json.loads(tiny_ae_config(16).to_json()), "latent_channels": 4})
    with pytest.raises(UserError, match=r"latent_channels 8 != 4"):
        load_autoencoder(path, expected_config=other)
    assert load_autoencoder(path, expected_config=tiny_ae_config(16)).config == tiny_ae_config(16)

    # tensors of one architecture under the config of another
    big = _model(config=AutoencoderConfig(**{**json.loads(tiny_ae_config(16).to_json()),
                                             "decoder_widths": [96, 24, 24]}))
    tensors = {k: v.contiguous() for k, v in big.state_dict().items()}
    save_file(tensors, str(tmp_path / "mixed.safetensors"),
              metadata={"format": "worldmodel.autoencoder", "version": "1",
                        "config": tiny_ae_config(16).to_json()})
    with pytest.raises(UserError, match=r"decoder\.stem\.conv\.weight has shape \(96, 8, 3, 3\), expected \(48, 8, 3, 3\)"):
        load_autoencoder(tmp_path / "mixed.safetensors")
    del tensors["latent_scale"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "mixed.safetensors"),
              metadata={"format": "worldmodel.autoencoder", "version": "1", "config": big.config.to_json()})
    with pytest.raises(UserError, match=r"missing tensors \['latent_scale'\]; unexpected tensors \['extra.weight'\]"):
        load_autoencoder(tmp_path / "mixed.safetensors")


def test_broken_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_autoencoder(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x12\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_autoencoder(junk)
    good = save_autoencoder(_model(), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated.safetensors"):
        load_autoencoder(truncated)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "worldmodel.checkpoint"})
    with pytest.raises(UserError, match="not an autoencoder checkpoint"):
        load_autoencoder(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "v9.safetensors"),
              metadata={"format": "worldmodel.autoencoder", "version": "9", "config": "{}"})
    with pytest.raises(UserError, match="version '9' is not supported"):
        load_autoencoder(tmp_path / "v9.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "badcfg.safetensors"),
              metadata={"format": "worldmodel.autoencoder", "version": "1", "config": '{"resolution": 60}'})
    with pytest.raises(UserError, match="invalid autoencoder config"):
        load_autoencoder(tmp_path / "badcfg.safetensors")


def test_learning_rate_schedule_warms_up_then_decays():
    optim = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, 100, 1.0, optim) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)  # bit-exact resume comparison; tiny model anyway
    data = tmp_path / "train"
    write_synthetic_dataset(data, clips=32, ticks=4, resolution=16, seed=0, shard_clips=16)
    write_synthetic_dataset(tmp_path / "val", clips=3, ticks=4, resolution=16, seed=1, split="heldout")
    cfg = tiny_ae_config(16)
    kwargs = dict(batch_size=16, lr=3e-3, val_dir=tmp_path / "val", log_every=5, ckpt_every=20,
                  config=cfg, optim=OptimConfig(warmup_steps=5), val_frames=12, stats_frames=64,
                  progress=None, bf16=False)

    # one run straight through
    full = train_autoencoder(data, tmp_path / "full", steps=60, **kwargs)
    records = _log(tmp_path / "full")
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:2]) / 2
    vals = [r["val_psnr"] for r in records if "val_psnr" in r]
    assert [r["step"] for r in records if "val_psnr" in r] == [20, 40, 60]
    assert vals[-1] > vals[0] + 1.0
    model = load_autoencoder(full, expected_config=cfg)
    assert int(read_checkpoint_metadata(full)["step"]) == 60
    assert torch.load(tmp_path / "full" / "autoencoder.train.pt", weights_only=False)["step"] == 60

    # normalised latents are about zero-mean / unit-variance per channel on training frames
    from worldmodel.data import ClipDataset, fixed_frames
    train_frames = fixed_frames(ClipDataset(data), 64, seed=4321)
    with torch.inference_mode():
        z = model.encode(train_frames)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    assert evaluate_psnr(model, train_frames) > 15.0

    # the same run stopped at its step-40 checkpoint (same schedule), then resumed to step 60
    part = tmp_path / "part"
    train_autoencoder(data, part, steps=60, **kwargs, stop_at=40)
    assert int(read_checkpoint_metadata(part / "autoencoder.safetensors")["step"]) == 40
    train_autoencoder(data, part, steps=60, **kwargs)
    resumed = load_autoencoder(part / "autoencoder.safetensors")
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    steps_logged = [r["step"] for r in _log(part) if "loss" in r]
    assert steps_logged == list(range(5, 61, 5))  # no step trained twice, none skipped
    assert [r["step"] for r in _log(part) if "val_psnr" in r] == [20, 40, 60]  # one validation each
    # asking again for a finished run changes nothing
    before = (part / "autoencoder.safetensors").read_bytes()
    train_autoencoder(data, part, steps=60, **kwargs)
    assert (part / "autoencoder.safetensors").read_bytes() == before and len(_log(part)) == len(_log(tmp_path / "full"))

    # resuming with another architecture is refused by name
    other = AutoencoderConfig(**{**json.loads(cfg.to_json()), "latent_channels": 4})
    with pytest.raises(UserError, match="latent_channels 8 != 4"):
        train_autoencoder(data, part, steps=70, **{**kwargs, "config": other})


def test_psnr_matches_the_definition():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, 0] += 0.3  # MSE 0.09 / 3 = 0.03
    torch.testing.assert_close(psnr(a, b, channel_dim=-3), torch.tensor([20.0, -10 * torch.log10(torch.tensor(0.03)).item()]))
    assert psnr(a, a, channel_dim=-3)[0] == pytest.approx(100.0)


def test_the_safetensors_writer_makes_the_same_bytes_for_the_same_content(tmp_path):
    """safetensors writes its metadata in hash-map order, a new one per save; the engine's one writer
    sorts the header, so a file's sha256 names its content (latent caches and action logs rely on
    it), and the file still reads back the same tensors and metadata."""
    from safetensors import safe_open

    from worldmodel.autoencoder import atomic_save_safetensors, file_sha256

    tensors = {"b.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.ones(4, dtype=torch.float16)}
    metadata = {"format": "x", "version": "1", "config": '{"k": "\\u00e9 \\"q\\""}', "extra": "é", "more": "z"}
    hashes = {file_sha256(atomic_save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata))
              for i in range(6)}
    assert len(hashes) == 1
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert f.metadata() == metadata
        assert sorted(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
