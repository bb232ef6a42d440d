"""Paired cluster bootstrap of policies answering the same questions (adatoken3d_lab/stats.py)."""

import numpy as np
import pytest

from adatoken3d_lab.stats import PairedBootstrap


def test_a_policy_against_itself_differs_by_exactly_nothing():
    rng = np.random.default_rng(0)
    outcomes = rng.random(200) < 0.7
    boot = PairedBootstrap({'a': outcomes, 'b': outcomes.copy()}, np.repeat(np.arange(20), 10))
    diff = boot.difference('a', 'b')
    assert (diff.value, diff.low, diff.high) == (0.0, 0.0, 0.0)  # paired: the same draw for both
    ratio = boot.ratio('a', 'b')
    assert (ratio.value, ratio.low, ratio.high) == (1.0, 1.0, 1.0)
    accuracy = boot.accuracy('a')
    assert accuracy.value == pytest.approx(outcomes.mean()) and accuracy.low < accuracy.value < accuracy.high


def test_a_clear_difference_excludes_zero_and_a_coin_flip_does_not():
    rng = np.random.default_rng(1)
    scenes = np.repeat(np.arange(30), 8)
    good, bad = rng.random(240) < 0.8, rng.random(240) < 0.4
    boot = PairedBootstrap({'good': good, 'bad': bad, 'also_bad': rng.random(240) < 0.4}, scenes)
    clear = boot.difference('good', 'bad')
    assert clear.low > 0.2 and clear.value == pytest.approx(good.mean() - bad.mean())
    coin = boot.difference('bad', 'also_bad')
    assert coin.low < 0 < coin.high


def test_questions_of_a_scene_are_resampled_together():
    """Outcomes that are all-or-nothing per scene carry the information of one question per scene: the
    interval is as wide as for that many independent questions, far wider than for as many questions."""
    rng = np.random.default_rng(2)
    per_scene = rng.random(20) < 0.5
    clustered = np.repeat(per_scene, 10)  # 200 answers, 20 independent ones
    wide = PairedBootstrap({'a': clustered}, np.repeat(np.arange(20), 10)).accuracy('a')
    narrow = PairedBootstrap({'a': clustered}, np.arange(200)).accuracy('a')  # wrongly, each its own scene
    assert (wide.high - wide.low) > 2.5 * (narrow.high - narrow.low)


def test_seeded_and_checked():
    outcomes = {'a': [True, False, True, True], 'b': [False, False, True, True]}
    first = PairedBootstrap(outcomes, [0, 0, 1, 1]).difference('a', 'b')
    assert first == PairedBootstrap(outcomes, [0, 0, 1, 1]).difference('a', 'b')
    with pytest.raises(ValueError, match='4 outcomes but 3 scene ids'):
        PairedBootstrap(outcomes, [0, 0, 1])
