"""Procedural ground-truth worlds: a seed -> a walled place made of analytic primitives.

A world is a floor, an outer wall ring with gateways, a few inner walls, boxes (crates), pillars,
spheres and arches, each with a colour and a procedural texture, under a sky with a sun and fog.
Everything is stored as small tensors grouped by primitive kind so `scenes.render` can intersect
all rays with all primitives of a kind in one vectorised operation. The same parameters write the
caption, so text conditioning describes what is really there.

Held-out worlds (for evaluation) are the seeds >= HELDOUT_SEED_START; training data never uses them.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, fields, replace

import torch

from conventions.camera import CameraPose

HELDOUT_SEED_START = 1_000_000
"""Seeds at or above this are held out: data sets for training refuse them, eval suites use them."""

EYE_HEIGHT = 1.6
"""Camera height (m) of a walking player; spawn poses and walking trajectories use it."""

# Textures (pattern ids shared with the renderer).
PATTERN_PLAIN, PATTERN_CHECKER, PATTERN_STRIPES, PATTERN_NOISE = 0, 1, 2, 3
PATTERN_NAMES = {PATTERN_PLAIN: "plain", PATTERN_CHECKER: "checkered",
                 PATTERN_STRIPES: "striped", PATTERN_NOISE: "speckled"}

# Named colours: the caption says the name, the renderer uses the RGB.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.78, 0.16, 0.14), "orange": (0.90, 0.48, 0.12), "yellow": (0.92, 0.80, 0.20),
    "green": (0.22, 0.62, 0.24), "teal": (0.12, 0.58, 0.58), "blue": (0.16, 0.32, 0.80),
    "purple": (0.50, 0.24, 0.66), "pink": (0.92, 0.50, 0.66), "white": (0.90, 0.90, 0.88),
    "grey": (0.52, 0.52, 0.54), "black": (0.10, 0.10, 0.12), "brown": (0.45, 0.28, 0.14),
}

# Ground and wall materials: (name, base colour, second colour, pattern, pattern scale per metre).
GROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], int, float]] = {
    "sand": ((0.84, 0.74, 0.52), (0.76, 0.64, 0.42), PATTERN_NOISE, 2.0),
    "grass": ((0.30, 0.55, 0.22), (0.24, 0.46, 0.18), PATTERN_NOISE, 1.5),
    "tiles": ((0.80, 0.80, 0.78), (0.35, 0.35, 0.38), PATTERN_CHECKER, 1.0),
    "cobblestone": ((0.50, 0.48, 0.45), (0.38, 0.36, 0.34), PATTERN_NOISE, 3.0),
    "snow": ((0.93, 0.94, 0.97), (0.84, 0.86, 0.92), PATTERN_NOISE, 1.0),
    "planks": ((0.62, 0.44, 0.26), (0.50, 0.34, 0.19), PATTERN_STRIPES, 2.0),
}
WALLS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], int, float]] = {
    "sand-coloured stone": ((0.80, 0.70, 0.50), (0.70, 0.60, 0.42), PATTERN_NOISE, 2.0),
    "red brick": ((0.62, 0.24, 0.18), (0.48, 0.18, 0.14), PATTERN_STRIPES, 4.0),
    "grey concrete": ((0.60, 0.60, 0.60), (0.52, 0.52, 0.53), PATTERN_NOISE, 1.0),
    "white plaster": ((0.90, 0.88, 0.84), (0.82, 0.80, 0.76), PATTERN_PLAIN, 1.0),
    "dark slate": ((0.28, 0.30, 0.34), (0.20, 0.22, 0.26), PATTERN_CHECKER, 1.0),
    "green hedge": ((0.20, 0.42, 0.18), (0.14, 0.32, 0.12), PATTERN_NOISE, 3.0),
}
# Skies: (name, horizon colour, zenith colour, sun elevation deg, sun colour, ambient)
SKIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float,
                       tuple[float, float, float], float]] = {
    "a clear noon sky": ((0.70, 0.82, 0.95), (0.25, 0.50, 0.90), 65.0, (1.0, 0.98, 0.92), 0.35),
    "a morning sky": ((0.95, 0.82, 0.65), (0.45, 0.62, 0.88), 25.0, (1.0, 0.88, 0.70), 0.35),
    "an evening sky": ((0.98, 0.60, 0.35), (0.30, 0.30, 0.60), 12.0, (1.0, 0.65, 0.40), 0.30),
    "an overcast sky": ((0.72, 0.74, 0.76), (0.55, 0.58, 0.62), 50.0, (0.55, 0.56, 0.58), 0.60),
    "a dusk sky": ((0.55, 0.40, 0.55), (0.10, 0.12, 0.30), 6.0, (0.80, 0.50, 0.45), 0.30),
}
LAYOUTS = ("walled courtyard", "enclosed plaza", "maze of rooms", "fortified yard")
FOGS = {"": 0.0, "in light haze": 0.025, "in thick fog": 0.06}


@dataclass
class Primitives:
    """All primitives of one world, grouped by kind; each row has a material index.

    boxes:     centre [Nb,3], half size [Nb,3]                  (axis-aligned)
    spheres:   centre [Ns,3], radius [Ns]
    cylinders: centre [Nc,3] (x, y_mid, z), half height [Nc], radius [Nc]   (vertical, capped)
    """

    box_centre: torch.Tensor
    box_half: torch.Tensor
    box_material: torch.Tensor
    sphere_centre: torch.Tensor
    sphere_radius: torch.Tensor
    sphere_material: torch.Tensor
    cyl_centre: torch.Tensor
    cyl_half_height: torch.Tensor
    cyl_radius: torch.Tensor
    cyl_material: torch.Tensor


@dataclass
class Materials:
    """Material table [M, ...]; index 0 is the ground."""

    colour: torch.Tensor  # [M, 3] base RGB in [0, 1]
    colour2: torch.Tensor  # [M, 3] second pattern colour
    pattern: torch.Tensor  # [M] int64 pattern id
    scale: torch.Tensor  # [M] pattern frequency per metre


@dataclass
class Sky:
    horizon: tuple[float, float, float]
    zenith: tuple[float, float, float]
    sun_direction: tuple[float, float, float]  # unit vector towards the sun
    sun_colour: tuple[float, float, float]
    ambient: float
    fog_density: float


@dataclass
class World:
    """A procedural world. `describe` holds the parameters the caption is written from."""

    seed: int
    half_extent: float  # the playable area is [-half_extent, half_extent]^2 in x/z
    primitives: Primitives
    materials: Materials
    sky: Sky
    describe: dict[str, str]
    footprints: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)
    """2-D obstacle footprints for navigation: ("box", (cx, cz, hx, hz)) or ("circle", (cx, cz, r))."""

    @property
    def caption(self) -> str:
        return write_caption(self.describe)

    def to(self, device: torch.device | str) -> "World":
        """The same world with its primitive and material tables on `device` (the ray caster runs
        where they are: batched on a GPU it renders training data far faster than on the CPU)."""
        def moved(table):
            return replace(table, **{f.name: getattr(table, f.name).to(device) for f in fields(table)})

        return replace(self, primitives=moved(self.primitives), materials=moved(self.materials))

    def is_free(self, x: float, z: float, radius: float = 0.4) -> bool:
        """Whether a walker of `radius` can stand at (x, z): inside the walls, touching nothing."""
        if abs(x) > self.half_extent - radius or abs(z) > self.half_extent - radius:
            return False
        for kind, p in self.footprints:
            if kind == "box":
                cx, cz, hx, hz = p
                if abs(x - cx) < hx + radius and abs(z - cz) < hz + radius:
                    return False
            else:
                cx, cz, r = p
                if (x - cx) ** 2 + (z - cz) ** 2 < (r + radius) ** 2:
                    return False
        return True

    def segment_is_free(self, x0: float, z0: float, x1: float, z1: float, radius: float = 0.4,
                        step: float = 0.2) -> bool:
        n = max(1, int(math.hypot(x1 - x0, z1 - z0) / step))
        return all(self.is_free(x0 + (x1 - x0) * i / n, z0 + (z1 - z0) * i / n, radius)
                   for i in range(n + 1))

    def random_free_point(self, rng: random.Random, radius: float = 0.5) -> tuple[float, float]:
        for _ in range(10_000):
            x = rng.uniform(-self.half_extent, self.half_extent)
            z = rng.uniform(-self.half_extent, self.half_extent)
            if self.is_free(x, z, radius):
                return x, z
        raise RuntimeError(f"world {self.seed}: no free point found")

    def spawn_pose(self) -> CameraPose:
        """A deterministic free standing point, looking towards the centre of the world."""
        rng = random.Random(self.seed * 7919 + 1)
        x, z = self.random_free_point(rng, radius=0.8)
        yaw = math.atan2(x, z)  # forward (-sin yaw, -cos yaw) points from (x, z) to the origin
        return CameraPose(x, EYE_HEIGHT, z, yaw, 0.0)


def write_caption(d: dict[str, str]) -> str:
    """'a walled courtyard of sand-coloured stone with red pillars and blue crates under an evening sky'."""
    article = "an" if d["layout"][0] in "aeiou" else "a"
    parts = [f"{article} {d['layout']} of {d['wall']} on {d['ground']}"]
    things = [f"{d['pillar_colour']} pillars", f"{d['box_colour']} crates"]
    if d.get("sphere_colour"):
        things.append(f"{d['sphere_colour']} spheres")
    if d.get("arch_colour"):
        things.append(f"{d['arch_colour']} arches")
    parts.append("with " + ", ".join(things[:-1]) + " and " + things[-1])
    parts.append(f"under {d['sky']}")
    if d.get("fog"):
        parts.append(d["fog"])
    return " ".join(parts)


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain (sorted), for the text encoder's vocabulary."""
    texts = list(COLOURS) + list(GROUNDS) + list(WALLS) + list(SKIES) + list(LAYOUTS) + list(FOGS)
    texts += ["a of on with and under pillars crates spheres arches", ", -"]
    words: set[str] = set()
    for t in texts:
        words.update(tokenize_words(t))
    return sorted(words)


