"""The llava_v1 prompt, the tiny test tokenizer and the prefill FLOPs accounting (flops.py)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adatoken3d_lab import tokenizer_files
from adatoken3d_node.model.flops import LlamaShape, dense_prefill_flops, layer_prefill_flops, prefill_flops
from adatoken3d_node.model.prompt import SYSTEM, build_prompt

QUESTION = "Where is the chair?"
# The tiny LLaMA shape of the tiny test checkpoints (random_checkpoint.TINY_LLAMA): grouped-query attention.
TINY_SHAPE = LlamaShape(hidden=64, intermediate=176, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16, vocab=512)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_files.build_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    """A tiny random LlamaForCausalLM (fixed seed, eager attention) of the tiny checkpoints' shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    # Eager, because torch's counter has no formula for the fused CPU SDPA kernel (it would report
    # 0 attention FLOPs); eager computes the same full n x n matmuls.
    model.set_attn_implementation("eager")
    return model


# ---- prompt ---------------------------------------------------------------------------------


def test_build_prompt_is_llava_v1():
    assert build_prompt("  Where is the chair?\n") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: Where is the chair? ASSISTANT:"
    )
    assert build_prompt("x").startswith(SYSTEM + " USER: ")


# ---- tokenizer ------------------------------------------------------------------------------


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
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id == 1 and ids.count(tokenizer.bos_token_id) == 1  # BOS added once
    assert tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_vocabulary_and_special_tokens(tokenizer):
    assert len(tokenizer) == tokenizer_files.VOCAB_SIZE == 512
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [
        0,
        1,
        2,
        3,
    ]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == tokenizer_files.SPECIAL_TOKENS
    # The corpus made merges: the system prompt (in every query) needs far fewer tokens than bytes.
    assert len(tokenizer(SYSTEM).input_ids) < 0.6 * len(SYSTEM.encode())


def test_tokenizer_is_deterministic_and_saved_files_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    again = tokenizer_files.build_tokenizer()
    text = build_prompt("Wie viele Stühle gibt es? 椅子")
    assert again(text).input_ids == tokenizer(text).input_ids
    tokenizer.save_pretrained(tmp_path)
    tokenizer_files._make_tokenizer_files_portable(tmp_path, tokenizer)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert (loaded.bos_token, loaded.eos_token, loaded.unk_token, loaded.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")


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


def test_flops_shape_from_config_and_parameter_count(llama):
    shape = LlamaShape.from_config(llama.config)
    assert shape == TINY_SHAPE
    linear_params = sum(m.weight.numel() for m in llama.modules() if isinstance(m, torch.nn.Linear))
    attention_1x1 = 4 * 2 * (2 * 1 * 1 * 4 * 16)
    assert dense_prefill_flops(shape, 1) == 2 * linear_params + attention_1x1


def test_flops_match_torch_flop_counter(llama, tokenizer):
    # FlopCounterMode counts matmuls (mm/bmm) exactly and ignores elementwise ops, like flops.py.
    # logits_to_keep=1: lm_head on the last position only, 2*d*V, as a prefill needs.
    ids = torch.tensor([tokenizer(build_prompt(QUESTION)).input_ids])  # [1, T]
    assert ids.shape[1] > 10
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = llama(input_ids=ids, use_cache=True, logits_to_keep=1)
    assert out.logits.shape == (1, 1, 512)
    expected = dense_prefill_flops(LlamaShape.from_config(llama.config), ids.shape[1])
    assert counter.get_total_flops() == expected  # exact: tolerance 0
