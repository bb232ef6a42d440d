"""Replaying a bag into a node under test and reading its scene memory back (~/scene_points, ~/scene_tokens)."""

import numpy as np
import pytest
from sensor_msgs.msg import PointCloud2

from adatoken3d_lab.bags import LOSSLESS_REPLAY_PARAMETERS, BagPlayer, CameraTopics
from adatoken3d_node.client import NodeProcess, QueryClient
from conftest import write_params

TOPICS = CameraTopics()
TIMEOUT = 120.0


def cloud_array(msg: PointCloud2) -> np.ndarray:
    """The structured points of one of the node's scene clouds (little-endian, unorganised)."""
    dtype = np.dtype(
        {
            'names': [f.name for f in msg.fields],
            'formats': [{7: '<f4', 4: '<u2', 6: '<u4'}[f.datatype] for f in msg.fields],
            'offsets': [f.offset for f in msg.fields],
            'itemsize': msg.point_step,
        }
    )
    return np.frombuffer(bytes(msg.data), dtype=dtype, count=msg.width)


def replay(bag, random_model, tmp_path, name, rate=1.0, expect_views=5, question=None, launch=(), **overrides):
    """Start a node, play the bag into it, return (scene points, scene tokens, node log[, response, seen]).
    random_model None: the node's default model. question: one, or a list (then a list of responses)."""
    # A replay test wants every recorded frame: reliable sensor subscriptions with room to queue.
    overrides = {
        'keyframe_min_translation_m': 0.0,
        'keyframe_min_rotation_deg': 0.0,
        'tf_timeout_s': 1.0,
        **LOSSLESS_REPLAY_PARAMETERS,
        **overrides,
    }
    params = write_params(tmp_path / f'{name}.yaml', **overrides)
    log = tmp_path / f'{name}.log'
    model = [f'model_path:={random_model}'] if random_model is not None else []
    with (
        NodeProcess(
            [f'namespace:={name}', *model, f'params_file:={params}', *TOPICS.remap_arguments(), *launch],
            log_path=str(log),
        ) as node,
        QueryClient(namespace=name, name=f'{name}_client') as client,
    ):
        points = client.collect(PointCloud2, f'/{name}/adatoken3d/scene_points')
        tokens = client.collect(PointCloud2, f'/{name}/adatoken3d/scene_tokens')
        client.wait_for_node(timeout=TIMEOUT)
        player = BagPlayer(bag, rate=rate, context=client.context)
        try:
            player.wait_until_heard(client, TOPICS, TIMEOUT)  # every topic, /tf included
            assert player.play() > 0
        finally:
            player.close()

        def views_in_points():
            return bool(points) and len(np.unique(cloud_array(points[-1])['view'])) == expect_views

        try:
            client.wait_until(views_in_points, TIMEOUT, f'{expect_views} views in ~/scene_points')
        except TimeoutError:
            pytest.fail(f'diagnostics: {client.latest_diagnostics()}\nnode log:\n{node.log()}')
        client.wait_until(lambda: len(tokens) == len(points), TIMEOUT, 'the matching ~/scene_tokens')
        if question is not None:
            asked = [question] if isinstance(question, str) else list(question)
            responses = [client.query(q) for q in asked]
            last = responses[-1].metrics.query_id
            client.wait_until(
                lambda: any(a.query_id == last for a in client.answers), TIMEOUT, 'the answer on ~/answer'
            )
            client.wait_until(
                lambda: client.latest_diagnostics().get('queries_answered') == str(len(asked)),
                TIMEOUT,
                '/diagnostics counting the answers',
            )
            seen = {
                'diagnostics': client.latest_diagnostics(),
                'answer': next(a for a in client.answers if a.query_id == last),
            }
            response = responses[0] if isinstance(question, str) else responses
            return cloud_array(points[-1]), cloud_array(tokens[-1]), node.log(), response, seen
        return cloud_array(points[-1]), cloud_array(tokens[-1]), node.log()
