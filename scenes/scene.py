"""Scenes a person can play: a start image, a prompt and a start pose (docs/architecture.md §The conventions, in brief).

A scene is named one of three ways: a bundled scene (`scenes/<name>/scene.toml` + `start.png`),
a path to any folder laid out the same way, or `procedural:<seed>` (a world made by the default
generator, whose start image is its true render). Every way of failing to load one ends in a
`UserError` that names the file and the problem.
"""

from __future__ import annotations

import tomllib
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from conventions.camera import DEFAULT_FOV_DEG, DEFAULT_RESOLUTION, CameraPose
from conventions.errors import UserError
from conventions.limits import MAX_SEED, check_number, pose_problem
from scenes.render import render_views
from scenes.world import generate_world

SCENES_DIR = Path(__file__).resolve().parent
DEFAULT_SCENE = "courtyard"
PROCEDURAL_PREFIX = "procedural:"
SCENE_FILE = "scene.toml"
START_IMAGE = "start.png"
MAX_IMAGE_PIXELS = 64_000_000
"""Larger images are refused (decompression-bomb guard); 8000x8000 photos still load."""
START_IMAGE_RESOLUTION = 256
"""Bundled and procedural start images are stored/rendered at this size and resized on use."""


@dataclass
class Scene:
    name: str
    prompt: str
    start_pose: CameraPose
    fov_deg: float
    world_seed: int | None
    image: np.ndarray  # uint8 [H, W, 3], native size
    path: Path | None  # folder of a bundled/path scene; None for procedural
    warnings: list[str] = field(default_factory=list)
    """Problems that do not stop the scene from loading (an unknown key in scene.toml, a typo)."""


def load_image(path: str | Path, resolution: int | None = DEFAULT_RESOLUTION) -> np.ndarray:
    """Any PNG/JPEG (RGB, RGBA, greyscale, palette, 16-bit) -> uint8 [res, res, 3].

    Non-square images are centre-cropped to a square first (the camera is square), then resized
    with a high-quality filter. `resolution=None` keeps the native size (still RGB, still cropped).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: image file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG", "MPO"):
                raise UserError(f"{path}: {im.format} image; a PNG or JPEG is needed")
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise UserError(f"{path}: image is {w}x{h}, larger than the {MAX_IMAGE_PIXELS} pixel limit")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, rgba)
            im = im.convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image (or an image format that cannot be read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: broken image file ({exc})") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path}: image is too large (over {MAX_IMAGE_PIXELS} pixels)") from None
    w, h = im.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if resolution is not None and side != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.LANCZOS if side > resolution
                       else Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8).copy()


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [res, res, 3] with the same crop/filter rules as `load_image`."""
    if image.shape[0] == resolution and image.shape[1] == resolution:
        return image
    im = Image.fromarray(image)
    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    im = im.resize((resolution, resolution), Image.Resampling.LANCZOS if side > resolution
                   else Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8).copy()


def list_scenes() -> list[str]:
    """Names of the bundled scenes (folders of this package holding a scene.toml)."""
    return sorted(p.parent.name for p in SCENES_DIR.glob(f"*/{SCENE_FILE}"))


def parse_procedural(spec: str) -> int | None:
    """`procedural:<seed>` -> seed; anything else -> None. A malformed seed is a UserError."""
    if not spec.startswith(PROCEDURAL_PREFIX):
        return None
    text = spec[len(PROCEDURAL_PREFIX):]
    try:
        seed = int(text) if len(text) <= len(str(MAX_SEED)) else -1  # no 10,000-digit parse
    except ValueError:
        raise UserError(f"{spec}: the seed after '{PROCEDURAL_PREFIX}' must be a non-negative integer") from None
    if seed < 0 or seed > MAX_SEED:
        raise UserError(f"{spec}: the seed after '{PROCEDURAL_PREFIX}' must be an integer in [0, {MAX_SEED}]")
    return seed


