"""Heads-up display and help overlay, drawn with pygame's default font (works headless).

The HUD shows what a player (and a person judging the model's speed) needs at a glance: FPS and
ms per generated frame, pose, tick, recording state, frame source and pause. The help overlay is
generated from the bindings table, so it can never disagree with the actual keys.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402

from game.bindings import Bindings  # noqa: E402
from conventions.camera import CameraPose  # noqa: E402

FONT_SIZE = 20
"""Pixel height of pygame's default font in the HUD (readable at the 512 px default window)."""
LINE_SPACING = 2
MARGIN = 6
PADDING = 4
TEXT_COLOUR = (235, 235, 235)
DIM_COLOUR = (170, 170, 170)
REC_COLOUR = (255, 60, 60)
REC_DIM_COLOUR = (110, 30, 30)
PAUSE_COLOUR = (255, 210, 80)
PANEL_RGBA = (0, 0, 0, 150)
BLINK_HZ = 1.0
"""The REC marker blinks at this rate (on for half of each period)."""
MESSAGE_SECONDS = 2.5
"""How long a transient message (screenshot saved, recording started) stays on screen."""


@dataclass
class HudStatus:
    """Everything the HUD shows, gathered by the loop each frame."""

    fps: float
    ms_per_frame: float
    p99_ms: float
    pose: CameraPose
    tick: int
    source: str
    recording: bool = False
    record_path: Path | None = None
    paused: bool = False
    mouse_captured: bool = False
    fly: bool = True
    replay: bool = False
    memory: bool | None = None
    """The model's memory on/off (None: the source has none, e.g. the oracle)."""
    sample_steps: int | None = None
    """The model's denoising steps per frame (`--steps`; None: the source samples nothing)."""


def format_status_lines(status: HudStatus) -> list[str]:
    """The HUD text, one string per line (testable without a window)."""
    p = status.pose
    mode = "replay" if status.replay else ("fly" if status.fly else "walk")
    lines = [
        f"{status.fps:5.1f} fps  {status.ms_per_frame:6.1f} ms/frame (p99 {status.p99_ms:.1f})",
        f"pos {p.x:+7.2f} {p.y:+6.2f} {p.z:+7.2f}  yaw {math.degrees(p.yaw):+7.1f}\u00b0"
        f"  pitch {math.degrees(p.pitch):+5.1f}\u00b0",
        f"tick {status.tick}  source {status.source}  {mode}" + ("  mouse look" if status.mouse_captured else ""),
    ]
    if status.memory is not None:
        lines[-1] += f"  memory {'on' if status.memory else 'off'}"
    if status.sample_steps is not None:
        lines[-1] += f"  steps {status.sample_steps}"
    return lines


class Hud:
    """Draws the HUD panel, the help overlay and transient messages onto a surface."""

    def __init__(self, font_size: int = FONT_SIZE) -> None:
        if not pygame.font.get_init():
            pygame.font.init()
        self.font = pygame.font.Font(None, font_size)
        self.message: str | None = None
        self.message_until = 0.0

    def show_message(self, text: str, now: float) -> None:
        self.message = text
        self.message_until = now + MESSAGE_SECONDS

    def _panel(self, surface: pygame.Surface, rows: list[tuple[str, tuple[int, int, int]]], x: int, y: int,
               anchor_bottom: bool = False) -> pygame.Rect:
        rendered = [self.font.render(text, True, colour) for text, colour in rows]
        width = max(r.get_width() for r in rendered) + 2 * PADDING
        height = sum(r.get_height() + LINE_SPACING for r in rendered) + 2 * PADDING
        if anchor_bottom:
            y = y - height
        panel = pygame.Surface((width, height), pygame.SRCALPHA)
        panel.fill(PANEL_RGBA)
        surface.blit(panel, (x, y))
        cy = y + PADDING
        for r in rendered:
            surface.blit(r, (x + PADDING, cy))
            cy += r.get_height() + LINE_SPACING
        return pygame.Rect(x, y, width, height)

    def draw(self, surface: pygame.Surface, status: HudStatus, now: float) -> None:
        rows = [(line, TEXT_COLOUR) for line in format_status_lines(status)]
        if status.recording:
            blink_on = (now * BLINK_HZ) % 1.0 < 0.5
            name = status.record_path.name if status.record_path is not None else ""
            rows.append((f"REC  {name}", REC_COLOUR if blink_on else REC_DIM_COLOUR))
        if status.paused:
            rows.append(("PAUSED (P to resume)", PAUSE_COLOUR))
        rows.append(("F1 help", DIM_COLOUR))
        self._panel(surface, rows, MARGIN, MARGIN)

    def draw_status_badges(self, surface: pygame.Surface, status: HudStatus, now: float) -> None:
        """With the HUD hidden, still show REC and PAUSED so the player never records unknowingly."""
        rows: list[tuple[str, tuple[int, int, int]]] = []
        if status.recording:
            rows.append(("REC", REC_COLOUR if (now * BLINK_HZ) % 1.0 < 0.5 else REC_DIM_COLOUR))
        if status.paused:
            rows.append(("PAUSED", PAUSE_COLOUR))
        if rows:
            self._panel(surface, rows, MARGIN, MARGIN)

    def draw_message(self, surface: pygame.Surface, now: float) -> None:
        if self.message is None or now > self.message_until:
            self.message = None
            return
        self._panel(surface, [(self.message, TEXT_COLOUR)], MARGIN, surface.get_height() - MARGIN,
                    anchor_bottom=True)

    def draw_help(self, surface: pygame.Surface, bindings: Bindings) -> None:
        """All bindings from the table in two columns (key, action), centred on the surface."""
        help_rows = bindings.help_rows()
        title = self.font.render("Controls", True, PAUSE_COLOUR)
        keys = [self.font.render(key, True, PAUSE_COLOUR) for key, _ in help_rows]
        whats = [self.font.render(what, True, TEXT_COLOUR) for _, what in help_rows]
        key_w = max(k.get_width() for k in keys)
        gap = 3 * PADDING
        line_h = self.font.get_linesize() + LINE_SPACING
        width = max(title.get_width(), key_w + gap + max(w.get_width() for w in whats)) + 2 * PADDING
        height = (len(help_rows) + 1) * line_h + 2 * PADDING
        x = max(0, (surface.get_width() - width) // 2)
        y = max(0, (surface.get_height() - height) // 2)
        panel = pygame.Surface((width, height), pygame.SRCALPHA)
        panel.fill(PANEL_RGBA)
        surface.blit(panel, (x, y))
        surface.blit(title, (x + PADDING, y + PADDING))
        for i, (k, w) in enumerate(zip(keys, whats), start=1):
            cy = y + PADDING + i * line_h
            surface.blit(k, (x + PADDING, cy))
            surface.blit(w, (x + PADDING + key_w + gap, cy))
