"""Attention pattern mining and schedule fitting (adatoken3d-calibrate), on the tiny LLaVA-3D."""

import json
import re

import numpy as np
import pytest

from adatoken3d_lab.calibrate import (
    AUTO_AGREEMENT,
    LayerStats,
    calibrate,
    checkpoint_id,
    fit_schedule,
    frontier_candidates,
    main,
    pareto_frontier,
    pick_auto,
    retained_mass,
)
from adatoken3d_node.model.flops import LlamaShape, prefill_flops
from adatoken3d_node.model.gating_policy import parse_gating
from adatoken3d_node.model.loader import load_llava3d
from adatoken3d_lab.random_checkpoint import create_random_llava3d
from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd
from adatoken3d_node.perception.keyframes import KeyframePolicy


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('llava3d')
    create_random_llava3d(root / 'model', root / 'clip', seed=0)
    model, tokenizer, _ = load_llava3d(root / 'model', device='cpu')
    return root / 'model', model, tokenizer


def synthetic_scene(model, views=3):
    frontend = SceneFrontEnd(
        FrontEndConfig(
            image_size=model.image_size,
            patch_grid=model.patch_grid,
            keyframes=KeyframePolicy(min_translation_m=0.0, min_rotation_deg=0.0),
        )
    )
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0, 79.5], [0, 100.0, 59.5], [0, 0, 1]])
    for i in range(views):
        pose = np.eye(4)
        pose[0, 3] = 0.7 * i
        depth = rng.uniform(1.0, 4.0, (120, 160)).astype(np.float32)
        frontend.add_view(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), depth, K, pose, i + 1)
    return frontend.scene()


def test_profile_reports_attention_statistics_and_a_schedule_that_parses(tiny):
    path, model, tokenizer = tiny
    scene = synthetic_scene(model)
    profile = calibrate(model, tokenizer, path, [scene], ['Where is the chair?', 'What is at [1, 0, 2]?'], 0.2)
    L = model.language_model.config.num_hidden_layers
    assert [row['layer'] for row in profile['layers']] == list(range(1, L))
    for row in profile['layers']:
        assert 0.0 < row['spatial_mass_share'] <= 1.0 and 0.0 < row['keep_for_95'] <= 1.0
        assert row['low_mass_share'] == pytest.approx(1 - row['keep_for_95'], abs=1e-4)
    assert (
        profile['calibration']['prompts'] == 2 and profile['calibration']['median_spatial_tokens'] == scene.num_tokens
    )
    policy = parse_gating(profile['schedule'], L)
    assert policy.kind == 'schedule'
    assert profile['target_met'] and profile['predicted_flops_reduction'] >= 0.2
    assert profile['checkpoint_id'] == checkpoint_id(path) and profile['untrained_model']
    again = calibrate(model, tokenizer, path, [scene], ['Where is the chair?', 'What is at [1, 0, 2]?'], 0.2)
    timings = ('calibration', 'frontier_seconds')
    assert {k: v for k, v in again.items() if k not in timings} == {
        k: v for k, v in profile.items() if k not in timings
    }
    # the frontier: every candidate measured with the label-free proxy, the Pareto points, auto's pick
    assert 'agreement' in profile['proxy'] and 'no labelled answers' in profile['proxy']
    assert [p['gating'] for p in profile['candidates']] == [
        str(parse_gating(text, L)) for text in frontier_candidates(profile['schedule'])
    ]
    for point in profile['candidates']:
        assert 0.0 <= point['agreement'] <= 1.0 and 0.0 < point['flops_reduction'] < 1.0
    assert profile['frontier'] == pareto_frontier(profile['candidates'])
    auto = profile['auto']
    assert auto['gating'] in [p['gating'] for p in profile['candidates']]
    if auto['agreement'] >= AUTO_AGREEMENT:
        assert auto == {
            **pick_auto(profile['frontier'], AUTO_AGREEMENT),
            'min_agreement': AUTO_AGREEMENT,
            'reason': auto['reason'],
        }
    else:
        assert auto['gating'] == profile['schedule'] and 'no candidate reached' in auto['reason']


def test_pareto_frontier_and_auto_pick():
    points = [
        {'gating': 'a', 'flops_reduction': 0.5, 'agreement': 0.99},
        {'gating': 'b', 'flops_reduction': 0.7, 'agreement': 0.95},
        {'gating': 'c', 'flops_reduction': 0.6, 'agreement': 0.90},  # dominated by b
        {'gating': 'd', 'flops_reduction': 0.9, 'agreement': 0.97},
        {'gating': 'e', 'flops_reduction': 0.95, 'agreement': 0.60},
    ]
    frontier = pareto_frontier(points)
    assert [p['gating'] for p in frontier] == ['a', 'd', 'e']  # b: d cuts more and agrees more
    assert pick_auto(frontier, 0.97)['gating'] == 'd'
    assert pick_auto(frontier, 0.98)['gating'] == 'a'
    assert pick_auto(frontier, 0.999) is None


def test_an_unreachable_target_keeps_the_strongest_schedule_and_says_so(tiny):
    path, model, tokenizer = tiny
    profile = calibrate(model, tokenizer, path, [synthetic_scene(model, views=1)], ['Where?'], 0.95)
    assert not profile['target_met'] and 0 < profile['predicted_flops_reduction'] < 0.95


