"""The node loads a checkpoint that ships only a SentencePiece tokenizer.model and answers with it over DDS."""

import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from conftest import write_params  # noqa: E402

from adatoken3d_lab.random_checkpoint import create_random_llava3d  # noqa: E402
from adatoken3d_node.client import NodeProcess, QueryClient  # noqa: E402
from adatoken3d_node.model.gating_policy import parse_gating  # noqa: E402
from adatoken3d_node.model.loader import load_llava3d  # noqa: E402
from adatoken3d_node.model.scene_qa import SceneAnswerer  # noqa: E402
from adatoken3d_node.perception.frontend import FrontEndConfig, build_scene_geometry  # noqa: E402

QUESTIONS = ['How many boxes are in the room?']


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory):
    root = tmp_path_factory.mktemp('sp')
    return create_random_llava3d(root / 'llava3d-sp', root / 'llava3d-sp-clip', seed=0, tokenizer='sentencepiece')


@pytest.fixture(scope='module')
def loaded(sp_model):
    return load_llava3d(sp_model, device='cpu', dtype='float32')


def test_the_node_answers_with_it_over_dds(sp_model, loaded, tmp_path):
    """The node in its own process loads the SentencePiece-only checkpoint and answers over DDS exactly
    what the same checkpoint answers here (CPU, float32, greedy): same prompt length, same words."""
    question, max_new = QUESTIONS[0], 6
    model, tokenizer, _ = loaded
    empty = build_scene_geometry(None, None, None, (), (), FrontEndConfig.for_model(model))
    local = SceneAnswerer(model, tokenizer, sp_model).answer(question, empty, parse_gating('none', 4), max_new)

    params = write_params(tmp_path / 'params.yaml', require_scene=False, gating='none', device='cpu', dtype='float32')
    node = NodeProcess(
        ['namespace:=sp', f'model_path:={sp_model}', f'params_file:={params}'], log_path=str(tmp_path / 'node.log')
    ).start()
    try:
        with QueryClient(namespace='sp') as client:
            try:
                client.wait_for_node(timeout=120.0)
            except TimeoutError:
                pytest.fail(f'node did not come up; its log:\n{node.log()}')
            response = client.query(question, max_new_tokens=max_new, timeout=60.0)
    finally:
        node.stop()
    assert response.success, f'{response.error}\n{node.log()}'
    assert response.answer == local.text
    assert response.metrics.generated_tokens == len(local.token_ids)
    assert response.metrics.text_tokens == local.text_tokens
