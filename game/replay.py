"""Replay an action log: headless export (mp4, gif, PNG folder) or in the game window.

Replay follows the *logged poses* (the truth when an oracle with collisions or an edited log
disagrees with the integrated actions; `read_action_log` warns once then). With the oracle the
frames are bit-identical run to run, so a PNG export can be compared exactly to `render_views`.
Every output is written to a temporary name and renamed into place: never half a file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, TextIO

import numpy as np
from PIL import Image

from game.atomic import temp_dir_beside, temp_file_beside
from game.action_log import ActionLog, image_sha256, read_action_log
from game.frame_source import MODEL_BACKEND, make_frame_source
from game.session import PlaySession
from worldmodel.camera import CameraPose
from worldmodel.config import DEFAULT_PRECISION, PRECISION_NAMES
from worldmodel.errors import UserError

MP4_QUALITY = 8
"""imageio-ffmpeg quality (1-10) of exported mp4s; tiny frames need a high setting to stay sharp."""
MP4_MACRO_BLOCK = 2
"""H.264 yuv420p needs even sides; anything larger would rescale frames that are not multiples of it."""
PROCEDURAL_SCENE_CACHE = 8
"""Procedural scenes kept in memory by replays in one process (their 256 px start render costs seconds)."""
FRAME_NAME = "frame_{:05d}.png"
FRAME_GLOB = "frame_*.png"
VIDEO_SUFFIXES = {".mp4": "mp4", ".gif": "gif"}
MS_PER_S = 1000.0


# --- loading -------------------------------------------------------------------------------------
def _resolve(path_text: str, log_dir: Path) -> Path:
    """A path from a log: as written (relative to the working directory), else next to the log."""
    path = Path(path_text)
    if path.exists() or path.is_absolute():
        return path
    beside = log_dir / path
    return beside if beside.exists() else path


@functools.lru_cache(maxsize=PROCEDURAL_SCENE_CACHE)
def _procedural_scene(spec: str):
    from scenes.scene import load_scene

    return load_scene(spec)


def _load_scene_for_log(spec: str, log_dir: Path):
    """The log's scene; procedural scenes are cached (deterministic, and their start render is slow)."""
    from scenes.scene import PROCEDURAL_PREFIX, load_scene

    if spec.startswith(PROCEDURAL_PREFIX):
        return dataclasses.replace(_procedural_scene(spec))
    try:
        return load_scene(spec)
    except UserError:
        beside = log_dir / spec
        if (beside / "scene.toml").exists():
            return load_scene(str(beside))
        raise


@dataclass
class Replay:
    """A log ready to replay: its session (frame source + logged start) and every warning so far."""

    log: ActionLog
    session: PlaySession
    warnings: list[str] = field(default_factory=list)

    def frames(self) -> Iterator[np.ndarray]:
        """Frame 0 (the start) then one frame per logged tick, uint8 [H, W, 3] each."""
        yield self.session.reset()
        for action, pose in zip(self.log.actions.tolist(), self.log.poses.tolist()):
            yield self.session.step(action, CameraPose.from_sequence(pose))

    @property
    def frame_count(self) -> int:
        return self.log.ticks + 1


