"""SceneAnswerer: a question about a scene -> an answer, as the node runs it (tiny LLaVA-3D, gated prefill)."""

import math

import numpy as np
import pytest
import torch

from adatoken3d_node.model.flops import LlamaShape, near_flops, prefill_flops, scoring_flops
from adatoken3d_node.model.scene_qa import SceneAnswer, SceneAnswerer
from adatoken3d_lab.random_checkpoint import create_random_llava3d
from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd
from adatoken3d_node.perception.keyframes import KeyframePolicy

QUESTION = "Where is the chair?"
SCHEDULE = "schedule:1:0.5,2:0.25"
N = 12  # tokens of the reference runs (the seed-0 answer then ends on a complete character)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene_qa")
    path = create_random_llava3d(root / "m", root / "clip", seed=0)
    return path, SceneAnswerer.load(path, device="cpu")


@pytest.fixture(scope="module")
def answerer(tiny):
    return tiny[1]


def make_frontend(model) -> SceneFrontEnd:
    return SceneFrontEnd(
        FrontEndConfig(
            image_size=model.image_size,
            patch_grid=model.patch_grid,
            keyframes=KeyframePolicy(min_translation_m=0, min_rotation_deg=0),
        )
    )


@pytest.fixture(scope="module")
def scene(answerer):
    """Three random RGB-D views (120 x 160, fx = fy = 100) from different positions and headings."""
    frontend = make_frontend(answerer.model)
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
    for i in range(3):
        c, s = math.cos(0.2 * i), math.sin(0.2 * i)
        pose = np.eye(4)
        pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]  # turned about the camera's y axis
        pose[0, 3] = 0.5 * i
        rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        depth = rng.uniform(1.0, 4.0, (120, 160)).astype(np.float32)
        assert frontend.add_view(rgb, depth, K, pose, i + 1).startswith("kept")
    scene = frontend.scene()
    assert scene.num_views == 3 and scene.num_tokens > 100
    return scene


@pytest.fixture(scope="module")
def inputs(answerer, scene):
    """The prompt of QUESTION for the scene, as SceneAnswerer assembles it."""
    with torch.inference_mode():
        return answerer.model.build_inputs(QUESTION, answerer.model.spatial_embeddings(scene), answerer.tokenizer)


@pytest.fixture(scope="module")
def dense(answerer, scene):
    """A dense (policy none) answer of N tokens, with what it streamed."""
    calls = []
    result = answerer.answer(
        QUESTION, scene, answerer.policy("none"), N, on_token=lambda text, n: calls.append((text, n))
    )
    return result, calls


def greedy_without_cache(model, inputs_embeds, n):
    """Reference: the plain language model recomputing the whole sequence for every new token."""
    lm, seq, out = model.language_model, inputs_embeds, []
    with torch.inference_mode():
        for _ in range(n):
            logits = lm(inputs_embeds=seq, use_cache=False).logits  # [1, T, V]
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, lm.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
    return out


# ---- counts, FLOPs and the reference ---------------------------------------------------------


def test_dense_answer_counts_and_flops(answerer, scene, inputs, dense):
    result, _ = dense
    assert isinstance(result, SceneAnswer)
    M, T, L = scene.num_tokens, inputs.num_tokens, answerer.num_layers
    assert (inputs.num_spatial, inputs.num_location) == (M, 0)
    assert result.spatial_tokens == M and result.spatial_tokens_kept == M
    assert result.text_tokens == inputs.num_text and result.text_tokens + result.spatial_tokens == T
    assert result.gating == "none"
    shape = LlamaShape.from_config(answerer.model.language_model.config)
    assert result.prefill_flops == result.prefill_flops_dense == prefill_flops(shape, [T] * L)
    assert (result.stop_reason, len(result.token_ids)) == ("max_new_tokens", N)
    assert result.text == answerer.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
    assert result.vision_ms > 0 and result.prefill_ms > 0 and result.decode_ms > 0


def test_dense_answer_equals_the_plain_language_model(answerer, inputs, dense):
    reference = greedy_without_cache(answerer.model, inputs.inputs_embeds, N)
    assert dense[0].token_ids == reference
    assert len(set(reference)) > 1  # a non-trivial sequence, not one token repeated


