"""LLaVA-3D model, loader and tiny checkpoint: released on-disk layout, clear load errors, spatial
tokens (CLIP layer, 3D position embedding, voxel means, projector) and llava_v1 prompt assembly."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adatoken3d_lab import random_checkpoint
from adatoken3d_node.model.loader import ModelLoadError
from adatoken3d_node.model.llava3d import (
    IMAGE_TOKEN_INDEX,
    LOCATION_TOKEN_INDEX,
    Llava3DConfig,
    parse_locations,
    voxel_mean,
)
from adatoken3d_node.model.loader import Llava3DLoadError, load_llava3d, to_ours, to_released
from adatoken3d_node.model.prompt import SYSTEM, build_prompt
from adatoken3d_node.perception.frontend import SceneGeometry
from adatoken3d_node.perception.geometry import voxel_pool
from conftest import REPO

SHARDS = random_checkpoint.SHARDS
HUB_CLIP = "openai/clip-vit-large-patch14-336"


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    base = tmp_path_factory.mktemp("llava3d")
    out = random_checkpoint.create_random_llava3d(base / "llava3d", base / "clip", seed=0)
    return out, base / "clip"


@pytest.fixture(scope="module")
def loaded(tiny3d):
    return load_llava3d(tiny3d[0], device="cpu")


def file_state(ckpt):
    """Released name -> tensor, straight from the shards."""
    state = {}
    for name in SHARDS:
        state.update(load_file(ckpt / name))
    return state


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def rewrite_shard(ckpt, shard, edit):
    """edit(dict of tensors) in place, then rewrite the shard and the index."""
    tensors = load_file(ckpt / shard)
    edit(tensors)
    save_file(tensors, ckpt / shard, metadata={"format": "pt"})
    index = json.loads((ckpt / random_checkpoint.INDEX).read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in tensors})
    (ckpt / random_checkpoint.INDEX).write_text(json.dumps(index))


def shard_of(ckpt, key):
    return json.loads((ckpt / random_checkpoint.INDEX).read_text())["weight_map"][key]


def released_key_set(layers=4):
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    per_layer = [f"self_attn.{p}_proj.weight" for p in "qkvo"] + [
        f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")
    ]
    per_layer += ["input_layernorm.weight", "post_attention_layernorm.weight"]
    keys |= {f"model.layers.{n}.{s}" for n in range(layers) for s in per_layer}
    keys |= {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for head in ("model.video_tower.video_tower.positional_embedding", "model.video_tower.prompt_encoder.pos_emb3d"):
        keys |= {f"{head}.position_embedding_head.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    return keys


# ---- tiny checkpoint: the released layout -----------------------------------------------------


def test_tiny_checkpoint_has_the_released_layout(tiny3d):
    ckpt, clip = tiny3d
    assert {p.name for p in ckpt.iterdir()} == {
        "config.json",
        "generation_config.json",
        *SHARDS,
        random_checkpoint.INDEX,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "adatoken3d_provenance.json",
    }
    state = file_state(ckpt)
    assert set(state) == released_key_set()  # exactly the released names, nothing else
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    shapes = {
        k: tuple(state[k].shape)
        for k in (
            "model.mm_projector.0.weight",
            "model.mm_projector.2.weight",
            "model.video_tower.video_tower.positional_embedding.position_embedding_head.0.weight",
            "model.video_tower.video_tower.positional_embedding.position_embedding_head.1.weight",
            "model.video_tower.prompt_encoder.pos_emb3d.position_embedding_head.3.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.embed_tokens.weight",
        )
    }
    assert shapes == {
        "model.mm_projector.0.weight": (64, 32),
        "model.mm_projector.2.weight": (64, 64),
        "model.video_tower.video_tower.positional_embedding.position_embedding_head.0.weight": (32, 3),
        "model.video_tower.video_tower.positional_embedding.position_embedding_head.1.weight": (32,),
        "model.video_tower.prompt_encoder.pos_emb3d.position_embedding_head.3.weight": (64, 64),
        "model.layers.0.self_attn.k_proj.weight": (32, 64),
        "model.embed_tokens.weight": (512, 64),
    }
    index = json.loads((ckpt / random_checkpoint.INDEX).read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(SHARDS)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in state.values())

    cfg = json.loads((ckpt / "config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"]) == ("llava_llama", ["LlavaLlamaForCausalLM"])
    assert {
        k: cfg[k]
        for k in (
            "mm_vision_select_layer",
            "mm_vision_select_feature",
            "mm_projector_type",
            "mm_hidden_size",
            "mm_video_tower",
            "num_frames",
            "mm_use_im_start_end",
        )
    } == {
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 32,
        "mm_video_tower": "SpatialAwareModule",
        "num_frames": 20,
        "mm_use_im_start_end": False,
    }
    assert cfg["mm_vision_tower"] == str(clip.resolve())
    assert (
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    ) == (64, 4, 4, 2, 176, 512)
    assert "rope_theta" in cfg and "rope_parameters" not in cfg  # transformers 4.37 key names, as released
    marker = json.loads((ckpt / "adatoken3d_provenance.json").read_text())
    assert (marker["kind"], marker["seed"], marker["trained"]) == ("random-llava3d", 0, False)

    assert {p.name for p in clip.iterdir()} == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "adatoken3d_provenance.json",
    }
    clip_cfg = json.loads((clip / "config.json").read_text())
    assert (
        clip_cfg["image_size"],
        clip_cfg["patch_size"],
        clip_cfg["hidden_size"],
        clip_cfg["num_hidden_layers"],
        clip_cfg["num_attention_heads"],
    ) == (336, 14, 32, 2, 2)
    with safe_open(clip / "model.safetensors", "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())  # like openai/clip-vit-large-patch14-336
    pre = json.loads((clip / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 336, "width": 336} and pre["image_mean"][0] == pytest.approx(0.48145466)


# Every key of LLaVA-3D's released config.json: what transformers 4.37's LlamaConfig saves, and what
# LLaVA-3D's training script (llava/train/train.py) and initialize_vision_modules write into it.
RELEASED_CONFIG_KEYS = {
    "_name_or_path",
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "use_cache",
    "attention_bias",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "pretraining_tp",
    "rms_norm_eps",
    "rope_scaling",
    "rope_theta",
    "tie_word_embeddings",
    "vocab_size",
    "freeze_mm_mlp_adapter",
    "image_aspect_ratio",
    "mm_hidden_size",
    "mm_patch_merge_type",
    "mm_projector_lr",
    "mm_projector_type",
    "mm_use_im_patch_token",
    "mm_use_im_start_end",
    "mm_video_tower",
    "mm_vision_select_feature",
    "mm_vision_select_layer",
    "mm_vision_tower",
    "num_frames",
    "num_sample_tokens",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "tune_mm_mlp_adapter",
    "use_mm_proj",
}


def test_tiny_config_has_every_released_key(tiny3d):
    cfg = json.loads((tiny3d[0] / "config.json").read_text())
    assert set(cfg) == RELEASED_CONFIG_KEYS
    assert (cfg["num_sample_tokens"], cfg["transformers_version"], cfg["mm_projector_lr"]) == (1152, "4.37.2", None)
    parity = REPO.parent / "shared" / "parity" / "checkpoint" / "config.json"
    if parity.is_file():  # the config the official implementation ran on holds nothing more
        assert set(json.loads(parity.read_text())) <= set(cfg)


def test_same_seed_same_bytes_cli_and_ensure_idempotent(tiny3d, tmp_path, capsys):
    ckpt, clip = tiny3d
    out, clip2 = tmp_path / "again", tmp_path / "again-clip"
    assert random_checkpoint.main([str(out), "--clip-dir", str(clip2)]) == 0
    for a, b in [(ckpt, out), (clip, clip2)]:
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        for name in names:
            if name in ("config.json", "adatoken3d_provenance.json") and a == ckpt:
                continue  # these name the CLIP directory, which differs
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    cfg_a, cfg_b = (json.loads((d / "config.json").read_text()) for d in (ckpt, out))
    assert cfg_b.pop("mm_vision_tower") == str(clip2.resolve())
    cfg_a.pop("mm_vision_tower")
    assert cfg_a == cfg_b

    capsys.readouterr()
    assert random_checkpoint.main([str(out), "--clip-dir", str(clip2)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    stamp = (out / SHARDS[0]).stat().st_mtime_ns
    assert random_checkpoint.ensure_random_llava3d(out, clip2, seed=0) == out
    assert (out / SHARDS[0]).stat().st_mtime_ns == stamp  # already complete: not rewritten

    other = random_checkpoint.ensure_random_llava3d(tmp_path / "seed1", seed=1)  # CLIP defaults to seed1-clip
    assert (tmp_path / "seed1-clip" / "model.safetensors").is_file()
    assert not torch.equal(
        load_file(other / SHARDS[0])["model.embed_tokens.weight"],
        load_file(ckpt / SHARDS[0])["model.embed_tokens.weight"],
    )


# ---- loader ---------------------------------------------------------------------------------


def test_round_trip_every_weight_equal(tiny3d, loaded):
    ckpt, clip = tiny3d
    model, tokenizer, config = loaded
    ours = model.state_dict()
    state = file_state(ckpt)
    for key, t in state.items():
        assert to_released(to_ours(key)) == key
        assert ours[to_ours(key)].dtype == torch.float32  # fp32 on CPU
        assert torch.equal(ours[to_ours(key)], t.float()), key
    assert {k for k in ours if not k.startswith("vision_tower.")} == {to_ours(k) for k in state}
    clip_state = load_file(clip / "model.safetensors")
    tower = model.vision_tower.state_dict()
    assert set(tower) == {k.removeprefix("vision_model.") for k in clip_state}
    for key, t in clip_state.items():
        assert torch.equal(tower[key.removeprefix("vision_model.")], t), key

    assert not any(p.is_meta or p.requires_grad for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    assert torch.equal(
        model.language_model.model.rotary_emb.inv_freq, LlamaRotaryEmbedding(config=config.text_config).inv_freq
    )
    assert not model.training and model.is_untrained
    assert (model.image_size, model.patch_grid, config.hidden_size, config.mm_hidden_size) == (336, 24, 64, 32)
    assert len(tokenizer) == 512 and model.language_model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_config_from_released_dict(tiny3d):
    raw = json.loads((tiny3d[0] / "config.json").read_text())
    cfg = Llava3DConfig.from_dict(raw)
    assert (
        cfg.mm_vision_select_layer,
        cfg.mm_vision_select_feature,
        cfg.mm_projector_type,
        cfg.mm_hidden_size,
        cfg.mm_video_tower,
        cfg.num_frames,
    ) == (-2, "patch", "mlp2x_gelu", 32, "SpatialAwareModule", 20)
    t = cfg.text_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_key_value_heads, t.vocab_size, t.tie_word_embeddings) == (
        64,
        4,
        2,
        512,
        False,
    )
    assert t.rope_parameters["rope_theta"] == 10000.0
    for change, message in [
        ({"mm_projector_type": "mlp2x_relu"}, "mm_projector_type 'mlp2x_relu' is not supported"),
        ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature 'cls_patch' is not supported"),
        ({"mm_video_tower": "Other"}, "mm_video_tower 'Other'"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "not a LLaVA-3D checkpoint"),
        ({"mm_video_tower": None}, "2D LLaVA"),
    ]:
        with pytest.raises(ValueError, match=message):
            Llava3DConfig.from_dict({**raw, **change})


def _key_of(ckpt, suffix):
    return next(k for k in json.loads((ckpt / random_checkpoint.INDEX).read_text())["weight_map"] if k.endswith(suffix))


def break_missing_config(ckpt, clip):
    (ckpt / "config.json").unlink()
    return {}, [r"config\.json is missing"]


def break_missing_shard(ckpt, clip):
    (ckpt / SHARDS[1]).unlink()
    return {}, [random_checkpoint.INDEX, SHARDS[1], "do not exist"]


def break_missing_key(ckpt, clip):
    key = "model.video_tower.prompt_encoder.pos_emb3d.position_embedding_head.1.bias"
    rewrite_shard(ckpt, shard_of(ckpt, key), lambda t: t.pop(key))
    return {}, ["1 weight\\(s\\) missing", key.replace(".", r"\."), SHARDS[0]]


def break_unexpected_key(ckpt, clip):
    key = "model.video_tower.video_tower.extra.weight"
    rewrite_shard(ckpt, SHARDS[1], lambda t: t.update({key: torch.zeros(2, dtype=torch.bfloat16)}))
    return {}, ["1 unexpected weight", key.replace(".", r"\."), SHARDS[1]]


def break_wrong_shape(ckpt, clip):
    key = "model.mm_projector.0.weight"
    rewrite_shard(ckpt, shard_of(ckpt, key), lambda t: t.update({key: torch.zeros(64, 31, dtype=torch.bfloat16)}))
    return {}, [key.replace(".", r"\."), r"expected shape \[64, 32\], found \[64, 31\]", shard_of(ckpt, key)]


def break_clip_width(ckpt, clip):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    wide = ckpt.parent / "wide-clip"
    CLIPVisionModel(CLIPVisionConfig(**{**random_checkpoint.TINY_CLIP, "hidden_size": 48})).save_pretrained(wide)
    return {"vision_tower_path": wide}, ["hidden_size 48", "mm_hidden_size is 32"]


def break_clip_missing_weight(ckpt, clip):
    mine = shutil.copytree(clip, ckpt.parent / "clip-copy")
    tensors = load_file(mine / "model.safetensors")
    tensors.pop("vision_model.post_layernorm.bias")
    save_file(tensors, mine / "model.safetensors", metadata={"format": "pt"})
    return {"vision_tower_path": mine}, ["CLIP weights in", "1 missing", r"post_layernorm\.bias"]


def break_hub_vision_tower(ckpt, clip):
    edit_json(ckpt / "config.json", mm_vision_tower=HUB_CLIP)
    return {}, [HUB_CLIP, "not a local directory", "vision_tower_path"]


def break_pickle_only(ckpt, clip):
    state = file_state(ckpt)
    for name in [*SHARDS, random_checkpoint.INDEX]:
        (ckpt / name).unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    return {}, ["pytorch_model.bin", "pickle loading is disabled", "allow_pickle"]


def break_tokenizer_vocab(ckpt, clip):
    edit_json(ckpt / "config.json", vocab_size=100)
    return {}, ["512 tokens", "vocab_size is 100"]


def break_projector_type(ckpt, clip):
    edit_json(ckpt / "config.json", mm_projector_type="qformer")
    return {}, [r"config\.json", "mm_projector_type 'qformer'"]


@pytest.mark.parametrize(
    "breaker",
    [
        break_missing_config,
        break_missing_shard,
        break_missing_key,
        break_unexpected_key,
        break_wrong_shape,
        break_clip_width,
        break_clip_missing_weight,
        break_hub_vision_tower,
        break_pickle_only,
        break_tokenizer_vocab,
        break_projector_type,
    ],
    ids=lambda f: f.__name__.removeprefix("break_"),
)
def test_each_broken_checkpoint_gives_one_clear_error(tiny3d, tmp_path, breaker):
    ckpt = copy_ckpt(tiny3d[0], tmp_path / "ckpt")
    kwargs, patterns = breaker(ckpt, tiny3d[1])
    with pytest.raises(Llava3DLoadError) as info:
        load_llava3d(ckpt, device="cpu", **kwargs)
    assert isinstance(info.value, ModelLoadError)  # callers catching the engine's error catch this too
    for pattern in patterns:
        assert info.match(pattern), (pattern, str(info.value))


def test_fixable_checkpoints_load_when_told_how(tiny3d, loaded, tmp_path):
    ckpt = copy_ckpt(tiny3d[0], tmp_path / "hub")
    break_hub_vision_tower(ckpt, None)
    model, _, _ = load_llava3d(ckpt, vision_tower_path=tiny3d[1], device="cpu")
    assert torch.equal(model.vision_tower.post_layernorm.weight, loaded[0].vision_tower.post_layernorm.weight)

    ckpt = copy_ckpt(tiny3d[0], tmp_path / "pickled")
    break_pickle_only(ckpt, None)
    model, _, _ = load_llava3d(ckpt, device="cpu", allow_pickle=True)
    for k, v in loaded[0].state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

    ckpt = copy_ckpt(tiny3d[0], tmp_path / "tied")  # tied embeddings: lm_head.weight may be absent
    edit_json(ckpt / "config.json", tie_word_embeddings=True)
    rewrite_shard(ckpt, shard_of(ckpt, "lm_head.weight"), lambda t: t.pop("lm_head.weight"))
    lm = load_llava3d(ckpt, device="cpu")[0].language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight

    with pytest.raises(Llava3DLoadError, match="does not exist"):
        load_llava3d(tmp_path / "nowhere", device="cpu")


# ---- spatial tokens -------------------------------------------------------------------------


def test_vision_features_are_the_selected_layer_without_cls(tiny3d, loaded):
    from transformers import CLIPVisionModel

    model = loaded[0]
    images = np.random.default_rng(0).integers(0, 256, (2, 336, 336, 3), dtype=np.uint8)
    feats = model.image_features(images)
    assert feats.shape == (2, 576, 32)

    ref = CLIPVisionModel.from_pretrained(tiny3d[1]).eval()
    pre = json.loads((tiny3d[1] / "preprocessor_config.json").read_text())
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(pre["image_mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["image_std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = ref(pixel_values=x, output_hidden_states=True).hidden_states  # embeddings, layer 1, layer 2
    torch.testing.assert_close(feats, hidden[-2][:, 1:], rtol=0, atol=1e-6)
    assert not torch.allclose(feats, hidden[-1][:, 1:])  # not the last layer

    with pytest.raises(ValueError, match=r"\(V, 336, 336, 3\) uint8"):
        model.image_features(np.zeros((1, 112, 112, 3), np.uint8))


def test_voxel_mean_is_exact():
    feats = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [100.0, 100.0], [7.0, 70.0]])
    p2v = torch.tensor([1, 0, 1, -1, 1])  # patch 3: its voxel was capped away
    out = voxel_mean(feats, p2v, 2)
    assert torch.equal(out, torch.tensor([[3.0, 30.0], [13.0 / 3, 130.0 / 3]]))
    bf = voxel_mean(feats.bfloat16(), p2v, 2)
    assert bf.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="3 tokens"):
        voxel_mean(feats, p2v, 3)  # token 2 owns no patch


def make_scene(max_tokens=6):
    """2 views of 24 x 24 patches; patch i of view v sits in voxel (i % 5, 0, v) of 0.2 m; patches 60+
    have no depth. 10 voxels, capped to max_tokens."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 336, 336, 3), dtype=np.uint8)
    i = np.arange(576)
    xyz = np.stack(
        [
            np.stack([0.05 + 0.2 * (i % 5) + 0.01 * (i % 3), np.full(576, 0.07), np.full(576, 0.05 + 0.2 * v)], 1)
            for v in range(2)
        ]
    ).astype(np.float32)  # (2, 576, 3)
    valid = np.broadcast_to(i < 60, (2, 576)).copy()
    xyz[~valid] = np.nan
    tokens = voxel_pool(torch.zeros(int(valid.sum()), 0), torch.from_numpy(xyz[valid]), 0.2, max_tokens)
    return SceneGeometry(images, xyz, valid, tokens, (1, 2), ("cam", "cam"))


