"""The budget controller's decision rule and the schedules it picks (budget.py), on hand-set cost models."""

import numpy as np

from adatoken3d_node import budget
from adatoken3d_node.model.flops import LlamaShape
from adatoken3d_node.model.gating_policy import parse_gating, quarter_layers, ratio_count


def test_controller_picks_the_least_pruning_that_fits():
    """Unit check of the decision rule on a hand-set cost model: linear in FLOPs, no decode cost."""
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    cost.prefill_coef = np.array([1000.0, 1000.0, 0.0, 0.0])  # 1 ms per MFLOP, no cost per cut
    controller = budget.BudgetController(cost, min_keep_ratio=0.1)
    dense_ms = controller.predict(1.0, 50, 1000, 1).total_ms
    margin = budget.INITIAL_MARGIN
    assert cost.safety_margin_ms(100.0) == 10.0 and margin == 0.10  # before any budgeted query was seen
    assert controller.decide(dense_ms / (1 - margin) + 1, 50, 1000, 1).policy_text == 'none'
    tight = controller.decide(0.75 * dense_ms, 50, 1000, 1)
    tighter = controller.decide(0.6 * dense_ms, 50, 1000, 1)
    assert tight.fits and tighter.fits and 1.0 > tight.keep_ratio > tighter.keep_ratio >= 0.1
    for decision, limit in ((tight, 0.75 * dense_ms), (tighter, 0.6 * dense_ms)):
        aim = limit * (1 - margin)
        assert decision.predicted_ms <= aim
        # least pruning: keeping a bit more would not fit
        assert controller.predict(decision.keep_ratio + 0.01, 50, 1000, 1).total_ms > aim
    floor = controller.decide(1.0, 50, 1000, 1)
    assert not floor.fits and floor.keep_ratio == 0.1
    assert floor.policy_text == budget.budget_schedule(8, 0.1) == 'schedule:2:0.4642,4:0.2154,6:0.1000'
    # with the node's gating scored by the question, so are the schedules the budget picks
    question = budget.BudgetController(cost, min_keep_ratio=0.1, raters='question')
    assert question.decide(0.6 * dense_ms, 50, 1000, 1).keep_ratio == tighter.keep_ratio
    assert question.decide(1.0, 50, 1000, 1).policy_text == 'schedule:2:0.4642,4:0.2154,6:0.1000~question'
    assert parse_gating(question.decide(0.6 * dense_ms, 50, 1000, 1).policy_text, 8).raters == 'question'


def test_tokens_per_layer_follow_the_schedule_the_gate_runs():
    """The cost model's token counts are the counts the gated prefill keeps for the same schedule."""
    for layers in (4, 8, 32):
        for keep in (1.0, 0.5, 0.233, 0.1):
            policy = parse_gating(budget.budget_schedule(layers, keep), layers)
            counts = budget.tokens_per_layer(layers, 40, 340, keep)
            assert len(counts) == layers and counts[0] == 380
            assert list(policy.layers) == quarter_layers(layers)
            for layer, ratio in zip(policy.layers, policy.ratios):
                assert counts[layer] == 40 + ratio_count(ratio, 340)


FRONTIER = ('kcentre:0.5[merge]', 'schedule:2:0.5,4:0.25', 'kcentre:0.1[merge]', 'fastv:0:0.05~question', 'mass:0.9')


