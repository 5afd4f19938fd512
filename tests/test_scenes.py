import random

import numpy as np
import pytest
import torch
from PIL import Image

from scenes.render import render_views
from scenes.scene import DEFAULT_SCENE, list_scenes, load_image, load_scene
from scenes.trajectories import POLICIES, chained_trajectory, make_trajectory, revisit_ticks
from scenes.world import caption_vocabulary, generate_world, is_heldout_seed, tokenize_words
from conventions.camera import integrate
from conventions.errors import UserError


def test_world_is_deterministic_and_seeds_differ():
    a, b, c = generate_world(7), generate_world(7), generate_world(8)
    assert torch.equal(a.primitives.box_centre, b.primitives.box_centre)
    assert a.caption == b.caption
    assert a.caption != c.caption or not torch.equal(a.primitives.box_centre, c.primitives.box_centre)
    assert is_heldout_seed(1_000_000) and not is_heldout_seed(999_999)


def test_render_shape_determinism_and_sky_above_ground_below():
    w = generate_world(3)
    pose = w.spawn_pose().as_tensor()
    up = pose.clone()
    up[4] = 1.2  # look up: mostly sky
    down = pose.clone()
    down[4] = -1.2  # look down: the ground
    imgs = render_views(w, torch.stack([pose, up, down]), 32)
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == torch.uint8
    assert torch.equal(imgs, render_views(w, torch.stack([pose, up, down]), 32))
    assert not torch.equal(imgs[1], imgs[2])
    with pytest.raises(ValueError):
        render_views(w, torch.tensor([[0.0, 0.0, float("nan"), 0.0, 0.0]]))


def test_two_places_in_one_world_look_different():
    w = generate_world(102)
    p = w.spawn_pose().as_tensor()
    q = p.clone()
    q[3] += 3.14159
    a, b = render_views(w, torch.stack([p, q]), 64).float()
    assert (a - b).abs().mean() > 10


def test_captions_only_use_vocabulary_words():
    vocab = set(caption_vocabulary())
    for seed in range(30):
        assert set(tokenize_words(generate_world(seed).caption)) <= vocab


def test_trajectories_integrate_exactly_and_revisit_comes_back():
    w = generate_world(1)
    for policy in POLICIES:
        tr = make_trajectory(w, 160, policy, random.Random(0))
        assert tr.actions.shape == (160, 5) and torch.all(tr.actions[0] == 0)
        pose = tr.poses[0]
        for t in range(1, 160):
            pose = integrate(pose, tr.actions[t])
        assert torch.allclose(pose, tr.poses[-1], atol=1e-3)
    found = sum(bool(revisit_ticks(make_trajectory(generate_world(s), 160, "revisit", random.Random(s)).poses))
                for s in range(6))
    assert found >= 4


def test_chained_trajectory_strings_policy_segments_from_the_spawn_pose():
    w = generate_world(2)
    tr = chained_trajectory(w, 95, random.Random(1), segment_ticks=20)
    assert tr.actions.shape == (95, 5) and tr.poses.shape == (95, 5) and torch.all(tr.actions[0] == 0)
    assert tr.poses[0].tolist() == pytest.approx(w.spawn_pose().as_list())
    pose = tr.poses[0]
    for t in range(1, 95):  # one continuous walk: each segment starts where the last one ended
        pose = integrate(pose, tr.actions[t])
        assert torch.allclose(pose, tr.poses[t], atol=1e-3), t
    # the segments follow POLICIES in turn: the first walks (moves every tick), the second mostly stands
    moved = (tr.actions[:, :3].abs().sum(1) > 0).float()
    assert moved[1:20].mean() > 0.9 and moved[20:39].mean() < 0.5
    again = chained_trajectory(w, 95, random.Random(1), segment_ticks=20)
    assert torch.equal(again.actions, tr.actions)
    with pytest.raises(ValueError):
        chained_trajectory(w, 0, random.Random(1))


REVISIT_SEED3_LAST_POSE = [-4.6218, 1.6, 0.7543, -3.2887, 0.0]
"""Last pose of the seed-3 revisit clip as generated before the retrace policy was added."""


def test_retrace_returns_to_views_seen_along_the_way_not_only_the_start():
    """The retrace policy walks its outbound route again >= 100 ticks later: most return ticks
    match outbound ticks past the start look-around, which only the memory can hold (the sink
    holds tick 0)."""
    along = 0
    for s in range(6):
        tr = make_trajectory(generate_world(s), 161, "retrace", random.Random(s))
        pairs = revisit_ticks(tr.poses)
        assert all(t - f >= 100 for t, f in pairs)
        along += sum(f > 6 for _, f in pairs)
    assert along >= 30


