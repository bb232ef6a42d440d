"""The scene prefix cache in SceneAnswerer: a question answered on a cached prefix (alone or in a batch)
is the dense answer, for a fraction of the prefill FLOPs."""

import pytest
import torch

from adatoken3d_node.model.flops import extend_flops, prefill_flops
from adatoken3d_node.model.gating import DecodeRow
from test_scene_qa import answerer, make_frontend, scene, tiny  # noqa: F401 (fixtures)

QUESTIONS = ["Where is the chair?", "What is at [0.5, 0.2, 2.0]?", "How many boxes are there in the room?", "Colour?"]
N = 10
ATOL = 1e-4


@pytest.fixture(scope="module")
def prefix(answerer, scene):  # noqa: F811
    return answerer.build_prefix(scene, answerer.policy("none"), reserve=64)


def logits_of_first_token(answerer, question, scene):  # noqa: F811
    """The dense prefill's next-token logits for the whole prompt."""
    with torch.inference_mode():
        inputs = answerer.model.build_inputs(question, answerer.spatial_embeddings(scene), answerer.tokenizer)
        return answerer.gated.prefill(inputs.inputs_embeds, inputs.spatial_mask, answerer.policy("none")).logits


def test_the_prefix_is_the_prompt_up_to_the_last_spatial_token(answerer, scene, prefix):  # noqa: F811
    with torch.inference_mode():
        inputs = answerer.model.build_inputs(QUESTIONS[0], answerer.spatial_embeddings(scene), answerer.tokenizer)
    assert prefix.num_tokens == int(inputs.spatial_mask.nonzero()[-1]) + 1
    assert prefix.spatial_kept == prefix.spatial_tokens == scene.num_tokens
    assert all(cache.n == prefix.num_tokens for cache in prefix.caches)
    assert prefix.prefill_flops == extend_flops(answerer.gated.shape, prefix.num_tokens, 0)
    assert prefix.nbytes > 0


@pytest.mark.parametrize("question", QUESTIONS[:2])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_an_answer_on_the_prefix_is_the_dense_answer(answerer, scene, prefix, question, temperature):  # noqa: F811
    dense = answerer.answer(question, scene, answerer.policy("none"), N, temperature=temperature, seed=3)
    cached = answerer.answer_on_prefix(question, prefix, N, temperature=temperature, seed=3)
    assert cached.token_ids == dense.token_ids and cached.text == dense.text
    assert cached.prefix_reused and cached.prefix_tokens == prefix.num_tokens and cached.vision_ms == 0.0
    assert cached.text_tokens == dense.text_tokens and cached.spatial_tokens == dense.spatial_tokens
    assert cached.prefill_flops_dense == dense.prefill_flops_dense
    m = dense.tokens_per_layer[0] - prefix.num_tokens  # the question's own tokens
    assert cached.prefill_flops == extend_flops(answerer.gated.shape, m, prefix.num_tokens)
    assert cached.prefill_flops * 5 < dense.prefill_flops
    # the prefix is as it was: the next question finds it unchanged
    assert all(cache.n == prefix.num_tokens for cache in prefix.caches)


def test_the_first_token_s_logits_equal_the_whole_prefill(answerer, scene, prefix):  # noqa: F811
    for question in QUESTIONS[:2]:
        suffix, _ = answerer.question_inputs(question)
        logits = answerer.gated.extend(suffix, prefix.caches)
        for cache in prefix.caches:
            cache.truncate(prefix.num_tokens)
        torch.testing.assert_close(logits, logits_of_first_token(answerer, question, scene), atol=ATOL, rtol=0)


def test_extend_flops_of_an_empty_past_is_a_prefill(answerer):  # noqa: F811
    shape = answerer.gated.shape
    assert extend_flops(shape, 37, 0) == prefill_flops(shape, [37] * shape.num_layers)


def test_a_batch_answers_as_one_at_a_time(answerer, scene, prefix):  # noqa: F811
    temperatures = [0.0, 0.7, 0.0, 0.9]
    alone = [
        answerer.answer_on_prefix(q, prefix, N - i, temperature=t, seed=i)
        for i, (q, t) in enumerate(zip(QUESTIONS, temperatures))
    ]
    rows = [DecodeRow(N - i, t, i) for i, t in enumerate(temperatures)]
    answers, order, streamed = {}, [], {}

    def on_answer(b, answer):
        answers[b] = answer
        order.append(b)

    on_tokens = [lambda text, n, b=b: streamed.setdefault(b, []).append(n) for b in range(len(QUESTIONS))]
    answerer.answer_batch(QUESTIONS, prefix, rows, on_answer, on_tokens=on_tokens)
    assert sorted(order) == [0, 1, 2, 3]
    for b, single in enumerate(alone):
        assert answers[b].token_ids == single.token_ids, b
        assert answers[b].prefill_flops == single.prefill_flops and answers[b].prefix_reused
        assert streamed[b] == list(range(1, len(single.token_ids) + 1))
    assert all(cache.n == prefix.num_tokens for cache in prefix.caches)


