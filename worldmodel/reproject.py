"""The one reprojection function (docs/architecture.md "Geometric hint"): frames already seen, with
their depth and pose, splatted into a new camera.

The worlds are static and every pose is exact, so most of the next frame is a reprojection of frames
already seen; the generator gets this warped image and its coverage as a hint and only has to refine
and inpaint. Training, play, eval, the bench and the tests all call `reproject`.

Forward splatting with a z-buffer, vectorised over batch and sources:
- every source pixel is unprojected with its depth (metres along -z) into the source camera, moved
  into the target camera and projected; sky pixels (depth == SKY_DEPTH) are directions at infinity,
  so they follow the rotation only and always lose against geometry (sky never occludes);
- a projected point covers the target pixels whose centres lie within SPLAT_RADIUS of it (at most
  the 4 around it): enough to close the cracks of up to ~1.4x magnification, and under the identity
  a point covers exactly its own pixel, so the identity returns the source;
- a source pixel that the move magnifies (its neighbours on the same surface land more than
  CRACK_SPACING pixels apart) is splatted a second time at a coarser level of the target grid
  (pixels 2, 4 or 8 wide, the first at least as wide as that spacing), which reaches the fine pixels
  within its own footprint (FOOTPRINT times the spacing): without it an approaching
  surface shows holes, and through them the farther surfaces behind it (speckle that compounds when
  the output is reprojected again, tick after tick);
- each target pixel keeps one point, chosen by one int64 key per candidate, smallest first:
  (depth bin, distance to the pixel centre, source order, point index), behind an optional first
  field that puts the points of `preferred` sources before every other point (the hint's start
  frame near its pose: a true picture beats generated ones); then the winner of a
  coarse pixel takes those fine pixels in its footprint that no point covered or that show a
  surface more than SURFACE_GAP farther (what leaks through a crack); elsewhere the fine level
  stays. Depth bins are
  DEPTH_TOLERANCE wide in log depth, so the nearer of two surfaces wins, while views of the same
  surface from several sources are decided by which point falls closest to the pixel centre (the
  densest, least magnified source) and then by the caller's source order. The key makes the result
  deterministic (no scatter races) and exact.

Colour: the splat decides which surface, and which source, each target pixel shows. By default
the pixel takes the winning point's colour (nearest): a source pixel copied whole, so a move by a
fraction of a pixel shifts the picture by up to half a pixel and a magnified surface shows blocks.
For the sources marked `bilinear` the pixel's own ray, at the winner's depth, is followed back into
the winning source, which is sampled there between its 4 pixels: the resampling an image warp does
(measured: a true start frame reprojected with its true depth gains 2.6 dB over nearest in the
first 16 ticks of the action suite's walks, docs/model_card.md). But bilinear sampling is a
low-pass filter: a frame that is itself the last tick's resampled output, sampled again every
tick, blurs (worldmodel.hint decides which sources are sampled so). World points keep their
nearest colour.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from conventions.camera import DEFAULT_FOV_DEG, camera_to_world, focal_length, pixel_directions, world_to_camera
from conventions.depth import SKY_DEPTH

SPLAT_RADIUS = 0.5 * math.sqrt(2.0)
"""Pixels: a point covers target pixel centres closer than this (half a pixel diagonal)."""
NEAR_PLANE = 0.05
"""Metres: points closer to (or behind) the target camera are dropped."""
DEPTH_TOLERANCE = 0.08
"""Relative depth difference under which two points count as the same surface (8%): predicted depth
is that uncertain, and a wider bin lets the pixel distance and the source order decide between
views of one surface instead of whichever view happened to estimate it nearest."""
DEPTH_BIN_ORIGIN = 0.01
"""Metres: depth of bin 0 of the log-depth bins."""
DEPTH_BITS, DIST_BITS, SOURCE_BITS, POINT_BITS = 12, 4, 5, 20
"""Bit widths of the fields of the z-buffer key (most significant first)."""
MAX_LEVEL = 3
"""Coarsest splat level: pixels 2**MAX_LEVEL wide, enough for a surface magnified 8x."""
CRACK_SPACING = 1.0 + 1e-3
"""Pixels: neighbouring points of one surface farther apart than this can leave a pixel centre
farther than SPLAT_RADIUS from every point (a crack); such points also go to a coarser level. The
margin keeps the identity and pure rotations of small angles at the fine level alone."""
FOOTPRINT = 1.0
"""Radius of a magnified point's footprint, in spacings: the fine pixels a coarse winner may take.
Half a spacing (times sqrt 2) would close a regular grid's cracks if every point won a coarse pixel;
one winner per coarse pixel needs more, and a silhouette grows by at most this much."""
SURFACE_GAP = 0.2
"""Relative depth difference above which two neighbouring source pixels are not one surface (their
spacing in the target is a disocclusion, which no splat size should close)."""
SKY_BIN = (1 << DEPTH_BITS) - 1
"""Depth bin of sky points: behind every surface."""
RANK_SHIFT = DEPTH_BITS + DIST_BITS + SOURCE_BITS + POINT_BITS
"""Position of the key's optional first field: 0 for the points of preferred sources, 1 for the rest."""
MAX_SOURCES = 1 << SOURCE_BITS
PAD = 2
"""Pixels: the z-buffer's margin round the image (`_zbuffer`), where the candidates of points projected
outside the image land (their positions are clamped into it), so that none needs a bounds test."""
NO_KEY = torch.iinfo(torch.int64).max