def test_controller_picks_the_least_pruned_frontier_policy_that_fits():
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    cost.prefill_coef = np.array([1000.0, 1000.0, 0.0, 0.0])
    controller = budget.BudgetController(cost, min_keep_ratio=0.05, frontier=FRONTIER)
    assert [str(p) for p in controller.frontier] == list(FRONTIER[:4])  # mass: counts depend on the scores
    dense_ms = controller.predict(1.0, 50, 1000, 1).total_ms
    margin = budget.INITIAL_MARGIN

    def predicted(text):
        counts = budget.planned_tokens_per_layer(parse_gating(text, 8), 8, 50, 1000)
        return cost.prefill_ms(counts) + cost.vision_ms()

    assert controller.decide(dense_ms / (1 - margin) + 1, 50, 1000, 1).policy_text == 'none'
    # the time left between two frontier points' predictions: the less pruned of them that fits
    half = controller.decide((predicted('kcentre:0.5[merge]') + 1) / (1 - margin), 50, 1000, 1)
    assert (half.policy_text, half.keep_ratio, half.fits) == ('kcentre:0.5[merge]', 0.5, True)
    tight = controller.decide((predicted('kcentre:0.1[merge]') + 1) / (1 - margin), 50, 1000, 1)
    assert (tight.policy_text, tight.keep_ratio) == ('kcentre:0.1[merge]', 0.1)
    floor = controller.decide(1.0, 50, 1000, 1)
    assert (floor.policy_text, floor.keep_ratio, floor.fits) == ('fastv:0:0.05~question', 0.05, False)
    # never below min_keep_ratio: then the floor is the 10% point
    careful = budget.BudgetController(cost, min_keep_ratio=0.1, frontier=FRONTIER)
    assert careful.decide(1.0, 50, 1000, 1).policy_text == 'kcentre:0.1[merge]'
    # in the frontier's order: with time for both of the first two points, the first
    both = (max(predicted('kcentre:0.5[merge]'), predicted('schedule:2:0.5,4:0.25')) + 1) / (1 - margin)
    assert controller.decide(both, 50, 1000, 1).policy_text == 'kcentre:0.5[merge]'
    # a selection's observed time is part of the prediction: k-centre no longer fits, the schedule does
    cost.add_selection_time('kcentre', 10 * dense_ms)
    assert controller.decide(both, 50, 1000, 1).policy_text == 'schedule:2:0.5,4:0.25'
    # when none fits, the least late, not the last: here the layer-0 score's time makes the schedule sooner
    cost.add_selection_time(parse_gating('fastv:0:0.05~question', 8).pre.method, 10 * dense_ms)
    late = controller.decide(1.0, 50, 1000, 1)
    assert (late.policy_text, late.fits) == ('schedule:2:0.5,4:0.25', False)


def test_when_no_frontier_policy_fits_a_near_tie_goes_to_the_less_pruned():
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    cost.prefill_coef = np.array([1000.0, 1000.0, 0.0, 0.0])
    frontier = ('kcentre:0.1[merge]', 'fastv:0:0.05~question')
    controller = budget.BudgetController(cost, min_keep_ratio=0.05, frontier=frontier)
    coarse, fine = (cost.prefill_ms(budget.planned_tokens_per_layer(parse_gating(t, 8), 8, 50, 1000)) for t in frontier)
    assert controller.decide(1.0, 50, 1000, 1).policy_text == frontier[1]  # clearly sooner: the least late
    # the layer-0 score's own time leaves it 5% of the gap sooner: within the tie, the less pruned runs
    cost.add_selection_time(parse_gating(frontier[1], 8).pre.method, 0.95 * (coarse - fine))
    late = controller.decide(1.0, 50, 1000, 1)
    assert (late.policy_text, late.fits) == (frontier[0], False)


def test_planned_counts_are_what_the_policy_keeps():
    counts = budget.planned_tokens_per_layer(parse_gating('kcentre:0.25[merge]+fastv:2:0.2', 4), 4, 30, 400)
    assert counts == [130, 130, 50, 50]
    assert budget.planned_tokens_per_layer(parse_gating('none', 4), 4, 30, 400) == [430] * 4
    assert budget.planned_tokens_per_layer(parse_gating('voxel:0.4', 4), 4, 30, 400) is None


