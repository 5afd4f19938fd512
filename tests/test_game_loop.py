"""Drive the REAL pygame loop headless (dummy video driver) with posted events and check the
actions, poses, log lines, recording, pause, screenshots, HUD/help and the no-display exit."""

from __future__ import annotations

import math
import os

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"

import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402

from game.action_log import read_action_log  # noqa: E402
from game.bindings import (MOUSE_SENSITIVITY_RAD_PER_PX, MOVE_SPEED_MPS, TURN_SPEED_RAD_PER_S, AxisBinding,  # noqa: E402
                           Bindings, Command, InputState, action_from_input)
from game.frame_source import FrameSource, OracleFrameSource, make_frame_source  # noqa: E402
from game.hud import Hud, HudStatus, format_status_lines  # noqa: E402
from game.loop import GameConfig, run_game  # noqa: E402
from game.session import FrameTimer, Pacer, PlaySession  # noqa: E402
from conventions.camera import CameraPose  # noqa: E402
from conventions.errors import UserError  # noqa: E402

RES = 16
TICK_HZ = 20.0
WINDOW = 128
STEP = MOVE_SPEED_MPS / TICK_HZ
TURN = TURN_SPEED_RAD_PER_S / TICK_HZ


@pytest.fixture(scope="module")
def scene():
    from scenes.scene import load_scene

    return load_scene("courtyard")  # bundled: loads in milliseconds and has a procedural world


class RecordingSource:
    """Test double around the oracle that remembers every frame it returned."""

    def __init__(self, inner: FrameSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.resolution = inner.resolution
        for capability in ("checkpoint_sha256", "precision", "hint", "use_memory", "memory", "saves_worlds",
                           "start_radius", "sampling", "memory_key_scale", "sample_steps"):
            setattr(self, capability, getattr(inner, capability))  # the FrameSource capabilities, as the inner's
        self.frames: list[np.ndarray] = []
        self.poses: list[CameraPose] = []

    def reset(self, scene, start_pose, prompt, seed):
        self.frames = [self.inner.reset(scene, start_pose, prompt, seed)]
        self.poses = [start_pose]
        return self.frames[-1]

    def step(self, action, pose):
        self.frames.append(self.inner.step(action, pose))
        self.poses.append(pose)
        return self.frames[-1]


def key(type_, k):
    return pygame.event.Event(type_, key=k, mod=0, unicode="", scancode=0)


def down(k):
    return key(pygame.KEYDOWN, k)


def up(k):
    return key(pygame.KEYUP, k)


def motion(dx, dy):
    return pygame.event.Event(pygame.MOUSEMOTION, rel=(dx, dy), pos=(0, 0), buttons=(0, 0, 0))


def scripted(script: dict[int, list]):
    """Event source posting script[i] on the i-th loop iteration into pygame's real queue."""
    calls = {"n": 0}

    def source(_tick):
        for event in script.get(calls["n"], []):
            pygame.event.post(event)
        calls["n"] += 1
        return pygame.event.get()

    source.calls = calls
    return source


def make_session(scene, tmp_path, source=None, **kw) -> PlaySession:
    source = source or OracleFrameSource(RES)
    return PlaySession(source, scene, scene_spec="courtyard", tick_hz=TICK_HZ,
                       recordings_dir=tmp_path / "recordings", **kw)


def play(scene, tmp_path, script, max_ticks, record=None, session=None, **kw):
    session = session or make_session(scene, tmp_path)
    config = GameConfig(session=session, event_source=scripted(script), max_ticks=max_ticks, realtime=False,
                        window=WINDOW, record=None if record is None else str(record),
                        screenshots_dir=tmp_path / "shots", **kw)
    return run_game(config), session


# --- bindings and input ---------------------------------------------------------------------------
def test_held_keys_map_to_actions_per_tick():
    state = InputState()
    assert action_from_input(state, TICK_HZ) == [0.0] * 5
    state.handle_event(down(pygame.K_w))
    assert action_from_input(state, TICK_HZ) == pytest.approx([STEP, 0, 0, 0, 0])
    assert action_from_input(state, TICK_HZ / 2) == pytest.approx([2 * STEP, 0, 0, 0, 0])  # per tick
    state.handle_event(down(pygame.K_d))
    fwd, right = action_from_input(state, TICK_HZ)[:2]
    assert math.hypot(fwd, right) == pytest.approx(STEP) and fwd == pytest.approx(right)  # diagonal not faster
    state.handle_event(down(pygame.K_s))  # W and S cancel
    assert action_from_input(state, TICK_HZ)[:2] == pytest.approx([0, STEP])
    for k in (pygame.K_w, pygame.K_s, pygame.K_d):
        state.handle_event(up(k))
    state.handle_event(down(pygame.K_LEFT))
    state.handle_event(down(pygame.K_DOWN))
    assert action_from_input(state, TICK_HZ) == pytest.approx([0, 0, 0, TURN, -TURN])
    assert TURN == pytest.approx(math.radians(90) / TICK_HZ)


def test_fly_and_walk_modes():
    state = InputState()
    state.handle_event(down(pygame.K_SPACE))
    assert action_from_input(state, TICK_HZ)[2] == pytest.approx(STEP)
    assert state.handle_event(down(pygame.K_f)) == [Command.TOGGLE_FLY]
    state.fly = False
    assert action_from_input(state, TICK_HZ)[2] == 0.0  # walking keeps the height


def test_mouse_look_only_while_captured_and_used_once():
    state = InputState()
    state.handle_event(motion(30, 0))
    assert action_from_input(state, TICK_HZ)[3:] == [0.0, 0.0]
    assert state.handle_event(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(0, 0))) == [
        Command.TOGGLE_CAPTURE]
    state.mouse_captured = True
    state.handle_event(motion(10, -4))
    state.handle_event(motion(2, 0))
    yaw, pitch = action_from_input(state, TICK_HZ)[3:]
    assert yaw == pytest.approx(-12 * MOUSE_SENSITIVITY_RAD_PER_PX)  # mouse right turns right
    assert pitch == pytest.approx(4 * MOUSE_SENSITIVITY_RAD_PER_PX)  # mouse up looks up
    state.end_tick()
    assert action_from_input(state, TICK_HZ)[3:] == [0.0, 0.0]


