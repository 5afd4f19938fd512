"""The causal transformer: masks, causality, camera invariance, cached play == joint training pass."""

from __future__ import annotations

import copy

import pytest
import torch

from wm_helpers import randomized_model, rigid_transform, walking_poses

from worldmodel.config import WorldModelConfig, default_config, tiny_config
from worldmodel.model import (ROLE_CURRENT, ROLE_WINDOW, JointBatch, WorldModel, build_joint_mask,
                              rope_cos_sin, rotate_half_pairs)
from worldmodel.runtime import WorldModelSession
from worldmodel.sampler import add_noise, ddim_step, noise_levels
from worldmodel.text import PAD_ID, UNK_ID, Tokenizer

PROMPT = "a walled courtyard of red brick on grass"


def _batch(config: WorldModelConfig, frames: int, targets: int, seed: int = 0, memory: bool = True) -> JointBatch:
    """Sink + clean context + noisy targets of one synthetic clip (+ one memory entry per target)."""
    g = torch.Generator().manual_seed(seed)
    c = config
    clean_ticks = list(range(frames - targets))
    tgt_ticks = list(range(frames - targets - targets + 1, frames - targets + 1))
    ticks = clean_ticks + tgt_ticks
    n = len(ticks)
    actions, poses = walking_poses(max(ticks) + 1, seed)
    idx = torch.tensor(ticks)
    shape = (c.latent_channels, c.latent_size, c.latent_size)
    ids, mask = Tokenizer(c.vocab, c.max_text_tokens).encode_batch([PROMPT])
    b = JointBatch(latents=torch.randn(1, n, *shape, generator=g),
                   noise=torch.cat([torch.full((len(clean_ticks),), 0.05), torch.rand(targets, generator=g)])[None],
                   actions=actions[idx][None], poses=poses[idx][None], ticks=idx[None],
                   clean=torch.tensor([[True] * len(clean_ticks) + [False] * targets]),
                   sink=torch.tensor([[t == 0 for t in clean_ticks] + [False] * targets]),
                   valid=torch.ones(1, n, dtype=torch.bool), text_ids=ids, text_mask=mask)
    if memory and c.use_memory:
        e = targets
        b.mem_latents = torch.randn(1, e, *shape, generator=g)
        b.mem_poses = poses[:e][None] + 0.1
        b.mem_owner = torch.arange(n - targets, n)[None]
        b.mem_valid = torch.ones(1, e, dtype=torch.bool)
    return b


# --- config / text ------------------------------------------------------------------------------
def test_default_config_is_consistent_and_json_round_trips() -> None:
    c = default_config()
    assert c.head_dim == c.camera_dims + c.rope_row_dims + c.rope_col_dims + c.rope_time_dims
    assert c.cache_slots == 64 + c.memory_entries * 16 + c.window_frames * 64 + 64
    assert WorldModelConfig.from_json(c.to_json()) == c


def test_tokenizer_unknown_empty_and_long_prompts() -> None:
    c = tiny_config()
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    ids = tok.encode("A walled COURTYARD, zebra!!")
    assert ids[:3] == [c.vocab.index("a"), c.vocab.index("walled"), c.vocab.index("courtyard")]
    assert ids[3] == c.vocab.index(",") and ids[4] == UNK_ID and ids[5] == UNK_ID
    assert tok.encode("") == [PAD_ID] and tok.encode("   ") == [PAD_ID]
    long = tok.encode("red " * 500)
    assert len(long) == c.max_text_tokens
    model = randomized_model(c)
    batch_ids, mask = tok.encode_batch(["", "zebra " * 100, PROMPT])
    out = model.text_condition(batch_ids, mask)
    assert out.shape == (3, c.cond_dim) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[2])


# --- positional encoding ------------------------------------------------------------------------
def test_rope_relative_and_precise_at_large_ticks() -> None:
    freqs = torch.tensor([1.0, 0.1], dtype=torch.float64)
    q, k = torch.randn(4), torch.randn(4)
    dots = []
    for base in (0, 1_000_000):
        cq, sq = rope_cos_sin((base + 7) * freqs)
        ck, sk = rope_cos_sin((base + 3) * freqs)
        dots.append(float((rotate_half_pairs(q, cq, sq) * rotate_half_pairs(k, ck, sk)).sum()))
    assert dots[0] == pytest.approx(dots[1], abs=1e-4)


