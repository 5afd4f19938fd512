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

from conventions.atomic import (atomic_write, check_output_folder, check_output_path, fsync_file, output_error,
                               remove_stale_temps, temp_dir_beside, temp_file_beside)
from game.action_log import ActionLogReader, image_sha256
from game.frame_source import MODEL_BACKEND, make_frame_source
from game.session import PlaySession, scene_with_image
from conventions.camera import CameraPose
from worldmodel.config import DEFAULT_PRECISION, HINT_SAMPLINGS, PRECISION_NAMES
from conventions.errors import UserError
from conventions.limits import check_number, number_problem, short_repr
from conventions.progress import ProgressBar
from game.loop import DEFAULT_WINDOW, GameConfig, run_game, ScriptedTick
from scenes.scene import load_image, load_scene, PROCEDURAL_PREFIX, render_start_image

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
MP4_BOX_HEADER = 8
"""An ISO-BMFF box starts with a 4-byte size and a 4-byte type."""
LOGS_BEFORE_START_RADIUS = 0.0
"""hint_start_radius of logs recorded before it was (the start frame had no preference then)."""
LOGS_BEFORE_SAMPLING = "nearest"
"""hint_sampling of logs recorded before it was (the hint copied the nearest source pixel then)."""
LOGS_BEFORE_MEMORY_KEY_SCALE = 1.0
"""memory_key_scale of logs recorded before it was (the memory's keys were not scaled then)."""
LOW_DISK_BYTES = 1 << 20
"""Less free space than this when a write fails: report the disk as full."""
GIF_MAX_BYTES = 1 << 30
"""The most frame memory a GIF export may hold (1 GiB: 600 frames at 1024 px); longer or larger
exports are refused up front with a pointer to .mp4 or a PNG folder, which stream to disk."""


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
    return load_scene(spec)


def _load_scene_for_log(spec: str, log_dir: Path):
    """The log's scene; procedural scenes are cached (deterministic, and their start render is slow)."""
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
    """A log ready to replay: its session (frame source + logged start) and every warning so far.

    The log is streamed (`ActionLogReader`): frames come one tick at a time, so a replay of any
    length starts at once and runs in constant memory. `warnings` grows when the stream ends (poses
    that differ from the integrated actions, a torn last line).
    """

    log: ActionLogReader
    session: PlaySession
    load_warnings: list[str] = field(default_factory=list)
    prevalidated: bool = False
    """The whole log was read once before the first frame (logs up to PREVALIDATE_BYTES): its errors
    come before any output, and its warnings are in `load_warnings`."""
    ticks: int | None = None
    """Tick count when known (prevalidated logs); else counted on first use of `frame_count`."""

    @property
    def frame_count(self) -> int:
        """Frames a replay yields (start + ticks); a newline count for long logs (~0.3 s per 100 MB),
        done only when asked (export progress), not before a window replay's first frame."""
        if self.ticks is None:
            self.ticks = self.log.tick_count()
        return self.ticks + 1

    def frames(self) -> Iterator[np.ndarray]:
        """Frame 0 (the start) then one frame per logged tick, uint8 [H, W, 3] each."""
        yield self.session.reset()
        for action, pose in self.log.ticks():
            yield self.session.step(action, CameraPose.from_sequence(pose))

    @property
    def stream_warnings(self) -> list[str]:
        """Warnings found while streaming, not known before the first frame."""
        return [] if self.prevalidated else self.log.warnings

    @property
    def warnings(self) -> list[str]:
        return self.load_warnings + self.stream_warnings

    def close(self) -> None:
        self.log.close()


def load_replay(log_path: str | os.PathLike, backend: str | None = None, checkpoint: str | None = None,
                device: str = "cpu", hint: bool | None = None, memory: bool | None = None,
                steps: int | None = None) -> Replay:
    """Open the log, load its scene (+ `--image` picture) and build the frame source.

    `backend` defaults to the log's; `hint`, `memory` and `steps` (the denoising steps per frame;
    model backend) to the log's settings. Differences that change the frames but do not prevent a
    replay (another checkpoint, a changed start image, a recording started mid-session) are warnings.
    The model starts from the picture at the log's start pose: for a procedural world that is the
    oracle's render there (a recording started mid-session does not start at the spawn pose); a
    scene folder's picture was taken at the scene's pose, so another start pose is a warning.
    """
    log = ActionLogReader(log_path)
    try:
        return _load_replay(log, log_path, backend, checkpoint, device, hint, memory, steps)
    except BaseException:
        log.close()
        raise


