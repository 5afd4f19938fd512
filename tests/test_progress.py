"""Progress bars (tqdm): off a terminal one plain line per tenth of the work, whatever the speed."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from game.action_log import ActionLogWriter, make_header
from conventions.progress import NON_TTY_LINES, ProgressBar

REPO = Path(__file__).resolve().parents[1]
REPLAY_TICKS = 599
"""A log of 599 ticks replays to 600 frames (the start frame first)."""
MAX_PIPED_LINES = 15
RES = 16
SCENE = "courtyard"


def test_off_a_terminal_one_line_per_tenth() -> None:
    stream = io.StringIO()
    with ProgressBar(1500, "bench", stream=stream) as bar:
        for _ in range(1500):
            bar.update(1, ms=1.25)
    lines = stream.getvalue().splitlines()
    assert len(lines) == NON_TTY_LINES and "\r" not in stream.getvalue()
    assert lines[-1].startswith("bench: 100%") and "1500/1500" in lines[-1] and "ms=1.25" in lines[-1]


def test_a_resumed_or_interrupted_run_writes_where_it_stopped() -> None:
    stream = io.StringIO()
    bar = ProgressBar(100, "train", stream=stream, start=95)
    bar.update(2, loss=0.5)
    bar.close()
    bar.close()  # closing twice writes nothing more
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "97/100" in lines[0] and "loss=0.5" in lines[0]


def _oracle_log(path: Path) -> Path:
    """A 599-tick oracle action log of a bundled scene, written by the game's own writer (16 px)."""
    from scenes.scene import load_scene

    scene = load_scene(SCENE)
    pose = scene.start_pose
    header = make_header(scene=SCENE, prompt=scene.prompt, backend="oracle", seed=0, tick_hz=20.0,
                         resolution=RES, start_pose=pose, start_image=scene.image)
    with ActionLogWriter(path, header) as writer:
        for t in range(REPLAY_TICKS):
            action = [0.05, 0.0, 0.0, 0.02 if t % 100 < 50 else -0.02, 0.0]
            pose = pose.step(action)
            writer.write(action, pose)
    return path


def test_piped_replay_export_of_600_frames_prints_at_most_15_lines(tmp_path: Path) -> None:
    log = _oracle_log(tmp_path / "walk.jsonl")
    out = tmp_path / "x.mp4"
    # `worldmodel replay LOG --out x.mp4 2>&1 | wc -l`: stdout and stderr into one pipe
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "replay", str(log), "--out", str(out),
                           "--threads", "1"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    text = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert out.is_file() and "wrote" in text and "600 frames" in text
    assert text.count("\n") <= MAX_PIPED_LINES, text
    assert "\r" not in text