# --- joint mask ---------------------------------------------------------------------------------
def test_joint_mask_matches_play_time_visibility() -> None:
    w, p = 2, 1
    #        sink  pad   c1    c2    c3   n2    n3    n4
    ticks = torch.tensor([[0, -99, 1, 2, 3, 2, 3, 4]])
    clean = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    sink = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    owner = torch.tensor([[5, 7]])
    mvalid = torch.tensor([[True, True]])
    m = build_joint_mask(ticks, clean, sink, valid, w, p, owner, mvalid, memory_tokens=1)[0]
    expect = [
        # sink pad c1 c2 c3 n2 n3 n4 | mem(n2) mem(n4)
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # sink sees itself
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # padding: itself (+ sink), never seen by others
        [1, 0, 1, 0, 0, 0, 0, 0, 0, 0],  # clean 1 commits: sink + W-1 = 1 previous (none) + itself
        [1, 0, 1, 1, 0, 0, 0, 0, 0, 0],  # clean 2: sink, c1, itself
        [1, 0, 0, 1, 1, 0, 0, 0, 0, 0],  # clean 3: sink, c2, itself
        [1, 0, 1, 0, 0, 1, 0, 0, 1, 0],  # noisy 2: sink, c1 (W=2 previous: c0 is the sink), itself, memory
        [1, 0, 1, 1, 0, 0, 1, 0, 0, 0],  # noisy 3: sink, c1, c2, itself
        [1, 0, 0, 1, 1, 0, 0, 1, 0, 1],  # noisy 4: sink, c2, c3, itself, its memory
    ]
    assert m.int().tolist() == expect


def test_later_frames_cannot_change_earlier_outputs() -> None:
    c = tiny_config(window_frames=3)
    model = randomized_model(c)
    # G = clean ticks 0..5 (index 0..5) + noisy targets at ticks 4, 5, 6 (index 6, 7, 8)
    cases = {
        "clean tick 3": (lambda b: b.latents[0, 3].add_(1.0), {3, 4, 5, 6, 7, 8}),
        "noisy tick 5": (lambda b: b.latents[0, 7].add_(1.0), {7}),
        "memory of target 6": (lambda b: b.mem_latents[0, 2].add_(1.0), {8}),
        "action of clean tick 4": (lambda b: b.actions[0, 4].add_(0.3), {4, 5, 7, 8}),  # not noisy tick 4
    }
    with torch.no_grad():
        base = model.forward_joint(_batch(c, frames=9, targets=3))
        for name, (perturb, expected) in cases.items():
            b = _batch(c, frames=9, targets=3)
            perturb(b)
            out = model.forward_joint(b)
            changed = {i for i in range(9) if not torch.allclose(base[0, i], out[0, i], atol=1e-6)}
            assert changed == expected, (name, changed)


def test_camera_encoding_is_invariant_to_rigid_world_motion() -> None:
    c = tiny_config(camera_position_scale=0.3)
    model = randomized_model(c, scale=0.1)
    b = _batch(c, frames=8, targets=2)
    moved = _batch(c, frames=8, targets=2)
    moved.poses = rigid_transform(b.poses, yaw=0.8, shift=(3.0, 0.5, -7.0))
    moved.mem_poses = rigid_transform(b.mem_poses, yaw=0.8, shift=(3.0, 0.5, -7.0))
    with torch.no_grad():
        a, m = model.forward_joint(b), model.forward_joint(moved)
        assert torch.allclose(a, m, atol=2e-5), (a - m).abs().max()
        # but a relative change (one camera moved) is seen
        bent = _batch(c, frames=8, targets=2)
        bent.poses[0, 3, 0] += 0.5
        assert not torch.allclose(a, model.forward_joint(bent), atol=1e-3)