def test_spatial_embeddings_pool_position_embedded_features_per_voxel(loaded):
    model = loaded[0]
    scene = make_scene(max_tokens=6)
    assert scene.tokens.num_voxels_before_cap == 10 and scene.num_tokens == 6
    p2v = scene.tokens.patch_to_voxel
    assert (p2v == -1).sum() > 0  # the cap dropped whole voxels

    emb = model.spatial_embeddings(scene)
    assert emb.shape == (6, 64)
    # by hand: CLIP features of valid patches, plus the 3D embedding of their xyz, mean per token, projector
    feats = model.image_features(scene.images)[torch.from_numpy(scene.patch_valid)]  # (120, 32)
    xyz = torch.from_numpy(scene.patch_xyz[scene.patch_valid])
    feats = feats + model.video_pos_emb(xyz)
    expected = []
    for j in range(6):
        members = [n for n in range(len(p2v)) if int(p2v[n]) == j]
        assert len(members) == int(scene.tokens.counts[j])
        expected.append(torch.stack([feats[n] for n in members]).sum(0) / len(members))
    expected = model.mm_projector(torch.stack(expected))
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)

    empty = SceneGeometry(
        np.zeros((0, 336, 336, 3), np.uint8),
        np.zeros((0, 576, 3), np.float32),
        np.zeros((0, 576), bool),
        voxel_pool(torch.zeros(0, 0), torch.zeros(0, 3)),
        (),
        (),
    )
    assert model.spatial_embeddings(empty).shape == (0, 64)


