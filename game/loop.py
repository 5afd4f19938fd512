"""The pygame loop: events -> InputState -> action -> PlaySession.step -> window (+ HUD).

`run_game(config)` plays a scene (or, with `config.script`, replays logged actions and poses in
the window). Everything the tests need to drive the *real* loop headless is injectable: the event
source (default `pygame.event.get`; tests post KEYDOWN/KEYUP/MOUSEMOTION under the dummy video
driver), `max_ticks`, and real-time pacing can be switched off.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import pygame  # noqa: E402

from conventions.atomic import atomic_write  # noqa: E402
from game.bindings import Bindings, Command, InputState, action_from_input  # noqa: E402
from game.frame_source import DEFAULT_BACKEND, FrameSource, make_frame_source  # noqa: E402
from game.hud import Hud, HudStatus  # noqa: E402
from game.session import RECORDINGS_DIR, PlaySession, scene_with_image  # noqa: E402
from conventions.camera import DEFAULT_RESOLUTION, DEFAULT_TICK_HZ, CameraPose  # noqa: E402
from conventions.errors import UserError  # noqa: E402
from memory.map_view import draw_memory_map  # noqa: E402
from scenes.scene import DEFAULT_SCENE, load_image, load_scene  # noqa: E402

DEFAULT_WINDOW = 512
"""Window side in pixels; the frame is upscaled to it."""
MIN_WINDOW = 64
SCREENSHOTS_DIR = Path("screenshots")
PAUSED_POLL_MS = 30
"""While paused (or at the end of a replay) the loop polls events this often instead of spinning."""
MAP_FRACTION = 0.4
"""The memory map overlay takes this fraction of the window side (top-right corner)."""
WINDOW_TITLE = "worldmodel"
NO_DISPLAY_MESSAGE = ("worldmodel play: no display here (DISPLAY/WAYLAND_DISPLAY unset); record or reuse an "
                      "action log and export it headless: worldmodel replay LOG --out run.mp4")

EventSource = Callable[[int], Iterable[pygame.event.Event]]
"""Called once per loop iteration with the current tick; returns the events to handle."""
MapProvider = Callable[[PlaySession, int], "np.ndarray | None"]
"""(session, size in pixels) -> uint8 [size, size, 3] top-down map, or None to draw nothing."""


def display_available() -> bool:
    """False on Linux without DISPLAY/WAYLAND_DISPLAY unless SDL_VIDEODRIVER picks a driver explicitly."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"))


def memory_map_provider(session: PlaySession, size: int) -> np.ndarray | None:
    """The memory map (memory.map_view) of the source's memory store and the camera path.

    Sources without a store (the oracle) still get their path drawn.
    """
    store = session.source.memory
    store_poses = store.poses() if store is not None and len(store) else torch.zeros(0, 5)  # [N, 5]
    path = torch.tensor([p.as_list() for p in session.path], dtype=torch.float32)  # [T, 5]
    return draw_memory_map(store_poses, path, session.pose.as_tensor(), size=size)


@dataclass
class ScriptedTick:
    """One replayed tick: the logged action and the logged pose after it."""

    action: list[float]
    pose: CameraPose


@dataclass
class GameConfig:
    """How to run the window loop. Either give `scene` (a spec) or a ready `session`."""

    scene: str | None = None
    image: str | None = None
    prompt: str | None = None
    backend: str = DEFAULT_BACKEND
    checkpoint: str | None = None
    precision: str | None = None
    """The model's precision ("fp32" / "bf16"; None: fp32)."""
    hint: bool | None = None
    """The model's geometric hint on/off (None: on when the checkpoint reads one)."""
    memory: bool | None = None
    """The model's memory on/off (None: on)."""
    sample_steps: int | None = None
    """The model's denoising steps per frame (None: the checkpoint's)."""
    memory_key_scale: float | None = None
    """The scale of the model's memory keys (None: the checkpoint's memory_key_scale)."""
    seed: int = 0
    tick_hz: float = DEFAULT_TICK_HZ
    resolution: int = DEFAULT_RESOLUTION
    window: int = DEFAULT_WINDOW
    smooth: bool = False
    record: str | None = None
    max_ticks: int | None = None
    realtime: bool = True
    show_hud: bool = True
    fly: bool = True
    bindings: Bindings = field(default_factory=Bindings)
    screenshots_dir: Path = SCREENSHOTS_DIR
    recordings_dir: Path = RECORDINGS_DIR
    event_source: EventSource | None = None
    map_provider: MapProvider | None = memory_map_provider
    session: PlaySession | None = None
    script: Iterable[ScriptedTick] | None = None
    exit_when_done: bool = False
    title: str = WINDOW_TITLE
    save_world: str | None = None
    """Folder to save the world to on quit (and on F5): memory + generator state (model backend)."""
    load_world: str | None = None
    """Folder of a saved world to continue from (model backend, same checkpoint)."""