# --- play == training -----------------------------------------------------------------------------
def _record_session(model: WorldModel, ticks: int, defer: bool, seed: int = 3, use_memory: bool = True):
    """Run a play session and record every cached pass with the memory the cache held during it."""
    calls, written = [], {}
    fwd, wmem = model.forward_cached, model.write_memory
    c = model.config

    def rec(cache, latents, noise, actions, poses, tks, text_cond, roles, **kwargs):
        # every frame's output, committed ones too (play asks for the current frame's alone: that
        # the current frame's numbers do not depend on it is test_current_only_...)
        out = fwd(cache, latents, noise, actions, poses, tks, text_cond, roles, **{**kwargs, "current_only": False})
        e = c.memory_entries
        mem_valid = cache.valid[0, cache.memory_start: cache.window_start].view(e, -1)[:, 0].clone()
        calls.append(dict(latents=latents[0].clone(), noise=noise[0].clone(), actions=actions[0].clone(),
                          poses=poses[0].clone(), ticks=list(tks), roles=list(roles), out=out[0].clone(),
                          mem_valid=mem_valid, mem=dict(written)))
        return out

    def rec_mem(cache, latents, poses, valid, ids=None, **kwargs):
        computed = wmem(cache, latents, poses, valid, ids, **kwargs)
        if computed:
            written.update(latents=latents[0].clone(), poses=poses[0].clone(), writes=written.get("writes", 0) + 1)
        return computed

    model.forward_cached, model.write_memory = rec, rec_mem
    try:
        session = WorldModelSession(model, defer_commit=defer, use_memory=use_memory)
        actions, poses = walking_poses(ticks + 1, seed)
        poses[:, 3] = poses[:, 3] % 6.0 - 3.0 + torch.where(torch.arange(ticks + 1) % 10 < 5, 0.0, 3.1)
        session.reset(torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(seed)), poses[0], PROMPT, seed)
        frames = session.rollout(actions[1:], poses[1:])
    finally:
        del model.forward_cached, model.write_memory
    return frames, calls, written, session


def test_cached_play_equals_joint_training_pass() -> None:
    # memory keys as trained: memory_key_scale is a play-time rule the training pass does not apply
    c = tiny_config(window_frames=3, memory_entries=2, warmup_frames=1, warmup_steps=3, sample_steps=2,
                    memory_key_scale=1.0)
    model = randomized_model(c)
    ticks = 16
    frames, calls, written, session = _record_session(model, ticks, defer=True)
    assert written.get("writes", 0) >= 1, "memory was never used"
    clean, noisy = {}, {}
    for call in calls:
        for i, (role, tick) in enumerate(zip(call["roles"], call["ticks"])):
            item = {k: call[k][i] for k in ("latents", "noise", "actions", "poses", "out")}
            item["mem"], item["mem_valid"] = call["mem"], call["mem_valid"]
            (noisy if role == ROLE_CURRENT else clean)[tick] = item  # the last pass of a tick wins
    assert sorted(clean) == list(range(ticks)) and sorted(noisy) == list(range(1, ticks + 1))
    assert any(bool(noisy[t]["mem_valid"].any()) for t in noisy)
    order = [(t, True) for t in sorted(clean)] + [(t, False) for t in sorted(noisy)]
    items = [(clean if is_clean else noisy)[t] for t, is_clean in order]
    e = c.memory_entries
    shape = (e, c.latent_channels, c.latent_size, c.latent_size)
    mem_lat, mem_pose, mem_valid = [], [], []
    for t in sorted(noisy):
        held = noisy[t]["mem"]
        mem_lat.append(held.get("latents", torch.zeros(shape)))
        mem_pose.append(held.get("poses", torch.zeros(e, 5)))
        mem_valid.append(noisy[t]["mem_valid"])
    noisy_slots = [i for i, (_, is_clean) in enumerate(order) if not is_clean]
    tok = Tokenizer(c.vocab, c.max_text_tokens)
    ids, mask = tok.encode_batch([PROMPT])
    b = JointBatch(
        latents=torch.stack([x["latents"] for x in items])[None], noise=torch.stack([x["noise"] for x in items])[None],
        actions=torch.stack([x["actions"] for x in items])[None], poses=torch.stack([x["poses"] for x in items])[None],
        ticks=torch.tensor([[t for t, _ in order]]), clean=torch.tensor([[ic for _, ic in order]]),
        sink=torch.tensor([[t == 0 and ic for t, ic in order]]), valid=torch.ones(1, len(order), dtype=torch.bool),
        text_ids=ids, text_mask=mask, mem_latents=torch.cat(mem_lat)[None], mem_poses=torch.cat(mem_pose)[None],
        mem_owner=torch.tensor(noisy_slots).repeat_interleave(e)[None], mem_valid=torch.cat(mem_valid)[None])
    with torch.no_grad():
        joint = model.forward_joint(b)[0]
    for i, x in enumerate(items):
        assert torch.allclose(joint[i], x["out"], atol=1e-5), (order[i], (joint[i] - x["out"]).abs().max())


