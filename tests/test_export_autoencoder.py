"""`worldmodel export-autoencoder`: a world-model checkpoint's bundled autoencoder as its own file."""

from __future__ import annotations

import pytest
import torch

from wm_helpers import randomized_model, tiny_autoencoder
from conventions.errors import UserError
from tools.cli import main
from worldmodel.autoencoder import load_autoencoder
from worldmodel.checkpoint import save_checkpoint
from worldmodel.config import tiny_config


def test_export_writes_the_bundled_autoencoder_and_never_its_input(tmp_path, capsys) -> None:
    ae = tiny_autoencoder()
    ckpt = save_checkpoint(tmp_path / "wm.safetensors", randomized_model(tiny_config()), ae)
    out = tmp_path / "ae.safetensors"
    assert main(["export-autoencoder", str(ckpt), "--out", str(out)]) == 0
    assert "without a depth head" in capsys.readouterr().out
    exported = load_autoencoder(out)
    assert exported.config == ae.config
    for name, value in ae.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
    # the world-model file is refused where an autoencoder is expected, with the way out named
    with pytest.raises(UserError, match="worldmodel export-autoencoder"):
        load_autoencoder(ckpt)
    before = ckpt.read_bytes()
    assert main(["export-autoencoder", str(ckpt), "--out", str(ckpt)]) != 0
    assert ckpt.read_bytes() == before