def test_fit_prefers_the_layout_that_keeps_the_most_mass_at_the_target():
    """Attention concentrates on few spatial tokens in late layers: cut late, and hard."""
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    n = 100
    flat = np.linspace(0.01, 1.0, n)  # mass spread evenly
    peaked = np.minimum(1.0, np.concatenate([np.linspace(0.5, 0.99, 10), np.ones(n - 10)]))
    stats = {
        layer: LayerStats([0.5], [0.95 if layer < 4 else 0.1], [flat if layer < 4 else peaked]) for layer in range(1, 8)
    }
    fit = fit_schedule(stats, shape, tokens=120, spatial=n, target=0.3)
    layers = [int(part.split(':')[0]) for part in fit['schedule'][len('schedule:') :].split(',')]
    ratios = [float(part.split(':')[1]) for part in fit['schedule'][len('schedule:') :].split(',')]
    assert fit['target_met'] and fit['predicted_flops_reduction'] >= 0.3
    assert ratios == sorted(ratios, reverse=True)
    # the hard cut lands where few tokens hold the mass, so almost all of it is kept
    assert all(layer >= 4 for layer, r in zip(layers, ratios) if r <= 0.2) and min(ratios) <= 0.2
    assert fit['predicted_mass_retained'] > 0.9
    counts, tokens = [], 120
    for layer in range(8):
        if layer in layers:
            tokens = 20 + int(np.ceil(ratios[layers.index(layer)] * n))
        counts.append(tokens)
    assert fit['predicted_flops_reduction'] == pytest.approx(
        1 - prefill_flops(shape, counts) / prefill_flops(shape, [120] * 8), abs=1e-4
    )
    assert fit['predicted_mass_retained'] == pytest.approx(
        np.prod([retained_mass(stats, layer, r) for layer, r in zip(layers, ratios)]), abs=1e-4
    )


def test_command_line_writes_the_profile(tiny, tmp_path, capsys):
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f'{SHARED_DATA} is not here')
    path, _, _ = tiny
    output = tmp_path / 'profile.json'
    assert (
        main(
            [
                str(path),
                '--dataset',
                f'tum:{SHARED_DATA / "tum_single"}',
                '--device',
                'cpu',
                '--target-flops-reduction',
                '0.1',
                '--no-frontier',  # the frontier is measured in the test above; here 10 prompts x 27 policies
                '--output',
                str(output),
            ]
        )
        == 0
    )
    profile = json.loads(output.read_text())
    assert profile['calibration']['scenes'] == 1 and profile['calibration']['prompts'] == 10
    assert 'frontier' not in profile and 'auto' not in profile
    assert 'wrote' in capsys.readouterr().out


def test_gating_auto_resolves_to_the_profile_of_the_loaded_checkpoint(tiny, tmp_path):
    from adatoken3d_node.model.profiles import (
        PROFILE_NAME,
        frontier_gatings,
        load_profile,
        profile_candidates,
        resolve_gating,
        uncalibrated_note,
    )

    path, _, _ = tiny
    assert resolve_gating('fastv:2:0.5', path) == 'fastv:2:0.5'  # anything but auto passes through
    assert resolve_gating('auto', path) == resolve_gating('auto~question', path) == 'none'  # no profile: dense
    assert re.search(f'no calibrated profile.*{checkpoint_id(path)}.*adatoken3d-calibrate', uncalibrated_note(path))
    assert profile_candidates(path)[0] == path / PROFILE_NAME
    (path / PROFILE_NAME).write_text(json.dumps({'schedule': 'schedule:1:0.5,2:0.25'}))  # a profile of before
    try:
        assert resolve_gating('auto', path) == 'schedule:1:0.5,2:0.25'
        assert resolve_gating('auto~question', path) == 'schedule:1:0.5,2:0.25~question'
        assert frontier_gatings(load_profile(path)) == []
        frontier = [
            {'gating': 'kcentre:0.1[merge]', 'flops_reduction': 0.9},
            {'gating': 'fastv:0:0.5~question', 'flops_reduction': 0.4},
        ]
        cases = (
            ('voxel:0.4', 'voxel:0.4'),
            ('fastv:0:0.5', 'fastv:0:0.5~question'),
            ('kcentre:0.1', 'kcentre:0.1~question'),
        )
        for auto, question in cases:
            profile = {'schedule': 'schedule:1:0.5', 'auto': {'gating': auto}, 'frontier': frontier}
            (path / PROFILE_NAME).write_text(json.dumps(profile))
            assert resolve_gating('auto', path) == auto
            assert resolve_gating('auto~question', path) == question  # raters only where the policy scores
        assert frontier_gatings(load_profile(path)) == ['fastv:0:0.5~question', 'kcentre:0.1[merge]']
    finally:
        (path / PROFILE_NAME).unlink()


def test_checkpoint_id_follows_the_weights_not_the_location(tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    create_random_llava3d(a, tmp_path / 'a-clip', seed=0)
    create_random_llava3d(b, tmp_path / 'b-clip', seed=0)
    create_random_llava3d(c, tmp_path / 'c-clip', seed=1)
    assert checkpoint_id(a) == checkpoint_id(b) != checkpoint_id(c)
