"""Reading training data: clip data sets on disk, random frames for the autoencoder, latent caches.

Formats (docs/architecture.md §The conventions, in brief, binding):
- A clip data set is DIR/dataset.json plus safetensors shards holding frames uint8 [N, T, H, W, 3],
  actions float32 [N, T, 5], poses float32 [N, T, 5], world_seeds int64 [N] and string metadata
  "captions" / "policies" (JSON lists of N strings), and (data sets made since the geometric hint)
  depth float16 [N, T, H, W] in the conventions.depth convention. `ClipDataset` validates the index and every
  shard's header up front (cheap: headers only) and loads clip data lazily, one clip at a time.
- A latent cache is ONE safetensors file (`encode_dataset` writes it, `LatentClips` reads it) with
  latents bf16 [N, T, C, h, w] (normalised, as `Autoencoder.encode` returns them), actions, poses,
  world_seeds and metadata: captions, policies, the autoencoder checkpoint's sha256 and config. The
  world-model trainer reads it so it never runs the encoder per step. An autoencoder with a depth head
  also stores every frame's view as play has it for the geometric hint: view_rgb uint8 [N, T, H, W, 3]
  (the decoded latent) and view_depth float16 [N, T, H, W] (the depth head's depth of the latent).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from conventions.camera import ACTION_DIM, DEFAULT_FOV_DEG, DEFAULT_TICK_HZ, POSE_DIM
from conventions.depth import check_depth
from conventions.errors import UserError
from conventions.progress import ProgressBar
from worldmodel.autoencoder import atomic_save_safetensors, Autoencoder, file_sha256, load_autoencoder

DATASET_FORMAT = "worldmodel.dataset"
DATASET_VERSION = 1
DATASET_INDEX = "dataset.json"
LATENTS_FORMAT = "worldmodel.latents"
LATENTS_VERSION = "1"
RGB_CHANNELS = 3
MAX_OPEN_SHARDS = 8
"""Shard handles kept open by a `ClipDataset` (each is an mmap; reopening costs a header parse)."""
LATENT_DTYPE = torch.bfloat16
VIEW_DEPTH_DTYPE = torch.float16
DEFAULT_ENCODE_BATCH = 256


@dataclass(frozen=True)
class DatasetInfo:
    """The validated content of dataset.json."""

    path: Path
    resolution: tuple[int, int]
    fov_deg: float
    tick_hz: float
    split: str
    ticks: int
    shards: tuple[str, ...]
    clips: int
    raw: dict[str, Any]


@dataclass
class Clip:
    """One clip: frames uint8 [T, H, W, 3], actions float32 [T, 5], poses float32 [T, 5]."""

    frames: torch.Tensor
    actions: torch.Tensor
    poses: torch.Tensor
    world_seed: int
    caption: str
    policy: str
    depth: torch.Tensor | None = None
    """float32 [T, H, W] (conventions.depth convention) when the data set stores depth."""


def _need(cond: bool, path: Path, problem: str) -> None:
    if not cond:
        raise UserError(f"{path}: {problem}")


def read_dataset_info(directory: str | os.PathLike, expected_resolution: int | None = None) -> DatasetInfo:
    """Parse and validate DIR/dataset.json (format, version, resolution, shard list)."""
    directory = Path(directory)
    index = directory / DATASET_INDEX
    if not index.is_file():
        raise UserError(f"{index}: data set index not found (is {directory} a data set folder written "
                        f"by `worldmodel dataset`?)")
    try:
        raw = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{index}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{index}: cannot read ({exc})") from exc
    _need(isinstance(raw, dict), index, "expected a JSON object")
    _need(raw.get("format") == DATASET_FORMAT, index,
          f"format is {raw.get('format')!r}, expected {DATASET_FORMAT!r}")
    _need(raw.get("version") == DATASET_VERSION, index,
          f"version {raw.get('version')!r} is not supported (expected {DATASET_VERSION})")
    res = raw.get("resolution")
    _need(isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res),
          index, f"resolution must be [H, W] positive integers, got {res!r}")
    if expected_resolution is not None:
        _need(tuple(res) == (expected_resolution, expected_resolution), index,
              f"resolution is {res[0]}x{res[1]}, expected {expected_resolution}x{expected_resolution}")
    ticks, clips, shards = raw.get("ticks"), raw.get("clips"), raw.get("shards")
    _need(isinstance(ticks, int) and ticks >= 1, index, f"ticks must be a positive integer, got {ticks!r}")
    _need(isinstance(clips, int) and clips >= 0, index, f"clips must be an integer >= 0, got {clips!r}")
    _need(isinstance(shards, list) and all(isinstance(s, str) and s and "/" not in s and "\\" not in s
                                           and s not in (".", "..") for s in shards),
          index, "shards must be a list of file names in the data set folder")
    split = raw.get("split", "train")
    _need(split in ("train", "heldout"), index, f"split must be 'train' or 'heldout', got {split!r}")
    try:
        fov = float(raw.get("fov_deg", DEFAULT_FOV_DEG))
        hz = float(raw.get("tick_hz", DEFAULT_TICK_HZ))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{index}: fov_deg and tick_hz must be numbers") from exc
    _need(math.isfinite(fov) and 0 < fov < 180 and math.isfinite(hz) and hz > 0, index,
          f"fov_deg must be in (0, 180) and tick_hz > 0, got {fov}, {hz}")
    return DatasetInfo(directory, (res[0], res[1]), fov, hz, split, ticks, tuple(shards), clips, raw)


def _json_list(meta: dict[str, str], key: str, n: int, path: Path) -> list[str]:
    try:
        values = json.loads(meta.get(key, ""))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: metadata {key!r} is not valid JSON") from exc
    _need(isinstance(values, list) and len(values) == n and all(isinstance(v, str) for v in values),
          path, f"metadata {key!r} must be a JSON list of {n} strings")
    return values


class ClipDataset:
    """A clip data set on disk: `len(ds)` clips, `ds[i] -> Clip`, loaded lazily shard by shard.

    `expected_resolution` (e.g. the autoencoder's) turns a resolution mismatch into a UserError that
    names dataset.json. Every shard header is checked at construction so a broken file fails early.
    """

    def __init__(self, directory: str | os.PathLike, expected_resolution: int | None = None) -> None:
        from safetensors import safe_open

        self.info = read_dataset_info(directory, expected_resolution)
        self.path = self.info.path
        h, w = self.info.resolution
        t = self.info.ticks
        self._shard_paths: list[Path] = []
        self._offsets: list[int] = [0]  # clip index where each shard starts
        self.captions: list[str] = []
        self.policies: list[str] = []
        self.has_depth = False
        """Whether the shards store depth maps (data sets written before depth existed do not)."""
        for name in self.info.shards:
            shard = self.path / name
            _need(shard.is_file(), shard, "shard listed in dataset.json not found")
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys = set(f.keys())
                    missing = sorted({"frames", "actions", "poses", "world_seeds"} - keys)
                    _need(not missing, shard, f"missing tensors {missing}")
                    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in
                              ("frames", "actions", "poses", "world_seeds")}
                    dtypes = {k: f.get_slice(k).get_dtype() for k in ("frames", "actions", "poses")}
                    if "depth" in keys:
                        shapes["depth"] = tuple(f.get_slice("depth").get_shape())
                        dtypes["depth"] = f.get_slice("depth").get_dtype()
                    meta = f.metadata() or {}
            except UserError:
                raise
            except Exception as exc:  # safetensors raises several types for damaged headers
                raise UserError(f"{shard}: not a readable safetensors file ({exc})") from exc
            n = shapes["frames"][0] if shapes["frames"] else 0
            expect = {"frames": (n, t, h, w, RGB_CHANNELS), "actions": (n, t, ACTION_DIM),
                      "poses": (n, t, POSE_DIM), "world_seeds": (n,)}
            for k, shape in expect.items():
                _need(shapes[k] == shape, shard, f"tensor {k!r} has shape {list(shapes[k])}, expected "
                      f"{list(shape)} (from dataset.json: ticks {t}, resolution {h}x{w})")
            _need(dtypes["frames"] == "U8", shard, f"frames must be uint8, got {dtypes['frames']}")
            has_depth = "depth" in shapes
            _need(not self._shard_paths or has_depth == self.has_depth, shard,
                  "some shards store depth and others do not")
            self.has_depth = has_depth
            if has_depth:
                _need(shapes["depth"] == (n, t, h, w), shard, f"tensor 'depth' has shape "
                      f"{list(shapes['depth'])}, expected {[n, t, h, w]}")
                _need(dtypes["depth"] in ("F16", "F32"), shard, f"depth must be float16 or float32, "
                      f"got {dtypes['depth']}")
            for k in ("actions", "poses"):
                _need(dtypes[k] == "F32", shard, f"{k} must be float32, got {dtypes[k]}")
            self.captions += _json_list(meta, "captions", n, shard)
            self.policies += _json_list(meta, "policies", n, shard)
            self._shard_paths.append(shard)
            self._offsets.append(self._offsets[-1] + n)
        _need(self._offsets[-1] == self.info.clips, self.path / DATASET_INDEX,
              f"says {self.info.clips} clips but the shards hold {self._offsets[-1]}")
        self._handles: dict[int, Any] = {}

    # --- basic properties --------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.info.resolution[0]

    @property
    def ticks(self) -> int:
        return self.info.ticks

    @property
    def num_frames(self) -> int:
        return len(self) * self.ticks

    def __len__(self) -> int:
        return self._offsets[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip {index} out of range for {len(self)} clips")
        index %= len(self)
        lo, hi = 0, len(self._shard_paths) - 1
        while lo < hi:  # last shard whose start <= index
            mid = (lo + hi + 1) // 2
            if self._offsets[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo, index - self._offsets[lo]

    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        handle = self._handles.get(shard)
        if handle is None:
            if len(self._handles) >= MAX_OPEN_SHARDS:
                self._handles.pop(next(iter(self._handles)))
            handle = safe_open(str(self._shard_paths[shard]), framework="pt")
            self._handles[shard] = handle
        return handle

    def __getitem__(self, index: int) -> Clip:
        shard, local = self._locate(index)
        f = self._handle(shard)
        gi = self._offsets[shard] + local
        depth = None
        if self.has_depth:
            depth = check_depth(f.get_slice("depth")[local].float(), f"{self._shard_paths[shard]} clip {local}")
        return Clip(frames=f.get_slice("frames")[local], actions=f.get_slice("actions")[local],
                    poses=f.get_slice("poses")[local],
                    world_seed=int(f.get_slice("world_seeds")[local:local + 1][0]),
                    caption=self.captions[gi], policy=self.policies[gi], depth=depth)

    def frame(self, clip: int, tick: int) -> torch.Tensor:
        """One frame uint8 [H, W, 3] without loading the rest of its clip."""
        shard, local = self._locate(clip)
        if not 0 <= tick < self.ticks:
            raise IndexError(f"tick {tick} out of range for clips of {self.ticks} ticks")
        return self._handle(shard).get_slice("frames")[local:local + 1, tick][0]

    def frame_depth(self, clip: int, tick: int) -> torch.Tensor:
        """One depth map float32 [H, W] (checked: no NaN, inf or negative values)."""
        if not self.has_depth:
            raise UserError(f"{self.path}: this data set stores no depth (written before depth "
                            f"existed); make it again with `worldmodel dataset`")
        shard, local = self._locate(clip)
        if not 0 <= tick < self.ticks:
            raise IndexError(f"tick {tick} out of range for clips of {self.ticks} ticks")
        d = self._handle(shard).get_slice("depth")[local:local + 1, tick][0].float()
        return check_depth(d, f"{self._shard_paths[shard]} clip {local} tick {tick}")

    def __getstate__(self) -> dict[str, Any]:  # open mmaps do not pickle (DataLoader workers)
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


class FrameSampler:
    """Random frames for autoencoder training: uniform over all (clip, tick) pairs of a data set.

    Sampling single frames from many clips (rather than runs of one clip) keeps each batch diverse;
    with the shards memory-mapped, a 64-frame batch costs a few ms. The generator state can be saved
    and restored so a resumed training run sees the same stream it would have seen.
    """

    def __init__(self, dataset: ClipDataset, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise UserError(f"{dataset.path}: the data set holds no clips")
        self.dataset = dataset
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int) -> torch.Tensor:
        """-> uint8 frames [batch, H, W, 3]."""
        return torch.stack([self.dataset.frame(c, t) for c, t in self._pairs(batch)])

    def sample_with_depth(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (uint8 frames [batch, H, W, 3], depth float32 [batch, H, W])."""
        pairs = self._pairs(batch)
        return (torch.stack([self.dataset.frame(c, t) for c, t in pairs]),
                torch.stack([self.dataset.frame_depth(c, t) for c, t in pairs]))

    def _pairs(self, batch: int) -> list[tuple[int, int]]:
        idx = torch.randint(self.dataset.num_frames, (batch,), generator=self.generator).tolist()
        ticks = self.dataset.ticks
        return [(i // ticks, i % ticks) for i in idx]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def fixed_frames(dataset: ClipDataset, count: int, seed: int = 0) -> torch.Tensor:
    """A reproducible set of `count` frames spread over the data set, uint8 [count, H, W, 3]
    (validation and latent statistics must not change between calls)."""
    count = min(count, dataset.num_frames)
    return FrameSampler(dataset, seed).sample(count)


# --- latent caches ---------------------------------------------------------------------------------
def encode_dataset(autoencoder: Any, dataset_dir: str | os.PathLike, out_path: str | os.PathLike,
                   batch: int = DEFAULT_ENCODE_BATCH, autoencoder_sha256: str | None = None,
                   progress: Callable[[int, int], None] | bool | None = True,
                   bf16_autocast: bool = False, clip_range: range | None = None) -> Path:
    """Encode every frame of a clip data set once and write the latent cache (atomically).

    `autoencoder` is an `Autoencoder` or a path to its checkpoint; its sha256 goes into the cache so
    a world model trained on it can refuse latents of another autoencoder. Encoding runs under
    inference mode on the model's device, in fp32 unless `bf16_autocast` (about 1.5x faster on a
    CPU with AVX512-BF16; the difference is of the order of the bf16 rounding the stored latents
    get anyway); latents are stored as bf16 [N, T, C, h, w]. `clip_range` encodes only those clips
    (a big data set in several caches, each a short job that an interruption loses at most).
    """
    if isinstance(autoencoder, (str, os.PathLike)):
        autoencoder_sha256 = autoencoder_sha256 or file_sha256(autoencoder)
        autoencoder = load_autoencoder(autoencoder)
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError("autoencoder must be an Autoencoder or a checkpoint path")
    if batch < 1:
        raise UserError(f"encode_dataset: batch must be >= 1, got {batch}")
    cfg = autoencoder.config
    ds = ClipDataset(dataset_dir, expected_resolution=cfg.resolution)
    chosen = range(len(ds)) if clip_range is None else clip_range
    if chosen.step != 1 or len(chosen) < 1 or chosen.start < 0 or chosen.stop > len(ds):
        raise UserError(f"{ds.path}: clips {chosen.start}..{chosen.stop - 1} are not a range of its {len(ds)} clips")
    first = chosen.start
    n, t = len(chosen), ds.ticks
    latents = torch.empty(n, t, *cfg.latent_shape, dtype=LATENT_DTYPE)  # [N, T, C, h, w]
    views = autoencoder.has_depth
    if views:  # what play has of every frame for the geometric hint: decoded RGB and depth
        h, w = ds.info.resolution
        view_rgb = torch.empty(n, t, h, w, RGB_CHANNELS, dtype=torch.uint8)
        view_depth = torch.empty(n, t, h, w, dtype=VIEW_DEPTH_DTYPE)
    actions = torch.empty(n, t, ACTION_DIM)
    poses = torch.empty(n, t, POSE_DIM)
    seeds = torch.empty(n, dtype=torch.int64)
    bar = ProgressBar(n, "encode clips") if progress and not callable(progress) else None
    report = progress if callable(progress) else (None if bar is None else lambda done, _: bar.update(done - bar.count))
    was_training = autoencoder.training
    autoencoder.eval()
    clips_per_batch = max(1, batch // t)
    device_type = autoencoder.latent_mean.device.type
    with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16_autocast):
        for start in range(0, n, clips_per_batch):
            clips = [ds[first + i] for i in range(start, min(n, start + clips_per_batch))]
            frames = torch.cat([c.frames for c in clips])  # [k*T, H, W, 3]
            for j in range(0, frames.shape[0], batch):
                z = autoencoder.encode(frames[j:j + batch]).float().to("cpu", LATENT_DTYPE)
                flat = latents[start:start + len(clips)].view(-1, *cfg.latent_shape)
                flat[j:j + z.shape[0]] = z
                if views:
                    with torch.autocast(device_type, enabled=False):
                        zf = z.float().to(autoencoder.latent_mean.device)
                        view_rgb[start:start + len(clips)].view(-1, h, w, RGB_CHANNELS)[j:j + z.shape[0]] = \
                            autoencoder.decode_uint8(zf).cpu()
                        view_depth[start:start + len(clips)].view(-1, h, w)[j:j + z.shape[0]] = \
                            autoencoder.decode_depth(zf).cpu().to(VIEW_DEPTH_DTYPE)
            for k, c in enumerate(clips):
                actions[start + k], poses[start + k], seeds[start + k] = c.actions, c.poses, c.world_seed
            if report:
                report(start + len(clips), n)
    autoencoder.train(was_training)
    if bar is not None:
        bar.close()
    meta = {"format": LATENTS_FORMAT, "version": LATENTS_VERSION,
            "captions": json.dumps(ds.captions[chosen.start:chosen.stop]),
            "policies": json.dumps(ds.policies[chosen.start:chosen.stop]),
            "autoencoder_sha256": autoencoder_sha256 or "", "autoencoder_config": cfg.to_json(),
            "resolution": json.dumps(list(ds.info.resolution)), "fov_deg": repr(ds.info.fov_deg),
            "tick_hz": repr(ds.info.tick_hz), "split": ds.info.split,
            "source": str(Path(dataset_dir).resolve())}
    tensors = {"latents": latents, "actions": actions, "poses": poses, "world_seeds": seeds}
    if views:
        tensors.update(view_rgb=view_rgb, view_depth=view_depth)
    return atomic_save_safetensors(tensors, out_path, meta)


ROLLOUT_SEEDS_KEY = "world_seeds_valid"
"""Metadata key of a closed-loop rollout cache (worldmodel.closed_loop) whose `world_seeds` are the
clips' worlds. Rollout caches written before 2026-12-07 (sixth session) stored each clip's index in
its source cache there, so the oracle's truth of their frames cannot be rendered from them."""


class LatentClips:
    """A latent cache loaded once: latents bf16 [N, T, C, h, w], actions/poses float32 [N, T, 5],
    world_seeds int64 [N], captions/policies (N strings) and where the latents came from.

    `expected_autoencoder_sha256` makes a cache encoded by another autoencoder a UserError.
    """

    def __init__(self, path: str | os.PathLike, expected_autoencoder_sha256: str | None = None) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        _need(self.path.is_file(), self.path, "latent cache not found (write it with encode_dataset)")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                _need(meta.get("format") == LATENTS_FORMAT, self.path,
                      f"format is {meta.get('format')!r}, expected {LATENTS_FORMAT!r}")
                _need(meta.get("version") == LATENTS_VERSION, self.path,
                      f"version {meta.get('version')!r} is not supported (expected {LATENTS_VERSION!r})")
                missing = sorted({"latents", "actions", "poses", "world_seeds"} - set(f.keys()))
                _need(not missing, self.path, f"missing tensors {missing}")
                tensors = {k: f.get_tensor(k) for k in ("latents", "actions", "poses", "world_seeds")}
                for k in ("view_rgb", "view_depth", "target_latents"):
                    tensors[k] = f.get_tensor(k) if k in f.keys() else None
        except UserError:
            raise
        except Exception as exc:  # damaged header or data
            raise UserError(f"{self.path}: not a readable latent cache ({exc})") from exc
        self.latents: torch.Tensor = tensors["latents"]  # [N, T, C, h, w] bf16
        self.actions: torch.Tensor = tensors["actions"]  # [N, T, 5]
        self.poses: torch.Tensor = tensors["poses"]  # [N, T, 5]
        self.world_seeds: torch.Tensor = tensors["world_seeds"]  # [N]
        self.view_rgb: torch.Tensor | None = tensors["view_rgb"]  # [N, T, H, W, 3] uint8 or None
        self.view_depth: torch.Tensor | None = tensors["view_depth"]  # [N, T, H, W] float16 or None
        self.target_latents: torch.Tensor | None = tensors["target_latents"]
        """[N, T, C, h, w] bf16: the true frames of a closed-loop cache (worldmodel.closed_loop), whose
        `latents` are the model's own; None for ordinary caches (the latents are the truth)."""
        if self.target_latents is not None:
            _need(self.target_latents.shape == self.latents.shape, self.path,
                  f"target_latents {list(self.target_latents.shape)} != latents {list(self.latents.shape)}")
        _need(self.latents.ndim == 5, self.path, f"latents must be [N, T, C, h, w], got "
              f"{list(self.latents.shape)}")
        n, t = self.latents.shape[:2]
        for name, tensor in (("actions", self.actions), ("poses", self.poses)):
            _need(tuple(tensor.shape) == (n, t, ACTION_DIM), self.path,
                  f"{name} has shape {list(tensor.shape)}, expected {[n, t, ACTION_DIM]}")
        _need(tuple(self.world_seeds.shape) == (n,), self.path,
              f"world_seeds has shape {list(self.world_seeds.shape)}, expected {[n]}")
        if (self.view_rgb is None) != (self.view_depth is None):
            raise UserError(f"{self.path}: holds only one of view_rgb / view_depth")
        if self.view_rgb is not None:
            _need(self.view_rgb.shape[:2] == (n, t) and self.view_depth.shape == self.view_rgb.shape[:4],
                  self.path, f"view_rgb {list(self.view_rgb.shape)} / view_depth {list(self.view_depth.shape)} "
                  f"do not match latents [N, T] = {[n, t]}")
            check_depth(self.view_depth, f"{self.path} (view_depth)")
        self.captions = _json_list(meta, "captions", n, self.path)
        self.policies = _json_list(meta, "policies", n, self.path)
        self.autoencoder_sha256: str = meta.get("autoencoder_sha256", "")
        self.autoencoder_config: str = meta.get("autoencoder_config", "")
        self.split: str = meta.get("split", "")
        self.rollouts_of: str = meta.get("rollouts_of", "")
        """sha256 of the checkpoint whose closed-loop rollouts these latents are ("" for encoded frames)."""
        self.world_seeds_valid: bool = not self.rollouts_of or meta.get(ROLLOUT_SEEDS_KEY) == "true"
        """False for rollout caches written before their world seeds were recorded (ROLLOUT_SEEDS_KEY)."""
        try:
            self.tick_hz = float(meta.get("tick_hz", DEFAULT_TICK_HZ))
            self.fov_deg = float(meta.get("fov_deg", DEFAULT_FOV_DEG))
            self.resolution: tuple[int, int] = tuple(json.loads(meta.get("resolution", "[0, 0]")))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.path}: invalid tick_hz/fov_deg/resolution metadata") from exc
        if expected_autoencoder_sha256 is not None and self.autoencoder_sha256 != expected_autoencoder_sha256:
            raise UserError(f"{self.path}: latents were encoded with autoencoder sha256 "
                            f"{self.autoencoder_sha256[:12] or '(unknown)'}..., expected "
                            f"{expected_autoencoder_sha256[:12]}...; re-encode with encode_dataset")

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def ticks(self) -> int:
        return self.latents.shape[1]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[2:])
