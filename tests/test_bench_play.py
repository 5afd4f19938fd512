"""Tests of the play-loop benchmark (tools/bench_play.py): the interleaved A/B phase times every
contender under the same conditions, and a forked session continues exactly like the original."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class _Recorder:
    """A stand-in play session: returns a tiny frame and records who stepped with which action."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def step(self, action):
        self.log.append((self.name, action[0]))
        return np.zeros((2, 2, 3), dtype=np.uint8)


def test_interleaved_ab_takes_turns_rotates_order_and_uses_each_contenders_actions():
    from tools.bench_play import interleaved_ab

    log: list = []
    contenders = {n: (_Recorder(n, log), torch.arange(20, dtype=torch.float32)[:, None] + off)
                  for n, off in (("a", 0.0), ("b", 100.0), ("c", 200.0))}
    out = interleaved_ab(contenders, ticks=9, chunk=3)
    assert set(out) == {"a", "b", "c"} and all(v >= 0 for v in out.values())
    turns = [log[i][0] for i in range(0, len(log), 3)]
    assert turns == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # order rotated every round
    for name, off in (("a", 0.0), ("b", 100.0), ("c", 200.0)):
        assert [x for n, x in log if n == name] == [off + t for t in range(9)]  # each its own next actions


def test_fork_continues_exactly_like_the_original_and_shares_weights():
    from game.frame_source import make_frame_source
    from game.session import PlaySession
    from scenes.scene import DEFAULT_SCENE, load_scene
    from tools.bench_play import _fork

    torch.manual_seed(0)
    scene = load_scene(DEFAULT_SCENE)
    source = make_frame_source("model")
    session = PlaySession(source, scene, scene_spec=DEFAULT_SCENE, tick_hz=source.config.tick_hz)
    session.reset()
    for _ in range(3):
        session.step([1.0, 0.0, 0.0, 0.2, 0.0])
    fork = _fork(session, source)
    assert fork.source.session.model is source.session.model
    assert fork.source.session.memory is not source.session.memory
    for _ in range(2):
        a = session.step([0.0, 1.0, 0.0, -0.1, 0.0])
        b = fork.step([0.0, 1.0, 0.0, -0.1, 0.0])
        np.testing.assert_array_equal(a, b)


def test_bench_play_reports_sequential_and_interleaved_ratios(capsys):
    from tools.bench_play import AB_TICKS, EARLY_TICK, SPAN, bench_play

    args = argparse.Namespace(backend="oracle", resolution=32, checkpoint=None, memory="on",
                              ticks=EARLY_TICK + SPAN)
    r = bench_play(args)
    assert r["ticks"] == EARLY_TICK + SPAN and r["late_over_early"] > 0
    ab = r["interleaved_ms"]
    assert set(ab) == {"early", "late", "late_over_early"}  # no memory-off contender without a model
    assert abs(ab["late_over_early"] - ab["late"] / ab["early"]) < 1e-12
    assert f"interleaved A/B ({AB_TICKS} ticks each" in capsys.readouterr().out
    assert r["parts_ms"] is None  # the oracle renders: no model parts to time


def test_bench_play_times_the_hint_settings_it_is_given(capsys):
    """`bench play --sampling / --composite / --start-radius ...` time that rule (an A/B of hint rules
    needs no script) and say so in the result; settings without a hint are refused, not ignored."""
    from conventions.errors import UserError
    from tools.bench_play import bench_play

    args = argparse.Namespace(backend="model", resolution=64, checkpoint=None, memory="on", ticks=3,
                              sampling="nearest", composite=0.5, start_radius=2.0, splat_levels=None,
                              point_cache=None)
    r = bench_play(args)
    assert r["hint"] is True
    assert r["hint_settings"] == {"composite": 0.5, "start_radius": 2.0, "sampling": "nearest",
                                  "splat_levels": False, "point_cache": 0}
    out = capsys.readouterr().out
    assert "sampling nearest" in out
    # where the model's tick went: every TickTiming part, and what they leave of the frame time
    assert set(r["parts_ms"]) == {"memory", "hint", "generate", "decode", "rest"}
    assert r["parts_ms"]["generate"] > 0 and r["parts_ms"]["hint"] > 0 and r["parts_ms"]["decode"] > 0
    assert sum(r["parts_ms"].values()) <= r["p50_ms"] * 3
    assert "median per part: memory" in out
    assert r["sample_steps"] == 2  # the checkpoint's
    r = bench_play(argparse.Namespace(backend="model", resolution=64, checkpoint=None, memory="on", ticks=3, steps=1))
    assert r["sample_steps"] == 1
    with pytest.raises(UserError, match="--steps 1: only the model backend"):
        bench_play(argparse.Namespace(backend="oracle", resolution=32, checkpoint=None, memory="on", ticks=3, steps=1))
    with pytest.raises(UserError, match="--sampling"):
        bench_play(argparse.Namespace(backend="oracle", resolution=32, checkpoint=None, memory="on", ticks=3,
                                      sampling="nearest"))
    with pytest.raises(UserError, match="off here"):
        bench_play(argparse.Namespace(backend="model", resolution=64, checkpoint=None, memory="on", ticks=3,
                                      hint="off", composite=0.5))


def test_reproject_bench_times_every_rule_for_every_source_count():
    """`worldmodel bench reproject` reports a median per rule (fine, coarse levels, bilinear, the shipped
    play rule) and per K: positive times under the keys the model card quotes."""
    from tools.bench import REPROJECT_SOURCES, bench_reproject

    r = bench_reproject(16, iterations=2)
    assert r["resolution"] == 16
    for k in REPROJECT_SOURCES:
        for rule in ("", "_levels", "_bilinear", "_start"):
            assert r[f"k{k}{rule}_ms"] > 0
