"""Hostile but realistic input: every number bounded, every failed write one clear error that names the
path, no output replacing an input or a file the engine does not own, logs streamed, damaged
checkpoints refused, replays starting where the log starts, and a fuzz of malformed logs and scenes."""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from game.action_log import ActionLogReader, ActionLogWriter, make_header, read_action_log  # noqa: E402
from game.frame_source import OracleFrameSource  # noqa: E402
from game.replay import export_replay, load_replay  # noqa: E402
from game.session import PlaySession  # noqa: E402
from scenes.scene import SCENES_DIR, load_scene, load_scene_folder  # noqa: E402
from scenes.world import generate_world  # noqa: E402
from conventions.atomic import stale_temps  # noqa: E402
from worldmodel.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint  # noqa: E402
from tools.cli import main  # noqa: E402
from conventions.errors import UserError  # noqa: E402
from worldmodel.world_state import check_world_target  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORLD_SEED = 5
RES = 16
PSNR_AGREEMENT_DB = 30.0
STREAM_TICKS = 2_000_000
STREAM_PEAK_BYTES = 50 * 2 ** 20
FIRST_FRAME_S = 1.0
FSIZE_LIMIT = 48 * 1024
"""RLIMIT_FSIZE of the "full disk" runs: far less than a 600-frame export needs."""