@dataclass
class GameResult:
    ticks: int
    recordings: list[Path]
    screenshots: list[Path]
    final_pose: CameraPose
    warnings: list[str] = field(default_factory=list)
    """Problems that did not end the session (a recording stopped by a full disk, a failed screenshot)."""


def build_session(config: GameConfig) -> PlaySession:
    """Load the scene (and `--image`/`--prompt` overrides) and the frame source into a PlaySession."""
    spec = config.scene or DEFAULT_SCENE
    scene = load_scene(spec)
    for warning in scene.warnings:  # before the window opens, where the player sees it
        print(f"warning: {warning}", file=sys.stderr)
    if config.image is not None:
        scene = scene_with_image(scene, load_image(config.image, resolution=None), config.prompt)
    elif config.prompt is not None:
        scene = scene_with_image(scene, scene.image, config.prompt)
    source: FrameSource = make_frame_source(config.backend, resolution=config.resolution,
                                            start_image_path=config.image, checkpoint=config.checkpoint,
                                            precision=config.precision, hint=config.hint, memory=config.memory,
                                            sample_steps=config.sample_steps,
                                            memory_key_scale=config.memory_key_scale)
    return PlaySession(source, scene, scene_spec=spec, seed=config.seed, tick_hz=config.tick_hz,
                       image_path=config.image, recordings_dir=config.recordings_dir)


def _frame_surface(frame: np.ndarray) -> pygame.Surface:
    frame = np.ascontiguousarray(frame, dtype=np.uint8)  # [H, W, 3]
    return pygame.image.frombuffer(frame.tobytes(), (frame.shape[1], frame.shape[0]), "RGB")


def _save_surface_atomic(surface: pygame.Surface, path: Path) -> None:
    try:
        atomic_write(path, lambda tmp: pygame.image.save(surface, tmp), suffix=".png")
    except pygame.error as exc:  # pygame reports its own I/O failures this way
        raise UserError(f"{path}: cannot write the screenshot ({exc})") from None