def test_focus_loss_releases_held_keys():
    state = InputState()
    state.handle_event(down(pygame.K_w))
    state.handle_event(pygame.event.Event(pygame.WINDOWFOCUSLOST))
    assert action_from_input(state, TICK_HZ) == [0.0] * 5


def test_rebinding_changes_input_and_help():
    b = Bindings()
    b.rebind(AxisBinding("forward", 1.0), "i")
    state = InputState(bindings=b)
    state.handle_event(down(pygame.K_w))
    assert action_from_input(state, TICK_HZ)[0] == 0.0
    state.handle_event(down(pygame.K_i))
    assert action_from_input(state, TICK_HZ)[0] == pytest.approx(STEP)
    rows = dict(b.help_rows())
    assert rows["i"] == "move forward" and "w" not in rows
    with pytest.raises(UserError, match="already bound"):
        b.rebind(Command.PAUSE, "escape")
    b.rebind(Command.PAUSE, "k")
    assert state.handle_event(down(pygame.K_k)) == [Command.PAUSE]


def test_default_table_covers_design_keys():
    rows = Bindings().help_rows()
    keys = {k for k, _ in rows}
    assert {"w", "a", "s", "d", "space", "c", "left", "right", "up", "down", "escape", "tab", "r", "f12", "p",
            "f1", "h", "m"} <= keys
    bad = Bindings.from_names
    with pytest.raises(UserError, match="unknown key"):
        bad({"notakey": ("forward", 1)}, {})