def test_schedule_prunes_spatial_tokens(answerer, scene, inputs, dense):
    result = answerer.answer(QUESTION, scene, answerer.policy(SCHEDULE), 3)
    M, T = scene.num_tokens, inputs.num_tokens
    assert result.gating == SCHEDULE
    assert result.spatial_tokens == M and result.spatial_tokens_kept == math.ceil(0.25 * M)
    assert result.text_tokens + result.spatial_tokens == T
    shape = LlamaShape.from_config(answerer.model.language_model.config)
    assert result.prefill_flops_dense == dense[0].prefill_flops_dense == prefill_flops(shape, [T] * 4)
    assert result.prefill_flops < result.prefill_flops_dense
    # Exactly: layer 0 dense, cuts scored at layers 1 and 2 (k projected for all tokens entering them).
    t1, t2 = T - M + math.ceil(0.5 * M), T - M + math.ceil(0.25 * M)
    scoring = scoring_flops(shape, 1, T) + scoring_flops(shape, 1, t1)
    assert result.prefill_flops == prefill_flops(shape, [T, t1, t2, t2], [T, T, t1, t2], scoring)


# ---- selection before the language model ----------------------------------------------------


def test_voxel_at_the_model_s_own_size_is_dense(answerer, scene, dense):
    """voxel:0.2 pools the patches exactly as the front end does: the same tokens, the same answer."""
    result = answerer.answer(QUESTION, scene, answerer.policy("voxel:0.2"), N)
    assert result.token_ids == dense[0].token_ids
    assert result.prefill_flops == result.prefill_flops_dense == dense[0].prefill_flops_dense
    coarse = answerer.answer(QUESTION, scene, answerer.policy("voxel:0.6"), 3)
    assert coarse.spatial_tokens == scene.num_tokens > coarse.spatial_tokens_kept > 0
    assert coarse.prefill_flops < coarse.prefill_flops_dense == dense[0].prefill_flops_dense


@pytest.mark.parametrize(
    "text", ["random:0:0.1", "kcentre:0.1[merge]", "fastv:0:0.1~question", "kcentre:0.1[merge]~question"]
)
def test_a_selection_runs_the_language_model_on_the_kept_tokens_only(answerer, scene, inputs, dense, text):
    result = answerer.answer(QUESTION, scene, answerer.policy(text), 3)
    M, T, L = scene.num_tokens, inputs.num_tokens, answerer.num_layers
    k = math.ceil(0.1 * M)
    shape = LlamaShape.from_config(answerer.model.language_model.config)
    assert result.gating == text and result.spatial_tokens == M and result.spatial_tokens_kept == k
    assert result.tokens_per_layer == [T - M + k] * L  # every layer, layer 0 included, runs on the kept ones
    assert result.prefill_flops_dense == dense[0].prefill_flops_dense
    assert result.prefill_flops == prefill_flops(shape, [T - M + k] * L) + result.selection_flops
    assert (result.selection_flops > 0) == (text != "random:0:0.1")
    assert result.selection_flops < 0.03 * result.prefill_flops_dense


def test_query_selection_keeps_the_top_scored_tokens_of_layer_0(answerer, scene, inputs):
    """fastv:0:r keeps exactly what a layer-0 score of the whole prompt ranks highest: the same answer as
    building the prompt from those tokens by hand."""
    rows = answerer.policy("fastv:0:0.2~question").score_rows(inputs.spatial_mask)
    scores = answerer.gated.input_scores(inputs.inputs_embeds, rows)[inputs.spatial_mask]
    kept = scores.topk(math.ceil(0.2 * scene.num_tokens)).indices.sort().values
    with torch.inference_mode():
        spatial = answerer.model.spatial_embeddings(scene)[kept]
        by_hand = answerer.model.build_inputs(QUESTION, spatial, answerer.tokenizer)
    reference = greedy_without_cache(answerer.model, by_hand.inputs_embeds, 4)
    assert answerer.answer(QUESTION, scene, answerer.policy("fastv:0:0.2~question"), 4).token_ids == reference


def test_near_keeps_the_tokens_around_the_point_the_question_names(answerer, scene):
    """random:0:r[near=R]: the tokens within R of the question's [x, y, z] enter the model, the seeded random
    pick fills the rest, and the answer is the one the prompt built from those tokens by hand gives."""
    centres = scene.tokens.centres.float()
    x, y, z = (round(float(v), 2) for v in centres[0])
    question = f"What is at [{x}, {y}, {z}]?"
    near = (centres - torch.tensor([x, y, z])).norm(dim=1) <= 0.3
    k = math.ceil(0.2 * scene.num_tokens)
    assert 0 < int(near.sum()) < k
    order = torch.randperm(scene.num_tokens, generator=torch.Generator().manual_seed(0))
    kept = torch.cat([near.nonzero()[:, 0], order[~near[order]][: k - int(near.sum())]]).sort().values
    with torch.inference_mode():
        spatial = answerer.model.spatial_embeddings(scene)[kept]
        by_hand = answerer.model.build_inputs(question, spatial, answerer.tokenizer)
    reference = greedy_without_cache(answerer.model, by_hand.inputs_embeds, 4)
    result = answerer.answer(question, scene, answerer.policy("random:0:0.2[near=0.3]"), 4)
    assert result.token_ids == reference and result.spatial_tokens_kept == k
    assert result.selection_flops == near_flops(scene.num_tokens, 1)