def test_a_cancelled_batch_row_stops_alone(answerer, prefix):  # noqa: F811
    rows = [DecodeRow(N, should_stop=lambda: True), DecodeRow(N)]
    answers = {}
    answerer.answer_batch(QUESTIONS[:2], prefix, rows, lambda b, a: answers.__setitem__(b, a))
    assert len(answers[0].token_ids) == 1 and answers[0].stop_reason == "cancelled"
    assert answers[1].token_ids == answerer.answer_on_prefix(QUESTIONS[1], prefix, N).token_ids


def test_a_selection_that_reads_the_question_is_not_cacheable(answerer, scene):  # noqa: F811
    for text in ("fastv:0:0.5", "kcentre:0.5~question", "random:0:0.5[near=0.5]", "schedule:1:0.5"):
        with pytest.raises(ValueError, match="depends on the question"):
            answerer.build_prefix(scene, answerer.policy(text), reserve=8)


@pytest.mark.parametrize("text", ["kcentre:0.5", "voxel:0.4", "random:0:0.3[merge]"])
def test_a_question_independent_selection_is_cached_too(answerer, scene, text):  # noqa: F811
    policy = answerer.policy(text)
    prefix = answerer.build_prefix(scene, policy, reserve=32)
    pruned = answerer.answer(QUESTIONS[0], scene, policy, N)
    cached = answerer.answer_on_prefix(QUESTIONS[0], prefix, N)
    assert cached.token_ids == pruned.token_ids
    assert prefix.spatial_kept == pruned.spatial_tokens_kept < scene.num_tokens


def test_an_abandoned_prefix_is_none(answerer, scene):  # noqa: F811
    layers = []
    stop_at_layer_1 = lambda i: layers.append(i) or i == 1  # noqa: E731
    assert answerer.build_prefix(scene, answerer.policy("none"), 8, abandon=stop_at_layer_1) is None
    assert layers == [0, 1]


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_shared_prefix_attention_is_attention_over_prefix_and_own_keys(heads, kv_heads):
    """The batched path's attention (prefix read once for all rows) against fused attention over each row's
    whole cache; a padding query that sees none of its own keys still sees the prefix."""
    from adatoken3d_node.model.gating import shared_prefix_attention

    g = torch.Generator().manual_seed(0)
    B, m, n, P, hd = 3, 4, 6, 9, 8
    q = torch.randn(B, heads, m, hd, generator=g)
    pk, pv = torch.randn(1, kv_heads, P, hd, generator=g), torch.randn(1, kv_heads, P, hd, generator=g)
    k, v = torch.randn(B, kv_heads, n, hd, generator=g), torch.randn(B, kv_heads, n, hd, generator=g)
    mask = torch.rand(B, 1, m, n, generator=g) > 0.4
    mask[0, 0, 0] = False  # a padding query: none of its own keys
    got = shared_prefix_attention(q, pk, pv, k, v, mask, 0.35)
    whole_k, whole_v = torch.cat([pk.expand(B, -1, -1, -1), k], 2), torch.cat([pv.expand(B, -1, -1, -1), v], 2)
    whole_mask = torch.cat([torch.ones(B, 1, m, P, dtype=torch.bool), mask], 3)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, whole_k, whole_v, attn_mask=whole_mask, enable_gqa=True, scale=0.35
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_question_and_answer_longer_than_the_reserve_grow_the_prefix_once(answerer, scene):  # noqa: F811
    small = answerer.build_prefix(scene, answerer.policy("none"), reserve=2)
    long_question = "Describe " + "the big red box and " * 6 + "the chair?"
    dense = answerer.answer(long_question, scene, answerer.policy("none"), N)
    cached = answerer.answer_on_prefix(long_question, small, N)
    assert cached.token_ids == dense.token_ids
    m = dense.tokens_per_layer[0] - small.num_tokens
    assert all(cache._k.shape[2] == small.num_tokens + m + N for cache in small.caches)  # exactly, not doubled
    assert all(cache.n == small.num_tokens for cache in small.caches)
