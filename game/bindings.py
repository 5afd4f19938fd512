"""Keyboard/mouse -> action mapping: ONE rebindable table (docs/architecture.md §The conventions, in brief default keys).

Why a table and an explicit `InputState`: the help overlay, the README and any rebinding all read the
same table, and tracking held keys from KEYDOWN/KEYUP events (instead of `pygame.key.get_pressed()`)
makes the loop drivable by posted events, which is how the headless tests play the real game
(`get_pressed()` never changes under SDL_VIDEODRIVER=dummy).

The action layout, integration and speeds come from `conventions.camera`; this module only decides
which key pushes which component and converts speeds per second into amounts per tick.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the banner switch)

from conventions.camera import (ACTION_DIM, ACTION_FIELDS, TURN_SPEED_DPS, WALK_SPEED_MPS,  # noqa: E402
                               held_key_action)
from conventions.errors import UserError  # noqa: E402

MOVE_SPEED_MPS: float = WALK_SPEED_MPS
"""Speed of a held movement key (forward/back, strafe, up/down), metres per second."""
TURN_SPEED_RAD_PER_S: float = math.radians(TURN_SPEED_DPS)
"""Speed of a held arrow key (yaw and pitch), radians per second."""
MOUSE_SENSITIVITY_RAD_PER_PX: float = 0.0025
"""Mouse look: radians of yaw/pitch per pixel of relative mouse motion while the mouse is captured."""


class Command(Enum):
    """One-shot commands (triggered on key press, not held)."""

    QUIT = "quit"
    TOGGLE_CAPTURE = "toggle_capture"
    RECORD = "record"
    SCREENSHOT = "screenshot"
    PAUSE = "pause"
    HELP = "help"
    HUD = "hud"
    MEMORY_MAP = "memory_map"
    TOGGLE_FLY = "toggle_fly"
    SAVE_WORLD = "save_world"


COMMAND_HELP: dict[Command, str] = {
    Command.QUIT: "quit",
    Command.TOGGLE_CAPTURE: "capture / release the mouse (mouse look)",
    Command.RECORD: "start / stop recording an action log",
    Command.SCREENSHOT: "screenshot (PNG in screenshots/)",
    Command.PAUSE: "pause / resume",
    Command.HELP: "this help",
    Command.HUD: "show / hide the HUD",
    Command.MEMORY_MAP: "show / hide the memory map",
    Command.TOGGLE_FLY: "fly mode (up/down keys) / walking (height kept)",
    Command.SAVE_WORLD: "save the world now (needs --save-world DIR, model backend)",
}


@dataclass(frozen=True)
class AxisBinding:
    """A held key pushes one action component by `sign` (full speed while held)."""

    component: str
    sign: float

    def __post_init__(self) -> None:
        if self.component not in ACTION_FIELDS:
            raise ValueError(f"unknown action component {self.component!r}; known: {ACTION_FIELDS}")
        if self.sign not in (-1.0, 1.0):
            raise ValueError(f"an axis binding pushes by +1 or -1, got {self.sign}")

    def describe(self) -> str:
        names = {
            ("forward", 1.0): "move forward", ("forward", -1.0): "move back",
            ("right", 1.0): "strafe right", ("right", -1.0): "strafe left",
            ("up", 1.0): "up (fly mode)", ("up", -1.0): "down (fly mode)",
            ("yaw_delta", 1.0): "turn left", ("yaw_delta", -1.0): "turn right",
            ("pitch_delta", 1.0): "look up", ("pitch_delta", -1.0): "look down",
        }
        return names[(self.component, self.sign)]


def _default_axes() -> dict[int, AxisBinding]:
    return {
        pygame.K_w: AxisBinding("forward", 1.0),
        pygame.K_s: AxisBinding("forward", -1.0),
        pygame.K_d: AxisBinding("right", 1.0),
        pygame.K_a: AxisBinding("right", -1.0),
        pygame.K_SPACE: AxisBinding("up", 1.0),
        pygame.K_c: AxisBinding("up", -1.0),
        pygame.K_LEFT: AxisBinding("yaw_delta", 1.0),  # positive yaw turns left (docs/architecture.md §The conventions, in brief)
        pygame.K_RIGHT: AxisBinding("yaw_delta", -1.0),
        pygame.K_UP: AxisBinding("pitch_delta", 1.0),
        pygame.K_DOWN: AxisBinding("pitch_delta", -1.0),
    }


def _default_commands() -> dict[int, Command]:
    return {
        pygame.K_ESCAPE: Command.QUIT,
        pygame.K_TAB: Command.TOGGLE_CAPTURE,
        pygame.K_r: Command.RECORD,
        pygame.K_F12: Command.SCREENSHOT,
        pygame.K_p: Command.PAUSE,
        pygame.K_F1: Command.HELP,
        pygame.K_h: Command.HUD,
        pygame.K_m: Command.MEMORY_MAP,
        pygame.K_f: Command.TOGGLE_FLY,
        pygame.K_F5: Command.SAVE_WORLD,
    }


@dataclass
class Bindings:
    """The one rebindable table: pygame key code -> held axis or one-shot command.

    A key is bound to at most one thing; `rebind` moves a binding to another key and refuses
    to silently shadow an existing one.
    """

    axes: dict[int, AxisBinding] = field(default_factory=_default_axes)
    commands: dict[int, Command] = field(default_factory=_default_commands)
    mouse_sensitivity: float = MOUSE_SENSITIVITY_RAD_PER_PX
    click_captures_mouse: bool = True

    def __post_init__(self) -> None:
        both = set(self.axes) & set(self.commands)
        if both:
            raise ValueError(f"keys bound twice: {sorted(pygame.key.name(k) for k in both)}")

    def rebind(self, target: AxisBinding | Command, key: int | str) -> None:
        """Bind `target` to `key` (a pygame key code or name like "w", "left", "f12") instead of its old key."""
        code = _key_code(key) if isinstance(key, str) else int(key)
        old_axis, old_command = self.axes.get(code), self.commands.get(code)
        if (old_axis is not None and old_axis != target) or (old_command is not None and old_command != target):
            taken = old_axis.describe() if old_axis is not None else COMMAND_HELP[old_command]
            raise UserError(f"key {pygame.key.name(code)!r} is already bound to {taken!r}")
        if isinstance(target, Command):
            self.commands = {k: c for k, c in self.commands.items() if c != target}
            self.commands[code] = target
        else:
            self.axes = {k: a for k, a in self.axes.items() if a != target}
            self.axes[code] = target

    @classmethod
    def from_names(cls, axes: Mapping[str, tuple[str, float]], commands: Mapping[str, str]) -> "Bindings":
        """Build a table from key names, e.g. axes={"w": ("forward", 1)}, commands={"escape": "quit"}."""
        try:
            return cls(
                axes={_key_code(k): AxisBinding(c, float(s)) for k, (c, s) in axes.items()},
                commands={_key_code(k): Command(v) for k, v in commands.items()},
            )
        except ValueError as exc:
            raise UserError(f"bindings: {exc}") from exc

    def help_rows(self) -> list[tuple[str, str]]:
        """(key name, what it does) for every binding, in table order; the help overlay shows these."""
        rows = [(pygame.key.name(k), a.describe()) for k, a in self.axes.items()]
        rows.append(("mouse (captured)", "look around"))
        if self.click_captures_mouse:
            rows.append(("click", COMMAND_HELP[Command.TOGGLE_CAPTURE]))
        rows += [(pygame.key.name(k), COMMAND_HELP[c]) for k, c in self.commands.items()]
        return rows


def _key_code(name: str) -> int:
    try:
        with warnings.catch_warnings():
            # SDL resolves key names without an initialised display; pygame warns regardless.
            warnings.filterwarnings("ignore", message="pygame.init")
            return pygame.key.key_code(name)
    except ValueError as exc:
        raise UserError(f"bindings: unknown key name {name!r}") from exc


@dataclass
class InputState:
    """What the player is doing right now: held keys and mouse motion accumulated since the last tick.

    Feed every pygame event to `handle_event`; it returns the one-shot commands the event triggered.
    Call `end_tick()` after reading the action so mouse motion is used exactly once.
    """

    bindings: Bindings = field(default_factory=Bindings)
    held: set[int] = field(default_factory=set)
    mouse_dx: float = 0.0
    mouse_dy: float = 0.0
    mouse_captured: bool = False
    fly: bool = True

    def handle_event(self, event: pygame.event.Event) -> list[Command]:
        commands: list[Command] = []
        if event.type == pygame.QUIT:
            commands.append(Command.QUIT)
        elif event.type == pygame.KEYDOWN:
            if event.key in self.bindings.axes:
                self.held.add(event.key)
            elif event.key in self.bindings.commands:
                commands.append(self.bindings.commands[event.key])
        elif event.type == pygame.KEYUP:
            self.held.discard(event.key)
        elif event.type == pygame.MOUSEMOTION:
            if self.mouse_captured:
                rel = event.rel
                self.mouse_dx += float(rel[0])
                self.mouse_dy += float(rel[1])
        elif event.type == pygame.MOUSEBUTTONDOWN:
            if self.bindings.click_captures_mouse and not self.mouse_captured:
                commands.append(Command.TOGGLE_CAPTURE)
        elif event.type == pygame.WINDOWFOCUSLOST:
            # KEYUPs of keys released while unfocused never arrive: drop them so nothing sticks.
            self.held.clear()
            self.mouse_dx = self.mouse_dy = 0.0
        return commands

    def end_tick(self) -> None:
        """Forget the mouse motion consumed by this tick's action."""
        self.mouse_dx = self.mouse_dy = 0.0

    def axis(self, component: str) -> float:
        """Sum of held keys' signs on one component, clamped to [-1, 1] (opposite keys cancel)."""
        total = sum(a.sign for k, a in self.bindings.axes.items() if k in self.held and a.component == component)
        return max(-1.0, min(1.0, total))


def action_from_input(state: InputState, tick_hz: float) -> list[float]:
    """The relative action of one tick, `[forward, right, up, yaw_delta, pitch_delta]`.

    Translation: MOVE_SPEED_MPS / tick_hz metres per tick; a diagonal (forward + strafe) is
    normalised so it is not faster than a straight move. Up/down only in fly mode (walking keeps
    the height). Rotation: TURN_SPEED_RAD_PER_S / tick_hz per tick from arrow keys plus mouse
    motion times the sensitivity (mouse right turns right = negative yaw; mouse down looks down).
    Pure: does not consume the mouse motion (see `InputState.end_tick`).
    """
    axes = {name: state.axis(name) for name in ACTION_FIELDS}
    if not state.fly:
        axes["up"] = 0.0
    action = held_key_action(axes, tick_hz)  # the speeds and the diagonal rule of conventions.camera
    sens = state.bindings.mouse_sensitivity
    action[3] -= state.mouse_dx * sens
    action[4] -= state.mouse_dy * sens
    assert len(action) == ACTION_DIM
    return [float(v) + 0.0 for v in action]  # + 0.0 turns -0.0 into 0.0 so logs read cleanly