def procedural_scene(seed: int, fov_deg: float = DEFAULT_FOV_DEG) -> Scene:
    """The default generator's world `seed`, starting at its spawn pose with its true render."""
    world = generate_world(seed)
    pose = world.spawn_pose()
    scene = Scene(name=f"{PROCEDURAL_PREFIX}{seed}", prompt=world.caption, start_pose=pose,
                  fov_deg=fov_deg, world_seed=seed, image=np.zeros((1, 1, 3), np.uint8), path=None)
    scene.image = render_start_image(scene, pose)
    return scene


def render_start_image(scene: Scene, pose: CameraPose, resolution: int = START_IMAGE_RESOLUTION) -> np.ndarray:
    """The oracle's view of a procedural scene's world at `pose`: what a session starting there (a
    recording begun mid-session) starts from. uint8 [resolution, resolution, 3]."""
    if scene.world_seed is None:
        raise ValueError(f"{scene.name}: not a procedural world; its picture cannot be rendered at another pose")
    world = generate_world(scene.world_seed)
    return render_views(world, pose.as_tensor()[None], resolution, scene.fov_deg)[0].numpy()


def _field(data: dict, key: str, kind, path: Path, required: bool = True, default=None):
    if key not in data:
        if required:
            raise UserError(f"{path}: missing field '{key}'")
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{path}: field '{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def load_scene_folder(folder: Path) -> Scene:
    toml_path = folder / SCENE_FILE
    if not toml_path.exists():
        raise UserError(f"{folder}: not a scene folder (no {SCENE_FILE})")
    try:
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{toml_path}: not valid TOML ({exc})") from None
    warnings = [_unknown_key_warning(toml_path, key) for key in data if key not in SCENE_KEYS]
    prompt = _field(data, "prompt", str, toml_path)
    pose_list = _field(data, "start_pose", list, toml_path)
    problem = pose_problem([float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in pose_list],
                           "field 'start_pose'")
    if problem:
        raise UserError(f"{toml_path}: {problem}")
    pose = CameraPose.from_sequence(pose_list)
    fov = _field(data, "fov_deg", float, toml_path, required=False, default=DEFAULT_FOV_DEG)
    check_number("fov_deg", fov, f"{toml_path}: field 'fov_deg'")
    seed = _field(data, "world_seed", int, toml_path, required=False, default=None)
    if seed is not None:
        check_number("seed", seed, f"{toml_path}: field 'world_seed'")
    name = _field(data, "name", str, toml_path, required=False, default=folder.name)
    image_name = _field(data, "image", str, toml_path, required=False, default=START_IMAGE)
    image = load_image(folder / image_name, resolution=None)
    return Scene(name=name, prompt=prompt, start_pose=pose, fov_deg=fov, world_seed=seed,
                 image=image, path=folder, warnings=warnings)


SCENE_KEYS: tuple[str, ...] = ("name", "prompt", "start_pose", "fov_deg", "world_seed", "image")
"""Every key scene.toml may hold (docs/architecture.md §The conventions, in brief); another is a warning naming the closest of these."""
SIMILAR_KEY_CUTOFF = 0.5
"""difflib similarity above which an unknown key is offered as a typo of a known one ('fov' -> 'fov_deg')."""


def _unknown_key_warning(toml_path: Path, key: str) -> str:
    close = difflib.get_close_matches(key, SCENE_KEYS, n=1, cutoff=SIMILAR_KEY_CUTOFF)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{toml_path}: unknown key '{key}' ignored{hint}; known keys: {', '.join(SCENE_KEYS)}"


def load_scene(spec: str) -> Scene:
    """A bundled scene name, a path to a scene folder, or `procedural:<seed>` -> Scene."""
    seed = parse_procedural(spec)
    if seed is not None:
        return procedural_scene(seed)
    bundled = SCENES_DIR / spec
    if "/" not in spec and "\\" not in spec and (bundled / SCENE_FILE).exists():
        return load_scene_folder(bundled)
    folder = Path(spec)
    if folder.is_dir():
        return load_scene_folder(folder)
    if folder.exists():
        raise UserError(f"{spec}: a scene is a folder with {SCENE_FILE} and {START_IMAGE}, not a file")
    raise UserError(f"{spec}: no such scene (bundled scenes: {', '.join(list_scenes()) or 'none'}; "
                    f"or a scene folder, or {PROCEDURAL_PREFIX}<seed>)")