@functools.lru_cache(maxsize=16)
def _grids(k: int, h: int, w: int, fov_deg: float, device: str
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shape-only tensors of a call, made once per shape (play calls with one shape every tick):
    unit pixel directions and depth-1 rays [1, 1, HW, 3], each point's source [1, K*HW], and the low
    fields of the frame points' z-buffer keys, (source order, point index) [1, K*HW] (module
    docstring)."""
    dirs = pixel_directions(h, w, fov_deg).to(device).reshape(1, 1, h * w, 3)
    rays = dirs / (-dirs[..., 2:3])  # camera-space point at depth 1 (z = -1)
    order = torch.arange(k, device=device).repeat_interleave(h * w)[None]
    tie = (order << POINT_BITS) | torch.arange(k * h * w, device=device)[None]
    return dirs, rays, order, tie


@functools.lru_cache(maxsize=16)
def _planar_grids(h: int, w: int, fov_deg: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`_grids`' directions and rays in planar layout, [1, 1, 3, HW] each: the coordinate before the
    pixel, so that rotating them is one [3, 3] @ [3, HW] product per source (torch's batched matrix
    product is ~10x faster in this shape than as [HW, 3] @ [3, 3] on the CPU) and x, y, z come out
    as contiguous rows."""
    dirs, rays, _, _ = _grids(1, h, w, fov_deg, device)
    return dirs.transpose(-1, -2).contiguous(), rays.transpose(-1, -2).contiguous()


@dataclass
class Reprojection:
    """What the sources show from the target camera.

    rgb [B, 3, H, W] float in [0, 1] (0 where uncovered), coverage [B, 1, H, W] float (1 where some
    source point landed), depth [B, H, W] (metres along the target's -z; SKY_DEPTH for sky and for
    uncovered pixels), source [B, H, W] long (index of the winning source, -1 where uncovered).
    """

    rgb: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor
    source: torch.Tensor


@dataclass
class WorldPoints:
    """Points in world space, for `reproject(points=...)`: xyz [P, 3] float (metres; for sky points a
    unit direction), rgb uint8 [P, 3], sky [P] bool, size [P] float (metres: the width of the pixel
    the point came from, at its depth, so a camera that comes closer knows how far apart the points
    of one surface land; 0 = unknown, the fine level alone)."""

    xyz: torch.Tensor
    rgb: torch.Tensor
    sky: torch.Tensor
    size: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.sky.shape[0])

    @staticmethod
    def empty() -> "WorldPoints":
        return WorldPoints(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.bool),
                           torch.zeros(0))

    @staticmethod
    def cat(parts: "list[WorldPoints]") -> "WorldPoints":
        if not parts:
            return WorldPoints.empty()
        return WorldPoints(torch.cat([q.xyz for q in parts]), torch.cat([q.rgb for q in parts]),
                           torch.cat([q.sky for q in parts]), torch.cat([q.size for q in parts]))


