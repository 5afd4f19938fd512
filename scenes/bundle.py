"""Regenerate the bundled scenes from their world seeds: `python -m scenes.bundle`.

Each bundled scene is a procedural world (so the oracle can render it and eval can score the
model in it) saved as `scenes/<name>/scene.toml` + a 256x256 `start.png` rendered at the spawn
pose. The prompt is the world's caption, written from its parameters.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from scenes.render import render_views
from scenes.scene import SCENE_FILE, SCENES_DIR, START_IMAGE, START_IMAGE_RESOLUTION
from scenes.world import generate_world
from conventions.camera import DEFAULT_FOV_DEG

BUNDLED_SEEDS: dict[str, int] = {
    "courtyard": 102, "plaza": 112, "gardens": 120, "snowfield": 122,
    "sunset-yard": 121, "blue-orchard": 132, "gateway": 138, "winter-fort": 105,
}


def write_scene(name: str, seed: int, root: Path = SCENES_DIR) -> Path:
    world = generate_world(seed)
    pose = world.spawn_pose()
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    image = render_views(world, pose.as_tensor()[None], START_IMAGE_RESOLUTION, DEFAULT_FOV_DEG)[0]
    Image.fromarray(image.numpy()).save(folder / START_IMAGE)
    pose_text = ", ".join(f"{v:.6f}" for v in pose.as_list())
    (folder / SCENE_FILE).write_text(
        f'name = "{name}"\n'
        f'prompt = "{world.caption}"\n'
        f"start_pose = [{pose_text}]  # x, y, z (m), yaw, pitch (rad)\n"
        f"fov_deg = {DEFAULT_FOV_DEG}\n"
        f"world_seed = {seed}  # procedural ground truth (scenes.world.generate_world)\n",
        encoding="utf-8")
    return folder


def main() -> None:
    for name, seed in BUNDLED_SEEDS.items():
        print(write_scene(name, seed), generate_world(seed).caption)


if __name__ == "__main__":
    main()