def test_a_cached_scene_prefix_is_taken_when_it_fits_and_when_it_is_least_late():
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    cost.prefill_coef = np.array([1000.0, 1000.0, 0.0, 0.0])  # 1 ms per MFLOP
    controller = budget.BudgetController(cost, min_keep_ratio=0.1)
    dense_ms = controller.predict(1.0, 50, 1000, 1).total_ms
    hit_ms = controller.predict_hit(20, 1030, 1).total_ms
    assert hit_ms == cost.extend_ms(20, 1030) and 0 < hit_ms * 10 < dense_ms
    # the hit's FLOPs are extend_flops: the features' two parts add up to them
    features = budget.extend_features(shape, 20, 1030)
    assert np.isclose((features[0] + features[1]) * 1e9, budget.extend_flops(shape, 20, 1030))
    roomy = controller.decide(10 * dense_ms, 50, 1000, 1, cached_tokens=1030, question_tokens=20)
    assert roomy.reuse_prefix and roomy.fits and roomy.policy_text == 'none' and roomy.predicted_ms == hit_ms
    late = controller.decide(hit_ms / 2, 50, 1000, 1, cached_tokens=1030, question_tokens=20)
    assert late.reuse_prefix and not late.fits  # even the pruning floor would be later
    assert not controller.decide(10 * dense_ms, 50, 1000, 1).reuse_prefix  # nothing cached


def test_the_answer_length_planned_for_is_what_answers_take_not_their_limit():
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    cost.prefill_coef = np.array([1000.0, 1000.0, 0.0, 0.0])
    cost.decode_coef = (5.0, 0.0)  # 5 ms a token
    controller = budget.BudgetController(cost, min_keep_ratio=0.1)
    assert cost.planned_new_tokens(32) == 32  # nothing seen: the limit
    before = controller.predict(1.0, 50, 1000, 32)
    assert before.new_tokens == 32 and before.decode_ms == 31 * 5.0
    for tokens in [2] * 9 + [3]:
        cost.add_answer_length(tokens, limited=False)
    assert cost.planned_new_tokens(32) == 3 and cost.planned_new_tokens(2) == 2  # 90th percentile, capped
    after = controller.predict(1.0, 50, 1000, 32)
    assert after.new_tokens == 3 and after.decode_ms == 2 * 5.0 and after.prefill_ms == before.prefill_ms
    # a budget that dense misses when planning 32 tokens and meets when planning what answers take: dense
    margin = budget.INITIAL_MARGIN
    assert controller.decide((after.total_ms + 1) / (1 - margin), 50, 1000, 32).keep_ratio == 1.0
    # answers cut by their limit say nothing of how long they would have been: plan for the limit again
    for _ in range(60):
        cost.add_answer_length(4, limited=True)
    assert cost.planned_new_tokens(32) == 32


def test_prediction_errors_are_tracked_per_term():
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    assert cost.term_errors_ms() == {'vision': None, 'prefill': None, 'decode': None}
    prediction = budget.Prediction(10.0, 20.0, 30.0, 4)
    cost.record_error(prediction, vision_ms=12.0, prefill_ms=18.0, decode_ms=40.0, elapsed_ms=80.0)
    assert cost.term_errors_ms() == {'vision': 2.0, 'prefill': 2.0, 'decode': 10.0}
    assert cost.unmodelled_ms() == 80.0 - 70.0  # outside the three terms
    assert cost.mean_relative_error() == (80.0 - 60.0) / 80.0  # of the whole time after the decision


def test_the_safety_margin_covers_the_late_answers_seen():
    shape = LlamaShape(hidden=64, intermediate=176, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16, vocab=100)
    cost = budget.CostModel(shape)
    predicted = budget.Prediction(0.0, 10.0, 0.0, 1)

    def answered(late_ms: float, times: int = 1) -> None:
        for _ in range(times):
            cost.record_error(predicted, 0.0, 10.0, 0.0, elapsed_ms=10.0 + late_ms)

    assert cost.safety_margin_ms(200.0) == 20.0  # nothing seen yet: 10% of the time left
    answered(0.0, 48)
    assert cost.safety_margin_ms(200.0) == 10.0  # as predicted: the least margin, 5%
    answered(30.0)
    assert cost.safety_margin_ms(200.0) == 10.0  # one answer in 49 30 ms late is below the 98th percentile
    answered(20.0, 2)
    assert cost.safety_margin_ms(200.0) == 20.0 == cost.late_ms()  # three in 51 are: keep 20 ms free
    answered(-50.0, 10)  # early answers do not pay for late ones
    assert cost.safety_margin_ms(200.0) == 20.0
    answered(500.0, 3)
    assert cost.safety_margin_ms(200.0) == 120.0  # never more than 60%: a disturbed machine still answers
