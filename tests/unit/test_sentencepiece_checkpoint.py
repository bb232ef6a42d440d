"""A checkpoint that ships only a SentencePiece tokenizer.model (as LLaVA checkpoints built on Vicuna do).

LLaVA-3D reads it with the slow LLaMA tokenizer (use_fast=False), which is SentencePiece itself: each
text chunk between <image> and <boxes> is encoded on its own and gets SentencePiece's dummy prefix
"\u2581", even a chunk that starts with a space. The reference here is that: LLaVA-3D's own
tokenizer_special_token (split at the placeholders, BOS once) over sentencepiece.encode, the
encoding transformers 4.37's slow LlamaTokenizer gives for these chunks (legacy true and false).
"""

import re
import sys

import numpy as np
import pytest
import torch

from adatoken3d_node.model import loader
from adatoken3d_node.model.gating_policy import parse_gating
from adatoken3d_node.model.llava3d import IMAGE_TOKEN_INDEX, LOCATION_RE, LOCATION_TOKEN_INDEX
from adatoken3d_node.model.loader import Llava3DLoadError, load_llava3d
from adatoken3d_node.model.prompt import ROLES, SEP, SYSTEM
from adatoken3d_node.model.scene_qa import SceneAnswerer
from adatoken3d_node.perception.frontend import FrontEndConfig, build_scene_geometry

sentencepiece = pytest.importorskip('sentencepiece', reason='make test installs sentencepiece')

# The node's prompts: plain, with one and with two points, a point first and last, a leading space.
QUESTIONS = [
    'How many boxes are in the room?',
    'What is the object at [0.652, 0.087, 0.771] standing on? Answer briefly.',
    'Is [1.0, -2.5, 0.3] closer to the door than [ +1 ,-2.50,.3 ]?',
    '[0.5, 0.5, 0.0] what colour is it',
    'What is at [1e-1, 2, 3]',
    'Where is the red cube, left of the  blue sphere?',
]


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory):
    from adatoken3d_lab.random_checkpoint import create_random_llava3d

    root = tmp_path_factory.mktemp('sp')
    return create_random_llava3d(root / 'llava3d-sp', root / 'llava3d-sp-clip', seed=0, tokenizer='sentencepiece')


@pytest.fixture(scope='module')
def loaded(sp_model):
    return load_llava3d(sp_model, device='cpu', dtype='float32')


@pytest.fixture(scope='module')
def sp(sp_model):
    """The checkpoint's tokenizer.model in SentencePiece itself: the reference."""
    return sentencepiece.SentencePieceProcessor(model_file=str(sp_model / 'tokenizer.model'))


def llava3d_prompt(question: str, with_image: bool) -> str:
    """The llava_v1 prompt as LLaVA-3D writes it: <image> for the scene, <boxes> for each point."""
    user, assistant = ROLES
    image = '<image>\n' if with_image else ''
    return f'{SYSTEM}{SEP}{user}: {image}{LOCATION_RE.sub("<boxes>", question)}{SEP}{assistant}:'


def slow_llama_ids(prompt: str, sp) -> list:
    """LLaVA-3D's tokenizer_special_token with the slow LLaMA tokenizer (sentencepiece per chunk)."""
    ids = [sp.bos_id()]
    for chunk in re.split(r'(<image>|<boxes>)', prompt):
        ids += (
            [IMAGE_TOKEN_INDEX]
            if chunk == '<image>'
            else [LOCATION_TOKEN_INDEX]
            if chunk == '<boxes>'
            else sp.encode(chunk)
        )
    return ids


def test_the_checkpoint_has_only_a_sentencepiece_tokenizer(sp_model):
    names = {p.name for p in sp_model.iterdir()}
    assert {'tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json'} <= names
    assert 'tokenizer.json' not in names


def test_the_cli_writes_it_and_knows_it_is_there(tmp_path, capsys):
    from adatoken3d_lab import random_checkpoint

    out, clip = tmp_path / 'sp', tmp_path / 'sp-clip'
    assert random_checkpoint.main([str(out), '--clip-dir', str(clip), '--tokenizer', 'sentencepiece']) == 0
    assert (out / 'tokenizer.model').is_file() and not (out / 'tokenizer.json').exists()
    assert random_checkpoint.is_random_llava3d(
        out, clip, 0, 'sentencepiece'
    ) and not random_checkpoint.is_random_llava3d(out, clip, 0)
    assert random_checkpoint.main([str(out), '--clip-dir', str(clip), '--tokenizer', 'sentencepiece']) == 0
    assert 'nothing to do' in capsys.readouterr().out


