"""The scene prefix cache over real DDS: a replayed scene's repeated questions hit it and answer exactly as
the node without it; live views invalidate it and the background refresh prefills the new scene without
making a budgeted question late; questions waiting together are answered in one batch as they are one at
a time; a flood loses none."""

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from action_msgs.msg import GoalStatus  # noqa: E402
from live_sensors import live_node, stamped, tf_link  # noqa: E402
from replay_helpers import TOPICS, replay  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from adatoken3d_lab.bags import write_rgbd_bag  # noqa: E402
from adatoken3d_lab.synthetic import make_scene, orbit_frames  # noqa: E402

W, H, TIMEOUT = 160, 120, 120.0
K = [100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0]
QUESTIONS = ('What is on the floor?', 'Where is the red box?', 'How many objects are there?', 'What colour is it?')


def test_repeated_questions_on_a_replayed_scene_hit_the_cache_and_answer_as_without_it(random_model, tmp_path):
    frames = orbit_frames(make_scene(seed=5), n_views=4, width=W, height=H)
    bag = write_rgbd_bag(tmp_path / 'scene', frames, TOPICS, storage='mcap')
    asked = [QUESTIONS[0], QUESTIONS[0], QUESTIONS[1], QUESTIONS[0], QUESTIONS[1]]
    runs = {}
    for cache in (True, False):
        *_, responses, seen = replay(
            bag,
            random_model,
            tmp_path,
            f'prefix_{str(cache).lower()}',
            expect_views=4,
            question=asked,
            prefix_cache=cache,
        )
        assert all(r.success for r in responses), [r.error for r in responses]
        runs[cache] = (responses, seen['diagnostics'])
    cached, uncached = runs[True][0], runs[False][0]
    assert [r.answer for r in cached] == [r.answer for r in uncached]
    # the first question may find the prefix the background refresh built after the last view; every later one does
    assert all(r.metrics.prefix_reused for r in cached[1:]) and not any(r.metrics.prefix_reused for r in uncached)
    for hit, recomputed in zip(cached[1:], uncached[1:]):
        assert hit.metrics.prefill_flops * 5 < recomputed.metrics.prefill_flops
        assert hit.metrics.prefill_flops_dense == recomputed.metrics.prefill_flops_dense
        assert hit.metrics.scene_age_ms == 0.0 and hit.metrics.num_views == 4 and hit.metrics.vision_ms == 0.0
    diagnostics = runs[True][1]
    assert int(diagnostics['prefix_cache.hits']) >= 4 and float(diagnostics['prefix_cache.memory_mb']) > 0
    assert runs[False][1]['prefix_cache.enabled'] == 'false' and runs[False][1]['prefix_cache.hits'] == '0'


@pytest.fixture(scope='module')
def live(random_model, tmp_path_factory):
    """A node with the cache and its refresh on (the defaults) and publishers into it; -> (client, node, send)."""
    root = tmp_path_factory.mktemp('prefix_live')
    overrides = dict(keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0, queue_size=64)
    with live_node(root, random_model, 'prefix_live', TIMEOUT, **overrides) as (client, node, pubs):
        views = [0]

        def send_view():
            """One more view, the camera 0.5 m further along x; returns once the node has kept it."""
            views[0] += 1
            i, stamp = views[0], views[0] * 10**9
            rng = np.random.default_rng(i)
            pubs['tf'].publish(TFMessage(transforms=[tf_link('map', 'cam', stamp, (0.5 * i, 0.0, 0.0))]))
            for key in ('color_info', 'depth_info'):
                pubs[key].publish(stamped(CameraInfo(width=W, height=H, k=K), stamp, 'cam'))
            depth = rng.uniform(1.0, 4.0, (H, W)).astype(np.float32)
            pubs['depth_image'].publish(
                stamped(Image(width=W, height=H, encoding='32FC1', step=4 * W, data=depth.tobytes()), stamp, 'cam')
            )
            rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            pubs['color_image'].publish(
                stamped(Image(width=W, height=H, encoding='rgb8', step=3 * W, data=rgb.tobytes()), stamp, 'cam')
            )
            client.wait_until(
                lambda: client.latest_diagnostics().get('views_in_memory') == str(i), TIMEOUT, f'view {i} kept'
            )
            return i

        yield client, node, send_view


def diagnostic(client, key) -> int:
    return int(client.latest_diagnostics().get(key, -1))