def _load_replay(log: ActionLogReader, log_path, backend, checkpoint, device, hint, memory, steps) -> Replay:
    header = log.header
    log_dir = Path(log_path).resolve().parent
    warnings: list[str] = []
    backend = backend or header["backend"]
    scene = _load_scene_for_log(header["scene"], log_dir)
    warnings.extend(scene.warnings)
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
    precision = start_radius = sampling = sample_steps = key_scale = None
    hint_on = memory_on = None
    if backend == MODEL_BACKEND:
        # the hint setting the log was made with (logs from before the hint ran without one),
        # unless the caller asks for another
        hint_on = header.get("hint", False) if hint is None else hint
        if not isinstance(hint_on, bool):
            raise UserError(f"{log_path}: line 1: \"hint\" must be true or false, got {hint_on!r}")
        # the memory setting the log was made with (logs from before it was recorded ran with memory)
        memory_on = header.get("memory", True) if memory is None else memory
        if not isinstance(memory_on, bool):
            raise UserError(f"{log_path}: line 1: \"memory\" must be true or false, got {memory_on!r}")
        # the hint's start radius the log was made with; logs from before it ran without (0 m)
        start_radius = header.get("hint_start_radius", LOGS_BEFORE_START_RADIUS)
        if isinstance(start_radius, bool) or not isinstance(start_radius, (int, float)) \
                or number_problem("distance", start_radius):
            raise UserError(f"{log_path}: line 1: \"hint_start_radius\" must be a distance in metres, got "
                            f"{short_repr(start_radius)}")
        # the hint's colour sampling the log was made with; logs from before it copied the nearest pixel
        sampling = header.get("hint_sampling", LOGS_BEFORE_SAMPLING)
        if sampling not in HINT_SAMPLINGS:
            raise UserError(f"{log_path}: line 1: \"hint_sampling\" must be one of {list(HINT_SAMPLINGS)}, got "
                            f"{short_repr(sampling)}")
        # the scale of the memory's keys the log was made with; logs from before it ran unscaled keys
        key_scale = header.get("memory_key_scale", LOGS_BEFORE_MEMORY_KEY_SCALE)
        problem = number_problem("memory_key_scale", key_scale)
        if problem:
            raise UserError(f"{log_path}: line 1: \"memory_key_scale\" {problem}")
        # the denoising steps the log was made with; logs from before they were recorded ran the checkpoint's
        sample_steps = header.get("sample_steps")
        problem = None if sample_steps is None else number_problem("sample_steps", sample_steps)
        if problem:
            raise UserError(f"{log_path}: line 1: \"sample_steps\" {problem}")
        if steps is not None:  # the caller asks for other steps than the recording's
            sample_steps = check_number("sample_steps", steps, "--steps")
        # the arithmetic the log was made with; logs from before precision was recorded ran fp32
        precision = header.get("precision", DEFAULT_PRECISION)
        if precision not in PRECISION_NAMES:
            raise UserError(f"{log_path}: line 1: \"precision\" must be one of {list(PRECISION_NAMES)}, "
                            f"got {precision!r}")
        if image_path is None and not _same_pose(log.start_pose, scene.start_pose):
            if header["scene"].startswith(PROCEDURAL_PREFIX):
                # rendered at the frame size, as the oracle renders that first frame: the two
                # backends then start from the same picture
                scene = dataclasses.replace(scene, image=render_start_image(scene, log.start_pose, height),
                                            start_pose=log.start_pose)
            else:
                warnings.append(f"{log_path}: the log starts at pose {_pose_text(log.start_pose)}, but the scene's "
                                f"picture was taken at {_pose_text(scene.start_pose)}; the model starts from that "
                                "picture, so the first frames show the scene's start view")
    if backend != MODEL_BACKEND:
        sample_steps = steps  # make_frame_source refuses steps for a source that does not sample
    source = make_frame_source(backend, resolution=height, start_image_path=image_path,
                               checkpoint=checkpoint, device=device, precision=precision, hint=hint_on,
                               memory=memory_on, start_radius=float(start_radius) if hint_on else None,
                               sampling=sampling if hint_on else None, sample_steps=sample_steps)
    if key_scale is not None and source.memory_key_scale is not None:
        source.session.memory_key_scale = float(key_scale)  # the log's rule (a model without memory has none)
    if source.resolution != height:
        warnings.append(f"{log_path}: recorded at {height}x{height}, the {backend} backend makes "
                        f"{source.resolution}x{source.resolution} frames")
    if backend == MODEL_BACKEND:
        logged = header["checkpoint_sha256"]
        current = source.checkpoint_sha256
        if logged is not None and current is not None and logged != current:
            warnings.append(f"{log_path}: recorded with another checkpoint (sha256 {logged[:12]}..., now "
                            f"{current[:12]}...); frames will differ")
    session = PlaySession(source, scene, scene_spec=header["scene"], prompt=header["prompt"],
                          start_pose=log.start_pose, seed=int(header["seed"]), tick_hz=float(header["tick_hz"]),
                          image_path=image_path)
    if log.size <= PREVALIDATE_BYTES:
        ticks = sum(len(actions) for actions, _ in log.chunks())
        return Replay(log=log, session=session, load_warnings=warnings + log.warnings, prevalidated=True,
                      ticks=ticks)
    return Replay(log=log, session=session, load_warnings=warnings)


