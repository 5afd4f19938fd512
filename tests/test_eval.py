"""`worldmodel eval`: scoring against the oracle, baselines, revisit metrics, logs and suites."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from wm_helpers import randomized_model, tiny_autoencoder

from scenes.render import render_views
from scenes.trajectories import make_trajectory
from scenes.world import generate_world
from tools import eval as ev
from worldmodel.checkpoint import save_checkpoint
from tools.cli import main
from worldmodel.config import tiny_config
from conventions.errors import UserError
from conventions.metrics import DRIFT_EARLY_TICKS, DRIFT_LATE_TICKS, drift_scores, masked_psnr, psnr

SEED = 1_000_123


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    return save_checkpoint(path, randomized_model(tiny_config(window_frames=2)), tiny_autoencoder())


def _write_log(path: Path, ticks: int, scene: str = f"procedural:{SEED}") -> torch.Tensor:
    world = generate_world(SEED)
    tr = make_trajectory(world, ticks + 1, "walk", random.Random(0))
    header = {"format": "worldmodel.actions", "version": 1, "scene": scene, "prompt": world.caption,
              "image_sha256": None, "checkpoint_sha256": None, "backend": "oracle", "seed": 3, "tick_hz": 20.0,
              "resolution": [64, 64], "start_pose": tr.poses[0].tolist()}
    lines = [json.dumps(header)] + [json.dumps({"t": t, "action": tr.actions[t].tolist(), "pose": tr.poses[t].tolist()})
                                    for t in range(1, ticks + 1)]
    path.write_text("\n".join(lines) + "\n")
    return tr.poses


def test_eval_log_scores_against_the_oracle_with_baselines(checkpoint: Path, tmp_path: Path) -> None:
    poses = _write_log(tmp_path / "a.jsonl", 6)
    out = tmp_path / "a.json"
    assert main(["eval", "--log", str(tmp_path / "a.jsonl"), "--checkpoint", str(checkpoint), "--json", str(out),
                 "--plot", str(tmp_path / "a.png"), "--precision", "bf16"]) == 0
    doc = json.loads(out.read_text())
    assert doc["precision"] == "bf16"
    log = doc["logs"][0]
    run = log["runs"]["memory_on"]
    assert log["ticks"] == 6 and len(run["psnr"]) == 6 and len(run["ssim"]) == 6
    assert run["mean_psnr"] == pytest.approx(sum(run["psnr"]) / 6)
    truth = render_views(generate_world(SEED), poses, 64)
    hold = psnr(truth[:1].expand(6, -1, -1, -1), truth[1:])
    assert log["baselines"]["hold_start_frame"]["psnr"] == pytest.approx(hold.tolist(), abs=1e-4)
    assert "shuffled_actions" in log["baselines"]
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "a_memory.png").stat().st_size > 0


def test_seed_offset_reruns_the_same_walk_with_other_noise(checkpoint: Path, tmp_path: Path) -> None:
    """`--seed-offset N` moves only the sampling seed: the truth and the held start frame stay, the
    generated frames change, and the same offset gives the same numbers; the JSON says which offset and
    steps."""
    _write_log(tmp_path / "a.jsonl", 4)
    runs = {}
    for name, offset in (("zero", "0"), ("five", "5"), ("five_again", "5")):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--log", str(tmp_path / "a.jsonl"), "--checkpoint", str(checkpoint), "--json", str(out),
                     "--seed-offset", offset, "--steps", "1"]) == 0
        runs[name] = json.loads(out.read_text())
    assert (runs["five"]["seed_offset"], runs["zero"]["seed_offset"]) == (5, 0)
    assert runs["five"]["sample_steps"] == 1
    psnrs = {name: doc["logs"][0]["runs"]["memory_on"]["psnr"] for name, doc in runs.items()}
    assert psnrs["five"] == psnrs["five_again"] and psnrs["five"] != psnrs["zero"]
    base = {name: doc["logs"][0]["baselines"] for name, doc in runs.items()}
    assert base["five"]["hold_start_frame"] == base["zero"]["hold_start_frame"]  # the truth's: no noise
    assert base["five"]["shuffled_actions"] == base["five_again"]["shuffled_actions"]  # a model run: seeded too
    with pytest.raises(SystemExit):
        main(["eval", "--log", str(tmp_path / "a.jsonl"), "--seed-offset", "-1"])


def test_prefill_feeds_true_frames(checkpoint: Path, tmp_path: Path) -> None:
    _write_log(tmp_path / "b.jsonl", 5)
    logs = ev.log_from_file(tmp_path / "b.jsonl", 64, 90.0)
    from worldmodel.runtime import ModelFrameSource

    frames = ev.rollout(ModelFrameSource(checkpoint), logs, logs.actions, logs.poses, prefill=3)
    # Teacher-forced ticks return the true frames exactly; later ticks are generated.
    assert torch.equal(frames[:3], logs.truth[1:4])
    assert not torch.equal(frames[3:], logs.truth[4:])


def _revisit_log(resolution: int) -> ev.EvalLog:
    """A held-out revisit walk of 160 ticks with its true frames (tick 0 first)."""
    world = generate_world(SEED)
    tr = make_trajectory(world, 161, "revisit", random.Random(5))
    return ev.EvalLog("r", world, ev.CameraPose.from_sequence(tr.poses[0].tolist()), "", tr.actions[1:],
                      tr.poses[1:], render_views(world, tr.poses, resolution))


def test_revisit_scores_use_return_ticks() -> None:
    log = _revisit_log(16)
    scores = ev.revisit_scores(log.truth[1:], log, prefill=0)
    if scores["return_ticks"]:
        assert scores["first_return_tick"] >= 100 and scores["psnr_vs_truth"] == 100.0
        # a perfect model scores against its first visit exactly what the true views score
        assert scores["psnr_vs_first_visit"] == scores["truth_psnr_vs_first_visit"] < 100.0
        # moved into the return pose with the true depth, the first visit agrees far better: what is
        # left is resampling, not the up to 0.5 m / 15 degrees between the two cameras
        assert scores["psnr_vs_first_visit_warped"] == scores["truth_psnr_vs_first_visit_warped"]
        assert scores["truth_psnr_vs_first_visit_warped"] > scores["truth_psnr_vs_first_visit"] + 1.0  # 16 px: +1.6 dB
        assert 0.3 < scores["first_visit_warped_coverage"] <= 1.0


def test_warped_first_visit_tells_a_changed_place() -> None:
    """The pose-compensated return score falls when the return frames are not the place first seen."""
    log = _revisit_log(32)
    truth = log.truth
    same = ev.revisit_scores(truth[1:], log, prefill=0)
    if not same["return_ticks"]:
        pytest.skip("this walk never returns")
    changed = truth[1:].clone()
    changed[same["first_return_tick"] - 1:] = 255 - changed[same["first_return_tick"] - 1:]  # the returns inverted
    other = ev.revisit_scores(changed, log, prefill=0)
    assert other["psnr_vs_first_visit_warped"] < same["psnr_vs_first_visit_warped"] - 10.0
    assert other["truth_psnr_vs_first_visit_warped"] == same["truth_psnr_vs_first_visit_warped"]


def test_summary_means_per_policy() -> None:
    def result(policy: str, value: float) -> dict:
        return {"policy": policy, "runs": {"memory_on": {"mean_psnr": value, "revisit": {"psnr_vs_truth": value}}}}

    summary = ev.summarise([result("revisit", 10.0), result("retrace", 20.0), result("retrace", 30.0)])
    assert summary["memory_on.mean_psnr"] == 20.0
    assert summary["retrace/memory_on.revisit.psnr_vs_truth"] == 25.0
    assert summary["revisit/memory_on.mean_psnr"] == 10.0
    assert not any("/" in k for k in ev.summarise([result("revisit", 1.0)]))


def test_eval_refuses_logs_without_ground_truth(checkpoint: Path, tmp_path: Path) -> None:
    scene_dir = tmp_path / "scene"
    scene_dir.mkdir()
    (scene_dir / "scene.toml").write_text('prompt = "x"\nstart_pose = [0, 1.6, 0, 0, 0]\n')
    from PIL import Image

    Image.new("RGB", (8, 8)).save(scene_dir / "start.png")
    _write_log(tmp_path / "c.jsonl", 3, scene=str(scene_dir))
    with pytest.raises(UserError, match="no procedural world"):
        ev.log_from_file(tmp_path / "c.jsonl", 64, 90.0)
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 2  # neither --log nor --suite


def test_drift_compares_the_late_window_with_the_early_one() -> None:
    assert (DRIFT_EARLY_TICKS, DRIFT_LATE_TICKS) == ((1, 100), (1000, 1100))  # docs/architecture.md §Metrics
    per_tick = [20.0] * 100 + [0.0] * 899 + [15.0] * 101  # ticks 1..1100
    d = drift_scores(per_tick, [0.5] * 1100)
    assert d["early_psnr"] == 20.0 and d["late_psnr"] == 15.0 and d["drift_db"] == -5.0
    assert d["late_over_early"] == 0.75 and d["early_ssim"] == d["late_ssim"] == 0.5
    assert drift_scores(per_tick[:1099]) is None  # the rollout must reach tick 1100
    assert drift_scores([1.0, 2.0, 3.0, 4.0], early=(1, 2), late=(3, 4))["drift_db"] == 2.0


def test_drift_suite_runs_long_chained_rollouts(checkpoint: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "DRIFT_WINDOWS", ((1, 3), (10, 12)))  # the suite's length follows the late window
    out = tmp_path / "drift.json"
    assert main(["eval", "--suite", "drift", "--limit", "1", "--checkpoint", str(checkpoint), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (log,) = doc["logs"]
    assert log["ticks"] == 12 and log["policy"] == "chain" and "baselines" not in log
    assert set(log["runs"]) == {"memory_on", "memory_off"}
    for run in log["runs"].values():
        p = run["psnr"]
        assert run["drift"]["early_psnr"] == pytest.approx(sum(p[:3]) / 3)
        assert run["drift"]["late_psnr"] == pytest.approx(sum(p[9:12]) / 3)
    assert doc["summary"]["memory_on.drift.drift_db"] == pytest.approx(log["runs"]["memory_on"]["drift"]["drift_db"])
    # a teacher-forced start that covers the early window leaves nothing to compare with
    assert main(["eval", "--suite", "drift", "--limit", "1", "--prefill", "2", "--memory", "on",
                 "--checkpoint", str(checkpoint), "--json", str(out)]) == 0
    assert "drift" not in json.loads(out.read_text())["logs"][0]["runs"]["memory_on"]


@pytest.fixture(scope="module")
def hint_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_hint import _ae_with_depth

    path = tmp_path_factory.mktemp("ck") / "hint.safetensors"
    return save_checkpoint(path, randomized_model(tiny_config(window_frames=2, hint=True)), _ae_with_depth())


def test_hint_settings_and_oracle_depth_are_measured_and_recorded(hint_checkpoint: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """`--depth oracle` gives every view of the hint the ray caster's depth at its pose; the play-time
    hint settings go to the session and into the JSON; none of them applies with the hint off."""
    from scenes.render import render_views_with_depth
    from worldmodel.runtime import ModelFrameSource
    from worldmodel.data import VIEW_DEPTH_DTYPE

    poses = _write_log(tmp_path / "a.jsonl", 4)
    out = tmp_path / "a.json"
    assert main(["eval", "--log", str(tmp_path / "a.jsonl"), "--checkpoint", str(hint_checkpoint), "--json", str(out),
                 "--depth", "oracle", "--splat-levels", "on", "--point-cache", "4096", "--composite", "1"]) == 0
    doc = json.loads(out.read_text())
    assert (doc["depth"], doc["splat_levels"], doc["point_cache"], doc["composite"]) == ("oracle", True, 4096, 1.0)
    # the oracle depth reaches the views
    world = generate_world(SEED)
    source = ModelFrameSource(checkpoint=hint_checkpoint)
    source.session.depth_source = ev.oracle_depth(world, 64, 90.0)
    log = ev.log_from_file(tmp_path / "a.jsonl", 64, 90.0)
    ev.rollout(source, log, log.actions[:2], log.poses[:2], 0)
    truth = render_views_with_depth(world, poses[2:3], 64)[1][0]
    assert torch.equal(source.session.views[2].depth, truth.to(VIEW_DEPTH_DTYPE).float())
    capsys.readouterr()
    assert main(["eval", "--log", str(tmp_path / "a.jsonl"), "--checkpoint", str(hint_checkpoint), "--hint", "off",
                 "--depth", "oracle"]) == 2
    assert "which is off here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--log", str(tmp_path / "a.jsonl"), "--checkpoint", str(hint_checkpoint), "--composite", "1.5"])


def test_masked_psnr_scores_only_the_masked_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8, generator=g)
    b = a.clone()
    b[:, :, :4] = 255 - b[:, :, :4]  # the left half differs, the right half is equal
    left = torch.zeros(2, 8, 8, dtype=torch.bool)
    left[:, :, :4] = True
    assert torch.allclose(masked_psnr(a, b, torch.ones_like(left)), psnr(a, b))
    assert masked_psnr(a, b, ~left).tolist() == [100.0, 100.0]  # capped, as psnr of equal frames
    assert masked_psnr(a[:, :, :4], b[:, :, :4], left[:, :, :4]).allclose(masked_psnr(a, b, left))
    empty = torch.zeros_like(left)
    empty[1] = True
    assert masked_psnr(a, b, empty)[0].isnan() and not masked_psnr(a, b, empty)[1].isnan()


def test_start_view_covers_what_the_start_frame_shows() -> None:
    world = generate_world(SEED)
    tr = make_trajectory(world, 17, "walk", random.Random(0))
    start = ev.CameraPose.from_sequence(tr.poses[0].tolist())
    still = start.as_tensor()[None].expand(3, -1).clone()
    turned = still.clone()
    turned[:, 3] += torch.tensor([0.0, math.pi / 4, math.pi])  # yaw: none, 45 degrees, half a turn
    poses = torch.cat([still, turned])
    truth = render_views(world, torch.cat([start.as_tensor()[None], poses]), 16)
    log = ev.EvalLog("s", world, start, "", torch.zeros(len(poses), 5), poses, truth)
    seen, warped = ev.start_view(log, 90.0)
    assert seen.shape == (6, 16, 16) and seen[:4].all()
    # the no-model reprojection: the start frame itself where the camera has not moved, and the held
    # start frame where the start view does not reach (facing back)
    assert warped.shape == (6, 16, 16, 3) and warped.dtype == torch.uint8
    assert (warped[:4].int() - truth[:1].int()).abs().max() <= 1 and torch.equal(warped[5], truth[0])
    assert 0.3 < seen[4].float().mean() < 0.7  # a 45-degree turn keeps about half of a 90-degree view
    assert not seen[5].any()  # facing back: nothing of the start view
    # the split of a perfect rollout: both parts exact; held start frame: the new part is worse
    scores = ev.split_scores(truth[1:], truth[1:], seen, prefill=0)
    assert scores == {}  # shorter than every horizon
    long_seen = seen.repeat(11, 1, 1)[:64]
    frames = truth[1:].repeat(11, 1, 1, 1)[:64]
    scores = ev.split_scores(frames, frames, long_seen, prefill=0)
    assert scores["psnr_start_view_64"] == 100.0 and scores["psnr_new_content_64"] == 100.0
    assert scores["new_content_share_16"] == pytest.approx((~long_seen[:16]).float().mean().item())


def test_action_logs_score_the_no_model_reprojection_of_the_start_frame() -> None:
    """Logs of 16 ticks or more get a third baseline: the true start frame reprojected with its true
    depth (no model). On a walk it beats holding the start frame, and its start-view split is the
    bound docs/model_card.md compares the model with; a source that returns the truth scores above it."""
    world = generate_world(SEED)
    tr = make_trajectory(world, 17, "walk", random.Random(2))
    start = ev.CameraPose.from_sequence(tr.poses[0].tolist())
    truth = render_views(world, tr.poses, 64)
    log = ev.EvalLog("walk", world, start, "", tr.actions[1:], tr.poses[1:], truth)

    class TruthSource:  # the frames a perfect model would make
        def reset(self, scene, start_pose, prompt, seed):
            self.tick = 0

        def step(self, action, pose, observed=None):
            self.tick += 1
            return truth[self.tick].numpy()

        def current_depth(self):  # no views: no play depth to score
            return None

    out = ev.evaluate_log(lambda mem: TruthSource(), log, [True], 0, False, 90.0)
    assert "baselines" not in out
    out = ev.evaluate_log(lambda mem: TruthSource(), log, [True], 0, True, 90.0)
    warp, hold = out["baselines"]["reproject_start_frame"], out["baselines"]["hold_start_frame"]
    assert warp["psnr_16"] > hold["psnr_16"] + 3.0
    assert 24.0 < warp["split"]["psnr_start_view_16"] < out["runs"]["memory_on"]["split"]["psnr_start_view_16"]
    summary = ev.summarise([out])
    assert summary["reproject_start_frame.split.psnr_start_view_16"] == warp["split"]["psnr_start_view_16"]


def test_play_depth_is_scored_against_the_oracle(hint_checkpoint: Path, tmp_path: Path) -> None:
    """Every hint run scores the depth its frames are kept with (what later hints reproject them
    with): exact when that depth is the oracle's own (`--depth oracle`), not with the depth head;
    models without views have no such score."""
    _write_log(tmp_path / "a.jsonl", 16)
    runs = {}
    for depth in ("oracle", "head"):
        out = tmp_path / f"{depth}.json"
        assert main(["eval", "--log", str(tmp_path / "a.jsonl"), "--checkpoint", str(hint_checkpoint), "--json",
                     str(out), "--depth", depth]) == 0
        runs[depth] = json.loads(out.read_text())["logs"][0]["runs"]["memory_on"]["depth"]
    assert runs["oracle"]["abs_rel_16"] < 1e-3  # float16 rounding of the views
    assert runs["oracle"]["delta_1_25_16"] == 1.0 and runs["oracle"]["sky_accuracy_16"] == 1.0
    assert runs["head"]["abs_rel_16"] > 0.05
    assert "abs_rel_64" not in runs["head"] and "abs_rel_late" not in runs["head"]  # the log is 16 ticks long


def test_depth_scores_cover_the_horizons_and_drift_windows_a_log_reaches(monkeypatch) -> None:
    monkeypatch.setattr(ev, "DRIFT_WINDOWS", ((1, 4), (17, 20)))
    truth = torch.full((20, 2, 2), 2.0)
    depths = [torch.full((2, 2), 2.0)] * 16 + [torch.full((2, 2), 3.0)] * 4  # the last 4 ticks 50% too far
    scores = ev.depth_scores(depths, truth, prefill=0)
    assert scores["abs_rel_16"] == 0.0 and scores["abs_rel_early"] == 0.0
    assert scores["abs_rel_late"] == pytest.approx(0.5) and scores["delta_1_25_late"] == 0.0
    assert "abs_rel_64" not in scores
    assert "abs_rel_early" not in ev.depth_scores(depths, truth, prefill=4)  # teacher-forced ticks do not count
