"""Action logs (docs/architecture.md §The conventions, in brief): writer/reader round trip, validation errors naming file and line, torn
last lines, and the pose-vs-integrated-actions consistency warning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from game.action_log import (FIRST_TICK, LOG_FORMAT, ActionLogWriter, image_sha256, make_header,
                             read_action_log)
from conventions.camera import PITCH_LIMIT, CameraPose
from conventions.errors import UserError

START = CameraPose(1.0, 1.6, -2.0, 0.3, 0.0)


def header(**overrides):
    h = make_header(scene="procedural:7", prompt="a test world", backend="oracle", seed=3, tick_hz=20.0,
                    resolution=16, start_pose=START, start_image=np.zeros((4, 4, 3), np.uint8))
    h.update(overrides)
    return h


def actions_and_poses(n: int, start: CameraPose = START):
    actions, poses, pose = [], [], start
    for i in range(n):
        a = [0.1 * math.sin(i), 0.05, 0.0, 0.03 * (i % 3 - 1), 0.02]
        pose = pose.step(a)
        actions.append(a)
        poses.append(pose.as_list())
    return actions, poses


def write_lines(path: Path, lines: list, trailing_newline: bool = True) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


def tick_lines(n: int, start: CameraPose = START) -> list[dict]:
    actions, poses = actions_and_poses(n, start)
    return [{"t": FIRST_TICK + i, "action": a, "pose": p} for i, (a, p) in enumerate(zip(actions, poses))]


def test_round_trip_is_exact_and_flushed_every_tick(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    actions, poses = actions_and_poses(12)
    with ActionLogWriter(path, header()) as writer:
        lines = path.read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["format"] == LOG_FORMAT  # header complete at once
        for i, (a, p) in enumerate(zip(actions, poses)):
            assert writer.write(a, p) == FIRST_TICK + i
            # flushed: another reader sees the line before the writer closes
            assert len(path.read_text().splitlines()) == i + 2
    log = read_action_log(path)
    assert log.warnings == []
    assert log.ticks == 12
    assert log.actions.dtype == torch.float64 and log.actions.shape == (12, 5)
    assert log.actions.tolist() == actions  # exact floats, not rounded
    assert log.poses.tolist() == poses
    assert log.start_pose == START
    assert log.header["resolution"] == [16, 16] and log.header["checkpoint_sha256"] is None


def test_header_with_no_ticks_reads_as_empty_log(tmp_path):
    path = tmp_path / "log.jsonl"
    ActionLogWriter(path, header()).close()
    log = read_action_log(path)
    assert log.ticks == 0 and log.poses.shape == (0, 5)


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        make_header(scene="x", prompt="", backend="dream", seed=0, tick_hz=20, resolution=16, start_pose=START)
    with ActionLogWriter(tmp_path / "a.jsonl", header()) as w:
        with pytest.raises(ValueError, match="non-finite"):
            w.write([0, 0, float("nan"), 0, 0], START)
        with pytest.raises(ValueError, match="5 numbers"):
            w.write([0, 0, 0, 0], START)
    assert read_action_log(tmp_path / "a.jsonl").ticks == 0  # nothing half-written


def test_image_sha256_depends_on_pixels_only():
    a = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert image_sha256(a) == image_sha256(a.copy())
    b = a.copy()
    b[0, 0, 0] += 1
    assert image_sha256(a) != image_sha256(b)


@pytest.mark.parametrize("lines, line_no, message", [
    ([header(), "{not json"], 2, "not valid JSON"),
    ([header(), '{"t": 1, "action": [0, 0, NaN, 0, 0], "pose": [0, 0, 0, 0, 0]}'], 2, "non-finite"),
    ([header(), '{"t": 1, "action": [0, 0, 1e999, 0, 0], "pose": [0, 0, 0, 0, 0]}'], 2, "non-finite"),
    ([header(), {"t": 1, "action": [0, 0, 0, 0], "pose": [0, 0, 0, 0, 0]}], 2, "5 numbers"),
    ([header(), {"t": 1, "action": [0, 0, 0, 0, 0], "pose": [0, 0, 0, "x", 0]}], 2, "numbers"),
    ([header(), {"t": 1, "action": [0, 0, 0, 0, 0]}], 2, 'lacks "pose"'),
    ([header(), {"t": 2, "action": [0] * 5, "pose": [0] * 5}], 2, "expected 1"),
    ([header(), [1, 2, 3]], 2, "tick object"),
    ([header(), "", {"t": 1, "action": [0] * 5, "pose": [0] * 5}], 2, "empty line"),
    ([header(format="something.else")], 1, "not an action log"),
    ([header(version=2)], 1, "newer"),
    ([header(version=0)], 1, "unsupported version"),
    ([{k: v for k, v in header().items() if k != "tick_hz"}], 1, "tick_hz"),
    ([header(resolution=[16])], 1, "resolution"),
    ([header(start_pose=[0, 0, 0, 0])], 1, "start_pose"),
    ([header(image_sha256="abc")], 1, "image_sha256"),
    ([header(seed=1.5)], 1, "seed"),
    (["[1, 2]"], 1, "JSON object"),
])
def test_malformed_logs_name_file_and_line(tmp_path, lines, line_no, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError) as err:
        read_action_log(path)
    text = str(err.value)
    assert text.startswith(f"{path}: line {line_no}: "), text
    assert message in text


def test_a_bad_middle_line_is_an_error_even_if_torn(tmp_path):
    good = tick_lines(3)
    torn = json.dumps(good[1])[:20]
    path = write_lines(tmp_path / "bad.jsonl", [header(), good[0], torn, good[2]])
    with pytest.raises(UserError, match=r"line 3: not valid JSON"):
        read_action_log(path)


def test_missing_empty_and_folder_paths(tmp_path):
    with pytest.raises(UserError, match="no such action log"):
        read_action_log(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty file"):
        read_action_log(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="is a folder"):
        read_action_log(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps(header()).encode() + b"\n\xff\xfe\x00garbage\n")
    with pytest.raises(UserError, match="line 2: not UTF-8"):
        read_action_log(path)


def test_torn_header_is_an_error(tmp_path):
    path = tmp_path / "torn.jsonl"
    path.write_text(json.dumps(header())[:40])
    with pytest.raises(UserError, match="line 1: incomplete header"):
        read_action_log(path)


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    ticks = tick_lines(5)
    torn = json.dumps(ticks[4])[:-7]  # killed mid-write: no closing bracket, no newline
    path = write_lines(tmp_path / "killed.jsonl", [header(), *ticks[:4], torn], trailing_newline=False)
    log = read_action_log(path)
    assert log.ticks == 4
    assert log.poses.tolist() == [t["pose"] for t in ticks[:4]]
    assert len(log.warnings) == 1 and "line 6" in log.warnings[0] and "incomplete last line" in log.warnings[0]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    ticks = tick_lines(3)
    path = write_lines(tmp_path / "log.jsonl", [header(), *ticks], trailing_newline=False)
    log = read_action_log(path)
    assert log.ticks == 3 and log.warnings == []


def test_extra_keys_are_ignored(tmp_path):
    ticks = tick_lines(2)
    ticks[0]["model_ms"] = 12.5
    path = write_lines(tmp_path / "log.jsonl", [header(future_field={"a": 1}), *ticks])
    log = read_action_log(path)
    assert log.ticks == 2 and log.header["future_field"] == {"a": 1}


def test_pose_mismatch_warns_once_and_keeps_logged_poses(tmp_path):
    ticks = tick_lines(6)
    for t in ticks[3:]:
        t["pose"][0] += 0.5  # e.g. an oracle collision pushed the camera back
    path = write_lines(tmp_path / "log.jsonl", [header(), *ticks])
    log = read_action_log(path)
    assert len(log.warnings) == 1
    assert "logged poses" in log.warnings[0] and "t=4" in log.warnings[0] and "line 5" in log.warnings[0]
    # per-step check: only the tick where the jump happened disagrees
    assert "on 1 of 6 ticks" in log.warnings[0]
    assert log.poses[3, 0].item() == ticks[3]["pose"][0]


def test_pitch_clamp_and_yaw_wrap_are_not_mismatches(tmp_path):
    start = CameraPose(0.0, 1.6, 0.0, 3.0, 1.4)
    lines, pose = [header(start_pose=start.as_list())], start
    for i in range(10):
        action = [0.1, 0.0, 0.0, 0.2, 0.1]  # pitch runs into the +85 degree clamp
        pose = pose.step(action)
        logged = pose.as_list()
        logged[3] = math.remainder(logged[3], 2 * math.pi)  # a writer that wraps yaw to [-pi, pi]
        lines.append({"t": FIRST_TICK + i, "action": action, "pose": logged})
    assert pose.pitch == pytest.approx(PITCH_LIMIT)
    log = read_action_log(write_lines(tmp_path / "log.jsonl", lines))
    assert log.warnings == []


def test_rounded_hand_written_poses_are_consistent(tmp_path):
    ticks = tick_lines(20)
    for t in ticks:
        t["pose"] = [round(v, 6) for v in t["pose"]]
        t["action"] = [round(v, 7) for v in t["action"]]
    log = read_action_log(write_lines(tmp_path / "log.jsonl", [header(), *ticks]))
    assert log.warnings == []