PREVALIDATE_BYTES = 8 << 20
"""Logs up to 8 MiB (about 50,000 ticks, read in ~0.3 s) are checked whole before the first frame, so
a damaged one fails before anything is shown or written; longer ones stream, and a damaged line far
in fails when the replay reaches it (the export is then discarded: nothing is written)."""


START_POSE_ATOL = 1e-6
"""Start poses closer than this (metres / radians) are the same view."""


def _same_pose(a: CameraPose, b: CameraPose) -> bool:
    return all(abs(x - y) <= START_POSE_ATOL for x, y in zip(a.as_list(), b.as_list()))


def _pose_text(pose: CameraPose) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in pose.as_list()) + "]"


def _replace_image(scene, image: np.ndarray):
    return scene_with_image(scene, image)


# --- writers -------------------------------------------------------------------------------------
class FrameWriter(Protocol):
    def write(self, frame: np.ndarray) -> None: ...

    def commit(self) -> Path: ...

    def abort(self) -> None: ...


class Mp4Writer:
    """H.264 mp4 through imageio-ffmpeg's bundled ffmpeg (lossy: compare pixels with PNG exports).

    ffmpeg's exit status is not reported by imageio-ffmpeg, so `commit` checks the file itself: a
    complete mp4 has top-level boxes that tile the file exactly and a `moov` box (a full disk or a
    killed ffmpeg leaves none), and it must hold every frame written. Only then is it renamed over
    the target: an existing good file is never replaced by a broken one.
    """

    def __init__(self, path: Path, size: int, fps: float) -> None:
        import imageio_ffmpeg  # the ffmpeg binary is found (or not) only when a video is made

        if size % MP4_MACRO_BLOCK:
            raise UserError(f"{path}: an mp4 needs an even frame side (H.264 yuv420p), got {size}; "
                            f"pass --size {size + 1} (or {size - 1}), or export .gif or a PNG folder")
        self.path = path
        try:
            self.tmp = temp_file_beside(path, ".mp4")
        except OSError as exc:
            raise output_error(path, exc) from None
        self.size = size
        self.count = 0
        self._gen = None
        try:  # the temp file exists from here on: any exit (SIGTERM while ffmpeg starts) removes it
            self._gen = imageio_ffmpeg.write_frames(str(self.tmp), (size, size), fps=float(fps),
                                                    quality=MP4_QUALITY, macro_block_size=MP4_MACRO_BLOCK,
                                                    codec="libx264", pix_fmt_out="yuv420p")
            self._gen.send(None)
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise output_error(path, exc, "cannot start ffmpeg") from None
        except BaseException:
            self.abort()
            raise

    def write(self, frame: np.ndarray) -> None:
        try:
            self._gen.send(np.ascontiguousarray(frame, dtype=np.uint8))
        except OSError as exc:
            raise self._failed(exc) from None
        self.count += 1

    def _failed(self, exc: OSError) -> UserError:
        return UserError(f"{self.path}: writing the video failed ({_writer_cause(self.tmp, exc)})")

    def commit(self) -> Path:
        try:
            self._gen.close()
        except OSError as exc:
            raise self._failed(exc) from None
        if self.count == 0:
            raise UserError(f"{self.path}: no frames to write")
        problem = mp4_problem(self.tmp, self.count)
        if problem:
            raise UserError(f"{self.path}: ffmpeg did not finish the video ({problem}; "
                            f"{_writer_cause(self.tmp, None)}); nothing was written")
        try:
            fsync_file(self.tmp)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        remove_stale_temps(self.path, ".mp4")
        return self.path

    def abort(self) -> None:
        try:
            if self._gen is not None:
                self._gen.close()
        except OSError:
            pass  # ffmpeg already gone (the reason we are aborting)
        finally:
            self.tmp.unlink(missing_ok=True)