def test_hybrid_cuts_count_from_the_tokens_entering_the_model(answerer, scene, inputs):
    result = answerer.answer(QUESTION, scene, answerer.policy("kcentre:0.5[merge]+fastv:2:0.5"), 3)
    M, T = scene.num_tokens, inputs.num_tokens
    k = math.ceil(0.5 * M)
    assert result.tokens_per_layer == [T - M + k, T - M + k, T - M + math.ceil(0.5 * k), T - M + math.ceil(0.5 * k)]
    assert result.spatial_tokens_kept == math.ceil(0.5 * k) and result.spatial_tokens == M


# ---- stopping and streaming -----------------------------------------------------------------


def test_max_new_tokens_respected(answerer, scene, dense):
    full = dense[0].token_ids
    for n in (1, 2, 7):
        result = answerer.answer(QUESTION, scene, answerer.policy("none"), n)
        assert (result.token_ids, result.stop_reason) == (full[:n], "max_new_tokens")
    assert answerer.answer(QUESTION, scene, answerer.policy("none"), 1).decode_ms == 0.0


def test_stops_on_eos(answerer, scene, dense, monkeypatch):
    full = dense[0].token_ids
    assert answerer.eos_token_ids == frozenset({answerer.tokenizer.eos_token_id}) == frozenset({2})
    monkeypatch.setattr(answerer, "eos_token_ids", frozenset({full[2]}))  # pretend the 3rd token is EOS
    result = answerer.answer(QUESTION, scene, answerer.policy("none"), N)
    first = full.index(full[2])  # it may also occur earlier
    assert result.token_ids == full[: first + 1]  # the EOS itself is kept in token_ids
    assert result.stop_reason == "eos"


def test_on_token_streams_growing_text(answerer, dense):
    result, calls = dense
    assert [n for _, n in calls] == list(range(1, N + 1))
    decode = answerer.tokenizer.decode
    expected = [decode(result.token_ids[:k], skip_special_tokens=True) for k in range(1, N + 1)]
    # Decoded so far, without a trailing half UTF-8 character ("\ufffd" until completed).
    assert [t for t, _ in calls] == [t.rstrip("\ufffd").strip() for t in expected]
    assert any(t.endswith("\ufffd") for t in expected[:-1])  # something was held back on the way
    assert calls[-1][0] == result.text


def test_should_stop_cancels(answerer, scene, dense):
    full = dense[0].token_ids
    seen, checks = [], []

    def should_stop():
        checks.append(len(seen))
        return len(seen) >= 3

    result = answerer.answer(
        QUESTION, scene, answerer.policy("none"), N, on_token=lambda t, n: seen.append(n), should_stop=should_stop
    )
    assert result.stop_reason == "cancelled"
    assert result.token_ids == full[:3] and seen == [1, 2, 3]
    assert checks == [0, 1, 2, 3]  # before the prefill, then before each decode step


def test_should_stop_before_start_generates_nothing(answerer, scene, inputs):
    seen = []
    result = answerer.answer(
        QUESTION, scene, answerer.policy(SCHEDULE), N, on_token=lambda t, n: seen.append(n), should_stop=lambda: True
    )
    assert (result.stop_reason, result.token_ids, result.text, seen) == ("cancelled", [], "", [])
    assert (result.prefill_flops, result.prefill_flops_dense, result.prefill_ms, result.decode_ms) == (0, 0, 0, 0)
    assert (result.spatial_tokens, result.text_tokens) == (scene.num_tokens, inputs.num_text)
    assert result.gating == SCHEDULE


# ---- prompts ----------------------------------------------------------------------------------