# ---- prompt ---------------------------------------------------------------------------------


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_prompt_spatial_tokens_where_image_was_and_a_location_token(loaded):
    model, tok, _ = loaded
    spatial = torch.randn(7, 64)
    inp = model.build_inputs("What is at [1.0, -2.5, 0.3]?", spatial, tok)

    head = [tok.bos_token_id] + ids_of(tok, f"{SYSTEM} USER: ")
    middle, tail = ids_of(tok, "\nWhat is at "), ids_of(tok, "? ASSISTANT:")
    expected = head + [IMAGE_TOKEN_INDEX] * 7 + middle + [LOCATION_TOKEN_INDEX] + tail
    assert inp.input_ids.tolist() == expected
    T = len(expected)
    assert inp.inputs_embeds.shape == (1, T, 64) and inp.num_tokens == T
    assert (inp.num_spatial, inp.num_location, inp.num_text) == (7, 1, T - 8)
    assert inp.spatial_mask.nonzero().flatten().tolist() == list(range(len(head), len(head) + 7))
    loc = len(head) + 7 + len(middle)
    assert inp.location_mask.nonzero().flatten().tolist() == [loc]
    assert torch.equal(inp.locations, torch.tensor([[1.0, -2.5, 0.3]]))

    e = inp.inputs_embeds[0]
    assert torch.equal(e[inp.spatial_mask], spatial)
    assert torch.equal(e[loc], model.prompt_pos_emb(torch.tensor([1.0, -2.5, 0.3])))
    text = ~(inp.spatial_mask | inp.location_mask)
    assert torch.equal(e[text], model.language_model.get_input_embeddings()(inp.input_ids[text]))