def _writer_cause(tmp: Path, exc: BaseException | None) -> str:
    """Why a video stopped: a full disk is the common cause and ffmpeg's pipe error does not say it."""
    try:
        if shutil.disk_usage(tmp.parent).free < LOW_DISK_BYTES:
            return "the disk is full"
    except OSError:
        pass
    if exc is None:
        return "disk full, a file-size limit, or ffmpeg was killed"
    return f"ffmpeg stopped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def mp4_problem(path: Path, frames: int | None = None) -> str | None:
    """Why `path` is not a complete mp4 (of `frames` frames), or None.

    A complete file is a sequence of top-level ISO-BMFF boxes whose sizes add up to the file size
    exactly, with `ftyp`, `moov` and `mdat` among them; the frame count comes from ffmpeg reading
    the container (stream copy, no decoding).
    """
    import imageio_ffmpeg  # as in Mp4Writer

    try:
        size = path.stat().st_size
        boxes: set[bytes] = set()
        with open(path, "rb") as fh:
            offset = 0
            while offset < size:
                fh.seek(offset)
                head = fh.read(MP4_BOX_HEADER)
                if len(head) < MP4_BOX_HEADER:
                    return "truncated box header"
                length, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if length == 1:  # 64-bit size follows
                    length = int.from_bytes(fh.read(8), "big")
                elif length == 0:  # box extends to the end of the file
                    length = size - offset
                if length < MP4_BOX_HEADER or offset + length > size:
                    return f"box {kind!r} runs past the end of the file"
                boxes.add(kind)
                offset += length
    except OSError as exc:
        return f"cannot read it back ({exc.strerror or exc})"
    missing = [k.decode() for k in (b"ftyp", b"moov", b"mdat") if k not in boxes]
    if missing:
        return f"no {', '.join(missing)} box"
    if frames is not None:
        try:
            counted, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        except (OSError, RuntimeError) as exc:
            return f"ffmpeg cannot read it back ({str(exc).splitlines()[0]})"
        if counted != frames:
            return f"{counted} frames in the file, {frames} written"
    return None


