"""Tests of the ROS-free language-model core on a tiny random-weight checkpoint made on the fly."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from adatoken3d_node.model import tiny
from adatoken3d_node.model.engine import GenerationResult, ModelLoadError, TextEngine
from adatoken3d_node.model.flops import LlamaShape, dense_prefill_flops, layer_prefill_flops, prefill_flops
from adatoken3d_node.model.prompt import SYSTEM, build_prompt

QUESTION = "Where is the chair?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny.create_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def engine(ckpt):
    return TextEngine.load(ckpt, device="cpu")


def copy_ckpt(src, dst, skip=()):
    shutil.copytree(src, dst, ignore=lambda _dir, names: [n for n in names if n in skip])
    return dst


def greedy_without_cache(model, input_ids, n):
    """Reference: recompute the whole sequence for every new token, no KV cache."""
    seq, out = input_ids, []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(input_ids=seq, use_cache=False).logits  # [1, T, V]
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out


# ---- prompt ---------------------------------------------------------------------------------


def test_build_prompt_is_llava_v1():
    assert build_prompt("  Where is the chair?\n") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: Where is the chair? ASSISTANT:"
    )
    assert build_prompt("x").startswith(SYSTEM + " USER: ")


# ---- tiny checkpoint ------------------------------------------------------------------------


def test_tiny_checkpoint_files_and_marker(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "adatoken3d_tiny.json",
    }
    marker = json.loads((ckpt / "adatoken3d_tiny.json").read_text())
    assert {k: marker[k] for k in ("kind", "seed", "trained")} == {"kind": "tiny-random", "seed": 0, "trained": False}
    cfg = json.loads((ckpt / "config.json").read_text())
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"]) == ("llama", 64, 4)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (4, 2, 176)
    assert (cfg["vocab_size"], cfg["tie_word_embeddings"], cfg["max_position_embeddings"]) == (512, False, 2048)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 3)


def test_same_seed_same_bytes_different_seed_different_weights(ckpt, tmp_path):
    again = tiny.create_tiny_checkpoint(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (ckpt / name).read_bytes(), name

    other = tiny.create_tiny_checkpoint(tmp_path / "other", seed=1)
    w0, w1 = load_file(ckpt / "model.safetensors"), load_file(other / "model.safetensors")
    assert w0.keys() == w1.keys()
    # Every randomly initialised matrix differs (RMSNorm weights are ones for any seed).
    for key in w0:
        if key.endswith("proj.weight") or key in ("lm_head.weight", "model.embed_tokens.weight"):
            assert not torch.equal(w0[key], w1[key]), key
    assert (other / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()  # seed-free


def test_cli_is_idempotent(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    assert tiny.main([str(out), "--seed", "3"]) == 0
    assert json.loads((out / "adatoken3d_tiny.json").read_text())["seed"] == 3

    calls = []
    monkeypatch.setattr(tiny, "create_tiny_checkpoint", lambda d, seed=0: calls.append(seed))
    assert tiny.main([str(out), "--seed", "3"]) == 0
    assert calls == []  # already there: nothing done
    assert "nothing to do" in capsys.readouterr().out
    tiny.main([str(out), "--seed", "3", "--force"])
    tiny.main([str(out), "--seed", "4"])  # a different seed is a different checkpoint
    assert calls == [3, 4]


def test_round_trip_weights_equal_the_created_model(ckpt, engine):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    created = LlamaForCausalLM(LlamaConfig.from_pretrained(ckpt)).state_dict()
    loaded = engine.model.state_dict()
    on_disk = load_file(ckpt / "model.safetensors")
    assert set(on_disk) == set(created) == set(loaded)
    for key in created:
        assert torch.equal(created[key], loaded[key]), key
        assert torch.equal(on_disk[key], loaded[key]), key


@pytest.mark.parametrize(
    "text",
    [
        "Where is the chair?",
        "Wo ist der Stuhl? Größe: 3 m²",
        "椅子はどこですか？ 🤖🪑",
        "  tabs\tand\nnewlines  \r\n",
        "ASCII ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./ 0123456789",
    ],
)
def test_tokenizer_round_trips_any_text(engine, text):
    tok = engine.tokenizer
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id == 1 and ids.count(tok.bos_token_id) == 1  # BOS added once
    assert tok.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_vocabulary(engine):
    tok = engine.tokenizer
    assert len(tok) == 512
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 3]
    # The corpus made merges: the system prompt (in every query) needs far fewer tokens than bytes.
    assert len(tok(SYSTEM).input_ids) < 0.6 * len(SYSTEM.encode())


# ---- FLOPs ----------------------------------------------------------------------------------

SMALL = LlamaShape(hidden=8, intermediate=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4, vocab=10)


def test_flops_hand_computed():
    # n=3, d=8, m=16, H*hd=8, Hkv*hd=4:
    # q,o 2*(2*3*8*8)=768; k,v 2*(2*3*8*4)=384; attention 2*(2*3*3*8)=288; mlp 3*(2*3*8*16)=2304
    assert layer_prefill_flops(SMALL, 3) == 768 + 384 + 288 + 2304 == 3744
    # n=2: q,o 512; k,v 256; attention 2*(2*2*2*8)=128; mlp 1536
    assert layer_prefill_flops(SMALL, 2) == 2432
    assert dense_prefill_flops(SMALL, 3) == 2 * 3744 + 2 * 8 * 10 == 7648  # + last-position lm_head
    assert prefill_flops(SMALL, [3, 2]) == 3744 + 2432 + 160  # a pruned second layer
    assert prefill_flops(SMALL, [0, 0]) == 160
    with pytest.raises(ValueError):
        prefill_flops(SMALL, [3])  # one entry per layer
    with pytest.raises(ValueError):
        layer_prefill_flops(SMALL, -1)


def test_flops_llama2_7b_one_token():
    # For one token every weight matrix does one multiply-add per entry: FLOPs = 2 * matmul params
    # (4096*4096*4 + 3*4096*11008 per layer, 32 layers, lm_head 4096*32000) + 1x1 attention.
    shape = LlamaShape(4096, 11008, 32, 32, 32, 128, 32000)
    params = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32000
    assert dense_prefill_flops(shape, 1) == 2 * params + 32 * 2 * 2 * 4096 == 13_214_679_040


def test_flops_shape_from_config_and_parameter_count(engine):
    assert engine.shape == LlamaShape(
        hidden=64, intermediate=176, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16, vocab=512
    )
    linear_params = sum(m.weight.numel() for m in engine.model.modules() if isinstance(m, torch.nn.Linear))
    attention_1x1 = 4 * 2 * (2 * 1 * 1 * 4 * 16)
    assert dense_prefill_flops(engine.shape, 1) == 2 * linear_params + attention_1x1


def test_flops_match_torch_flop_counter(ckpt):
    # FlopCounterMode counts matmuls (mm/bmm) exactly and ignores elementwise ops, like flops.py.
    # Eager attention, because torch's counter has no formula for the fused CPU SDPA kernel
    # (it would report 0 attention FLOPs); eager computes the same full n x n matmuls.
    # engine.prefill keeps only the last logits (logits_to_keep=1), so lm_head is 2*d*V.
    engine = TextEngine.load(ckpt, device="cpu")
    engine.model.set_attn_implementation("eager")
    ids = engine.encode(QUESTION)  # [1, T]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        logits, _cache, tokens_per_layer = engine.prefill(ids)
    assert logits.shape == (1, 512)
    assert tokens_per_layer == [ids.shape[1]] * 4
    expected = dense_prefill_flops(engine.shape, ids.shape[1])
    assert counter.get_total_flops() == expected  # exact: tolerance 0


# ---- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("question", [QUESTION, "Wie viele Stühle gibt es? 椅子"])
def test_kv_cache_greedy_equals_recomputation(engine, question):
    n = 24
    reference = greedy_without_cache(engine.model, engine.encode(question), n)
    result = engine.generate(question, max_new_tokens=n)
    assert isinstance(result, GenerationResult)
    assert result.stop_reason == "max_new_tokens"  # this random model emits no EOS in 24 steps
    assert result.token_ids == reference
    assert result.generated_tokens == n
    assert len(set(reference)) > 1  # a non-trivial sequence, not one token repeated


def test_generation_result_fields(engine):
    result = engine.generate(QUESTION, max_new_tokens=5)
    ids = engine.encode(QUESTION)
    assert ids[0, 0].item() == 1 and result.text_tokens == ids.shape[1]
    assert engine.tokenizer.decode(ids[0], skip_special_tokens=True) == build_prompt(QUESTION)
    assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
    assert result.prefill_flops == result.prefill_flops_dense == dense_prefill_flops(engine.shape, result.text_tokens)
    assert result.prefill_ms > 0 and result.decode_ms > 0
    one = engine.generate(QUESTION, max_new_tokens=1)
    assert (one.generated_tokens, one.stop_reason, one.decode_ms) == (1, "max_new_tokens", 0.0)
    assert one.token_ids == result.token_ids[:1]


def test_max_new_tokens_respected(engine):
    full = engine.generate(QUESTION, max_new_tokens=10).token_ids
    for n in (1, 2, 7):
        result = engine.generate(QUESTION, max_new_tokens=n)
        assert result.token_ids == full[:n] and result.stop_reason == "max_new_tokens"


def test_stops_on_eos(engine):
    full = engine.generate(QUESTION, max_new_tokens=10).token_ids
    eos = engine.eos_token_ids
    assert eos == frozenset({2})
    try:
        engine.eos_token_ids = frozenset({full[3]})  # pretend the 4th token is EOS
        result = engine.generate(QUESTION, max_new_tokens=10)
    finally:
        engine.eos_token_ids = eos
    first = full.index(full[3])  # it may also occur earlier
    assert result.token_ids == full[: first + 1]  # the EOS itself is kept in token_ids
    assert result.stop_reason == "eos"


def test_on_token_streams_growing_text(engine):
    calls = []
    result = engine.generate(QUESTION, max_new_tokens=12, on_token=lambda text, n: calls.append((text, n)))
    assert [n for _, n in calls] == list(range(1, 13))
    texts = [t for t, _ in calls]
    decode = engine.tokenizer.decode
    # Decoded so far, without a trailing half UTF-8 character ("\ufffd" until completed).
    expected = [decode(result.token_ids[:k], skip_special_tokens=True) for k in range(1, 13)]
    assert texts == [t.rstrip("\ufffd").strip() for t in expected]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # text only ever grows
    assert texts[-1] == result.text.rstrip("\ufffd").strip()


def test_should_stop_cancels(engine):
    full = engine.generate(QUESTION, max_new_tokens=10).token_ids
    seen, checks = [], []

    def should_stop():
        checks.append(len(seen))
        return len(seen) >= 3

    result = engine.generate(QUESTION, 10, on_token=lambda t, n: seen.append(n), should_stop=should_stop)
    assert result.stop_reason == "cancelled"
    assert result.token_ids == full[:3] and seen == [1, 2, 3]
    assert checks == [0, 1, 2, 3]  # before the prefill, then before each decode step

    now = engine.generate(QUESTION, 10, on_token=lambda t, n: seen.append(n), should_stop=lambda: True)
    assert (now.stop_reason, now.token_ids, now.text, now.prefill_flops) == ("cancelled", [], "", 0.0)
    assert seen == [1, 2, 3]  # on_token not called


def test_generate_rejects_bad_arguments(engine):
    with pytest.raises(ValueError, match="question"):
        engine.generate("   ", max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(QUESTION, max_new_tokens=0)
    with pytest.raises(ValueError, match="context"):
        engine.generate(QUESTION, max_new_tokens=2048)


def test_warmup_and_properties(engine, ckpt):
    result = engine.warmup()
    assert result.generated_tokens == 2 and result.stop_reason == "max_new_tokens"
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert engine.path == ckpt and engine.is_untrained


# ---- loading --------------------------------------------------------------------------------


def test_load_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        TextEngine.load(missing)
    assert str(missing) in str(err.value) and "adatoken3d-make-tiny" in str(err.value)


def test_load_missing_config(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "c", skip={"config.json"})
    with pytest.raises(ModelLoadError, match="config.json is missing") as err:
        TextEngine.load(d)
    assert str(d) in str(err.value)


def test_load_rejects_non_llama_config(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="model_type='gpt2'"):
        TextEngine.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="JSON"):
        TextEngine.load(d)


def test_load_missing_weights_and_tokenizer(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "w", skip={"model.safetensors"})
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors") as err:
        TextEngine.load(d)
    assert str(d) in str(err.value)
    d = copy_ckpt(ckpt, tmp_path / "t", skip={"tokenizer.json"})
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        TextEngine.load(d)


def test_load_refuses_missing_tensor(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "m")
    weights = load_file(d / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing"):
        TextEngine.load(d)


def test_pickle_only_checkpoint_needs_allow_pickle(ckpt, engine, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "p", skip={"model.safetensors"})
    torch.save(load_file(ckpt / "model.safetensors"), d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle=True") as err:
        TextEngine.load(d)
    assert "pytorch_model.bin" in str(err.value) and str(d) in str(err.value)
    trusted = TextEngine.load(d, allow_pickle=True)
    assert trusted.generate(QUESTION, 6).token_ids == engine.generate(QUESTION, 6).token_ids


def test_untrained_flag_comes_from_marker(ckpt, tmp_path):
    d = copy_ckpt(ckpt, tmp_path / "u", skip={"adatoken3d_tiny.json"})
    assert not TextEngine.load(d).is_untrained


def test_load_bfloat16(ckpt, engine):
    bf16 = TextEngine.load(ckpt, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert bf16.generate(QUESTION, 3).generated_tokens == 3


BAD_ARGS = [{"dtype": "float64"}, {"dtype": "fp32"}, {"dtype": ""}, {"device": "gpu"}, {"device": "cuda:x"}, {"device": "CPU"}]


@pytest.mark.parametrize("kwargs", BAD_ARGS)
def test_load_rejects_bad_device_or_dtype(ckpt, kwargs):
    with pytest.raises(ValueError, match="device must be|dtype must be"):
        TextEngine.load(ckpt, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_load_cuda_without_cuda(ckpt):
    with pytest.raises(ValueError, match="CUDA is not available"):
        TextEngine.load(ckpt, device="cuda:0")
