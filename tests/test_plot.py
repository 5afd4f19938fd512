"""Charts (matplotlib) are valid PNGs; training scalars go to log.jsonl (and TensorBoard when installed)
and `worldmodel plot-train` draws them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from tools.plot import line_chart, save_image_atomic
from conventions.errors import UserError
from worldmodel.scalars import LOG_FILE, TENSORBOARD_DIR, ScalarLog, read_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    """A complete PNG file: the signature, and Pillow decodes all of it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        if size is not None:
            assert img.size == size
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_line_chart_is_a_valid_png(tmp_path: Path) -> None:
    series = {"model": [20.0, 21.5, math.nan, 19.0], "hold the start frame": [18.0, 17.0, 16.5, 16.0]}
    fig = line_chart(series, "PSNR vs. ground truth", "tick", "PSNR dB", size=(640, 360))
    out = save_image_atomic(fig, tmp_path / "plots" / "psnr.png")
    assert_png(out, (640, 360))
    picture = save_image_atomic(Image.new("RGB", (8, 8)), tmp_path / "map.png")  # PIL images too
    assert_png(picture, (8, 8))


def _records() -> list[dict]:
    return ([{"step": s, "loss": 1.0 / s, "mse_high_noise": 2.0 / s, "lr": 1e-3, "it_s": 5.0, "grad_norm": 0.5,
              "elapsed_s": float(s)} for s in range(1, 7)]
            + [{"step": 3, "val_tf_psnr": 20.0, "val_copy_psnr": 18.0}, {"step": 6, "val": {"abs_rel": 0.1}}])


def test_scalar_log_writes_jsonl_and_resumes_where_the_checkpoint_was(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with ScalarLog(run, tensorboard=False) as log:
        for r in _records():
            log.write(r)
    assert read_records(run / LOG_FILE) == _records()
    ScalarLog(run, resume_step=3, tensorboard=False).close()  # a run resumed at step 3 trains 4.. again
    assert [r["step"] for r in read_records(run / LOG_FILE)] == [1, 2, 3, 3]
    ScalarLog(run, tensorboard=False).close()  # a fresh run starts an empty log
    assert not (run / LOG_FILE).exists()


def test_scalar_log_writes_tensorboard_events_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with ScalarLog(tmp_path) as log:
        assert log.tensorboard
        for r in _records():
            log.write(r)
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "it_s", "val_tf_psnr", "val/abs_rel"} <= tags
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 7))


def test_plot_train_draws_a_run(tmp_path: Path) -> None:
    from tools.plot_train import PANELS, curves
    from tools.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in _records()) + '{"step": 7, "lo')  # torn tail
    panels = {p.title: set(tags) for p, tags in curves(read_records(run / LOG_FILE)).items()}
    assert panels["loss terms"] == {"loss", "mse_high_noise"} and panels["learning rate"] == {"lr"}
    assert panels["validation PSNR"] == {"val_tf_psnr", "val_copy_psnr"} and panels["speed"] == {"it_s"}
    assert "elapsed_s" not in set().union(*panels.values()) and len(PANELS) >= len(panels) - 1
    assert main(["plot-train", str(run)]) == 0
    assert_png(run / "curves.png")
    assert main(["plot-train", str(run / LOG_FILE), "--out", str(tmp_path / "c.png")]) == 0
    assert_png(tmp_path / "c.png")
    with pytest.raises(UserError, match="no training log"):
        from tools.plot_train import log_path

        log_path(tmp_path / "nowhere")