def load_replay(log_path: str | os.PathLike, backend: str | None = None, checkpoint: str | None = None,
                device: str = "cpu", hint: bool | None = None) -> Replay:
    """Read the log, load its scene (+ `--image` picture) and build the frame source.

    `backend` defaults to the log's; `hint` (model backend) to the log's hint setting. Differences that change the frames but do not prevent a
    replay (another checkpoint, a changed start image, a recording started mid-session) are warnings.
    """
    from scenes.scene import load_image

    log = read_action_log(log_path)
    header = log.header
    log_dir = Path(log_path).resolve().parent
    warnings = list(log.warnings)
    backend = backend or header["backend"]
    scene = _load_scene_for_log(header["scene"], log_dir)
    image_path: str | None = None
    if isinstance(header.get("image"), str):
        resolved = _resolve(header["image"], log_dir)
        if not resolved.exists():
            raise UserError(f"{log_path}: line 1: the session started from image {header['image']!r}, "
                            "which is not there any more")
        image_path = str(resolved)
        scene = _replace_image(scene, load_image(resolved, resolution=None))
    if header["image_sha256"] is not None and image_sha256(np.asarray(scene.image)) != header["image_sha256"]:
        warnings.append(f"{log_path}: the start image differs from the one recorded (image_sha256); "
                        "the first frames may differ")
    height = int(header["resolution"][0])
    precision = None
    hint_on = None
    if backend == MODEL_BACKEND:
        # the hint setting the log was made with (logs from before the hint ran without one),
        # unless the caller asks for another
        hint_on = header.get("hint", False) if hint is None else hint
        if not isinstance(hint_on, bool):
            raise UserError(f"{log_path}: line 1: \"hint\" must be true or false, got {hint_on!r}")
        # the arithmetic the log was made with; logs from before precision was recorded ran fp32
        precision = header.get("precision", DEFAULT_PRECISION)
        if precision not in PRECISION_NAMES:
            raise UserError(f"{log_path}: line 1: \"precision\" must be one of {list(PRECISION_NAMES)}, "
                            f"got {precision!r}")
    source = make_frame_source(backend, resolution=height, start_image_path=image_path,
                               checkpoint=checkpoint, device=device, precision=precision, hint=hint_on)
    if source.resolution != height:
        warnings.append(f"{log_path}: recorded at {height}x{height}, the {backend} backend makes "
                        f"{source.resolution}x{source.resolution} frames")
    if backend == MODEL_BACKEND:
        logged = header["checkpoint_sha256"]
        current = getattr(source, "checkpoint_sha256", None)
        if logged is not None and current is not None and logged != current:
            warnings.append(f"{log_path}: recorded with another checkpoint (sha256 {logged[:12]}..., now "
                            f"{current[:12]}...); frames will differ")
        if int(header.get("started_at_tick", 0) or 0) > 0:
            warnings.append(f"{log_path}: the recording started at tick {header['started_at_tick']} of a session;"
                            " the model restarts from the scene image at the logged start pose")
    session = PlaySession(source, scene, scene_spec=header["scene"], prompt=header["prompt"],
                          start_pose=log.start_pose, seed=int(header["seed"]), tick_hz=float(header["tick_hz"]),
                          image_path=image_path)
    return Replay(log=log, session=session, warnings=warnings)


def _replace_image(scene, image: np.ndarray):
    from game.session import scene_with_image

    return scene_with_image(scene, image)


# --- writers -------------------------------------------------------------------------------------
class FrameWriter(Protocol):
    def write(self, frame: np.ndarray) -> None: ...

    def commit(self) -> Path: ...

    def abort(self) -> None: ...


class Mp4Writer:
    """H.264 mp4 through imageio-ffmpeg's bundled ffmpeg (lossy: compare pixels with PNG exports)."""

    def __init__(self, path: Path, size: int, fps: float) -> None:
        import imageio_ffmpeg

        self.path = path
        self.tmp = temp_file_beside(path, ".mp4")
        self.size = size
        self.count = 0
        self._gen = imageio_ffmpeg.write_frames(str(self.tmp), (size, size), fps=float(fps), quality=MP4_QUALITY,
                                                macro_block_size=MP4_MACRO_BLOCK, codec="libx264",
                                                pix_fmt_out="yuv420p")
        self._gen.send(None)

    def write(self, frame: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(frame, dtype=np.uint8))
        self.count += 1

    def commit(self) -> Path:
        self._gen.close()
        if self.count == 0:
            raise UserError(f"{self.path}: no frames to write")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._gen.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class GifWriter:
    """Animated GIF through Pillow (palette per frame; looping)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.duration_ms = MS_PER_S / fps
        self.frames: list[Image.Image] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)))

    def commit(self) -> Path:
        if not self.frames:
            raise UserError(f"{self.path}: no frames to write")
        tmp = temp_file_beside(self.path, ".gif")
        try:
            self.frames[0].save(tmp, format="GIF", save_all=True, append_images=self.frames[1:],
                                duration=self.duration_ms, loop=0, optimize=False)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        self.frames.clear()


class PngFolderWriter:
    """A folder of frame_00000.png ... (lossless). Written into a temp folder and swapped in.

    An existing target folder is replaced only if it holds nothing but frame_*.png files (an
    earlier export); anything else in it is refused rather than deleted.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            if not path.is_dir():
                raise UserError(f"{path}: exists and is not a folder")
            others = [p.name for p in path.iterdir() if not p.match(FRAME_GLOB)]
            if others:
                raise UserError(f"{path}: folder is not empty ({others[0]} ...); choose a new or empty folder")
        self.tmp = temp_dir_beside(path)
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(self.tmp / FRAME_NAME.format(self.count))
        self.count += 1

    def commit(self) -> Path:
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old.", dir=self.path.parent))
            os.replace(self.path, old / "frames")
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def output_kind(out: str) -> str:
    """"mp4", "gif" or "png" (a folder: trailing slash, an existing folder, or no suffix)."""
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return "png"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return VIDEO_SUFFIXES[suffix]
    if suffix == "":
        return "png"
    raise UserError(f"{out}: unknown output type {suffix!r} (use .mp4, .gif or a folder ending in /)")