class _Game:
    """State of one window run (kept in an object so command handlers stay small)."""

    def __init__(self, config: GameConfig, session: PlaySession) -> None:
        if config.window < MIN_WINDOW:
            raise UserError(f"--window: at least {MIN_WINDOW} pixels, got {config.window}")
        self.config = config
        self.session = session
        self.state = InputState(config.bindings, fly=config.fly)
        self.hud = Hud()
        self.show_hud = config.show_hud
        self.show_help = False
        self.show_map = False
        self.paused = False
        self.running = True
        self.script_index = 0
        self._script = iter(config.script) if config.script is not None else None
        self.recordings: list[Path] = []
        self.screenshots: list[Path] = []
        self.warnings: list[str] = []
        try:
            self.screen = pygame.display.set_mode((config.window, config.window))
        except pygame.error as exc:  # e.g. larger than the display allows
            raise UserError(f"--window: the display cannot open a {config.window} px window ({exc})") from None
        pygame.display.set_caption(f"{config.title} - {session.scene_spec} ({session.source.name})")

    # --- commands ---
    def set_capture(self, captured: bool) -> None:
        self.state.mouse_captured = captured
        pygame.event.set_grab(captured)
        pygame.mouse.set_visible(not captured)
        self.state.end_tick()  # the jump caused by grabbing is not a look

    def command(self, cmd: Command) -> None:
        now = time.monotonic()
        if cmd is Command.QUIT:
            self.running = False
        elif cmd is Command.TOGGLE_CAPTURE:
            self.set_capture(not self.state.mouse_captured)
        elif cmd is Command.PAUSE:
            self.paused = not self.paused
            if not self.paused:
                self.session.pacer.restart()
        elif cmd is Command.HELP:
            self.show_help = not self.show_help
        elif cmd is Command.HUD:
            self.show_hud = not self.show_hud
        elif cmd is Command.MEMORY_MAP:
            self.show_map = not self.show_map
        elif cmd is Command.TOGGLE_FLY:
            self.state.fly = not self.state.fly
            self.hud.show_message("fly mode" if self.state.fly else "walking (height kept)", now)
        elif cmd is Command.RECORD:
            if self.config.script is not None:
                self.hud.show_message("recording is off during a replay", now)
            elif self.session.recording:
                path = self.session.stop_recording()
                self.hud.show_message(f"saved {path}", now)
            else:
                try:
                    path = self.session.start_recording()
                except UserError as exc:
                    self.warn(str(exc), now)
                    return
                self.recordings.append(path)
                self.hud.show_message(f"recording to {path}", now)
        elif cmd is Command.SCREENSHOT:
            try:
                path = self.screenshot()
                self.hud.show_message(f"screenshot {path}", now)
            except UserError as exc:  # a full or read-only disk must not end the session
                self.warn(str(exc), now)
        elif cmd is Command.SAVE_WORLD:
            if self.config.save_world is None:
                self.hud.show_message("start with --save-world DIR to save the world", now)
            else:
                try:
                    path = self.session.save_world(self.config.save_world)
                    self.hud.show_message(f"world saved to {path}", now)
                except UserError as exc:
                    self.hud.show_message(str(exc), now)

    def warn(self, message: str, now: float) -> None:
        """A problem that does not end the session: on the HUD now, on stderr at quit."""
        self.hud.show_message(message, now)
        self.warnings.append(message)

    def screenshot(self) -> Path:
        """Save the window as shown (frame + overlays) to screenshots/<scene>-<time>-t<tick>.png."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = Path(self.session.scene_spec).name.replace(":", "-") or "scene"
        path = self.config.screenshots_dir / f"{name}-{stamp}-t{self.session.tick:06d}.png"
        _save_surface_atomic(self.screen, path)
        self.screenshots.append(path)
        return path

    # --- per iteration ---
    def advance(self) -> None:
        script = self.config.script
        if script is not None:
            tick = next(self._script, None) if self._script is not None else None
            if tick is None:
                self._script = None  # exhausted: an iterator cannot say so without being advanced
                if self.config.exit_when_done:
                    self.running = False
                elif not self.paused:
                    self.paused = True
                    self.hud.show_message("end of replay (Esc quits)", time.monotonic())
                return
            self.script_index += 1
            self.session.step(tick.action, tick.pose)
        else:
            self.session.step(action_from_input(self.state, self.session.tick_hz))
        self.state.end_tick()

    def status(self) -> HudStatus:
        stats = self.session.stats()
        return HudStatus(fps=stats.fps, ms_per_frame=stats.mean_ms, p99_ms=stats.p99_ms, pose=self.session.pose,
                         tick=self.session.tick, source=self.session.source.name,
                         recording=self.session.recording, record_path=self.session.record_path,
                         paused=self.paused, mouse_captured=self.state.mouse_captured, fly=self.state.fly,
                         replay=self.config.script is not None,
                         memory=self.session.source.use_memory, sample_steps=self.session.source.sample_steps)

    def draw(self) -> None:
        assert self.session.frame is not None
        surface = _frame_surface(self.session.frame)
        size = self.screen.get_size()
        scale = pygame.transform.smoothscale if self.config.smooth else pygame.transform.scale
        self.screen.blit(scale(surface, size), (0, 0))
        now = time.monotonic()
        if self.show_map and self.config.map_provider is not None:
            side = int(size[0] * MAP_FRACTION)
            image = self.config.map_provider(self.session, side)
            if image is not None:
                self.screen.blit(_frame_surface(image), (size[0] - image.shape[1], 0))
        status = self.status()
        if self.show_hud:
            self.hud.draw(self.screen, status, now)
        else:
            self.hud.draw_status_badges(self.screen, status, now)
        if self.show_help:
            self.hud.draw_help(self.screen, self.config.bindings)
        self.hud.draw_message(self.screen, now)
        pygame.display.flip()


def run_game(config: GameConfig) -> GameResult:
    """Open the window and play until Esc/close, or `max_ticks` ticks, or the end of `script`."""
    pygame.display.init()
    pygame.font.init()
    session: PlaySession | None = None
    try:
        session = config.session if config.session is not None else build_session(config)
        game = _Game(config, session)
        session.reset()
        if config.load_world is not None:
            session.load_world(config.load_world)
        if config.record is not None:
            game.recordings.append(session.start_recording(config.record))
        events: EventSource = config.event_source or (lambda _tick: pygame.event.get())
        game.draw()
        while game.running:
            for event in events(session.tick):
                for cmd in game.state.handle_event(event):
                    game.command(cmd)
                if not game.running:
                    break
            if not game.running:
                break
            if game.paused:
                game.draw()
                pygame.time.wait(PAUSED_POLL_MS)
                continue
            if config.max_ticks is not None and session.tick >= config.max_ticks:
                break
            game.advance()
            if session.recording_error is not None:  # the disk filled up: play on, the log so far is kept
                game.warn(session.recording_error, time.monotonic())
                session.recording_error = None
            game.draw()
            if config.realtime:
                session.wait_for_next_tick()
        if config.save_world is not None:
            session.save_world(config.save_world)
        return GameResult(ticks=session.tick, recordings=game.recordings, screenshots=game.screenshots,
                          final_pose=session.pose, warnings=game.warnings)
    finally:
        if session is not None:
            session.close()
        if pygame.display.get_init():
            pygame.event.set_grab(False)
            pygame.display.quit()