def test_a_new_view_invalidates_and_the_refresh_prefills_without_making_a_budget_late(live):
    client, node, send_view = live
    send_view()
    first = client.query(QUESTIONS[0], timeout=TIMEOUT)
    again = client.query(QUESTIONS[0], timeout=TIMEOUT)
    assert first.success and again.success and again.metrics.prefix_reused and again.answer == first.answer
    for _ in range(4):
        views = send_view()
        # asked at once: the refresh of the new scene may be running; it must not make this answer late,
        # and the answer is about the newest views (max_scene_age_ms 0), never the cached older scene
        budgeted = client.query(QUESTIONS[1], latency_budget_ms=3000.0, timeout=TIMEOUT)
        assert budgeted.success and budgeted.metrics.deadline_met, budgeted.metrics
        assert budgeted.metrics.num_views == views and budgeted.metrics.scene_age_ms == 0.0
    # the idle worker prefills the newest scene by itself (nothing else asks meanwhile)
    views = send_view()
    client.wait_until(
        lambda: client.latest_diagnostics().get('prefix_cache.views') == str(views), TIMEOUT, 'the background refresh'
    )
    assert diagnostic(client, 'prefix_cache.refreshes') >= 1
    hit = client.query(QUESTIONS[2], timeout=TIMEOUT)
    assert hit.success and hit.metrics.prefix_reused and hit.metrics.num_views == views, hit.metrics
    assert 'process_max_rss_mb' in client.latest_diagnostics() and node.alive()


def test_questions_waiting_together_are_answered_in_one_batch_as_one_at_a_time(live):
    client, node, send_view = live
    if diagnostic(client, 'views_in_memory') < 1:
        send_view()
    alone = {q: client.query(q, max_new_tokens=6, timeout=TIMEOUT) for q in QUESTIONS}
    assert all(r.success and r.metrics.prefix_reused for r in alone.values())
    # hold the worker in a long answer, queue the questions behind it, then cancel it: they go as one batch
    feedback, streamed = [], []
    holder = client.send_goal('Describe everything.', max_new_tokens=512, on_feedback=feedback.append)
    client.wait_until(lambda: len(feedback) > 0, TIMEOUT, 'the long answer to start')
    asked = QUESTIONS * 2
    futures = [client.query_async(q, max_new_tokens=6) for q in asked[:-1]]
    goal = client.send_goal(asked[-1], max_new_tokens=6, on_feedback=streamed.append)  # an ~/ask in the batch
    client.wait_until(lambda: diagnostic(client, 'queue_depth') == 1 + len(asked), TIMEOUT, 'the questions queued')
    client.cancel(holder)
    status, _ = client.result(holder, TIMEOUT)
    responses = [client._result(f, TIMEOUT, 'batched answer') for f in futures]
    goal_status, goal_result = client.result(goal, TIMEOUT)
    responses.append(goal_result)
    assert status == GoalStatus.STATUS_CANCELED and goal_status == GoalStatus.STATUS_SUCCEEDED
    assert all(r.success for r in responses), [r.error for r in responses]
    assert all('batch of 8' in r.metrics.gating and r.metrics.prefix_reused for r in responses)
    assert [r.answer for r in responses] == [alone[q].answer for q in asked]
    assert [r.metrics.generated_tokens for r in responses] == [alone[q].metrics.generated_tokens for q in asked]
    # the goal streamed its own answer, token by token, while batched
    client.wait_until(lambda: len(streamed) >= goal_result.metrics.generated_tokens, TIMEOUT, 'its feedback')
    assert [f.generated_tokens for f in streamed] == list(range(1, goal_result.metrics.generated_tokens + 1))
    assert streamed[-1].partial_answer == goal_result.answer


def test_a_flood_of_questions_on_one_scene_loses_none(live):
    client, node, send_view = live
    if diagnostic(client, 'views_in_memory') < 1:
        send_view()
    hits = diagnostic(client, 'prefix_cache.hits')
    futures = [client.query_async(QUESTIONS[i % 4], max_new_tokens=4) for i in range(60)]
    responses = [client._result(f, TIMEOUT, f'flood {i}') for i, f in enumerate(futures)]
    assert all(r.success for r in responses), [r.error for r in responses if not r.success]
    assert len({r.metrics.query_id for r in responses}) == 60
    for i, response in enumerate(responses):  # the same question, the same answer, batched or not
        assert response.answer == responses[i % 4].answer
    client.wait_until(lambda: diagnostic(client, 'prefix_cache.hits') >= hits + 56, TIMEOUT, 'the hits counted')
    assert node.alive()