def _upscale(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.NEAREST))


@dataclass
class ExportResult:
    path: Path
    frames: int
    ms_per_frame: float
    warnings: list[str]


def export_replay(log_path: str | os.PathLike, out: str, backend: str | None = None, fps: float | None = None,
                  size: int | None = None, checkpoint: str | None = None, device: str = "cpu",
                  progress: bool = True, stream: TextIO | None = None, hint: bool | None = None) -> ExportResult:
    """Replay `log_path` headless into `out` (.mp4, .gif or a PNG folder).

    Frames are the source's native resolution unless `size` (nearest upscaling). `fps` defaults
    to the log's tick rate, so the video plays at the speed of the session.
    """
    from worldmodel.progress import ProgressBar

    stream = stream if stream is not None else sys.stderr
    kind = output_kind(out)
    if fps is not None and not fps > 0:
        raise UserError(f"--fps: must be positive, got {fps}")
    if size is not None and size <= 0:
        raise UserError(f"--size: must be positive, got {size}")
    replay = load_replay(log_path, backend=backend, checkpoint=checkpoint, device=device, hint=hint)
    for warning in replay.warnings:
        print(f"warning: {warning}", file=stream)
    side = size if size is not None else replay.session.source.resolution
    rate = fps if fps is not None else replay.log.tick_hz
    target = Path(out)
    writer: FrameWriter
    if kind == "mp4":
        writer = Mp4Writer(target, side, rate)
    elif kind == "gif":
        writer = GifWriter(target, rate)
    else:
        writer = PngFolderWriter(target)
    bar = ProgressBar(replay.frame_count, "replay", stream=stream) if progress else None
    try:
        for frame in replay.frames():
            writer.write(_upscale(frame, side))
            if bar is not None:
                bar.update(1)
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    stats = replay.session.stats()
    return ExportResult(path=path, frames=replay.frame_count, ms_per_frame=stats.mean_ms, warnings=replay.warnings)


def replay_in_window(log_path: str | os.PathLike, backend: str | None = None, checkpoint: str | None = None,
                     window: int | None = None, fps: float | None = None, smooth: bool = False,
                     max_ticks: int | None = None, exit_when_done: bool = False, event_source=None,
                     hint: bool | None = None) -> int:
    """Play the log back in the game window at its tick rate (or `fps`); returns ticks shown."""
    from game.loop import DEFAULT_WINDOW, GameConfig, ScriptedTick, run_game

    replay = load_replay(log_path, backend=backend, checkpoint=checkpoint, hint=hint)
    for warning in replay.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if fps is not None:
        if not fps > 0:
            raise UserError(f"--fps: must be positive, got {fps}")
        replay.session.pacer.period = 1.0 / fps
    script = [ScriptedTick(list(a), CameraPose.from_sequence(p))
              for a, p in zip(replay.log.actions.tolist(), replay.log.poses.tolist())]
    result = run_game(GameConfig(session=replay.session, script=script, window=window or DEFAULT_WINDOW,
                                 smooth=smooth, max_ticks=max_ticks, exit_when_done=exit_when_done,
                                 event_source=event_source, title="worldmodel replay"))
    return result.ticks