class GifWriter:
    """Animated GIF through Pillow (palette per frame; looping).

    Pillow writes a GIF only once it has every frame, so frames are kept in memory, already reduced to
    their palette (1 byte a pixel, what Pillow would convert them to anyway). `export_replay` refuses
    a GIF whose frames would not fit in GIF_MAX_BYTES before rendering anything.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.duration_ms = MS_PER_S / fps
        self.frames: list[Image.Image] = []

    def write(self, frame: np.ndarray) -> None:
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        self.frames.append(image.convert("P", palette=Image.Palette.ADAPTIVE))

    def commit(self) -> Path:
        if not self.frames:
            raise UserError(f"{self.path}: no frames to write")
        atomic_write(self.path, self._save, suffix=".gif")
        self.frames.clear()
        return self.path

    def _save(self, tmp: Path) -> None:
        self.frames[0].save(tmp, format="GIF", save_all=True, append_images=self.frames[1:],
                            duration=self.duration_ms, loop=0, optimize=False)
        with Image.open(tmp) as check:  # read it back: a short write must not be renamed into place
            if getattr(check, "n_frames", 1) != len(self.frames):
                raise UserError(f"{self.path}: the GIF read back has {check.n_frames} of {len(self.frames)} frames")

    def abort(self) -> None:
        self.frames.clear()


def gif_memory_bytes(frames: int, side: int) -> int:
    """What GifWriter holds before it can write: one palette byte per pixel per frame."""
    return frames * side * side


class PngFolderWriter:
    """A folder of frame_00000.png ... (lossless). Written into a temp folder and swapped in.

    An existing target folder is replaced only if it holds nothing but frame_*.png files (an
    earlier export); anything else in it is refused rather than deleted.
    """

    def __init__(self, path: Path) -> None:
        self.path = check_output_folder(path, lambda entry: entry.match(FRAME_GLOB))
        try:
            self.tmp = temp_dir_beside(path)
        except OSError as exc:
            raise output_error(path, exc) from None
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        try:
            Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(self.tmp / FRAME_NAME.format(self.count))
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self.count += 1

    def commit(self) -> Path:
        written = len(list(self.tmp.glob(FRAME_GLOB)))
        if written != self.count:
            raise UserError(f"{self.path}: {written} of {self.count} frames are on disk; nothing was written")
        old = None
        try:
            if self.path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old.", dir=self.path.parent))
                os.replace(self.path, old / "frames")
            os.replace(self.tmp, self.path)
        except OSError as exc:
            if old is not None and not self.path.exists():
                os.replace(old / "frames", self.path)  # put the earlier export back
            raise output_error(self.path, exc) from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        remove_stale_temps(self.path)
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
                  progress: bool = True, stream: TextIO | None = None, hint: bool | None = None,
                  memory: bool | None = None, steps: int | None = None) -> ExportResult:
    """Replay `log_path` headless into `out` (.mp4, .gif or a PNG folder).

    Frames are the source's native resolution unless `size` (nearest upscaling). `fps` defaults
    to the log's tick rate, so the video plays at the speed of the session.
    """
    stream = stream if stream is not None else sys.stderr
    kind = output_kind(out)
    if fps is not None:
        check_number("fps", fps, "--fps")
    if size is not None:
        check_number("size", size, "--size")
    target = check_output_path(out, inputs=(log_path, checkpoint))
    replay = load_replay(log_path, backend=backend, checkpoint=checkpoint, device=device, hint=hint, memory=memory,
                         steps=steps)
    try:
        return _export(replay, target, kind, fps, size, progress, stream)
    finally:
        replay.close()


def _export(replay: Replay, target: Path, kind: str, fps: float | None, size: int | None, progress: bool,
            stream: TextIO) -> ExportResult:
    for warning in replay.load_warnings:
        print(f"warning: {warning}", file=stream)
    side = size if size is not None else replay.session.source.resolution
    rate = fps if fps is not None else replay.log.tick_hz
    writer: FrameWriter
    if kind == "mp4":
        writer = Mp4Writer(target, side, rate)
    elif kind == "gif":
        needed = gif_memory_bytes(replay.frame_count, side)
        if needed > GIF_MAX_BYTES:
            raise UserError(f"{target}: a GIF of {replay.frame_count} frames at {side}x{side} needs "
                            f"{needed / 2**30:.1f} GiB of memory (the limit is {GIF_MAX_BYTES / 2**30:.0f} GiB); "
                            "export .mp4 or a PNG folder (both stream to disk), or pass a smaller --size")
        writer = GifWriter(target, rate)
    else:
        writer = PngFolderWriter(target)
    try:  # from here on the writer holds a temp file: every exit path aborts it
        bar = ProgressBar(replay.frame_count, "replay", stream=stream) if progress else None
    except BaseException:
        writer.abort()
        raise
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
    for warning in replay.stream_warnings:
        print(f"warning: {warning}", file=stream)
    stats = replay.session.stats()
    return ExportResult(path=path, frames=replay.frame_count, ms_per_frame=stats.mean_ms, warnings=replay.warnings)


def replay_in_window(log_path: str | os.PathLike, backend: str | None = None, checkpoint: str | None = None,
                     window: int | None = None, fps: float | None = None, smooth: bool = False,
                     max_ticks: int | None = None, exit_when_done: bool = False, event_source=None,
                     hint: bool | None = None, memory: bool | None = None, steps: int | None = None) -> int:
    """Play the log back in the game window at its tick rate (or `fps`); returns ticks shown."""
    if fps is not None:
        check_number("fps", fps, "--fps")
    replay = load_replay(log_path, backend=backend, checkpoint=checkpoint, hint=hint, memory=memory, steps=steps)
    try:
        for warning in replay.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if fps is not None:
            replay.session.pacer.period = 1.0 / fps
        script = (ScriptedTick(list(a), CameraPose.from_sequence(p)) for a, p in replay.log.ticks())  # streamed
        result = run_game(GameConfig(session=replay.session, script=script, window=window or DEFAULT_WINDOW,
                                     smooth=smooth, max_ticks=max_ticks, exit_when_done=exit_when_done,
                                     event_source=event_source, title="worldmodel replay"))
        for warning in replay.stream_warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return result.ticks
    finally:
        replay.close()