def write_log(path: Path, ticks: int = 6, start=None, scene: str = f"procedural:{WORLD_SEED}",
              backend: str = "oracle", resolution: int = RES, **header_over) -> Path:
    start = start or generate_world(WORLD_SEED).spawn_pose()
    header = {"format": "worldmodel.actions", "version": 1, "scene": scene, "prompt": "p", "image_sha256": None,
              "checkpoint_sha256": None, "backend": backend, "seed": 1, "tick_hz": 10.0,
              "resolution": [resolution, resolution], "start_pose": start.as_list()}
    header.update(header_over)
    lines, pose = [json.dumps(header)], start
    for i in range(ticks):
        action = [0.2, 0.05 * (i % 2), 0.0, 0.1, -0.01]
        pose = pose.step(action)
        lines.append(json.dumps({"t": 1 + i, "action": action, "pose": pose.as_list()}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """main(argv) -> (exit status, non-empty stderr lines); argparse's exit is an exit status too."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# --- numbers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv_tail, flag", [
    (["replay", "LOG", "--out", "x.gif", "--size", "100000"], "--size"),
    (["replay", "LOG", "--out", "x.gif", "--size", "-3"], "--size"),
    (["replay", "LOG", "--out", "x.gif", "--fps", "inf"], "--fps"),
    (["replay", "LOG", "--out", "x.gif", "--fps", "0.001"], "--fps"),
    (["replay", "LOG", "--out", "x.gif", "--threads", "100000"], "--threads"),
    (["play", "--backend", "oracle", "--resolution", "100000"], "--resolution"),
    (["play", "--backend", "oracle", "--window", "100000"], "--window"),
    (["play", "--backend", "oracle", "--tick-hz", "1e-300"], "--tick-hz"),
    (["play", "--backend", "oracle", "--max-ticks", "9" * 400], "--max-ticks"),
    (["play", "--backend", "oracle", "--seed", "9" * 40], "--seed"),
    (["dataset", "--worlds", "0", "--out", "d"], "--worlds"),
])
def test_flags_out_of_range_stop_at_parsing_naming_the_flag(tmp_path, capsys, argv_tail, flag):
    log = write_log(tmp_path / "ok.jsonl")
    argv = [str(log) if a == "LOG" else (str(tmp_path / a) if a in ("x.gif", "d") else a) for a in argv_tail]
    rc, err = run_cli(argv, capsys)
    assert rc == 2
    assert any(f"argument {flag}:" in line and ("out of range" in line or "finite" in line) for line in err), err
    assert not any("Traceback" in line for line in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.jsonl"]


@pytest.mark.parametrize("header_over, tick_edit, words", [
    ({"seed": int("9" * 400)}, None, '"seed"'),
    ({"tick_hz": 1e-300}, None, '"tick_hz"'),
    ({"resolution": 100000}, None, '"resolution"'),
    ({"start_pose": [1e39, 1.0, 0.0, 0.0, 0.0]}, None, '"start_pose"[0]'),
    ({}, ("action", [1e30, 0.0, 0.0, 0.0, 0.0]), '"action"[0]'),
    ({}, ("pose", [0.0, 0.0, 0.0, 0.0, 3.0]), '"pose"[4]'),
])
def test_numbers_in_a_log_are_bounded(tmp_path, capsys, header_over, tick_edit, words):
    log = write_log(tmp_path / "bad.jsonl", **header_over)
    if tick_edit is not None:
        lines = log.read_text().splitlines()
        tick = json.loads(lines[3])
        tick[tick_edit[0]] = tick_edit[1]
        lines[3] = json.dumps(tick)
        log.write_text("\n".join(lines) + "\n")
    rc, err = run_cli(["replay", str(log), "--out", str(tmp_path / "x.gif")], capsys)
    assert rc == 2 and len(err) == 1, err
    assert str(log) in err[0] and words in err[0] and "out of range" in err[0]
    assert not (tmp_path / "x.gif").exists()


def test_numbers_in_a_scene_are_bounded_and_unknown_keys_warn(tmp_path):
    folder = tmp_path / "scene"
    shutil.copytree(SCENES_DIR / "courtyard", folder)
    toml = (folder / "scene.toml").read_text()
    (folder / "scene.toml").write_text(toml + "fov = 30\n")
    scene = load_scene_folder(folder)
    assert len(scene.warnings) == 1 and "'fov'" in scene.warnings[0] and "did you mean 'fov_deg'" in scene.warnings[0]
    lines = [line for line in toml.splitlines() if not line.startswith("start_pose")]
    (folder / "scene.toml").write_text("\n".join(lines + ["start_pose = [1e39, 1.6, 0.0, 0.0, 0.0]"]) + "\n")
    with pytest.raises(UserError, match=r"scene.toml: field 'start_pose'\[0\] 1e\+39 is out of range"):
        load_scene_folder(folder)


# --- read-only and full output places --------------------------------------------------------------
@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A folder where creating anything fails with EROFS (as a read-only mount would; root ignores
    permission bits, so the failure is injected where every writer creates its files)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkstemp, real_mkdtemp, real_mkdir = tempfile.mkstemp, tempfile.mkdtemp, Path.mkdir

    def refuse(where) -> None:
        if where is not None and str(Path(where).resolve()).startswith(str(ro.resolve())):
            raise OSError(errno.EROFS, "Read-only file system", str(where))

    def mkstemp(*args, **kwargs):
        refuse(kwargs.get("dir"))
        return real_mkstemp(*args, **kwargs)

    def mkdtemp(*args, **kwargs):
        refuse(kwargs.get("dir"))
        return real_mkdtemp(*args, **kwargs)

    def mkdir(self, *args, **kwargs):
        refuse(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    return ro


@pytest.mark.parametrize("kind", ["x.gif", "x.mp4", "frames/", "avg.safetensors", "e.json", "r.jsonl", "world"])
def test_read_only_output_is_one_error_naming_the_path(tmp_path, capsys, read_only_dir, kind):
    log = write_log(tmp_path / "ok.jsonl")
    out = str(read_only_dir / kind)
    argv = {
        "avg.safetensors": ["average", str(DEFAULT_CHECKPOINT), str(DEFAULT_CHECKPOINT), "--out", out],
        "e.json": ["eval", "--log", str(log), "--json", out],
        "r.jsonl": ["play", f"procedural:{WORLD_SEED}", "--backend", "oracle", "--resolution", str(RES),
                    "--record", out, "--max-ticks", "1"],
        "world": ["play", f"procedural:{WORLD_SEED}", "--save-world", out, "--max-ticks", "1"],
    }.get(kind, ["replay", str(log), "--out", out, "--quiet"])
    rc, err = run_cli(argv, capsys)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {out.rstrip('/')}") and "read-only" in err[0]
    assert list(read_only_dir.iterdir()) == []


def _run_limited(argv: list[str], cwd: Path, fsize: int = FSIZE_LIMIT) -> subprocess.CompletedProcess:
    """The command line in a child whose files may not grow past `fsize` bytes (a full disk, as a
    writer sees it: writes fail with EFBIG; ffmpeg, its child, inherits the limit)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=cwd, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["good.mp4", "good.gif"])
def test_full_disk_keeps_the_earlier_good_file_and_says_so(tmp_path, name):
    short, long = write_log(tmp_path / "short.jsonl", ticks=2), write_log(tmp_path / "long.jsonl", ticks=600)
    target = tmp_path / name
    export_replay(short, str(target) + ("/" if name == "frames" else ""), progress=False)
    before = {p.name: p.read_bytes() for p in ([target] if target.is_file() else sorted(target.iterdir()))}
    result = _run_limited(["replay", str(long), "--out", str(target) + ("/" if name == "frames" else ""),
                           "--size", "256", "--quiet"], tmp_path)
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith(f"error: {target}") and "Traceback" not in result.stderr
    after = {p.name: p.read_bytes() for p in ([target] if target.is_file() else sorted(target.iterdir()))}
    assert after == before  # the good file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["short.jsonl", "long.jsonl", name])  # no temp left


def test_full_disk_in_a_png_export_keeps_the_earlier_frames(tmp_path, capsys, monkeypatch):
    """Each PNG is small, so a file-size limit does not stop it: the disk fills after 50 frames."""
    short, long = write_log(tmp_path / "short.jsonl", ticks=2), write_log(tmp_path / "long.jsonl", ticks=200)
    target = tmp_path / "frames"
    export_replay(short, f"{target}/", progress=False)
    before = {p.name: p.read_bytes() for p in sorted(target.iterdir())}
    real_save, written = Image.Image.save, [0]

    def save(self, fp, *args, **kwargs):
        written[0] += 1
        if written[0] > 50:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    rc, err = run_cli(["replay", str(long), "--out", f"{target}/", "--quiet"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {target}") and "disk full" in err[0]
    assert {p.name: p.read_bytes() for p in sorted(target.iterdir())} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "long.jsonl", "short.jsonl"]


def test_a_full_disk_stops_the_recording_not_the_game(tmp_path):
    source = OracleFrameSource(resolution=RES)
    session = PlaySession(source, load_scene(f"procedural:{WORLD_SEED}"), scene_spec=f"procedural:{WORLD_SEED}")
    session.reset()
    path = session.start_recording(tmp_path / "r.jsonl")
    fh = session.writer._fh
    real_write, budget = fh.write, [3]

    def write(text: str) -> int:
        if budget[0] == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        budget[0] -= 1
        return real_write(text)

    fh.write = write
    for _ in range(6):
        session.step([0.1, 0.0, 0.0, 0.05, 0.0])
    assert session.tick == 6 and not session.recording
    assert "recording stopped after 3 ticks" in session.recording_error and "disk full" in session.recording_error
    assert read_action_log(path).ticks == 3  # everything before the failure is kept


# --- overwrite protection ------------------------------------------------------------------------
def test_outputs_never_replace_inputs_or_foreign_files(tmp_path, capsys):
    log = write_log(tmp_path / "run.jsonl")
    text = log.read_text()
    rc, err = run_cli(["eval", "--log", str(log), "--json", str(log)], capsys)
    assert rc == 2 and "--json is also an input" in err[0] and log.read_text() == text
    ckpt = tmp_path / "a.safetensors"
    shutil.copy(DEFAULT_CHECKPOINT, ckpt)
    rc, err = run_cli(["average", str(ckpt), str(DEFAULT_CHECKPOINT), "--out", str(ckpt)], capsys)
    assert rc == 2 and "--out is also an input" in err[0]
    assert ckpt.read_bytes() == Path(DEFAULT_CHECKPOINT).read_bytes()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "memory.json").write_text('{"my": "notes"}')
    with pytest.raises(UserError, match="holds files this program did not write"):
        check_world_target(mine)
    assert (mine / "memory.json").read_text() == '{"my": "notes"}'
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    header = make_header(scene=f"procedural:{WORLD_SEED}", prompt="p", backend="oracle", seed=0, tick_hz=10.0,
                         resolution=RES, start_pose=generate_world(WORLD_SEED).spawn_pose())
    with pytest.raises(UserError, match="exists and is not an action log"):
        ActionLogWriter(notes, header)
    assert notes.read_text() == "keep me"
    ActionLogWriter(log, header).close()  # an earlier recording may be replaced


def test_save_world_target_is_checked_before_the_session(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    t0 = time.monotonic()
    rc, err = run_cli(["play", f"procedural:{WORLD_SEED}", "--save-world", str(afile), "--max-ticks", "1"], capsys)
    assert rc == 2 and len(err) == 1 and "exists and is not a folder" in err[0]
    rc, err = run_cli(["play", "--load-world", str(afile), "--max-ticks", "1"], capsys)
    assert rc == 2 and len(err) == 1 and "is a file; a saved world is a folder" in err[0]
    assert time.monotonic() - t0 < 30  # refused up front: no model was loaded and played first


# --- temp files ----------------------------------------------------------------------------------
def test_stale_temps_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    log = write_log(tmp_path / "ok.jsonl")
    target = tmp_path / "x.gif"
    stale = tmp_path / ".x.gif.abcd1234.gif"
    stale.write_bytes(b"half a gif")
    other = tmp_path / ".notes.abcd1234.gif"
    other.write_bytes(b"not ours")
    export_replay(log, str(target), progress=False)
    assert not stale.exists() and other.exists() and stale_temps(target, ".gif") == []


def test_sigterm_during_export_leaves_no_temp_file(tmp_path):
    log = write_log(tmp_path / "long.jsonl", ticks=3000)  # far longer than the wait below: still running
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "replay", str(log), "--out",
                             str(tmp_path / "t.mp4"), "--size", "512"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    def video_started() -> bool:  # ffmpeg has written part of the video into the temp file
        return any(p.exists() and p.stat().st_size > 0 for p in tmp_path.glob(".t.mp4.*"))

    while time.monotonic() < deadline and not video_started():
        time.sleep(0.05)
    assert list(tmp_path.glob(".t.mp4.*")), "the export never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.jsonl"]


def test_mp4_needs_an_even_side(tmp_path, capsys):
    log = write_log(tmp_path / "ok.jsonl")
    rc, err = run_cli(["replay", str(log), "--out", str(tmp_path / "x.mp4"), "--size", "65"], capsys)
    assert rc == 2 and len(err) == 1 and "even frame side" in err[0] and "--size 66" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.jsonl"]


# --- streamed logs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_log(tmp_path_factory) -> Path:
    """A 2 M-tick log (~260 MB), written the way ActionLogWriter writes lines."""
    path = tmp_path_factory.mktemp("stream") / "long.jsonl"
    start = generate_world(WORLD_SEED).spawn_pose()
    header = make_header(scene=f"procedural:{WORLD_SEED}", prompt="p", backend="oracle", seed=0, tick_hz=20.0,
                         resolution=RES, start_pose=start)
    pose = ", ".join(repr(v) for v in start.as_list())
    with open(path, "w") as fh:
        fh.write(json.dumps(header, separators=(", ", ": ")) + "\n")
        fh.writelines(f'{{"t": {t}, "action": [0.0, 0.0, 0.0, 0.0, 0.0], "pose": [{pose}]}}\n'
                      for t in range(1, STREAM_TICKS + 1))
    yield path
    path.unlink()


@pytest.mark.slow
def test_a_long_log_streams_in_constant_memory(long_log):
    tracemalloc.start()
    try:
        with ActionLogReader(long_log) as reader:
            ticks = sum(len(actions) for actions, _ in reader.chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ticks == STREAM_TICKS and reader.warnings == []
    assert peak < STREAM_PEAK_BYTES, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.slow
def test_a_long_log_shows_its_first_frame_at_once(long_log):
    load_scene(f"procedural:{WORLD_SEED}")  # warm the world generator's caches, as a second replay would
    t0 = time.perf_counter()
    replay = load_replay(long_log)
    frame = next(replay.frames())
    elapsed = time.perf_counter() - t0
    replay.close()
    assert frame.shape == (RES, RES, 3) and elapsed < FIRST_FRAME_S, f"{elapsed:.2f} s"


# --- damaged checkpoints -------------------------------------------------------------------------
def test_a_checkpoint_with_one_nan_weight_is_refused_naming_the_tensor(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(DEFAULT_CHECKPOINT), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(DEFAULT_CHECKPOINT))
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[7]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(UserError, match=f"{bad}: tensor {name} has 1 non-finite value"):
        load_checkpoint(bad)
    log = write_log(tmp_path / "m.jsonl", backend="model", resolution=64)
    rc, err = run_cli(["replay", str(log), "--out", str(tmp_path / "x.gif"), "--checkpoint", str(bad)], capsys)
    assert rc == 2 and len(err) == 1 and name in err[0]


# --- replay start pose ---------------------------------------------------------------------------
def test_model_replay_starts_from_the_picture_at_the_logs_start_pose(tmp_path):
    spawn = generate_world(WORLD_SEED).spawn_pose()
    moved = spawn.step([1.0, 0.5, 0.0, 0.8, 0.0]).step([1.0, 0.0, 0.0, 0.3, 0.0])
    log = write_log(tmp_path / "moved.jsonl", ticks=1, start=moved, backend="model", resolution=64)
    firsts = {}
    for backend in ("model", "oracle"):
        replay = load_replay(log, backend=backend)
        firsts[backend] = next(replay.frames())
        replay.close()
    assert psnr(firsts["model"], firsts["oracle"]) >= PSNR_AGREEMENT_DB
    folder_log = write_log(tmp_path / "folder.jsonl", ticks=1, start=moved, backend="model", resolution=64,
                           scene=str(SCENES_DIR / "courtyard"))
    replay = load_replay(folder_log)
    assert any("the scene's picture was taken at" in w for w in replay.warnings)
    replay.close()


# --- fuzz ----------------------------------------------------------------------------------------
FUZZ_SEED = 1234
FUZZ_LOGS = 240
FUZZ_SCENES = 60
_HEADER_KEYS = ("format", "version", "scene", "prompt", "image_sha256", "checkpoint_sha256", "backend", "seed",
                "tick_hz", "resolution", "start_pose")
_BAD_VALUES = (None, True, "x", [], {}, -1, 0, 1.5, 10 ** 400, -(10 ** 30), 1e300, [1, 2], ["a"] * 5, "9" * 5000)


def _bad_header_value(key: str, rng: random.Random):
    """A value that is invalid for `key` whatever else is in the header."""
    specific = {
        "format": ["worldmodel.log", 1, None], "version": [0, 2, "1", 1.0, True],
        "scene": ["", 5, None, []], "prompt": [5, None, ["p"]], "image_sha256": ["abc", 5, "G" * 64],
        "checkpoint_sha256": ["abc", 5, "0" * 63], "backend": ["gpu", "", None, 1],
        "seed": [-1, 1.5, "1", 2 ** 64, None, True], "tick_hz": [0, -1, 1e-300, 1e9, "20", None],
        "resolution": [[0, 0], [100000, 100000], [16], [16, 16, 16], "16", [16.5, 16], None],
        "start_pose": [[0.0] * 4, [0.0] * 6, [1e39, 0, 0, 0, 0], ["0"] * 5, [0, 0, 0, 0, 9.0], None],
    }[key]
    return rng.choice(specific)


def _bad_tick(rng: random.Random, t: int, tick: dict):
    kind = rng.randrange(9)
    if kind == 0:
        tick["t"] = rng.choice([t + 1, t - 1, 0, -5, float(t), str(t), None, 10 ** 400])
    elif kind == 1:
        tick["action"] = rng.choice([[0.0] * 4, [0.0] * 6, "0", None, [0, 0, "a", 0, 0], [1e30, 0, 0, 0, 0],
                                     [True, 0, 0, 0, 0], [[0]] * 5])
    elif kind == 2:
        tick["pose"] = rng.choice([[0.0] * 4, [1e39, 0, 0, 0, 0], None, [0, 0, 0, 1e7, 0], [0, 0, 0, 0, -2.0]])
    elif kind == 3:
        del tick[rng.choice(["t", "action", "pose"])]
    elif kind == 4:
        return rng.choice(["[1, 2, 3]", "5", '"tick"', "null", "{}"])
    elif kind == 5:
        return rng.choice(["", "   "])
    elif kind == 6:
        return rng.choice(["{not json", '{"t": 1,,}', "[" * 100000 + "]" * 100000, '{"t": NaN}'])
    elif kind == 7:
        return "x" * (2 << 20)  # longer than any line may be
    else:
        return '{"t": 1, "action": [1e999, 0, 0, 0, 0], "pose": [0, 0, 0, 0, 0]}'
    return json.dumps(tick)


def _fuzz_log(rng: random.Random, path: Path) -> None:
    good = write_log(path, ticks=6).read_text().splitlines()
    header = json.loads(good[0])
    kind = rng.randrange(4)
    if kind == 0:  # a broken header field
        key = rng.choice(_HEADER_KEYS)
        if rng.random() < 0.25:
            del header[key]
        else:
            header[key] = _bad_header_value(key, rng)
        good[0] = json.dumps(header)
        path.write_text("\n".join(good) + "\n")
    elif kind == 1:  # a broken tick (never the last line: a cut-off last line is a recording cut short)
        i = rng.randrange(1, len(good) - 1)
        good[i] = _bad_tick(rng, i, json.loads(good[i]))
        path.write_text("\n".join(good) + "\n")
    elif kind == 2:  # a header that is not one
        path.write_bytes(rng.choice([b"", b"  \n", b"\xff\xfe garbage\n", b"[1, 2]\n", b"null\n",
                                     b'{"format": "worldmodel.actions"', b"\x00" * 64 + b"\n",
                                     b"[" * 50000 + b"\n", b'{"format": "worldmodel.actions", "version": 1}\n']))
    else:  # bytes damaged inside a tick line
        i = rng.randrange(1, len(good) - 1)
        raw = bytearray(good[i].encode())
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.choice(b"{}[]\",:\xff")
        try:
            json.loads(raw)  # still valid JSON by chance: damage the structure for sure
            raw = raw[: len(raw) // 2]
        except ValueError:
            pass
        good[i] = raw.decode("latin-1")
        path.write_bytes("\n".join(good).encode("latin-1") + b"\n")


def _fuzz_scene(rng: random.Random, folder: Path) -> Path:
    """A scene folder broken in one way; returns the file the error must name."""
    shutil.copytree(SCENES_DIR / "courtyard", folder)
    toml = folder / "scene.toml"
    fields = {"prompt": '"p"', "start_pose": "[-4.9, 1.6, -4.8, -2.3, 0.0]", "fov_deg": "90.0", "world_seed": "102"}
    kind = rng.randrange(4)
    if kind == 0:
        key = rng.choice(list(fields))
        bad = {"prompt": ["5", "[1]", "true"],
               "start_pose": ["[1, 2, 3]", '["a", 0, 0, 0, 0]', "[1e39, 0, 0, 0, 0]", "[nan, 0, 0, 0, 0]",
                              "[inf, 0, 0, 0, 0]", "[0, 0, 0, 0, 2.0]", '"here"'],
               "fov_deg": ["5.0", "200.0", "nan", "inf", '"90"', "true"],
               "world_seed": ["-1", "1.5", '"x"', "9" * 30]}[key]
        if rng.random() < 0.2 and key in ("prompt", "start_pose"):
            del fields[key]
        else:
            fields[key] = rng.choice(bad)
        toml.write_text("".join(f"{k} = {v}\n" for k, v in fields.items()))
        return toml
    if kind == 1:
        toml.write_text(rng.choice(["prompt = ", "[[[", 'prompt = "a\n', "\xff\xfe", "= 5", 'prompt = "p"\nprompt = "q"\n']))
        return toml
    if kind == 2:
        (folder / "start.png").write_bytes(rng.choice([b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a"]))
        return folder / "start.png"
    toml.write_text("".join(f"{k} = {v}\n" for k, v in fields.items()) + 'image = "missing.png"\n')
    return folder / "missing.png"


def test_fuzz_malformed_logs_and_scenes_fail_cleanly(tmp_path, capsys):
    rng = random.Random(FUZZ_SEED)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cases: list[tuple[Path, Path]] = []
    for i in range(FUZZ_LOGS):
        log = tmp_path / f"log{i:03d}.jsonl"
        _fuzz_log(rng, log)
        cases.append((log, log))
    for i in range(FUZZ_SCENES):
        named = _fuzz_scene(rng, tmp_path / f"scene{i:03d}")
        log = write_log(tmp_path / f"scene{i:03d}.jsonl", scene=str(tmp_path / f"scene{i:03d}"))
        cases.append((log, named))
    failures = []
    for log, named in cases:
        rc, err = run_cli(["replay", str(log), "--out", str(out_dir / "x.gif"), "--quiet"], capsys)
        ok = rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(named) in err[0] \
            and "Traceback" not in err[0]
        if not ok or list(out_dir.iterdir()):
            failures.append((log.name, rc, err[:3]))
    assert failures == [], failures[:5]


def test_dataset_refuses_a_foreign_folder_and_a_buffer_that_would_not_fit(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    rc, err = run_cli(["dataset", "--worlds", "1", "--clips-per-world", "1", "--ticks", "4", "--out", str(foreign)],
                      capsys)
    assert rc == 2 and len(err) == 1 and "did not write (notes.txt)" in err[0]
    rc, err = run_cli(["dataset", "--worlds", "1", "--clips-per-world", "64", "--ticks", "1000000",
                       "--resolution", "1024", "--out", str(tmp_path / "big")], capsys)
    assert rc == 2 and len(err) == 1 and "GiB of memory" in err[0]
    assert not (tmp_path / "big").exists()


def test_saved_world_metadata_is_bounded(tmp_path):
    from worldmodel.world_state import _check_meta

    meta = {"format": "worldmodel.world", "version": 1, "seed": 1, "tick": 3, "pose": [0, 1.6, 0, 0, 0]}
    assert _check_meta(tmp_path, dict(meta)) == meta
    with pytest.raises(UserError, match=r"field 'pose'\[0\] 1e\+39 is out of range"):
        _check_meta(tmp_path, {**meta, "pose": [1e39, 1.6, 0, 0, 0]})
    with pytest.raises(UserError, match="field 'seed'"):
        _check_meta(tmp_path, {**meta, "seed": 10 ** 400})


def test_rollouts_refuse_settings_they_would_ignore(tmp_path, capsys):
    rc, err = run_cli(["train", "--stage", "rollouts", "--data", str(tmp_path / "l.safetensors"), "--checkpoint",
                       str(DEFAULT_CHECKPOINT), "--out", str(tmp_path / "r.safetensors"), "--set", "layers=2"], capsys)
    assert rc == 2 and len(err) == 1 and "--set layers does not apply" in err[0]