# --- the real loop ----------------------------------------------------------------------------------
def test_loop_turns_events_into_logged_actions_and_poses(scene, tmp_path):
    log_path = tmp_path / "play.jsonl"
    script = {0: [down(pygame.K_w)], 3: [up(pygame.K_w), down(pygame.K_LEFT)], 5: [up(pygame.K_LEFT)],
              6: [down(pygame.K_TAB), motion(20, 10)]}
    result, session = play(scene, tmp_path, script, max_ticks=8, record=log_path)
    assert result.ticks == 8 and result.recordings == [log_path]
    log = read_action_log(log_path)
    assert log.warnings == []
    a = log.actions.tolist()
    assert a[0] == a[1] == a[2] == pytest.approx([STEP, 0, 0, 0, 0])
    assert a[3] == a[4] == pytest.approx([0, 0, 0, TURN, 0])
    assert a[5] == [0.0] * 5
    assert a[6] == pytest.approx([0, 0, 0, -20 * MOUSE_SENSITIVITY_RAD_PER_PX, -10 * MOUSE_SENSITIVITY_RAD_PER_PX])
    assert a[7] == [0.0] * 5  # mouse motion is used once
    pose = scene.start_pose
    for i in range(8):
        pose = pose.step(a[i])
        assert log.poses[i].tolist() == pytest.approx(pose.as_list(), abs=1e-12)
    assert result.final_pose == pose
    # walked 3 ticks forward along yaw: (-sin yaw, 0, -cos yaw)
    yaw0 = scene.start_pose.yaw
    assert log.poses[2, 0].item() == pytest.approx(scene.start_pose.x - 3 * STEP * math.sin(yaw0))
    assert log.header["start_pose"] == scene.start_pose.as_list() and log.header["backend"] == "oracle"


def test_record_key_toggles_recording_mid_session(scene, tmp_path):
    script = {2: [down(pygame.K_r)], 4: [down(pygame.K_d)], 6: [down(pygame.K_r)]}
    result, session = play(scene, tmp_path, script, max_ticks=9)
    assert len(result.recordings) == 1
    path = result.recordings[0]
    assert path.parent == tmp_path / "recordings" and path.suffix == ".jsonl"
    log = read_action_log(path)
    assert log.header["started_at_tick"] == 2
    assert log.ticks == 4  # ticks 3..6 (R pressed before the 3rd and the 7th tick)
    assert log.actions[:2, 1].tolist() == [0.0, 0.0] and log.actions[2:, 1].tolist() == pytest.approx([STEP] * 2)
    assert not session.recording


def test_pause_stops_ticks_and_escape_quits(scene, tmp_path):
    source = scripted({1: [down(pygame.K_p)], 4: [down(pygame.K_p)], 6: [down(pygame.K_ESCAPE)]})
    session = make_session(scene, tmp_path)
    result = run_game(GameConfig(session=session, event_source=source, realtime=False, window=WINDOW,
                                 max_ticks=100))
    # iterations 1-3 are paused (no tick); Esc on iteration 6 quits before its tick
    assert source.calls["n"] == 7
    assert result.ticks == 3


def test_window_close_quits(scene, tmp_path):
    result, _ = play(scene, tmp_path, {2: [pygame.event.Event(pygame.QUIT)]}, max_ticks=50)
    assert result.ticks == 2


def test_screenshot_hud_help_and_memory_map_hook(scene, tmp_path):
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255

    def provider(session, size):
        return np.broadcast_to(red, (size, size, 3)).copy()

    script = {1: [down(pygame.K_F1)], 2: [down(pygame.K_F1), down(pygame.K_m)], 3: [down(pygame.K_F12)]}
    result, _ = play(scene, tmp_path, script, max_ticks=4, map_provider=provider)
    assert len(result.screenshots) == 1
    shot = pygame.image.load(str(result.screenshots[0]))
    assert shot.get_size() == (WINDOW, WINDOW)
    assert tuple(shot.get_at((WINDOW - 2, 2)))[:3] == (255, 0, 0)  # the map drawn top-right
    assert not list((tmp_path / "shots").glob(".*"))  # no temp files left