def unproject(rgb: torch.Tensor, depth: torch.Tensor, pose: torch.Tensor, mask: torch.Tensor,
              fov_deg: float = DEFAULT_FOV_DEG) -> WorldPoints:
    """The pixels of one frame where `mask` [H, W] is True as world points: rgb uint8 [H, W, 3], depth
    [H, W] (conventions.depth), pose [5]. The inverse of what `reproject` does to a frame's pixels."""
    h, w = depth.shape
    dirs, rays, _, _ = _grids(1, h, w, fov_deg, str(depth.device))
    keep = mask.reshape(-1).to(depth.device)
    d = depth.reshape(-1).float()[keep]
    sky = d <= SKY_DEPTH
    cam = torch.where(sky[:, None], dirs[0, 0][keep], rays[0, 0][keep] * d[:, None])  # [P, 3] camera space
    xyz = _move(cam, sky, camera_to_world(pose.float()[None])[0])
    size = d * (~sky) / focal_length(w, fov_deg)  # a pixel's width at the point's depth
    return WorldPoints(xyz, rgb.reshape(-1, 3).to(depth.device)[keep], sky, size)


def _move(xyz: torch.Tensor, sky: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Points xyz [P, 3] through a rigid 4x4 `matrix`; sky points [P] are directions (rotated only)."""
    return xyz @ matrix[:3, :3].T + matrix[:3, 3] * (~sky[:, None])


def reproject(rgb: torch.Tensor, depth: torch.Tensor, poses: torch.Tensor, target: torch.Tensor,
              valid: torch.Tensor | None = None, fov_deg: float = DEFAULT_FOV_DEG,
              points: "WorldPoints | None" = None, magnified: bool = True,
              preferred: torch.Tensor | None = None, bilinear: torch.Tensor | None = None) -> Reprojection:
    """Splat K source frames (and, optionally, a set of world points) into the target camera.

    rgb [B, K, 3, H, W] float in [0, 1] (or uint8 [B, K, H, W, 3]), depth [B, K, H, W] (binding
    convention of conventions.depth), poses [B, K, 5] of the sources, target [B, 5], valid [B, K] bool
    (False = the source is absent, e.g. a memory slot nothing was retrieved for). Earlier sources win
    ties (see the module docstring). `points` (B = 1 only): world points that come after every frame
    in the source order (worldmodel.point_cache: the pixels generated frames added to the world).
    `magnified` False splats every point at the fine level alone (the rule before coarse levels, kept
    for checkpoints measured with it and for the one-point-at-a-time reference test).
    `preferred` [B, K] bool (None = none): sources whose points win every pixel they land on over the
    other sources' points, whatever the depths, their sky included (the module docstring's first key
    field; the hint prefers its one true picture, the start frame, over generated frames while the
    camera is near it: where that picture saw sky, a generated frame's "geometry" is mostly haze the
    depth head took for a surface). Among the preferred sources, and among the others, the z-buffer
    decides as before (sky never occludes geometry).
    `bilinear` [B, K] bool (None = none): sources whose pixels are sampled bilinearly, not copied
    nearest, where they won: the target pixel's own ray at the winner's depth is followed back into
    the source and the source sampled there (module docstring, "Colour").
    Returns a `Reprojection` at the sources' resolution.
    """
    if rgb.dtype == torch.uint8:
        rgb = rgb.permute(0, 1, 4, 2, 3).float() / 255.0
    b, k, _, h, w = rgb.shape
    extra = 0 if points is None else points.count
    if points is not None and b != 1:
        raise ValueError("reproject: world points go with one target (B = 1)")
    if k + (points is not None) > MAX_SOURCES or k * h * w + extra > (1 << POINT_BITS):
        raise ValueError(f"reproject: at most {MAX_SOURCES} sources and {1 << POINT_BITS} points")
    dev = rgb.device
    depth = depth.float()
    if valid is None:
        valid = torch.ones(b, k, dtype=torch.bool, device=dev)
    _, _, order, tie = _grids(k, h, w, fov_deg, str(dev))  # tie: the keys' (source order, point index) fields
    dirs, rays = _planar_grids(h, w, fov_deg, str(dev))  # [1, 1, 3, HW]
    sky = (depth <= SKY_DEPTH).reshape(b, k, 1, h * w)  # [B, K, 1, HW]
    # camera-space points (w = 1) of geometry, directions (w = 0) of the sky, planar (x, y, z rows)
    # (products with 0/1 masks, not torch.where / masked_fill: boolean selects are several times slower
    # on the CPU, and these select exactly: x * 1 + 0 = x)
    geo = (~sky).float()  # [B, K, 1, HW]
    pts = rays * (depth.reshape(b, k, 1, h * w) * geo) + dirs * (1.0 - geo)  # [B, K, 3, HW]
    rel = world_to_camera(target.float())[:, None] @ camera_to_world(poses.float())  # [B, K, 4, 4]
    p = rel[..., :3, :3] @ pts  # [B, K, 3, HW]
    p += rel[..., :3, 3, None] * geo
    ok = valid[:, :, None].expand(b, k, h * w).reshape(b, k * h * w)
    spacing = _spacing(p.view(b, k, 3, h, w), depth, sky.view(b, k, h, w), ok.view(b, k, h, w), fov_deg) \
        if magnified else None
    p, sky = p.transpose(1, 2).reshape(b, 3, k * h * w), sky.reshape(b, k * h * w)  # [B, 3, N], [B, N]
    # [B, N]: 1 for the points of sources that are not preferred (they lose to every preferred source's point)
    rank = None if preferred is None else (~preferred.to(dev)).long().repeat_interleave(h * w, dim=1)
    colours = rgb.permute(0, 2, 1, 3, 4).reshape(b, 3, k * h * w)
    if points is not None:  # the world points: after every frame in the source order (source K)
        psky = points.sky.to(dev)
        q = _move(points.xyz.to(dev).float(), psky, world_to_camera(target.float())[0])  # [P, 3]
        p = torch.cat([p, q.T[None]], dim=2)
        sky = torch.cat([sky, psky[None]], dim=1)
        ok = torch.cat([ok, torch.ones(1, extra, dtype=torch.bool, device=dev)], dim=1)
        order = torch.cat([order, torch.full((1, extra), k, dtype=order.dtype, device=dev)], dim=1)
        tie = torch.cat([tie, (k << POINT_BITS) | torch.arange(k * h * w, k * h * w + extra, device=dev)[None]],
                        dim=1)
        if rank is not None:  # world points are never preferred
            rank = torch.cat([rank, torch.ones(1, extra, dtype=rank.dtype, device=dev)], dim=1)
        colours = torch.cat([colours, points.rgb.to(dev).float().T[None] / 255.0], dim=2)
        if spacing is not None:  # a point's spacing: its pixel's width seen from the target
            spread = points.size.to(dev).float() * focal_length(w, fov_deg) / (-q[:, 2]).clamp(min=NEAR_PLANE)
            spacing = torch.cat([spacing, spread[None]], dim=1)
    out = _splat(p, sky, ok, order, tie, colours, h, w, fov_deg, spacing, rank)
    if bilinear is not None and bool(bilinear.any()):
        out.rgb = _sample_back(out, colours, k, poses, target, fov_deg, bilinear.to(dev))
    return out


def _sample_back(rep: Reprojection, colours: torch.Tensor, k: int, poses: torch.Tensor, target: torch.Tensor,
                 fov_deg: float, bilinear: torch.Tensor) -> torch.Tensor:
    """The bilinear colours (module docstring, "Colour"), [B, 3, H, W]: every target pixel a
    `bilinear` [B, K] frame won is followed back, along its own ray at the winner's depth (sky: its
    direction), into that frame, which is sampled there bilinearly (border pixels repeated). The
    other pixels (other frames', world points', uncovered) keep the splat's colour. colours
    [B, 3, N] are the splat's point colours (the K frames' pixels first, K*H*W of them), poses
    [B, K, 5], target [B, 5].

    All 4 pixels around the point count, whatever surface they show: weighting by surface (source
    depths within SURFACE_GAP of the point's) measured 2 dB worse on the start view (27.8 against
    29.9 dB at 16 ticks, 60 degree field of view), because on a floor seen at a grazing angle the
    pixel's ray at the winner's depth is not on the floor, and neighbouring rows of it differ by
    more than the gap."""
    b, _, h, w = rep.rgb.shape
    dev = colours.device
    src = rep.source.reshape(b, h * w)
    who = src.clamp(0, k - 1)
    frame = (src >= 0) & (src < k) & bilinear.gather(1, who)  # [B, HW]: won by a bilinear frame's point
    geo = (rep.depth.reshape(b, 1, 1, h * w) > SKY_DEPTH).float()  # [B, 1, 1, HW]
    dirs, rays = _planar_grids(h, w, fov_deg, str(dev))
    z = rep.depth.reshape(b, 1, 1, h * w)
    pts = rays * (z * geo) + dirs * (1.0 - geo)  # [B, 1, 3, HW] in the target camera
    back = world_to_camera(poses.float()) @ camera_to_world(target.float())[:, None]  # [B, K, 4, 4]
    # every pixel moved into every frame (planar, the fast product shape; K is small), then the winner's
    q = back[..., :3, :3] @ pts + back[..., :3, 3, None] * geo  # [B, K, 3, HW]
    q = q.gather(1, who[:, None, None, :].expand(b, 1, 3, h * w))[:, 0]  # [B, 3, HW] in the winner's camera
    qz = (-q[:, 2]).clamp(min=NEAR_PLANE)
    focal = focal_length(w, fov_deg)
    col = (focal * q[:, 0] / qz + (w / 2 - 0.5)).clamp_(-1.0, float(w))
    row = (-focal * q[:, 1] / qz + (h / 2 - 0.5)).clamp_(-1.0, float(h))
    row0, col0 = row.floor(), col.floor()
    frow, fcol = row - row0, col - col0
    base = who * (h * w)  # [B, HW]: where the winner's frame starts among the point colours
    # the 4 pixels round the point, from per-row and per-column parts, gathered in one go
    rows = [(row0 + dr).clamp_(0, h - 1).long().mul_(w).add_(base) for dr in (0, 1)]  # [B, HW] each
    cols = [(col0 + dc).clamp_(0, w - 1).long() for dc in (0, 1)]
    corners = ((0, 0), (0, 1), (1, 0), (1, 1))
    flat = torch.cat([rows[dr] + cols[dc] for dr, dc in corners], dim=1)  # [B, 4*HW]
    near = colours.gather(2, flat[:, None].expand(b, 3, -1)).view(b, 3, 4, h * w)
    wrow, wcol = (1.0 - frow, frow), (1.0 - fcol, fcol)
    sampled = near[:, :, 0] * (wrow[0] * wcol[0])[:, None]  # [B, 3, HW]
    for corner, (dr, dc) in enumerate(corners[1:], start=1):
        sampled += near[:, :, corner] * (wrow[dr] * wcol[dc])[:, None]
    return torch.where(frame[:, None], sampled, rep.rgb.reshape(b, 3, h * w)).reshape(b, 3, h, w)


def _spacing(p: torch.Tensor, depth: torch.Tensor, sky: torch.Tensor, ok: torch.Tensor, fov_deg: float
             ) -> torch.Tensor:
    """Each frame point's spacing in target pixels (module docstring), [B, K*H*W]: the largest distance
    to where a 4-neighbour of its source pixel on the same surface (source depths within SURFACE_GAP)
    lands; 0 without such a neighbour. p [B, K, 3, H, W] in the target camera (planar), depth
    [B, K, H, W] in the source camera, sky and ok [B, K, H, W]."""
    w = p.shape[-1]
    focal = focal_length(w, fov_deg)
    z = -p[:, :, 2]
    front = ok & ~sky & (z > NEAR_PLANE)
    zc = z.clamp(min=NEAR_PLANE)
    col, row = p[:, :, 0] * focal / zc, p[:, :, 1] * focal / zc  # [B, K, H, W] (offsets do not matter)
    log_depth = depth.clamp(min=DEPTH_BIN_ORIGIN).log()
    spacing = torch.zeros_like(z)
    for dim in (-1, -2):  # the neighbour to the right, the neighbour below
        n = z.shape[dim]
        a, c = (lambda t: t.narrow(dim, 0, n - 1)), (lambda t: t.narrow(dim, 1, n - 1))
        same = a(front) & c(front) & ((a(log_depth) - c(log_depth)).abs() < math.log1p(SURFACE_GAP))
        dist = torch.hypot(c(col) - a(col), c(row) - a(row)) * same
        torch.maximum(a(spacing), dist, out=a(spacing))
        torch.maximum(c(spacing), dist, out=c(spacing))
    return spacing.reshape(p.shape[0], -1)


def _splat(p: torch.Tensor, sky: torch.Tensor, ok: torch.Tensor, order: torch.Tensor, tie: torch.Tensor,
           colours: torch.Tensor,
           h: int, w: int, fov_deg: float, spacing: torch.Tensor | None = None,
           rank: torch.Tensor | None = None) -> Reprojection:
    """The z-buffer splat of N target-camera points (module docstring): p [B, 3, N] (points, or
    directions where sky [B, N]), ok [B, N] (False: not a point), order [1, N] (source order, ties),
    tie [1, N] (the keys' low fields, `_grids`), colours [B, 3, N] in [0, 1], spacing [B, N] (target pixels between a point and its neighbours on
    its surface; None or <= CRACK_SPACING: the fine level alone). Point n's key carries n itself, so
    ties end in the caller's order. Every point is splatted at the fine level; one whose spacing
    needs it also on the grid of 2**L-wide pixels, the first at least as wide as its spacing (the
    points an approaching surface magnifies: gathered, not masked). The winners of the 4 coarse
    pixels around a fine pixel reach it if its centre lies within FOOTPRINT times their spacing: so a
    crack closes while a silhouette grows by one spacing at most. rank [B, N] (None: all 0): a
    point of rank 0 wins over every point of rank 1 (`reproject`'s `preferred`)."""
    b, n = sky.shape
    dev = p.device
    focal = focal_length(w, fov_deg)
    x, y, z = p.unbind(1)
    z = -z  # [B, N]: depth in the target camera (or the direction's forward part)
    ok = ok & torch.where(sky, z > 1e-6, z > NEAR_PLANE)
    zs = z.masked_fill(~ok, 1.0)
    depth_bin = ((zs.clamp(min=DEPTH_BIN_ORIGIN) * (1.0 / DEPTH_BIN_ORIGIN)).log_()
                 .mul_(1.0 / math.log1p(DEPTH_TOLERANCE)).floor_().clamp_(0, SKY_BIN - 1)
                 .masked_fill_(sky, float(SKY_BIN)).long())
    per_point = (depth_bin << (DIST_BITS + SOURCE_BITS + POINT_BITS)) | tie
    if rank is not None:  # above the depth bin: a preferred source's sky too beats the others' geometry
        per_point |= rank << RANK_SHIFT
    per_point = per_point.reshape(-1)
    image = None if b == 1 else torch.arange(b, device=dev).view(b, 1).expand(b, n).reshape(-1)
    best = _zbuffer(x.reshape(-1), y.reshape(-1), zs.reshape(-1), ok.reshape(-1), per_point, image, b, h, w, focal)
    if spacing is not None:
        # a coarse winner takes a fine pixel within its footprint that the fine level left uncovered or
        # showed a clearly farther surface through (a crack); a comparison with a gap, not the key's
        # depth bins, so that a bin edge across a slanted surface does not turn into blocks; finer
        # levels first
        level = (spacing / CRACK_SPACING).clamp(min=1.0).log2_().ceil_().clamp_(max=MAX_LEVEL).long()
        z_far = zs.masked_fill(sky, float("inf"))  # [B, N]: sky behind everything
        col = (focal / zs) * x + (w / 2 - 0.5)  # [B, N]: fine-pixel positions
        row = (-focal / zs) * y + (h / 2 - 0.5)
        reach = (spacing * FOOTPRINT).square_()  # [B, N]: squared footprint radius
        centre_row, centre_col = _centres(h, w, str(dev))
        for lv in range(1, MAX_LEVEL + 1):
            if h % (1 << lv) or w % (1 << lv):
                break
            pick = ((level == lv) & ok).reshape(-1).nonzero().squeeze(1)
            if pick.numel() == 0:
                continue
            coarse = _zbuffer(x.reshape(-1)[pick], y.reshape(-1)[pick], zs.reshape(-1)[pick],
                              torch.ones_like(pick, dtype=torch.bool), per_point[pick],
                              None if image is None else image[pick], b,
                              h >> lv, w >> lv, focal / (1 << lv))
            fine_z = _winner_depth(best, z_far)
            pick_key = torch.full_like(best, NO_KEY)
            for around in _coarse_around(h, w, lv, str(dev)):  # the 4 coarse pixels around each fine centre
                up = coarse[:, around]  # [B, HW]
                who, hit = _winner(up)
                near = (row.gather(1, who) - centre_row).square_() + (col.gather(1, who) - centre_col).square_()
                hit &= near < reach.gather(1, who)
                hit &= z_far.gather(1, who) * (1.0 + SURFACE_GAP) < fine_z
                pick_key = torch.minimum(pick_key, up.masked_fill_(~hit, NO_KEY))
            best = torch.where(pick_key != NO_KEY, pick_key, best)
    winner, covered = _winner(best)  # [B, HW]: the winning point
    out_rgb = colours.gather(2, winner[:, None, :].expand(b, 3, -1)) * covered[:, None, :]
    out_depth = z.masked_fill(sky, SKY_DEPTH).gather(1, winner).masked_fill_(~covered, SKY_DEPTH)
    source = order.expand(b, -1).gather(1, winner).masked_fill_(~covered, -1)
    return Reprojection(out_rgb.view(b, 3, h, w), covered.view(b, 1, h, w).float(), out_depth.view(b, h, w),
                        source.view(b, h, w))


@functools.lru_cache(maxsize=16)
def _centres(h: int, w: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every pixel centre, [1, H*W] each."""
    rr, cc = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return rr.reshape(1, -1), cc.reshape(1, -1)


@functools.lru_cache(maxsize=16)
def _coarse_around(h: int, w: int, level: int, device: str) -> tuple[torch.Tensor, ...]:
    """For every fine pixel, the flat index of each of the 4 pixels of the level-`level` grid whose
    centres surround the fine pixel's centre (clamped at the border): 4 tensors [H*W] long. The point
    nearest a fine crack may have won a neighbouring coarse pixel, not the one containing it."""
    f = 1 << level
    hc, wc = h // f, w // f
    rc = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / f - 0.5
    cc = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / f - 0.5
    r0, c0 = rc.floor().long(), cc.floor().long()
    out = []
    for dr in (0, 1):
        for dc in (0, 1):
            rr = (r0 + dr).clamp(0, hc - 1)[:, None]
            cc_ = (c0 + dc).clamp(0, wc - 1)[None, :]
            out.append((rr * wc + cc_).reshape(-1))
    return tuple(out)


def _winner(best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys [B, HW] -> (the winning point of each pixel [B, HW], 0 where uncovered; covered [B, HW])."""
    covered = best != NO_KEY
    return (best & ((1 << POINT_BITS) - 1)).masked_fill_(~covered, 0), covered


def _winner_depth(best: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Depth [B, HW] of each pixel's winning point (keys `best` [B, HW], point depths z [B, N]); inf
    where uncovered."""
    winner, covered = _winner(best)
    return z.gather(1, winner).masked_fill_(~covered, float("inf"))


def _zbuffer(x: torch.Tensor, y: torch.Tensor, zs: torch.Tensor, okf: torch.Tensor, per_point: torch.Tensor,
             image: torch.Tensor | None, b: int, h: int, w: int, focal: float) -> torch.Tensor:
    """The smallest key per target pixel, [B, H*W] (NO_KEY where uncovered), of M points: x, y, zs [M]
    in the target camera (zs > 0), okf [M] (False: covers nothing), per_point [M] (the key without its
    distance field), image [M] (which of the B targets; None when B = 1).

    Speed (the play loop runs it every tick; the work is a few dozen passes over ~10^5 numbers, so
    what costs is how many passes there are and their types):
    - each point has 2 candidate rows and 2 candidate columns, so everything that depends on the row
      or the column alone (its squared distance, its flat offset) is computed once per row and per
      column, [M] each, and only combined into the [4, M] candidates, one slice at a time (broadcast
      ops run slower on the CPU);
    - the z-buffer has a margin of PAD pixels round the image, as wide as the positions' clamp, so
      every candidate lands in it and no candidate needs an in-the-image test; an invalid point is
      moved into the margin; the margin is cut off at the end;
    - a candidate farther than SPLAT_RADIUS goes to a spare slot: its flat offset is multiplied by a
      0/1 float, not selected with a boolean (on the CPU boolean results, selects and masked writes
      cost several times a float product);
    - float -> int64 conversions go through int32 (twice as fast here)."""
    dev = x.device
    pw = w + 2 * PAD + 1  # padded row length: columns -PAD .. w + PAD
    per_image = (h + 2 * PAD + 1) * pw
    spare = b * per_image  # the slot candidates that cover nothing write to
    # flat offsets in float32 (exact: they are integers below 2**24) so that the choice between a
    # candidate's pixel and the spare slot is a product
    if spare >= 1 << 24:
        raise ValueError("reproject: too many target pixels")
    # positions clamped to the margin: the candidates of a point outside the image stay in it
    col = ((focal / zs) * x + (w / 2 - 0.5)).clamp_(-float(PAD), w - 1.0 + PAD)
    row = ((-focal / zs) * y + (h / 2 - 0.5)).clamp_(-float(PAD), h - 1.0 + PAD)
    valid = okf.float()
    col.mul_(valid).add_(valid - 1.0, alpha=PAD)  # an invalid point: column -PAD, in the margin
    row0, col0 = row.floor(), col.floor()  # [M]
    frow, fcol = row - row0, col - col0
    drow = (frow.square(), (frow - 1.0).square_())
    dcol = (fcol.square(), (fcol - 1.0).square_())
    # flat offset of the candidate's padded pixel minus the spare slot's
    r = (row0 + PAD).mul_(pw).add_(col0 + PAD).sub_(spare)
    if image is not None:
        r.add_((image * per_image).float())
    m = x.shape[0]
    d2 = torch.empty(4, m, device=dev)
    flat = torch.empty(4, m, device=dev)
    for q, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        torch.add(drow[i], dcol[j], out=d2[q])
        torch.add(r, i * pw + j, out=flat[q])
    # 1 where the candidate's centre is within the radius (R - d2 > 0 exactly when d2 < R), else 0
    near = torch.sub(SPLAT_RADIUS ** 2, d2).sign_().clamp_(min=0.0)
    flat = flat.mul_(near).add_(spare).int().long()  # [4, M]: the pixel, or the spare slot
    dist_scale = ((1 << DIST_BITS) - 1) / SPLAT_RADIUS ** 2
    key = d2.mul_(dist_scale).int().long().bitwise_left_shift_(SOURCE_BITS + POINT_BITS)
    key |= per_point
    best = torch.full((spare + 1,), NO_KEY, dtype=torch.int64, device=dev)
    best.scatter_reduce_(0, flat.reshape(-1), key.reshape(-1), reduce="amin", include_self=True)
    return best[:spare].view(b, h + 2 * PAD + 1, pw)[:, PAD:PAD + h, PAD:PAD + w].reshape(b, h * w)