def test_current_only_passes_give_the_current_frame_the_same_numbers_and_the_cache_the_same_keys() -> None:
    """Play's passes skip the last layer's attention and MLP for frames that are only committed
    (`forward_cached(current_only=True)`): the current frame's output, and every K/V the pass
    writes, must be bit for bit those of the full pass."""
    c = tiny_config(window_frames=3, memory_entries=2)
    model = randomized_model(c)
    _, _, _, session = _record_session(model, 12, defer=True)
    pending = session._pending
    shape = (1, 2, c.latent_channels, c.latent_size, c.latent_size)
    latents = torch.stack([pending.latent, torch.randn(shape[2:], generator=torch.Generator().manual_seed(1))])[None]
    args = (latents, torch.tensor([[c.ctx_noise_play, 0.7]]), torch.stack([pending.action, pending.action])[None],
            torch.stack([pending.pose, pending.pose])[None], [pending.tick, pending.tick + 1], session._text_cond,
            [ROLE_WINDOW, ROLE_CURRENT])
    results = {}
    for current_only in (False, True):
        cache = copy.deepcopy(session.cache)
        with torch.no_grad():
            out = model.forward_cached(cache, *args, current_only=current_only)
        results[current_only] = (out, cache)
    (full, cache_full), (trimmed, cache_trimmed) = results[False], results[True]
    assert torch.equal(trimmed[:, 1], full[:, 1])
    assert torch.equal(trimmed[:, 0], torch.zeros_like(trimmed[:, 0])) and full[:, 0].abs().sum() > 0
    for name in ("k", "v"):
        for a, b in zip(getattr(cache_full, name), getattr(cache_trimmed, name)):
            assert torch.equal(a, b)
    assert torch.equal(cache_full.valid, cache_trimmed.valid)
    # a pass that only commits a frame writes the same keys and values without its last layer's attention
    commit = {}
    for current_only in (False, True):
        cache = copy.deepcopy(session.cache)
        with torch.no_grad():
            model.forward_cached(cache, latents[:, :1], args[1][:, :1], args[2][:, :1], args[3][:, :1],
                                 args[4][:1], args[5], [ROLE_WINDOW], current_only=current_only)
        commit[current_only] = cache
    for name in ("k", "v"):
        for a, b in zip(getattr(commit[False], name), getattr(commit[True], name)):
            assert torch.equal(a, b)


def test_deferred_commit_equals_immediate_commit_and_saves_a_pass() -> None:
    c = tiny_config(window_frames=3, sample_steps=2, warmup_frames=0)
    model = randomized_model(c)
    f_def, calls_def, _, _ = _record_session(model, 10, defer=True)
    f_now, calls_now, _, _ = _record_session(model, 10, defer=False)
    assert torch.allclose(f_def, f_now, atol=1e-5)
    assert len(calls_def) == 1 + 10 * 2 and len(calls_now) == 1 + 10 * 3


def test_session_is_deterministic_per_seed() -> None:
    c = tiny_config()
    model = randomized_model(c)
    a, *_ = _record_session(model, 5, defer=True, seed=1)
    b, *_ = _record_session(model, 5, defer=True, seed=1)
    d, *_ = _record_session(model, 5, defer=True, seed=2)
    assert torch.equal(a, b) and not torch.allclose(a, d)


def test_memory_flag_changes_generation_only_through_memory() -> None:
    c = tiny_config(window_frames=2)
    model = randomized_model(c)
    on, calls_on, written, _ = _record_session(model, 14, defer=True, use_memory=True)
    off, calls_off, _, _ = _record_session(model, 14, defer=True, use_memory=False)
    assert written.get("writes", 0) >= 1 and not any(bool(x["mem_valid"].any()) for x in calls_off)
    first_used = min(t for x in calls_on if bool(x["mem_valid"].any()) for t in x["ticks"])
    assert torch.allclose(on[: first_used - 1], off[: first_used - 1], atol=1e-6)
    assert not torch.allclose(on[first_used - 1:], off[first_used - 1:], atol=1e-4)


def test_memory_keys_are_reused_while_the_same_entries_are_retrieved() -> None:
    c = tiny_config(window_frames=2)
    model = randomized_model(c)
    _, calls, written, _ = _record_session(model, 30, defer=True)
    ticks_with_memory = {t for x in calls if bool(x["mem_valid"].any()) for t in x["ticks"]}
    assert 0 < written["writes"] < len(ticks_with_memory)


