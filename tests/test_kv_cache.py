"""The preallocated play-time KV cache: layout, ring buffer wrap-around, no reallocation, sink re-timing."""

from __future__ import annotations

import torch

from wm_helpers import randomized_model, walking_poses

from worldmodel.config import tiny_config
from worldmodel.kv_cache import REGION_CURRENT, REGION_MEMORY, REGION_SINK, REGION_WINDOW, KVCache
from worldmodel.runtime import WorldModelSession


def test_layout_and_sizes() -> None:
    c = tiny_config(window_frames=3, memory_entries=2)
    cache = KVCache(c, batch=2)
    p = c.tokens_per_frame
    assert cache.slots == p + 2 * 16 + 3 * p + p == c.cache_slots
    assert cache.k.shape == (c.layers, 2, c.heads, cache.slots, c.head_dim)
    assert cache.layer(1)[0].data_ptr() == cache.k[1].data_ptr()
    counts = torch.bincount(cache.region, minlength=4).tolist()
    assert counts[REGION_SINK] == p and counts[REGION_MEMORY] == 32
    assert counts[REGION_WINDOW] == 3 * p and counts[REGION_CURRENT] == p
    assert cache.commit_mask().sum() == 4 * p
    cache.set_memory_valid(torch.tensor([[True, False], [False, False]]))
    assert cache.valid[0].sum() == 16 and cache.valid[1].sum() == 0
    assert cache.valid[0, cache.memory_index()[:16]].all()


def test_a_row_is_a_one_row_cache_on_the_same_storage() -> None:
    c = tiny_config(window_frames=3, memory_entries=2)
    cache = KVCache(c, batch=3)
    row = cache.row(1)
    assert row.batch == 1 and row.k.shape == (c.layers, 1, c.heads, cache.slots, c.head_dim)
    row.k[:, 0].fill_(2.0)
    row.valid[0, row.current_index()] = True
    assert (cache.k[:, 1] == 2.0).all() and not cache.k[:, 0].any() and not cache.k[:, 2].any()
    assert cache.valid[1].sum() == c.tokens_per_frame and not cache.valid[0].any()
    row.advance_window(4)  # the row's ring moves, the others' do not
    assert int(row.window_pos) == 1 and int(cache.window_pos) == 0 and int(cache.row(2).window_pos) == 0
    row.reset()
    assert not cache.valid.any() and (cache.k[:, 1] == 2.0).all()  # forgotten, not reallocated


def test_window_index_cycles() -> None:
    c = tiny_config(window_frames=3)
    cache = KVCache(c)
    starts = []
    for tick in range(1, 8):
        idx = cache.window_index()
        assert idx.shape == (c.tokens_per_frame,)
        starts.append(int(idx[0]))
        cache.advance_window(tick)
    p = c.tokens_per_frame
    w0 = cache.window_start
    assert starts == [w0, w0 + p, w0 + 2 * p, w0, w0 + p, w0 + 2 * p, w0]
    assert sorted(cache.window_ticks.tolist()) == [5, 6, 7]
    cache.reset()
    assert not cache.valid.any() and int(cache.window_pos) == 0 and (cache.window_ticks == -1).all()


def test_ring_buffer_wraps_over_many_ticks_without_reallocation() -> None:
    c = tiny_config(window_frames=3, memory_entries=2)
    session = WorldModelSession(randomized_model(c))
    cache = session.cache
    ptrs = (cache.k.data_ptr(), cache.v.data_ptr(), cache.valid.data_ptr(), cache.sink_raw_k.data_ptr())
    actions, poses = walking_poses(41, seed=0)
    session.reset(torch.randn(16, 8, 8), poses[0], "", seed=0)
    valid_counts = []
    for t in range(1, 41):
        session.step(actions[t], poses[t])
        window_valid = cache.valid[0, cache.region == REGION_WINDOW].sum().item()
        valid_counts.append(window_valid)
        # the ring holds exactly the last committed frames (frame t is committed in tick t+1's first pass)
        held = sorted(x for x in cache.window_ticks.tolist() if x >= 0)
        assert held == list(range(max(1, t - c.window_frames), t))
    assert (cache.k.data_ptr(), cache.v.data_ptr(), cache.valid.data_ptr(), cache.sink_raw_k.data_ptr()) == ptrs
    assert valid_counts[-1] == c.window_frames * c.tokens_per_frame
    assert torch.isfinite(cache.k).all() and torch.isfinite(session.last_latent).all()


def test_sink_retiming_rotates_from_the_raw_keys() -> None:
    c = tiny_config(max_time_offset=4)
    model = randomized_model(c)
    session = WorldModelSession(model)
    session.reset(torch.randn(16, 8, 8), [0.0, 1.6, 0.0, 0.0, 0.0], "", seed=0)
    cache = session.cache
    sink = cache.sink_index()
    k0 = cache.k[:, :, :, sink].clone()
    model.retime_sink(cache, 3)  # within the offset: nothing to do
    assert cache.sink_tick == 0 and torch.equal(cache.k[:, :, :, sink], k0)
    model.retime_sink(cache, 11)
    assert cache.sink_tick == 7
    k7 = cache.k[:, :, :, sink].clone()
    model.retime_sink(cache, 9)
    model.retime_sink(cache, 11)  # back to 7 via 5: no drift, rotation is recomputed from the raw keys
    assert torch.equal(cache.k[:, :, :, sink], k7)
    # only the time dims move
    sp, tp = (c.rope_row_dims + c.rope_col_dims) // 2, c.rope_time_dims // 2
    half = sp + tp
    time_dims = [c.camera_dims + o + sp + i for o in (0, half) for i in range(tp)]
    other = [d for d in range(c.head_dim) if d not in time_dims]
    assert torch.equal(k7[..., other], k0[..., other])
    assert not torch.allclose(k7[..., time_dims], k0[..., time_dims])
    # q(t) . k_sink depends on t - sink_tick only: tick 11 vs sink 7 == tick 4 vs sink 0
    q = torch.randn(1, c.heads, 1, c.head_dim)
    dots = []
    for tq, ks in ((11, k7), (4, k0)):
        qt = q @ model.pos.time_map(torch.tensor([[tq]]))  # [1, H, 1, D]
        dots.append(qt @ ks[0].transpose(-1, -2))
    assert torch.allclose(dots[0], dots[1], atol=1e-4)
