"""Rooms drawn in other styles and cluttered rooms (synthetic.RenderStyle, sample_style; the shifted and
clutter splits of training/dataset.py): the standard rooms stay as they were, the held-out settings are
never drawn for training, and each split is what its name says."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from adatoken3d_lab import synthetic
from adatoken3d_lab.training.dataset import SPLIT_KINDS, SPLITS, STANDARD_KIND, TRAINING_MIX, render_scene
from adatoken3d_lab.training.questions import candidates
from adatoken3d_lab.training.train import front_end_config


def test_the_standard_style_is_the_default_drawing():
    objects = synthetic.make_scene(3, unique=True, min_size_m=0.25)
    default = synthetic.room_frames(objects, n_views=2, width=107, height=80, seed=3)
    explicit = synthetic.room_frames(
        objects,
        n_views=2,
        width=107,
        height=80,
        seed=3,
        style=synthetic.RenderStyle(),
        path=synthetic.CameraPath(),
        depth_defects=synthetic.DepthDefects(),
    )
    for a, b in zip(default, explicit):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth) and np.array_equal(a.pose, b.pose)


def test_a_style_changes_the_colours_and_not_the_geometry():
    objects = [synthetic.SceneObject('sphere', 'red', synthetic.COLOURS['red'], (0.0, 0.0, 0.3), (0.6, 0.6, 0.6))]
    K = synthetic.intrinsics(160, 120)
    pose = synthetic.look_at((2.5, 0.0, 1.2), (0.0, 0.0, 0.3))
    rgb, depth = synthetic.render(objects, K, pose, 160, 120, room_half_m=3.2, textured=True)
    style = synthetic.RenderStyle(textures=(('sphere', 'checker'),), floor='tiles', light_dir=(0.0, 0.0, 1.0))
    rgb2, depth2 = synthetic.render(objects, K, pose, 160, 120, room_half_m=3.2, style=style)
    assert np.array_equal(depth, depth2) and not np.array_equal(rgb, rgb2)
    sphere = depth[60, 80]
    assert sphere and rgb2[(depth2 == sphere)].std() > 0  # the checker shows on the sphere
    ceiling = synthetic.RenderStyle(ceiling=True)
    up = synthetic.look_at((0.0, 0.0, 1.2), (0.5, 0.0, 3.0))  # looking up at the ceiling
    _, open_depth = synthetic.render([], K, up, 160, 120, room_half_m=3.2, textured=True)
    _, closed_depth = synthetic.render([], K, up, 160, 120, room_half_m=3.2, style=ceiling)
    assert (closed_depth > 0).sum() > (open_depth > 0).sum()  # the sky became a ceiling


def test_held_out_settings_are_never_drawn_for_training():
    for held_out in (False, True):
        rng = np.random.default_rng(0)
        for _ in range(300):
            style, path, defects = synthetic.sample_style(rng, held_out)
            sphere = dict(style.textures)['sphere']
            elevation = np.degrees(np.arcsin(style.light_dir[2]))
            assert (sphere in ('checker', 'stripes')) is held_out
            assert (10 <= elevation <= 25) if held_out else (30 <= elevation <= 90)
            assert (0.62 <= style.ambient <= 0.75) if held_out else (0.30 <= style.ambient <= 0.60)
            # held out: circling 1.0-1.5 m from the centre looking in; training: never that ring
            assert (path.radius_m[1] <= 1.5) if held_out else (path.radius_m[0] >= 1.6 or path.radius_m[1] < 1.0)
            assert not (held_out and path.outward)
            assert style.floor in ('plain', 'checker', 'tiles') and defects.blobs >= 0


def test_depth_holes_and_colour_shades():
    depth = np.full((100, 120), 2000, np.uint16)
    holed = synthetic.add_depth_holes(depth, np.random.default_rng(0), synthetic.DepthDefects(blobs=3, border_px=5))
    assert (holed[:, :5] == 0).all() and 0.002 < (holed[:, 5:] == 0).mean() < 0.5
    plain = synthetic.make_scene(4, unique=True)
    shaded = synthetic.make_scene(4, unique=True, shade_jitter=0.15)
    assert [(o.shape, o.colour_name, o.centre) for o in plain] == [(o.shape, o.colour_name, o.centre) for o in shaded]
    for o in shaded:
        named = np.asarray(synthetic.COLOURS[o.colour_name], float)
        assert np.all(np.abs(np.asarray(o.rgb) - named) <= 0.15 * named + 1)
    assert any(o.rgb != synthetic.COLOURS[o.colour_name] for o in shaded)


@pytest.fixture(scope='module')
def config():
    return front_end_config()


def test_training_draws_standard_randomised_and_cluttered_rooms_and_never_held_out_ones():
    mix = TRAINING_MIX
    assert SPLIT_KINDS['train'] == SPLIT_KINDS['test'] == STANDARD_KIND  # the shipped model's rooms
    drawn = Counter(mix.kind_for(seed) for seed in range(SPLITS['train'], SPLITS['train'] + 400))
    assert {kind.style for kind in drawn} == {'standard', 'randomised'}
    assert any(kind.objects == SPLIT_KINDS['clutter'].objects for kind in drawn)
    for kind, weight in mix.kinds:
        assert abs(drawn[kind] / 400 - weight / sum(w for _, w in mix.kinds)) < 0.08
    assert mix.kind_for(7) == mix.kind_for(7)  # by seed: a split renders the same rooms every time


def test_the_training_camera_also_walks_among_the_objects():
    paths = [synthetic.sample_style(np.random.default_rng(i), held_out=False)[1] for i in range(60)]
    assert any(p.outward for p in paths) and any(p.radius_m[0] >= 2.2 for p in paths)
    outward = next(p for p in paths if p.outward)
    frames = synthetic.room_frames([], n_views=4, width=64, height=48, seed=1, path=outward)
    for f in frames:
        eye, forward = f.pose[:3, 3], f.pose[:3, 2]  # camera z is the optical axis
        assert np.hypot(*eye[:2]) <= 0.8 and np.dot(forward[:2], eye[:2]) > 0  # looking away from the centre


def test_the_shifted_split_is_drawn_in_held_out_styles(config):
    assert SPLIT_KINDS['shifted'].style == 'held_out'
    kind = SPLIT_KINDS['shifted']
    record = render_scene(SPLITS['shifted'], config, kind)
    standard = render_scene(SPLITS['shifted'], config, dataclasses.replace(kind, style='standard'))
    assert [o.shape for o in record.objects] == [o.shape for o in standard.objects]
    assert not np.array_equal(record.images, standard.images)
    assert any(o.rgb != synthetic.COLOURS[o.colour_name] for o in record.objects)  # other shades


def test_a_clutter_scene_has_many_small_objects_and_1500_spatial_tokens(config):
    record = render_scene(SPLITS['clutter'] + 1, config, SPLIT_KINDS['clutter'])
    objects = record.objects
    assert 12 <= len(objects) <= 25 and all(max(o.size) <= 0.3 for o in objects)
    assert len({(o.colour_name, o.shape) for o in objects}) == len(objects)  # "the red box" names one object
    assert max(sum(o.shape == s for o in objects) for s in synthetic.SHAPES) >= 3
    assert record.geometry(config).num_tokens >= 1500
    asked = candidates(objects, np.random.default_rng(0))
    assert asked['location'] and asked['counting'] and asked['existence']


def test_the_demo_room_is_not_one_the_model_learns_from_or_is_tuned_on():
    from adatoken3d_lab.demo import DEMO_SCENE_SEED

    ends = sorted(SPLITS.values())
    for split in ('train', 'val', 'test'):
        first = SPLITS[split]
        assert not first <= DEMO_SCENE_SEED < ends[ends.index(first) + 1]
