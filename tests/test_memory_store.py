"""memory.store: budget, dedup, eviction, indexed retrieval and atomic save/load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors_bytes

import memory.store as store_mod
from scenes.trajectories import make_trajectory
from scenes.world import generate_world
from memory.retrieval import select_memory
from memory.store import STATE_FILE, MemoryConfig, MemoryStore, kept_ticks
from conventions.errors import UserError

PAYLOAD = (2, 3, 4)


def pose(x: float = 0.0, z: float = 0.0, yaw: float = 0.0, pitch: float = 0.0, y: float = 1.6) -> torch.Tensor:
    return torch.tensor([x, y, z, yaw, pitch], dtype=torch.float32)


def random_poses(n: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 5, generator=g)
    return torch.stack([(u[:, 0] - 0.5) * spread, 1.0 + u[:, 1], (u[:, 2] - 0.5) * spread,
                        (u[:, 3] - 0.5) * 2 * math.pi, (u[:, 4] - 0.5) * 0.6], dim=1)


def payload(i: int) -> torch.Tensor:
    return torch.randn(PAYLOAD, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)


def filled_store(n: int = 300, budget: int = 128, spread: float = 40.0, seed: int = 0, **kw) -> MemoryStore:
    s = MemoryStore(MemoryConfig(budget_entries=budget, **kw))
    for i, p in enumerate(random_poses(n, spread, seed)):
        s.add(payload(i), p, i)
    return s


def test_add_and_inspect() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=8))
    assert len(s) == 0 and s.payload_buffer is None and s.poses().shape == (0, 5)
    assert s.retrieve(pose(), 4, current_tick=10) == []
    slot = s.add(payload(0), pose(1.0, 2.0), 5)
    assert slot == 0 and len(s) == 1
    assert s.payload_buffer.shape == (8, *PAYLOAD) and s.payload_dtype == torch.bfloat16
    assert torch.equal(s.poses(), pose(1.0, 2.0)[None]) and s.ticks().tolist() == [5]
    e = s.entry(0)
    assert torch.equal(e.payload, payload(0)) and e.tick == 5
    with pytest.raises(ValueError):
        s.add(torch.zeros(3), pose(5.0), 6)  # all payloads share one shape
    with pytest.raises(ValueError):
        s.add(payload(1), torch.tensor([0.0, 1.0, float("nan"), 0.0, 0.0]), 6)


def test_dedup_keep_first_keeps_the_first_view_of_a_place() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=8))
    assert s.config.dedup_keep == "first"
    s.add(payload(0), pose(), 0)
    assert s.add(payload(1), pose(0.1), 5) is None
    assert s.add(payload(2), pose(0.2, yaw=math.radians(10)), 500) is None  # a return much later: skipped
    assert s.ticks().tolist() == [0] and s.stats.skipped == 2 and s.stats.replaced == 0
    assert s.add(payload(3), pose(0.2, yaw=math.radians(40)), 501) is not None  # another view: stored
    assert sorted(s.ticks().tolist()) == [0, 501]
    with pytest.raises(ValueError, match="dedup_keep"):
        MemoryConfig(dedup_keep="last")


def test_dedup_newest_wins_but_recent_duplicates_are_skipped() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=8, refresh_ticks=20, dedup_keep="newest"))
    s.add(payload(0), pose(), 0)
    assert s.add(payload(1), pose(0.1), 5) is None  # the place was just recorded
    assert s.ticks().tolist() == [0] and s.stats.skipped == 1
    slot = s.add(payload(2), pose(0.2, yaw=math.radians(10)), 50)  # a later visit: replaces
    assert slot == 0 and len(s) == 1 and s.ticks().tolist() == [50]
    assert torch.equal(s.entry(0).payload, payload(2)) and s.stats.replaced == 1
    s.add(payload(3), pose(0.2, yaw=math.radians(40)), 60)  # same place, another direction: kept
    s.add(payload(4), pose(0.9), 61)  # 0.7 m away: kept
    assert len(s) == 3


def test_walking_leaves_a_trail() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=64))
    for t in range(100):  # 0.1 m per tick straight ahead
        s.add(payload(t), pose(z=-0.1 * t), t)
    z = sorted(s.poses()[:, 2].tolist())
    assert 15 <= len(s) <= 20
    assert min(b - a for a, b in zip(z, z[1:])) > 0.5  # spaced by about the dedup distance


def test_no_two_entries_are_duplicates_and_replacement_frees_all() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=32, refresh_ticks=0, dedup_keep="newest"))
    s.add(payload(0), pose(0.0), 0)
    s.add(payload(1), pose(0.8), 1)
    slot = s.add(payload(2), pose(0.4), 2)  # within 0.5 m of both: both go, it takes the nearer's slot
    assert len(s) == 1 and slot == 0 and s.stats.replaced == 2
    for keep in ("newest", "first"):
        s = filled_store(n=600, budget=256, spread=6.0, refresh_ticks=0, dedup_keep=keep)
        p = s.poses()
        dist = torch.cdist(p[:, :3], p[:, :3])
        fwd = torch.stack([-torch.sin(p[:, 3]) * torch.cos(p[:, 4]), torch.sin(p[:, 4]),
                           -torch.cos(p[:, 3]) * torch.cos(p[:, 4])], 1)
        dup = (dist <= 0.5) & (fwd @ fwd.T >= math.cos(math.radians(15)))
        assert int(dup.sum()) == len(s)  # only the diagonal


def test_budget_holds_over_10k_adds_without_reallocation() -> None:
    budget = 64
    s = MemoryStore(MemoryConfig(budget_entries=budget))
    poses = random_poses(10_000, 60.0, seed=1)
    pays = torch.randn(10_000, 4, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    s.add(pays[0], poses[0], 0)
    buf = s.payload_buffer
    ptr = buf.data_ptr()
    for i in range(1, 10_000):
        slot = s.add(pays[i], poses[i], i)
        assert len(s) <= budget
        if slot is not None and i % 997 == 0:
            assert torch.equal(s.entry(slot).payload, pays[i])
    assert len(s) == budget
    assert s.payload_buffer is buf and buf.data_ptr() == ptr and buf.shape == (budget, 4)
    st = s.stats
    assert st.added + st.skipped == 10_000
    assert st.added == len(s) + st.evicted + st.replaced
    assert sorted(s.slots().tolist()) == list(range(budget))


def test_eviction_takes_the_oldest_of_the_most_crowded_cell() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=4, cell_size=4.0))
    s.add(payload(0), pose(10.0, 10.0), 0)  # alone in its cell, and the oldest overall
    s.add(payload(1), pose(1.0, 1.0), 1)  # three views in cell (0, 0)
    s.add(payload(2), pose(2.0, 2.0), 2)
    s.add(payload(3), pose(3.0, 1.0), 3)
    s.add(payload(4), pose(-10.0, 10.0), 4)
    assert sorted(s.ticks().tolist()) == [0, 2, 3, 4] and s.stats.evicted == 1
    s.add(payload(5), pose(-10.0, -10.0), 5)  # cell (0, 0) is still the most crowded
    assert sorted(s.ticks().tolist()) == [0, 3, 4, 5]


@pytest.mark.parametrize("spread", [12.0, 200.0])
def test_indexed_retrieval_equals_brute_force(spread: float) -> None:
    s = filled_store(n=1500, budget=1024, spread=spread, seed=3, cell_size=3.0)
    queries = random_poses(12, spread, seed=4)
    for i, q in enumerate(queries):
        got = s.retrieve_batch(q, 6, current_tick=1500, min_age=300 + 10 * i)
        c = s.config
        brute = select_memory(q, s.poses(), s.ticks(), 1500, 6, 300 + 10 * i, c.fov_deg, c.max_distance,
                              c.dedup_distance, c.dedup_angle_deg, c.min_overlap)
        assert got.slots.tolist() == s.slots()[brute].tolist()
        assert bool((1500 - got.ticks >= 300 + 10 * i).all())
        assert bool((got.overlap[1:] <= got.overlap[:-1]).all())
        assert torch.equal(got.payloads, s.payload_buffer[got.slots])
    if spread > 100:  # spread over a big area, the grid scores only a fraction of the entries
        assert len(s.candidates(queries[0])) < len(s) // 4


def test_retrieve_returns_copies() -> None:
    s = MemoryStore(MemoryConfig(budget_entries=4, refresh_ticks=0, dedup_keep="newest"))
    s.add(payload(0), pose(), 0)
    (entry,) = s.retrieve(pose(), 4, current_tick=100, min_age=10)
    assert entry.tick == 0 and entry.overlap == pytest.approx(1.0, abs=1e-5)
    entry.payload.zero_()
    s.add(payload(1), pose(), 100)  # replaces slot 0
    assert torch.equal(s.entry(0).payload, payload(1))
    assert s.retrieve(pose(), 4, current_tick=100, min_age=10) == []  # too recent now


def assert_same_store(a: MemoryStore, b: MemoryStore) -> None:
    assert a.config == b.config and len(a) == len(b)
    assert torch.equal(a.slots(), b.slots()) and torch.equal(a.ticks(), b.ticks())
    assert torch.equal(a.poses(), b.poses())
    pa, pb = a.payload_buffer[a.slots()], b.payload_buffer[b.slots()]
    assert pa.dtype == pb.dtype and torch.equal(pa.view(torch.int16), pb.view(torch.int16))  # bit-exact


def test_save_load_round_trip_is_exact_and_resumes_identically(tmp_path: Path) -> None:
    s = filled_store(n=400, budget=128, spread=20.0, seed=5)
    extra = {"pose": [1.0, 1.6, 2.0, 0.5, 0.0], "tick": 400, "scene": "courtyard", "checkpoint_sha256": "ab" * 32}
    out = s.save(tmp_path / "world", extra=extra)
    assert sorted(p.name for p in out.iterdir())[-1] == STATE_FILE and len(list(out.iterdir())) == 2
    t = MemoryStore.load(out)
    assert_same_store(s, t)
    assert t.extra == extra
    q = random_poses(5, 20.0, seed=6)
    for p in q:
        assert s.retrieve_batch(p, 4, 400, 10).slots.tolist() == t.retrieve_batch(p, 4, 400, 10).slots.tolist()
    more = random_poses(200, 20.0, seed=7)
    for i, p in enumerate(more):  # the same future on both: same slots, same evictions
        assert s.add(payload(1000 + i), p, 400 + i) == t.add(payload(1000 + i), p, 400 + i)
    assert_same_store(s, t)
    # Saving again over the old save replaces it and leaves no stale data file.
    s.save(out)
    assert len(list(out.iterdir())) == 2
    assert_same_store(s, MemoryStore.load(out))
    assert MemoryStore.load(out).extra == extra  # kept from the loaded store when not given


def test_empty_and_preallocated_stores_round_trip(tmp_path: Path) -> None:
    empty = MemoryStore(MemoryConfig(budget_entries=4))
    loaded = MemoryStore.load(empty.save(tmp_path / "empty"))
    assert len(loaded) == 0 and loaded.payload_buffer is None
    pre = MemoryStore(MemoryConfig(budget_entries=4, payload_shape=(3,), payload_dtype="float16"))
    assert pre.payload_buffer.shape == (4, 3) and pre.payload_dtype == torch.float16
    pre.add(torch.ones(3), pose(), 1)
    loaded = MemoryStore.load(pre.save(tmp_path / "pre"))
    assert_same_store(pre, loaded)
    with pytest.raises(UserError, match="another model"):
        MemoryStore.load(tmp_path / "pre", expect_payload_shape=(4,))


def test_damaged_saves_are_user_errors(tmp_path: Path) -> None:
    s = filled_store(n=50, budget=32, spread=10.0)
    good = s.save(tmp_path / "good")
    data_name = json.loads((good / STATE_FILE).read_text())["data_file"]

    def variant(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in good.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        return d

    with pytest.raises(UserError, match="does not exist"):
        MemoryStore.load(tmp_path / "nowhere")
    d = variant("no_json")
    (d / STATE_FILE).unlink()
    with pytest.raises(UserError, match=f"{STATE_FILE}: missing"):
        MemoryStore.load(d)
    d = variant("truncated_json")
    (d / STATE_FILE).write_text((good / STATE_FILE).read_text()[:100])
    with pytest.raises(UserError, match=r"memory.json: line \d+: not valid JSON"):
        MemoryStore.load(d)
    d = variant("truncated_data")
    (d / data_name).write_bytes((good / data_name).read_bytes()[:-50])
    with pytest.raises(UserError, match=f"{data_name}: damaged"):
        MemoryStore.load(d)
    d = variant("flipped_byte")
    raw = bytearray((good / data_name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / data_name).write_bytes(bytes(raw))
    with pytest.raises(UserError, match="damaged"):
        MemoryStore.load(d)
    d = variant("no_data")
    (d / data_name).unlink()
    with pytest.raises(UserError, match=f"{data_name}: missing"):
        MemoryStore.load(d)

    def edited(name: str, **changes) -> Path:
        d = variant(name)
        state = json.loads((d / STATE_FILE).read_text())
        state.update(changes)
        (d / STATE_FILE).write_text(json.dumps(state))
        return d

    with pytest.raises(UserError, match="not a saved world"):
        MemoryStore.load(edited("format", format="worldmodel.actions"))
    with pytest.raises(UserError, match="unsupported version 99"):
        MemoryStore.load(edited("version", version=99))
    config = s.config.to_dict() | {"colour": "red"}
    with pytest.raises(UserError, match="bad config.*colour"):
        MemoryStore.load(edited("config", config=config))
    with pytest.raises(UserError, match="data_file"):
        MemoryStore.load(edited("escape", data_file="../../etc/passwd"))
    # A well-formed file whose tensors do not match what memory.json promises.
    bad = save_safetensors_bytes({"slots": torch.arange(3), "poses": torch.zeros(3, 4), "ticks": torch.arange(3),
                                  "payloads": torch.zeros(3, *PAYLOAD, dtype=torch.bfloat16)})
    d = variant("shapes")
    (d / data_name).write_bytes(bad)
    state = json.loads((d / STATE_FILE).read_text())
    state.update(entries=3, data_sha256=hashlib.sha256(bad).hexdigest())
    (d / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(UserError, match="tensor 'poses' is float32 \\[3, 4\\], expected float32 \\[3, 5\\]"):
        MemoryStore.load(d)


def test_interrupted_saves_leave_the_old_save_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = filled_store(n=60, budget=32, spread=10.0)
    target = s.save(tmp_path / "world", extra={"tick": 1})
    before = {f.name: f.read_bytes() for f in target.iterdir()}
    s.add(payload(999), pose(50.0, 50.0), 999)
    real_replace = os.replace

    def crash_on_commit(src, dst):
        if Path(dst).name == STATE_FILE:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", crash_on_commit)
    with pytest.raises(UserError, match="cannot save the world"):
        s.save(target, extra={"tick": 2})
    monkeypatch.setattr(store_mod.os, "replace", real_replace)
    old = MemoryStore.load(target)  # the previous save is intact
    assert old.extra == {"tick": 1} and s.extra == {"tick": 1} and 999 not in old.ticks().tolist()
    assert (target / STATE_FILE).read_bytes() == before[STATE_FILE]

    calls = {"n": 0}
    real_write = store_mod._write_durable

    def crash_second_write(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        return real_write(path, data)

    monkeypatch.setattr(store_mod, "_write_durable", crash_second_write)
    with pytest.raises(UserError, match="Input/output error"):
        s.save(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no half folder, no temp left

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        s.save(tmp_path / "a_file")


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        MemoryConfig(budget_entries=0)
    with pytest.raises(ValueError):
        MemoryConfig(fov_deg=200.0)
    with pytest.raises(ValueError):
        MemoryConfig(payload_dtype="float99")
    c = MemoryConfig(payload_shape=(2, 3), payload_dtype="bfloat16")
    assert MemoryConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_a_return_visit_retrieves_the_first_visit() -> None:
    """Walk out 10 m, turn round, walk back, turn again: at the start (looking the original way) the
    store offers the views from the first ticks, not the recent ones from the way back."""
    s = MemoryStore(MemoryConfig(budget_entries=256))
    path = [pose(z=-0.1 * t) for t in range(100)]  # out, looking along -z
    path += [pose(z=-10.0, yaw=math.pi * (t + 1) / 20) for t in range(20)]  # turn on the spot
    path += [pose(z=-10.0 + 0.1 * t, yaw=math.pi) for t in range(100)]  # back, looking along +z
    path += [pose(z=0.0, yaw=math.pi * (1 + (t + 1) / 20)) for t in range(20)]  # turn back round
    for t, p in enumerate(path):
        s.add(payload(t), p, t)
    got = s.retrieve_batch(pose(z=0.0), 4, current_tick=len(path), min_age=7)
    assert len(got) == 4
    assert int(got.ticks[0]) < 30  # the best view is from the first visit ...
    back = (got.ticks >= 100) & (got.ticks < 220)
    assert not bool(back.any()), got.ticks  # ... and nothing from the walk back, which looked the other way
    # (the rest may be views from the final turn on this spot, which partly share the view)
    assert bool(((got.ticks < 30) | (got.ticks >= 220)).all())


def test_kept_ticks_fast_path_equals_running_the_store():
    """kept_ticks' dedup_keep='first' shortcut holds exactly the frames a real store holds, on paths
    that wander, stand still, turn in place and come back (many near-duplicate tests at the edge)."""
    for seed in range(16):
        config = MemoryConfig(budget_entries=512, dedup_keep="first", dedup_distance=(0.3, 0.5, 1.0)[seed % 3],
                              dedup_angle_deg=(10.0, 15.0, 30.0)[seed % 3])
        world = generate_world(seed)
        policy = ("walk", "look", "revisit", "retrace")[seed % 4]
        poses = make_trajectory(world, 160, policy, random.Random(seed)).poses
        store = MemoryStore(dataclasses.replace(config, payload_shape=(1,), payload_dtype="float32"))
        for t in range(1, poses.shape[0]):
            store.add(torch.zeros(1), poses[t], t)
        expected = torch.zeros(poses.shape[0], dtype=torch.bool)
        expected[store.ticks()] = True
        assert torch.equal(kept_ticks(poses, config), expected), (seed, policy)
