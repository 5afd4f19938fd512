"""Which stored views matter for the current camera: the one scoring and selection rule.

Both play time (`memory.store.MemoryStore.retrieve`) and training (choosing memory frames for every
frame of a clip) call `view_overlap` / `select_memory` from here, so the model is trained on exactly
the kind of memory it will be given when someone plays.

The overlap rule (documented once, here):

1. The query camera's view is represented by a fixed set of probe points in camera coordinates: the
   centres of a `PROBE_GRID` x `PROBE_GRID` grid of image cells (rays through the image), each at
   `len(PROBE_RANGE_FRACTIONS)` distances along the ray, fractions of `max_distance`. The points are
   precomputed once per field of view, so scoring is a handful of batched tensor ops.
2. A probe point counts as *seen* by a stored camera when it lies inside that camera's frustum (in
   front of it by at least `NEAR_PLANE_M`, within the horizontal and vertical field of view; images
   are square) and within `max_distance` (Euclidean) of it.
3. A seen point is weighted by how finely the stored view resolved it compared with the query:
   `min(1, d_query / d_stored) ** DISTANCE_EXPONENT`, with d the distance from each camera to the
   point: the share of pixels the stored view spent on it relative to the query view. A view of the
   same wall from twice as far away counts a quarter.
   The stored camera must also see the point from the query's side: the angle between the two
   cameras' rays to it must be below 90 degrees, else it would see the back of whatever surface is
   there (a camera facing the query across a room sees the space between them, not the far wall).
4. The overlap is the mean weight over all probe points: 1 for identical poses, 0 for a camera that
   looks the other way or stands more than `max_distance` beyond the probes. Recency plays no part.

Occlusion is not modelled (the store knows poses, not geometry): a view from behind a wall can score.
`select_memory` then takes the highest-overlap entries old enough to have left the rolling window,
greedily skipping near-duplicate viewpoints, so the few memory slots show different views.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from conventions.camera import DEFAULT_FOV_DEG, POSE_DIM, forward_vector, rotation

PROBE_GRID = 4
"""Probe rays per image side: PROBE_GRID**2 rays through the centres of a square grid of image cells."""
PROBE_RANGE_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
"""Distances of the probe points along each ray from the camera, as fractions of max_distance (log
spaced: near content fills more of the image, so it gets as many probes as far content)."""
NEAR_PLANE_M = 0.05
"""A probe point closer than this in front of a stored camera counts as not seen (behind/at the lens)."""
DISTANCE_EXPONENT = 2.0
"""Exponent of the resolution weight min(1, d_query / d_stored): 2 = relative pixel area, since a
surface patch covers (focal / distance)^2 pixels. (Also avoids a sqrt, which PyTorch runs on its
thread pool even for small tensors.)"""

DEFAULT_MAX_DISTANCE = 10.0
"""Metres: a stored camera sees a probe point only within this distance; probes reach 0.8 of it.
Bundled procedural worlds are 14-22 m across, so this covers a room-sized view."""
DEFAULT_MIN_OVERLAP = 0.05
"""Entries sharing less than this fraction of the current view are never selected (no useful content)."""
DEFAULT_DEDUP_DISTANCE = 0.5
"""Metres: two views closer than this and within DEFAULT_DEDUP_ANGLE_DEG are near-identical."""
DEFAULT_DEDUP_ANGLE_DEG = 15.0
"""Degrees between viewing directions (pitch included) under which two close views are duplicates."""

_SELECT_BLOCK = 256
"""select_memory examines candidates in blocks of this many (in preference order) until it has enough."""
_TILE_ELEMENTS = 1 << 15
"""view_overlap_matrix works on tiles of fewer than this many (query, probe, stored) elements: PyTorch's
intra-op grain size, so every elementwise op runs on the calling thread and the temporaries stay in
cache. Measured on a busy 2-core machine, N = 1000: whole-array ops (and a GEMM) hand the work to
thread pools and wait on them (median 100-200 ms per call); tiles take about 1-2 ms."""


def candidate_radius(max_distance: float = DEFAULT_MAX_DISTANCE, fov_deg: float = DEFAULT_FOV_DEG) -> float:
    """Distance (metres) beyond which a stored camera cannot overlap a query view at all.

    A stored camera at t scores only through a probe w within `max_distance` (m) of it and seen from
    the query's side, (w - t_q).(w - t) > 0. Then |t - t_q|^2 = |t - w|^2 + |w - t_q|^2
    - 2 (t - w).(t_q - w) < m^2 + r^2, with r <= `probe_reach`. So any camera farther than
    sqrt(m^2 + reach^2) (in 3D, hence also in x/z) scores exactly 0; the spatial index searches this
    radius, which keeps indexed retrieval identical to scoring every entry.
    """
    return math.hypot(probe_reach(max_distance, fov_deg), max_distance)


def probe_reach(max_distance: float = DEFAULT_MAX_DISTANCE, fov_deg: float = DEFAULT_FOV_DEG) -> float:
    """Largest distance of a probe point from its query camera (metres): the farthest range fraction."""
    _check_range(fov_deg, max_distance)
    pts = _probe_points(float(fov_deg), float(max_distance))  # [P, 3]
    return float(pts.norm(dim=-1).max())


@lru_cache(maxsize=32)
def _probe_points(fov_deg: float, max_distance: float) -> torch.Tensor:
    """Probe points in camera coordinates [P, 3] (camera looks along -z), P = PROBE_GRID**2 * ranges.

    Point k of ray r is r's unit direction times PROBE_RANGE_FRACTIONS[k] * max_distance, so every
    probe of an unmoved camera is within max_distance of it (identical poses overlap exactly 1).
    """
    tan_half = math.tan(math.radians(fov_deg) / 2)
    centres = (torch.arange(PROBE_GRID, dtype=torch.float64) + 0.5) / PROBE_GRID * 2.0 - 1.0  # [G]
    vv, uu = torch.meshgrid(centres, centres, indexing="ij")
    dirs = torch.stack([uu * tan_half, -vv * tan_half, -torch.ones_like(uu)], dim=-1).reshape(-1, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # [G*G, 3] unit rays through the cell centres
    ranges = torch.tensor(PROBE_RANGE_FRACTIONS, dtype=torch.float64) * max_distance  # [D]
    return (ranges[:, None, None] * dirs[None]).reshape(-1, 3).float()  # [P, 3]


def _check_poses(name: str, poses: torch.Tensor, ndim: int) -> None:
    if poses.ndim != ndim or poses.shape[-1] != POSE_DIM:
        want = "[5]" if ndim == 1 else "[N, 5]"
        raise ValueError(f"{name} must have shape {want}, got {list(poses.shape)}")


def _check_range(fov_deg: float, max_distance: float) -> None:
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    if not max_distance > 0.0:
        raise ValueError(f"max_distance must be positive, got {max_distance}")


def view_overlap_matrix(queries: torch.Tensor, poses: torch.Tensor, fov_deg: float = DEFAULT_FOV_DEG,
                        max_distance: float = DEFAULT_MAX_DISTANCE) -> torch.Tensor:
    """Overlap of every query view with every stored view: queries [Q, 5], poses [N, 5] -> [Q, N].

    Entry (q, n) is the fraction of what camera `queries[q]` sees that camera `poses[n]` also saw,
    weighted by relative resolution (module docstring). Values in [0, 1]; float32 on CPU.
    """
    _check_poses("queries", queries, 2)
    _check_poses("poses", poses, 2)
    _check_range(fov_deg, max_distance)
    queries = queries.detach().to("cpu", torch.float32)
    poses = poses.detach().to("cpu", torch.float32)
    q_count, n_count = queries.shape[0], poses.shape[0]
    if q_count == 0 or n_count == 0:
        return torch.zeros(q_count, n_count)
    local = _probe_points(float(fov_deg), float(max_distance))  # [P, 3]
    p_count = local.shape[0]
    d_query_sq = local.pow(2).sum(-1)[:, None]  # [P, 1]
    tan_half = math.tan(math.radians(fov_deg) / 2)
    # World positions of the probes of every query: R_q @ p + t_q.
    world = torch.einsum("qij,pj->qpi", rotation(queries), local) + queries[:, None, :3]  # [Q, P, 3]
    # Camera coords of a world point w in stored camera n are R_n^T (w - t_n) = w @ R_n - t_n @ R_n;
    # x and y are divided by tan(fov/2), so the frustum test is max(|x'|, |y'|) <= depth = -z.
    # |w - t_n|^2 = |w|^2 - 2 w.t_n + |t_n|^2. Per stored camera, coef[i, k, n] multiplies world
    # coordinate i (i = 3: the constant 1) in output k (x', y', z, -2 w.t + |t|^2).
    scale = torch.tensor([1.0 / tan_half, 1.0 / tan_half, 1.0])  # [3]
    w_sq = world.pow(2).sum(-1)  # [Q, P]
    ray = world - queries[:, None, :3]  # [Q, P, 3] query camera -> probe
    ray_dot_w = (ray * world).sum(-1)  # [Q, P]
    max_sq = max_distance * max_distance
    # Everything is computed in pieces of fewer than _TILE_ELEMENTS elements (see its docstring): the
    # per-camera coefficients [4, 4, N] in blocks of stored cameras, the probe tests in tiles of
    # [queries, P, stored]; and the 4x4 transform is written as broadcast multiply-adds rather than a
    # GEMM, for the same reason (BLAS would use its own threads).
    coef = torch.empty(4, 4, n_count)
    c_block = max(1, (_TILE_ELEMENTS - 1) // 16)
    for n0 in range(0, n_count, c_block):
        block = poses[n0:n0 + c_block]  # [b, 5]
        rot = rotation(block) * scale  # [b, 3, 3], camera columns x and y scaled
        pos = block[:, :3]  # [b, 3]
        cf = coef[:, :, n0:n0 + c_block]  # [4, 4, b] view
        cf[:3, :3] = rot.permute(1, 2, 0)
        cf[3, :3] = -(pos[:, :, None] * rot).sum(1).T
        cf[:3, 3] = -2.0 * pos.T
        cf[3, 3] = pos.pow(2).sum(-1)
    pos_t = poses[:, :3].T.contiguous()  # [3, N]
    n_tile = max(1, (_TILE_ELEMENTS - 1) // p_count)
    q_tile = max(1, (_TILE_ELEMENTS - 1) // (p_count * min(n_count, n_tile)))
    out = torch.empty(q_count, n_count)
    for n0 in range(0, n_count, n_tile):
        cf = coef[:, :, n0:n0 + n_tile]  # [4, 4, n]
        pos = pos_t[:, n0:n0 + n_tile]  # [3, n]
        for q0 in range(0, q_count, q_tile):
            w = world[q0:q0 + q_tile, :, :, None]  # [C, P, 3, 1]
            wx, wy, wz = w[:, :, 0], w[:, :, 1], w[:, :, 2]  # [C, P, 1] each

            def component(k: int) -> torch.Tensor:  # [C, P, n]
                return torch.addcmul(cf[3, k], wx, cf[0, k]).addcmul_(wy, cf[1, k]).addcmul_(wz, cf[2, k])

            x, y, z = component(0), component(1), component(2)
            dist_sq = component(3).add_(w_sq[q0:q0 + q_tile, :, None])  # |w - t_n|^2
            lim = torch.maximum(x.abs_(), y.abs_()).clamp_min_(NEAR_PLANE_M)
            seen = (lim.add_(z) <= 0.0).logical_and_(dist_sq <= max_sq)  # in front, in the FOV, in range
            # Same side: ray_q . (w - t_n) = ray_q . w - ray_q . t_n > 0.
            r = ray[q0:q0 + q_tile, :, :, None]  # [C, P, 3, 1]
            r_dot_t = torch.mul(r[:, :, 0], pos[0]).addcmul_(r[:, :, 1], pos[1]).addcmul_(r[:, :, 2], pos[2])
            seen.logical_and_(r_dot_t < ray_dot_w[q0:q0 + q_tile, :, None])
            # Resolution weight min(1, d_query / d_stored) ** DISTANCE_EXPONENT, from squared distances.
            weight = torch.div(d_query_sq, dist_sq).clamp_(max=1.0)  # d = 0: inf -> 1, and unseen
            if DISTANCE_EXPONENT != 2.0:
                weight = weight.pow_(0.5 * DISTANCE_EXPONENT)
            out[q0:q0 + q_tile, n0:n0 + n_tile] = weight.mul_(seen).mean(dim=1)
    return out


def view_overlap(query: torch.Tensor, poses: torch.Tensor, fov_deg: float = DEFAULT_FOV_DEG,
                 max_distance: float = DEFAULT_MAX_DISTANCE) -> torch.Tensor:
    """How much of what the camera at `query` [5] sees was seen from each of `poses` [N, 5] -> [N].

    The single scoring rule of play and training (see the module docstring for the definition).
    A batch of queries [Q, 5] is also accepted and gives [Q, N] (same as `view_overlap_matrix`).
    """
    if query.ndim == 2:
        return view_overlap_matrix(query, poses, fov_deg, max_distance)
    _check_poses("query", query, 1)
    return view_overlap_matrix(query[None], poses, fov_deg, max_distance)[0]


def near_duplicates(pose: torch.Tensor, poses: torch.Tensor, dedup_distance: float = DEFAULT_DEDUP_DISTANCE,
                    dedup_angle_deg: float = DEFAULT_DEDUP_ANGLE_DEG) -> torch.Tensor:
    """Which of `poses` [N, 5] are near-identical viewpoints of `pose` [5] -> bool [N].

    Near-identical = camera positions within `dedup_distance` metres (3D) AND viewing directions
    within `dedup_angle_deg` (pitch included). Used by selection and by the store's add-time dedup.
    """
    _check_poses("pose", pose, 1)
    _check_poses("poses", poses, 2)
    pose = pose.detach().to("cpu", torch.float32)
    poses = poses.detach().to("cpu", torch.float32)
    close = (poses[:, :3] - pose[None, :3]).pow(2).sum(-1) <= dedup_distance * dedup_distance
    if not bool(close.any()):
        return close  # the common case at add time: skip the trigonometry
    # cos(angle) >= cos(limit) is acos-free and identical for angles in [0, pi]; an elementwise
    # product and sum (not a matrix product) so that duplicate_matrix computes the same numbers
    aligned = (forward_vector(poses) * forward_vector(pose)[None]).sum(-1) >= math.cos(math.radians(dedup_angle_deg))
    return close & aligned


def duplicate_matrix(poses: torch.Tensor, dedup_distance: float = DEFAULT_DEDUP_DISTANCE,
                     dedup_angle_deg: float = DEFAULT_DEDUP_ANGLE_DEG) -> torch.Tensor:
    """bool [T, T]: entry [t, s] = whether `poses[s]` is a near-duplicate of `poses[t]`
    (`near_duplicates`, every pair at once, the same arithmetic)."""
    _check_poses("poses", poses, 2)
    poses = poses.detach().to("cpu", torch.float32)
    close = (poses[None, :, :3] - poses[:, None, :3]).pow(2).sum(-1) <= dedup_distance * dedup_distance
    f = forward_vector(poses)  # [T, 3]
    aligned = (f[None, :, :] * f[:, None, :]).sum(-1) >= math.cos(math.radians(dedup_angle_deg))
    return close & aligned


def select_memory(query: torch.Tensor, poses: torch.Tensor, ticks: torch.Tensor, current_tick: int | None,
                  max_entries: int, min_age: int = 0, fov_deg: float = DEFAULT_FOV_DEG,
                  max_distance: float = DEFAULT_MAX_DISTANCE, dedup_distance: float = DEFAULT_DEDUP_DISTANCE,
                  dedup_angle_deg: float = DEFAULT_DEDUP_ANGLE_DEG, min_overlap: float = DEFAULT_MIN_OVERLAP,
                  overlap: torch.Tensor | None = None) -> torch.LongTensor:
    """Indices into `poses` [N, 5] / `ticks` [N] of the memory entries for the frame at `query` [5].

    The one selection rule shared by play and training:
    1. eligible: `current_tick - tick >= min_age` (entries younger are still in the rolling window;
       `current_tick=None` disables this) and `view_overlap >= min_overlap`;
    2. order: highest overlap first; ties go to the newer tick, then the lower index;
    3. greedy dedup: walk that order and skip an entry that is a near duplicate (`near_duplicates`) of
       one already taken, until `max_entries` are taken.
    Returns a LongTensor [k], k <= max_entries, in selection order (best first). `overlap` [N] may be
    passed when the caller already scored the poses with the same parameters.
    """
    _check_poses("query", query, 1)
    _check_poses("poses", poses, 2)
    ticks = torch.as_tensor(ticks).detach().to("cpu", torch.long).reshape(-1)
    n_count = poses.shape[0]
    if ticks.shape[0] != n_count:
        raise ValueError(f"ticks has {ticks.shape[0]} entries but poses has {n_count}")
    if max_entries < 0 or min_age < 0:
        raise ValueError(f"max_entries and min_age must be >= 0, got {max_entries}, {min_age}")
    if n_count == 0 or max_entries == 0:
        return torch.zeros(0, dtype=torch.long)
    poses = poses.detach().to("cpu", torch.float32)
    eligible = torch.ones(n_count, dtype=torch.bool)
    if current_tick is not None:
        eligible = (int(current_tick) - ticks) >= min_age
    cand = eligible.nonzero().squeeze(1)  # [M], ascending index; only these are scored
    if cand.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if overlap is None:
        cand_overlap = view_overlap(query, poses.index_select(0, cand), fov_deg, max_distance)  # [M]
    else:
        cand_overlap = overlap.detach().to("cpu", torch.float32).reshape(-1).index_select(0, cand)
    keep = cand_overlap >= min_overlap
    cand, cand_overlap = cand[keep], cand_overlap[keep]
    if cand.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    # Order: overlap desc, then tick desc, then index asc (two stable sorts: secondary key first).
    order = torch.sort(ticks[cand], descending=True, stable=True).indices
    order = order[torch.sort(cand_overlap[order], descending=True, stable=True).indices]
    cand = cand[order]  # [M] in preference order
    # Greedy dedup in blocks of the preference order: entries are only looked at until max_entries are
    # taken (the same result as one pass over all of them, without trigonometry on every candidate).
    max_dist_sq = dedup_distance * dedup_distance
    min_cos = math.cos(math.radians(dedup_angle_deg))
    block = _SELECT_BLOCK
    taken: list[int] = []
    taken_pos: list[torch.Tensor] = []  # [3] each
    taken_fwd: list[torch.Tensor] = []  # [3] each
    for b0 in range(0, cand.shape[0], block):
        ids = cand[b0:b0 + block]  # [B]
        bp = poses.index_select(0, ids)  # [B, 5]
        pos, fwd = bp[:, :3], forward_vector(bp)  # [B, 3] each; fwd: unit viewing directions
        alive = torch.ones(ids.shape[0], dtype=torch.bool)
        if taken:  # drop duplicates of entries taken from earlier blocks
            tp, tf = torch.stack(taken_pos), torch.stack(taken_fwd)  # [K, 3] each
            dup = (torch.cdist(pos, tp).pow(2) <= max_dist_sq) & (fwd @ tf.T >= min_cos)  # [B, K]
            alive &= ~dup.any(1)
        first = 0
        while len(taken) < max_entries:
            remaining = alive[first:].nonzero()
            if remaining.numel() == 0:
                break
            first += int(remaining[0, 0])
            taken.append(int(ids[first]))
            taken_pos.append(pos[first])
            taken_fwd.append(fwd[first])
            # Same test as near_duplicates, on the block's positions/directions (cheap per pick).
            dup = ((pos - pos[first]).pow(2).sum(-1) <= max_dist_sq) & (fwd @ fwd[first] >= min_cos)
            alive &= ~dup
            alive[first] = False
        if len(taken) >= max_entries:
            break
    return torch.tensor(taken, dtype=torch.long)