def test_revisit_pairs_compare_with_the_nearest_view_of_the_first_visit():
    """Ticks 0-4 walk past a place (first visit), 5-119 are far away, 120-124 come back slowly,
    ticks 200-204 pass again (a second visit). A return is paired with the first visit's tick whose
    pose is nearest, not with that visit's edge and never with the later visit."""
    def far(n: int, x0: float) -> list:
        return [[x0 + 0.6 * i, 1.6, 10.0, 0.0, 0.0] for i in range(n)]  # never within 0.5 m of each other

    poses = [[0.1 * i, 1.6, 0.0, 0.0, 0.0] for i in range(5)] + far(115, 10.0) + \
        [[0.1 * i + 0.02, 1.6, 0.0, 0.0, 0.0] for i in range(5)] + far(75, 200.0) + \
        [[0.1 * i + 0.01, 1.6, 0.0, 0.0, 0.0] for i in range(5)]
    poses = torch.tensor(poses)  # [205, 5]
    pairs = dict(revisit_ticks(poses))
    assert set(pairs) == set(range(120, 125)) | set(range(200, 205))
    assert [pairs[t] for t in range(120, 125)] == list(range(5))  # the same view, not tick 0
    assert [pairs[t] for t in range(200, 205)] == list(range(5))  # the first visit, not ticks 120-124
    earliest = dict(revisit_ticks(poses, match="earliest"))
    assert set(earliest) == set(pairs) and all(f == 0 for f in earliest.values())
    with pytest.raises(ValueError):
        revisit_ticks(poses, match="nearest")


def test_revisit_policy_is_unchanged_by_the_retrace_refactor():
    """Data sets record policies per clip; a `revisit` clip of a seed must stay the clip it was."""
    tr = make_trajectory(generate_world(3), 160, "revisit", random.Random(3))
    assert [round(v, 4) for v in tr.poses[-1].tolist()] == REVISIT_SEED3_LAST_POSE


def test_bundled_scenes_load_and_match_their_worlds():
    names = list_scenes()
    assert len(names) >= 8 and DEFAULT_SCENE in names
    for name in names:
        scene = load_scene(name)
        assert scene.image.ndim == 3 and scene.image.shape[2] == 3 and scene.prompt
        assert scene.world_seed is not None
    s = load_scene(DEFAULT_SCENE)
    truth = render_views(generate_world(s.world_seed), s.start_pose.as_tensor()[None], s.image.shape[0])[0]
    assert np.abs(truth.numpy().astype(int) - s.image.astype(int)).max() <= 1


def test_procedural_scene_spec():
    s = load_scene("procedural:5")
    assert s.world_seed == 5 and s.prompt == generate_world(5).caption
    for bad in ("procedural:", "procedural:-3", "procedural:abc"):
        with pytest.raises(UserError, match="seed"):
            load_scene(bad)


def test_scene_folder_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="no scene.toml"):
        load_scene(str(tmp_path))
    (tmp_path / "scene.toml").write_text("prompt = 3\nstart_pose = [0, 1, 0, 0, 0]\n")
    with pytest.raises(UserError, match=r"scene.toml: field 'prompt' must be str"):
        load_scene(str(tmp_path))
    (tmp_path / "scene.toml").write_text('prompt = "x"\nstart_pose = [0, 1, 0]\n')
    with pytest.raises(UserError, match="start_pose"):
        load_scene(str(tmp_path))
    (tmp_path / "scene.toml").write_text('prompt = "x"\nstart_pose = [0, 1, 0, 0, 0]\n')
    with pytest.raises(UserError, match="start.png: image file not found"):
        load_scene(str(tmp_path))
    (tmp_path / "scene.toml").write_text('prompt = "x" = y')
    with pytest.raises(UserError, match="not valid TOML"):
        load_scene(str(tmp_path))
    with pytest.raises(UserError, match="no such scene"):
        load_scene("no-such-scene-anywhere")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA"])
def test_any_image_mode_and_size_converts(tmp_path, mode):
    arr = (np.arange(40 * 30) % 251).reshape(30, 40).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 200)
    path = tmp_path / "x.png"
    im.save(path)
    out = load_image(path, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    jpg = tmp_path / "y.jpg"
    Image.fromarray(arr).convert("RGB").save(jpg)
    assert load_image(jpg, 16).shape == (16, 16, 3)


def test_broken_images_get_one_clear_error(tmp_path):
    not_image = tmp_path / "a.png"
    not_image.write_text("hello")
    with pytest.raises(UserError, match="a.png: not an image"):
        load_image(not_image)
    good = tmp_path / "b.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    truncated = tmp_path / "c.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(UserError, match="c.png"):
        load_image(truncated)
    gif = tmp_path / "d.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with pytest.raises(UserError, match="PNG or JPEG"):
        load_image(gif)
    with pytest.raises(UserError, match="not found"):
        load_image(tmp_path / "missing.png")