def test_window_shows_the_frame_upscaled(scene, tmp_path):
    source = RecordingSource(OracleFrameSource(RES))
    session = make_session(scene, tmp_path, source=source)
    result, _ = play(scene, tmp_path, {0: [down(pygame.K_h)], 1: [down(pygame.K_F12)]}, max_ticks=2,
                     session=session)
    shot = pygame.surfarray.array3d(pygame.image.load(str(result.screenshots[0]))).swapaxes(0, 1)  # [H, W, 3]
    scale = WINDOW // RES
    expected = source.frames[1].repeat(scale, 0).repeat(scale, 1)  # nearest upscaling, HUD hidden
    assert np.array_equal(shot[WINDOW // 2:], expected[WINDOW // 2:])


def test_image_option_shows_the_picture_first(scene, tmp_path):
    from PIL import Image

    from game.loop import build_session

    picture = np.zeros((40, 60, 3), np.uint8)
    picture[:, :30] = (200, 50, 10)
    path = tmp_path / "start.png"
    Image.fromarray(picture).save(path)
    session = build_session(GameConfig(scene="courtyard", backend="oracle", image=str(path), prompt="my picture", resolution=RES,
                                       recordings_dir=tmp_path / "rec"))
    first = session.reset()
    from scenes.scene import load_image

    assert np.array_equal(first, load_image(path, RES))
    assert session.prompt == "my picture"
    second = session.step([0.0] * 5)
    assert not np.array_equal(first, second)  # then the procedural world
    header = session.header()
    assert header["image"] == str(path) and header["prompt"] == "my picture"


# --- HUD, pacing, statistics --------------------------------------------------------------------------
def test_hud_text_and_drawing():
    status = HudStatus(fps=19.5, ms_per_frame=12.25, p99_ms=20.0, pose=CameraPose(1, 1.6, -2, math.pi / 2, -0.1),
                       tick=42, source="oracle", recording=True, paused=True)
    lines = format_status_lines(status)
    assert "19.5 fps" in lines[0] and "12.2 ms/frame" in lines[0]
    assert "+90.0" in lines[1] and "-5.7" in lines[1] and "+1.00" in lines[1]
    assert "tick 42" in lines[2] and "oracle" in lines[2]
    pygame.font.init()
    surface = pygame.Surface((256, 256))
    hud = Hud()
    hud.draw(surface, status, now=0.1)
    hud.draw_help(surface, Bindings())
    assert pygame.surfarray.array3d(surface).any()


def test_pacer_holds_the_tick_rate_without_bursts():
    now = {"t": 0.0}
    slept = []

    def clock():
        return now["t"]

    def sleep(s):
        slept.append(s)
        now["t"] += s

    pacer = Pacer(10.0, clock, sleep)
    for _ in range(3):
        now["t"] += 0.04  # 40 ms of work per 100 ms tick
        pacer.wait()
    assert slept == pytest.approx([0.06, 0.06, 0.06])
    now["t"] += 0.5  # a very slow tick: no catch-up burst afterwards
    pacer.wait()
    now["t"] += 0.04
    pacer.wait()
    assert slept[-1] == pytest.approx(0.06)


def test_frame_timer_statistics():
    now = {"t": 0.0}
    timer = FrameTimer(lambda: now["t"])
    for ms in [10.0] * 99 + [50.0]:
        now["t"] += 0.05
        timer.add(ms)
    s = timer.stats()
    assert s.p50_ms == 10.0 and s.p99_ms == 10.0 and s.last_ms == 50.0
    assert s.fps == pytest.approx(20.0)
    assert s.mean_ms == pytest.approx(10.4)


# --- CLI -----------------------------------------------------------------------------------------------
def test_play_without_display_says_so_in_one_line(monkeypatch, capsys):
    import sys

    from tools.cli import main

    if not sys.platform.startswith("linux"):
        pytest.skip("the no-display rule is for Linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(name, raising=False)
    assert main(["play"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no display" in err[0] and "worldmodel replay" in err[0] and "--out" in err[0]


def test_play_cli_runs_and_records(tmp_path, monkeypatch):
    from tools.cli import main

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "cli.jsonl"
    assert main(["play", "courtyard", "--max-ticks", "3", "--record", str(log), "--resolution", str(RES),
                 "--window", str(WINDOW), "--tick-hz", "50"]) == 0
    parsed = read_action_log(log)
    # The default backend is the shipped model, which generates at its checkpoint's resolution.
    assert parsed.ticks == 3 and parsed.header["tick_hz"] == 50.0 and parsed.header["backend"] == "model"
    assert parsed.header["resolution"] == [64, 64] and parsed.header["checkpoint_sha256"]
    oracle_log = tmp_path / "oracle.jsonl"
    assert main(["play", "courtyard", "--backend", "oracle", "--max-ticks", "2", "--record", str(oracle_log),
                 "--resolution", str(RES), "--window", str(WINDOW)]) == 0
    assert read_action_log(oracle_log).header["resolution"] == [RES, RES]


def test_unknown_scene_and_model_errors_are_user_errors(tmp_path):
    from tools.cli import main

    assert main(["play", "no-such-scene", "--max-ticks", "1"]) == 2
    with pytest.raises(UserError):
        make_frame_source("model", checkpoint=str(tmp_path / "missing.safetensors"))
