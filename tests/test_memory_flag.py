"""`--memory on|off` on play and replay: the session runs without memory, the HUD says so, the action log
records it and a replay follows the log unless told otherwise."""

from __future__ import annotations

import json
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import pytest  # noqa: E402

from game.action_log import read_action_log  # noqa: E402
from game.frame_source import make_frame_source  # noqa: E402
from game.hud import HudStatus, format_status_lines  # noqa: E402
from game.replay import load_replay  # noqa: E402
from conventions.camera import CameraPose  # noqa: E402
from conventions.errors import UserError  # noqa: E402

WINDOW = 128


def test_hud_shows_the_memory_setting_and_the_sampling_steps() -> None:
    status = HudStatus(fps=20.0, ms_per_frame=40.0, p99_ms=50.0, pose=CameraPose(), tick=3, source="model")
    assert "memory" not in " ".join(format_status_lines(status))  # the oracle has none
    assert "steps" not in " ".join(format_status_lines(status))  # nor denoising steps
    for memory, text in ((True, "memory on"), (False, "memory off")):
        status.memory = memory
        assert text in format_status_lines(status)[-1]
    status.sample_steps = 1
    assert format_status_lines(status)[-1].endswith("memory off  steps 1")


def test_play_memory_off_is_logged_and_replayed(tmp_path, monkeypatch) -> None:
    from tools.cli import main

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "off.jsonl"
    assert main(["play", "courtyard", "--memory", "off", "--max-ticks", "2", "--record", str(log),
                 "--window", str(WINDOW), "--tick-hz", "50"]) == 0
    assert read_action_log(log).header["memory"] is False
    replay = load_replay(log)
    assert replay.session.source.use_memory is False  # as recorded
    replay.close()
    replay = load_replay(log, memory=True)
    assert replay.session.source.use_memory is True  # --memory on overrides the log
    replay.close()
    assert main(["replay", str(log), "--memory", "on", "--out", str(tmp_path / "frames") + "/", "--quiet"]) == 0
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    for value, expect in ((None, True), ("yes", None)):  # logs from before the flag ran with memory
        if value is None:
            header.pop("memory")
        else:
            header["memory"] = value
        edited = tmp_path / f"edited-{value}.jsonl"
        edited.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
        if expect is None:
            with pytest.raises(UserError, match=r"line 1: \"memory\" must be true or false"):
                load_replay(edited)
        else:
            replay = load_replay(edited)
            assert replay.session.source.use_memory is expect
            replay.close()


def test_only_the_model_has_a_memory() -> None:
    with pytest.raises(UserError, match="only the model backend has a memory"):
        make_frame_source("oracle", memory=False)