# --- sampler --------------------------------------------------------------------------------------
def test_memory_entries_already_in_the_cache_are_moved_not_recomputed() -> None:
    """Retrieval mostly reorders the entries or swaps one: those the cache holds are copied to their
    new slots, the rest computed, and the slots end bit for bit as a full write leaves them."""
    c = tiny_config(memory_entries=4)
    model = randomized_model(c)
    g = torch.Generator().manual_seed(0)
    entries = {n: (torch.randn(c.latent_channels, c.latent_size, c.latent_size, generator=g),
                   torch.randn(5, generator=g)) for n in "abcdef"}

    def write(cache, names, count_fresh=None):
        lat = torch.stack([entries[n][0] for n in names])[None]
        pos = torch.stack([entries[n][1] for n in names])[None]
        seen = []
        real = model.compress_memory
        model.compress_memory = lambda x: (seen.append(x.shape[1]), real(x))[1]
        try:
            model.write_memory(cache, lat, pos, torch.ones(1, len(names), dtype=torch.bool), (tuple(names),))
        finally:
            del model.compress_memory
        return seen

    session = WorldModelSession(model)
    held = session.cache
    assert write(held, "abcd") == [4]
    assert write(held, "cadb") == []  # a reorder computes nothing
    assert write(held, "ecad") == [1]  # one new entry
    full = copy.deepcopy(held)
    full.memory_ids = None
    assert write(full, "ecad") == [4]
    idx = held.memory_index()
    for layer in range(c.layers):
        for a, b in zip(held.layer(layer), full.layer(layer)):
            assert torch.equal(a[:, :, idx], b[:, :, idx])
    assert torch.equal(held.valid, full.valid)


def test_memory_key_scale_scales_the_memory_keys_alone() -> None:
    """memory_key_scale (a play-time rule) multiplies the memory entries' keys in the cache and
    nothing else: values equal, keys scaled, and 1 writes exactly the keys of the model as trained."""
    c = tiny_config(memory_entries=2)
    model = randomized_model(c)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 2, c.latent_channels, c.latent_size, c.latent_size, generator=g)
    pos = torch.randn(1, 2, 5, generator=g)
    caches = {}
    for scale in (1.0, 0.5):
        cache = WorldModelSession(model).cache
        model.write_memory(cache, lat, pos, torch.ones(1, 2, dtype=torch.bool), (("a", "b"),), key_scale=scale)
        caches[scale] = cache
    idx = caches[1.0].memory_index()
    for layer in range(c.layers):
        (k1, v1), (k2, v2) = caches[1.0].layer(layer), caches[0.5].layer(layer)
        assert torch.equal(v1[:, :, idx], v2[:, :, idx])
        assert torch.allclose(k2[:, :, idx], 0.5 * k1[:, :, idx], atol=1e-6)
        assert k1[:, :, idx].abs().sum() > 0
    default = WorldModelSession(model.__class__(c.replace(memory_key_scale=1.0)))
    assert default.memory_key_scale == 1.0 and WorldModelSession(model, memory_key_scale=0.25).memory_key_scale == 0.25
    with pytest.raises(ValueError, match="memory_key_scale"):
        WorldModelSession(model, memory_key_scale=0.0)


def test_sampler_levels_and_updates() -> None:
    assert noise_levels(1) == [1.0, 0.0]
    lv = noise_levels(4, shift=3.0)
    assert lv[0] == 1.0 and lv[-1] == 0.0 and all(a > b for a, b in zip(lv, lv[1:]))
    assert lv[2] > noise_levels(4)[2]  # shift spends more steps at high noise
    x0, eps = torch.randn(8), torch.randn(8)
    xt = add_noise(x0, eps, 0.6)
    # with a perfect x0 estimate the update lands exactly on the path at the next level
    assert torch.allclose(ddim_step(xt, x0, 0.6, 0.3), add_noise(x0, eps, 0.3), atol=1e-6)
    assert torch.equal(ddim_step(xt, x0, 0.6, 0.0), x0)


def test_casting_the_model_keeps_the_angle_tables_exact() -> None:
    """Play runs `model.to(bfloat16)`; the RoPE frequencies must stay the float64 ones training used."""
    from worldmodel.model import WorldModel

    model = WorldModel(tiny_config())
    before = model.pos.time_freqs.clone()
    model.to(dtype=torch.bfloat16)
    assert model.pos.time_freqs.dtype == torch.float64 and torch.equal(model.pos.time_freqs, before)
    assert model.pos.frame_angles.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.bfloat16