def test_location_adds_one_token(answerer, scene):
    model, tok = answerer.model, answerer.tokenizer
    with torch.inference_mode():
        spatial = model.spatial_embeddings(scene)
        with_point = model.build_inputs("What is at [1.0, 0.5, 2.0]?", spatial, tok)
        without = model.build_inputs("What is at ?", spatial, tok)
        location = model.location_embeddings([[1.0, 0.5, 2.0]])
    assert (with_point.num_location, without.num_location) == (1, 0)
    assert with_point.num_text == without.num_text  # the same text, split around the point
    assert with_point.num_tokens == without.num_tokens + 1
    assert with_point.locations.tolist() == [[1.0, 0.5, 2.0]]
    assert torch.equal(with_point.inputs_embeds[0, with_point.location_mask], location)

    a = answerer.answer("What is at [1.0, 0.5, 2.0]?", scene, answerer.policy("none"), 1)
    b = answerer.answer("What is at ?", scene, answerer.policy("none"), 1)
    assert a.text_tokens == b.text_tokens + 1 == with_point.num_text + 1
    assert a.spatial_tokens == b.spatial_tokens == scene.num_tokens


def test_prompt_beyond_the_context_is_refused(answerer, scene, inputs):
    assert answerer.context == 4096
    too_many = answerer.context - inputs.num_tokens + 1  # one more than fits
    with pytest.raises(ValueError, match=f"max_new_tokens={too_many}"):
        answerer.answer(QUESTION, scene, answerer.policy("none"), too_many)
    with pytest.raises(ValueError, match="max_new_tokens=100000"):
        answerer.answer(QUESTION, scene, answerer.policy("none"), 100_000)


def test_empty_scene_answers_from_text_alone(answerer):
    empty = make_frontend(answerer.model).scene()
    assert empty.num_views == 0 and empty.num_tokens == 0
    result = answerer.answer(QUESTION, empty, answerer.policy(SCHEDULE), 4)
    assert (result.spatial_tokens, result.spatial_tokens_kept) == (0, 0)
    with torch.inference_mode():
        text_only = answerer.model.build_inputs(QUESTION, answerer.model.spatial_embeddings(empty), answerer.tokenizer)
    assert result.text_tokens == text_only.num_tokens == text_only.num_text
    shape = LlamaShape.from_config(answerer.model.language_model.config)
    assert result.prefill_flops == result.prefill_flops_dense == prefill_flops(shape, [text_only.num_tokens] * 4)
    assert result.token_ids == greedy_without_cache(answerer.model, text_only.inputs_embeds, 4)


# ---- sampling, warm-up, loading -------------------------------------------------------------


def test_sampling_is_reproducible_from_its_seed(answerer, scene, dense):
    none = answerer.policy("none")
    a = answerer.answer(QUESTION, scene, none, 8, temperature=0.8, seed=3)
    b = answerer.answer(QUESTION, scene, none, 8, temperature=0.8, seed=3)
    c = answerer.answer(QUESTION, scene, none, 8, temperature=0.8, seed=4)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert c.token_ids != a.token_ids
    assert a.token_ids != dense[0].token_ids[:8]
    # A nucleus so small that it holds only the most likely token is greedy decoding.
    nucleus = answerer.answer(QUESTION, scene, none, 8, temperature=0.8, top_p=1e-9, seed=3)
    assert nucleus.token_ids == dense[0].token_ids[:8]


def test_warmup_and_properties(tiny, answerer, scene):
    path, _ = tiny
    assert answerer.warmup(scene) is None
    answerer.warmup(make_frontend(answerer.model).scene())  # an empty scene too
    assert answerer.device == torch.device("cpu") and answerer.dtype == torch.float32
    assert answerer.path == path and answerer.is_untrained
    assert answerer.num_layers == 4
    assert str(answerer.policy(" " + SCHEDULE)) == SCHEDULE
    with pytest.raises(ValueError, match="out of range"):
        answerer.policy("schedule:4:0.5")


BAD_ARGS = [
    {"dtype": "float64"},
    {"dtype": "fp32"},
    {"dtype": ""},
    {"device": "gpu"},
    {"device": "cuda:x"},
    {"device": "CPU"},
]


@pytest.mark.parametrize("kwargs", BAD_ARGS)
def test_load_rejects_bad_device_or_dtype(tiny, kwargs):
    with pytest.raises(ValueError, match="device must be|dtype must be"):
        SceneAnswerer.load(tiny[0], **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_load_cuda_without_cuda(tiny):
    with pytest.raises(ValueError, match="CUDA is not available"):
        SceneAnswerer.load(tiny[0], device="cuda:0")


def test_cached_view_features_give_the_model_s_own_spatial_embeddings(answerer, scene):
    expected = answerer.model.spatial_embeddings(scene)
    first = answerer.spatial_embeddings(scene)
    again = answerer.spatial_embeddings(scene)  # served from the per-view cache
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert set(answerer._view_features) == set(zip(scene.stamps_ns, scene.frame_ids))