@pytest.mark.parametrize('with_image', [True, False])
@pytest.mark.parametrize('question', QUESTIONS)
def test_prompt_ids_equal_the_slow_llama_tokenizers(loaded, sp, question, with_image):
    model, tokenizer, _ = loaded
    spatial = torch.zeros(3 if with_image else 0, model.config.hidden_size)
    ids = model.build_inputs(question, spatial, tokenizer).input_ids.tolist()
    expected = slow_llama_ids(llava3d_prompt(question, with_image), sp)
    if with_image:  # the one <image> placeholder becomes the M spatial tokens
        at = expected.index(IMAGE_TOKEN_INDEX)
        expected[at : at + 1] = [IMAGE_TOKEN_INDEX] * 3
    assert ids == expected


def test_the_text_after_a_point_keeps_sentencepieces_prefix(loaded, sp_model, sp):
    """What transformers 5 alone gets wrong: a chunk starting with a space (after <boxes>) loses the
    extra dummy-prefix piece the slow tokenizer puts there."""
    from transformers import AutoTokenizer

    _, tokenizer, config = loaded
    chunk = ' standing on? Answer briefly. ASSISTANT:'
    assert tokenizer(chunk, add_special_tokens=False).input_ids == sp.encode(chunk)
    assert sp.encode(chunk)[0] == sp.piece_to_id('\u2581')
    plain = AutoTokenizer.from_pretrained(sp_model, config=config.text_config, local_files_only=True)
    assert plain(chunk, add_special_tokens=False).input_ids != sp.encode(chunk)
    # decoding is SentencePiece's too: its dummy prefix is dropped, nothing else
    for text in ('a red box', ' a red box', 'yes'):
        assert tokenizer.decode(sp.encode(text)) == sp.decode(sp.encode(text)) == text


def test_beside_a_tokenizer_json_the_tokenizer_model_still_decides(sp_model, loaded, sp, tmp_path):
    """LLaVA-3D reads tokenizer.model (use_fast=False) even where a tokenizer.json converted by
    transformers 5 lies beside it; so does the loader."""
    import shutil
    from transformers import AutoTokenizer

    config = loaded[2]
    both = shutil.copytree(sp_model, tmp_path / 'both')
    AutoTokenizer.from_pretrained(sp_model, config=config.text_config, local_files_only=True).save_pretrained(both)
    assert (both / 'tokenizer.json').is_file() and (both / 'tokenizer.model').is_file()
    tokenizer = loader.load_tokenizer(both, config)
    for chunk in (' standing on? ASSISTANT:', '\nWhat is at ', 'A chat. USER: '):
        assert tokenizer(chunk, add_special_tokens=False).input_ids == sp.encode(chunk)


@pytest.mark.parametrize('missing', ['sentencepiece', 'protobuf'])
def test_a_missing_tokenizer_package_is_named(sp_model, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, loader.SENTENCEPIECE_MODULES[missing], None)  # import fails
    with pytest.raises(Llava3DLoadError) as error:
        load_llava3d(sp_model, device='cpu', dtype='float32')
    message = str(error.value)
    assert missing in message and 'tokenizer.model' in message and 'pip install' in message
    assert 'tiktoken' not in message


def test_it_answers_about_a_scene(loaded, sp_model):
    model, tokenizer, _ = loaded
    rng = np.random.default_rng(0)
    views, grid = 2, model.patch_grid
    xyz = rng.uniform(-1.0, 1.0, (views, grid * grid, 3)).astype(np.float32)
    scene = build_scene_geometry(
        rng.integers(0, 255, (views, model.image_size, model.image_size, 3), dtype=np.uint8),
        xyz,
        np.ones((views, grid * grid), bool),
        (1, 2),
        ('cam', 'cam'),
        FrontEndConfig.for_model(model),
    )
    answerer = SceneAnswerer(model, tokenizer, sp_model)
    answer = answerer.answer(QUESTIONS[1], scene, parse_gating('none', 4), max_new_tokens=4)
    assert answer.spatial_tokens == scene.num_tokens > 0 and 1 <= len(answer.token_ids) <= 4
    assert answer.text == tokenizer.decode(answer.token_ids, skip_special_tokens=True).strip()