def test_several_locations_with_tolerant_syntax(loaded):
    model, tok, _ = loaded
    q = "Compare [ +1 ,-2.50,  .3 ] with [1e-1,2,3.], not [1, 2] or [a, b, c]."
    texts, points = parse_locations(q)
    assert points == [(1.0, -2.5, 0.3), (0.1, 2.0, 3.0)]
    assert texts == ["Compare ", " with ", ", not [1, 2] or [a, b, c]."]
    inp = model.build_inputs(q, torch.zeros(0, 64), tok)
    assert (inp.num_spatial, inp.num_location) == (0, 2)
    rows = inp.inputs_embeds[0][inp.location_mask]
    torch.testing.assert_close(rows, model.prompt_pos_emb(torch.tensor(points)))


def test_question_without_scene_is_the_text_only_prompt(loaded):
    model, tok, _ = loaded
    q = "  Where is the <image> chair?  "
    inp = model.build_inputs(q, torch.zeros(0, 64), tok)
    assert inp.input_ids.tolist() == tok(build_prompt(q)).input_ids  # the engine's prompt, BOS included
    assert not inp.spatial_mask.any() and not inp.location_mask.any()  # typed "<image>" stays text
    assert (inp.num_spatial, inp.num_location, inp.num_text) == (0, 0, inp.inputs_embeds.shape[1])
    with pytest.raises(ValueError, match=r"\(M, 64\)"):
        model.build_inputs(q, torch.zeros(3, 32), tok)


def test_end_to_end_forward_gives_finite_logits(loaded):
    model, tok, _ = loaded
    scene = make_scene(max_tokens=2560)
    with torch.inference_mode():
        spatial = model.spatial_embeddings(scene)
        inp = model.build_inputs("What is next to [0.3, 0.07, 0.25]?", spatial, tok)
        logits = model.language_model(inputs_embeds=inp.inputs_embeds).logits
    assert inp.num_spatial == scene.num_tokens == 10
    assert logits.shape == (1, inp.num_tokens, 512)
    assert bool(torch.isfinite(logits).all())
    assert math.isfinite(float(logits[0, -1].max()))