def tokenize_words(text: str) -> list[str]:
    """Lower-case words and punctuation marks: the one word splitter for captions and prompts."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


class _Builder:
    """Accumulates primitives and materials while a world is generated."""

    def __init__(self) -> None:
        self.materials: list[tuple[tuple[float, ...], tuple[float, ...], int, float]] = []
        self.boxes: list[tuple[tuple[float, ...], tuple[float, ...], int]] = []
        self.spheres: list[tuple[tuple[float, ...], float, int]] = []
        self.cylinders: list[tuple[tuple[float, ...], float, float, int]] = []
        self.footprints: list[tuple[str, tuple[float, ...]]] = []

    def material(self, colour, colour2, pattern: int, scale: float) -> int:
        self.materials.append((tuple(colour), tuple(colour2), pattern, scale))
        return len(self.materials) - 1

    def box(self, centre, half, mat: int, obstacle: bool = True) -> None:
        self.boxes.append((tuple(centre), tuple(half), mat))
        if obstacle:
            self.footprints.append(("box", (centre[0], centre[2], half[0], half[2])))

    def sphere(self, centre, radius: float, mat: int) -> None:
        self.spheres.append((tuple(centre), radius, mat))
        self.footprints.append(("circle", (centre[0], centre[2], radius)))

    def cylinder(self, centre, half_height: float, radius: float, mat: int) -> None:
        self.cylinders.append((tuple(centre), half_height, radius, mat))
        self.footprints.append(("circle", (centre[0], centre[2], radius)))

    def overlaps(self, x: float, z: float, r: float) -> bool:
        for kind, p in self.footprints:
            if kind == "box":
                if abs(x - p[0]) < p[2] + r and abs(z - p[1]) < p[3] + r:
                    return True
            elif (x - p[0]) ** 2 + (z - p[1]) ** 2 < (p[2] + r) ** 2:
                return True
        return False

    def build(self) -> tuple[Primitives, Materials]:
        f = torch.float32

        def t(rows, width=None):
            if not rows:
                return torch.zeros((0, width) if width else (0,), dtype=f)
            return torch.tensor(rows, dtype=f)

        prims = Primitives(
            box_centre=t([b[0] for b in self.boxes], 3), box_half=t([b[1] for b in self.boxes], 3),
            box_material=torch.tensor([b[2] for b in self.boxes], dtype=torch.long),
            sphere_centre=t([s[0] for s in self.spheres], 3), sphere_radius=t([s[1] for s in self.spheres]),
            sphere_material=torch.tensor([s[2] for s in self.spheres], dtype=torch.long),
            cyl_centre=t([c[0] for c in self.cylinders], 3),
            cyl_half_height=t([c[1] for c in self.cylinders]), cyl_radius=t([c[2] for c in self.cylinders]),
            cyl_material=torch.tensor([c[3] for c in self.cylinders], dtype=torch.long),
        )
        mats = Materials(
            colour=t([m[0] for m in self.materials], 3), colour2=t([m[1] for m in self.materials], 3),
            pattern=torch.tensor([m[2] for m in self.materials], dtype=torch.long),
            scale=t([m[3] for m in self.materials]),
        )
        return prims, mats


def _shade(rgb, factor: float) -> tuple[float, float, float]:
    return tuple(min(1.0, max(0.0, c * factor)) for c in rgb)


def generate_world(seed: int) -> World:
    """The world of `seed`: same seed, same world, on every machine (pure Python RNG)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"world seed must be a non-negative integer, got {seed!r}")
    rng = random.Random(seed)
    b = _Builder()
    layout = rng.choice(LAYOUTS)
    ground_name = rng.choice(sorted(GROUNDS))
    wall_name = rng.choice(sorted(WALLS))
    sky_name = rng.choice(sorted(SKIES))
    fog_name = rng.choices(list(FOGS), weights=[0.6, 0.3, 0.1])[0]
    colour_names = rng.sample(sorted(COLOURS), 4)
    pillar_colour, box_colour, sphere_colour, arch_colour = colour_names
    has_spheres = rng.random() < 0.7
    has_arches = rng.random() < 0.6

    g = GROUNDS[ground_name]
    b.material(g[0], g[1], g[2], g[3])  # material 0 = ground
    w = WALLS[wall_name]
    wall_mat = b.material(w[0], w[1], w[2], w[3])

    half = rng.uniform(7.0, 11.0)
    wall_h = rng.uniform(2.5, 4.0)
    thick = 0.3
    # Outer walls with one or two gateways each (segments between gaps).
    for side in range(4):
        gaps = sorted(rng.uniform(-half + 2, half - 2) for _ in range(rng.randint(0, 1)))
        edges = [-half - thick] + [v for gap in gaps for v in (gap - 0.9, gap + 0.9)] + [half + thick]
        for a, c in zip(edges[0::2], edges[1::2]):
            mid, ext = (a + c) / 2, (c - a) / 2
            if side == 0:
                b.box((mid, wall_h / 2, -half - thick / 2), (ext, wall_h / 2, thick / 2), wall_mat)
            elif side == 1:
                b.box((mid, wall_h / 2, half + thick / 2), (ext, wall_h / 2, thick / 2), wall_mat)
            elif side == 2:
                b.box((-half - thick / 2, wall_h / 2, mid), (thick / 2, wall_h / 2, ext), wall_mat)
            else:
                b.box((half + thick / 2, wall_h / 2, mid), (thick / 2, wall_h / 2, ext), wall_mat)
    # Behind the gateways the world stays closed: a second, lower ring far out.
    far = half + 6.0
    for sx, sz, hx, hz in ((0, -far, far, 0.3), (0, far, far, 0.3), (-far, 0, 0.3, far), (far, 0, 0.3, far)):
        b.box((sx, wall_h * 0.4, sz), (hx, wall_h * 0.4, hz), wall_mat, obstacle=False)

    # Inner walls: a few short segments with different tints so places differ.
    n_inner = {"maze of rooms": 4, "fortified yard": 2}.get(layout, rng.randint(0, 2))
    for _ in range(n_inner):
        for _try in range(20):
            length = rng.uniform(2.5, half * 0.8)
            cx, cz = rng.uniform(-half + 2, half - 2), rng.uniform(-half + 2, half - 2)
            along_x = rng.random() < 0.5
            hx, hz = (length / 2, thick / 2) if along_x else (thick / 2, length / 2)
            if abs(cx) + hx > half - 1.5 or abs(cz) + hz > half - 1.5:
                continue
            if math.hypot(cx, cz) < 1.5 or b.overlaps(cx, cz, max(hx, hz) * 0.5):
                continue
            tint = b.material(_shade(w[0], rng.uniform(0.75, 1.15)), _shade(w[1], 0.9), w[2], w[3])
            b.box((cx, wall_h / 2, cz), (hx, wall_h / 2, hz), tint)
            break

    def place(radius: float) -> tuple[float, float] | None:
        for _try in range(50):
            x, z = rng.uniform(-half + 1, half - 1), rng.uniform(-half + 1, half - 1)
            if not b.overlaps(x, z, radius + 0.8):
                return x, z
        return None

    # Pillars: vertical cylinders, tall, in a row or scattered.
    pc = COLOURS[pillar_colour]
    pillar_mat = b.material(pc, _shade(pc, 0.7), rng.choice([PATTERN_PLAIN, PATTERN_STRIPES]), 3.0)
    for _ in range(rng.randint(3, 6)):
        r = rng.uniform(0.25, 0.45)
        pos = place(r)
        if pos:
            h = rng.uniform(2.5, 4.5)
            b.cylinder((pos[0], h / 2, pos[1]), h / 2, r, pillar_mat)
    # Crates: boxes of a few sizes, sometimes stacked.
    bc = COLOURS[box_colour]
    box_mat = b.material(bc, _shade(bc, 0.65), rng.choice([PATTERN_CHECKER, PATTERN_STRIPES, PATTERN_NOISE]), 2.0)
    for _ in range(rng.randint(4, 9)):
        s = rng.uniform(0.35, 0.8)
        pos = place(s * 1.5)
        if pos:
            b.box((pos[0], s, pos[1]), (s, s, s), box_mat)
            if rng.random() < 0.3:
                s2 = s * 0.6
                b.box((pos[0], 2 * s + s2, pos[1]), (s2, s2, s2), box_mat, obstacle=False)
    if has_spheres:
        sc = COLOURS[sphere_colour]
        sphere_mat = b.material(sc, _shade(sc, 0.6), rng.choice([PATTERN_PLAIN, PATTERN_NOISE]), 4.0)
        for _ in range(rng.randint(2, 4)):
            r = rng.uniform(0.4, 1.0)
            pos = place(r)
            if pos:
                b.sphere((pos[0], r, pos[1]), r, sphere_mat)
    if has_arches:
        ac = COLOURS[arch_colour]
        arch_mat = b.material(ac, _shade(ac, 0.75), PATTERN_PLAIN, 1.0)
        for _ in range(rng.randint(1, 2)):
            pos = place(1.6)
            if pos:
                x, z = pos
                along_x = rng.random() < 0.5
                span, post, height = rng.uniform(0.9, 1.4), 0.2, rng.uniform(2.4, 3.2)
                dx, dz = (span, 0.0) if along_x else (0.0, span)
                for sgn in (-1, 1):
                    b.box((x + sgn * dx, height / 2, z + sgn * dz), (post, height / 2, post), arch_mat)
                lx, lz = (span + post, post) if along_x else (post, span + post)
                b.box((x, height + 0.2, z), (lx, 0.2, lz), arch_mat, obstacle=False)

    sky = SKIES[sky_name]
    elev = math.radians(sky[2])
    azim = rng.uniform(0, 2 * math.pi)
    sun = (math.cos(elev) * math.sin(azim), math.sin(elev), math.cos(elev) * math.cos(azim))
    prims, mats = b.build()
    describe = {
        "layout": layout, "wall": wall_name, "ground": ground_name, "sky": sky_name, "fog": fog_name,
        "pillar_colour": pillar_colour, "box_colour": box_colour,
        "sphere_colour": sphere_colour if has_spheres and len(prims.sphere_radius) else "",
        "arch_colour": arch_colour if has_arches else "",
    }
    return World(
        seed=seed, half_extent=half, primitives=prims, materials=mats,
        sky=Sky(sky[0], sky[1], sun, sky[3], sky[4], FOGS[fog_name]),
        describe=describe, footprints=b.footprints,
    )


def is_heldout_seed(seed: int) -> bool:
    return seed >= HELDOUT_SEED_START
