"""The node in its own process (started by adatoken3d-bringup), a client in this one, real DDS between them."""

import time

import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from action_msgs.msg import GoalStatus  # noqa: E402
from lifecycle_msgs.msg import State  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from adatoken3d_node.client import NodeProcess, QueryClient  # noqa: E402
from conftest import write_params  # noqa: E402
from adatoken3d_node import parameters  # noqa: E402

NAMESPACE = 'robot'
COLOR_REMAP = '/camera/color/image_raw'
MAX_NEW = 12
START_TIMEOUT = 120.0  # torch import + model load + warm-up on a loaded 2-core CI machine
CALL_TIMEOUT = 60.0


@pytest.fixture(scope='module')
def node(random_model, tmp_path_factory):
    log = tmp_path_factory.mktemp('logs') / 'node.log'
    # no sensors here: answer from the question alone instead of refusing for lack of a scene
    params = write_params(log.parent / 'params.yaml', require_scene=False)
    process = NodeProcess(
        [
            f'namespace:={NAMESPACE}',
            f'model_path:={random_model}',
            f'params_file:={params}',
            f'color_image_topic:={COLOR_REMAP}',
        ],
        log_path=str(log),
    ).start()
    yield process
    process.stop()
    print(process.log())


@pytest.fixture(scope='module')
def client(node):
    with QueryClient(namespace=NAMESPACE) as client:
        try:
            client.wait_for_node(timeout=START_TIMEOUT)
        except TimeoutError:
            pytest.fail(f'node did not come up; its log:\n{node.log()}')
        yield client


def test_node_is_active_and_named_as_documented(client):
    get_state = client.node.create_client(GetState, f'/{NAMESPACE}/adatoken3d/get_state')
    assert get_state.wait_for_service(timeout_sec=CALL_TIMEOUT)
    state = client._result(get_state.call_async(GetState.Request()), CALL_TIMEOUT, 'get_state').current_state
    assert state.id == State.PRIMARY_STATE_ACTIVE and state.label == 'active'
    assert client.query_service == '/robot/adatoken3d/query'
    assert client.ask_action == '/robot/adatoken3d/ask'


def test_query_service_answers_with_true_metrics_and_publishes_them(client):
    before = time.time()
    response = client.query('What is on the table?', max_new_tokens=MAX_NEW, timeout=CALL_TIMEOUT)
    assert response.success, response.error
    assert response.error == ''
    m = response.metrics
    assert m.query_id.startswith('q')
    assert 1 <= m.generated_tokens <= MAX_NEW
    assert m.text_tokens > 10  # system prompt + question
    assert m.prefill_ms > 0 and m.decode_ms >= 0
    assert m.total_ms >= m.queue_ms + m.prefill_ms + m.decode_ms - 0.5
    assert m.prefill_flops > 0 and m.prefill_flops == m.prefill_flops_dense and m.flops_reduction == 0.0
    # the node's default budget applies (a request's 0), met densely: the controller says what it chose
    default_budget = parameters.defaults()['latency_budget_ms']
    assert m.latency_budget_ms == default_budget and m.deadline_met
    assert m.gating.startswith(f'budget {default_budget:.0f} ms: keep 1.00, predicted ') and m.gating.endswith(', none')
    # no sensor data reached this node: an empty scene, no spatial tokens, no scene stamp
    assert (m.num_views, m.spatial_tokens, m.spatial_tokens_kept) == (0, 0, 0)
    assert m.scene_ms >= 0.0 and m.vision_ms >= 0.0 and (m.scene_stamp.sec, m.scene_stamp.nanosec) == (0, 0)
    assert m.header.frame_id == 'map'
    assert before - 1.0 <= m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 <= time.time() + 1.0
    client.wait_until(lambda: any(a.query_id == m.query_id for a in client.answers), CALL_TIMEOUT, '~/answer')
    client.wait_until(lambda: any(x.query_id == m.query_id for x in client.metrics), CALL_TIMEOUT, '~/metrics')
    published = next(a for a in client.answers if a.query_id == m.query_id)
    assert published.question == 'What is on the table?' and published.answer == response.answer
    assert published.success and published.metrics.total_ms == m.total_ms


def test_budget_from_the_request_is_reported_and_judged(client):
    generous = client.query('Is the door open?', latency_budget_ms=60_000.0, max_new_tokens=2)
    assert generous.success and generous.metrics.latency_budget_ms == 60_000.0 and generous.metrics.deadline_met
    impossible = client.query('Is the door open?', latency_budget_ms=0.001, max_new_tokens=2)
    assert impossible.success and not impossible.metrics.deadline_met


@pytest.mark.parametrize(
    'question, budget, max_new, reason',
    [
        ('', 0.0, 0, 'empty'),
        ('   \n ', 0.0, 0, 'empty'),
        ('x' * 2001, 0.0, 0, 'max_question_chars'),
        ('fine', -5.0, 0, 'latency_budget_ms'),
        ('fine', 0.0, 513, 'max_new_tokens_limit'),
    ],
)
def test_bad_requests_get_a_reason_and_the_node_keeps_going(client, question, budget, max_new, reason):
    response = client.query(question, latency_budget_ms=budget, max_new_tokens=max_new, timeout=CALL_TIMEOUT)
    assert not response.success and reason in response.error and response.answer == ''
    assert client.query('still there?', max_new_tokens=1).success


def test_ask_streams_feedback_before_the_result(client):
    feedback = []
    result_time = []
    handle = client.send_goal(
        'Where is the chair?',
        max_new_tokens=MAX_NEW,
        on_feedback=lambda f: feedback.append((time.monotonic(), f.generated_tokens, f.partial_answer)),
    )
    status, result = client.result(handle, timeout=CALL_TIMEOUT)
    result_time.append(time.monotonic())
    assert status == GoalStatus.STATUS_SUCCEEDED and result.success, result.error
    client.wait_until(lambda: len(feedback) >= result.metrics.generated_tokens, CALL_TIMEOUT, 'all feedback')
    counts = [n for _, n, _ in feedback]
    assert counts == list(range(1, result.metrics.generated_tokens + 1))
    assert feedback[0][0] < result_time[0]
    assert feedback[-1][2] == result.answer


def test_empty_goal_is_aborted_with_a_reason(client):
    status, result = client.ask('', timeout=CALL_TIMEOUT)
    assert status == GoalStatus.STATUS_ABORTED and not result.success and 'empty' in result.error


def test_cancelled_goal_ends_cancelled(client):
    feedback = []
    handle = client.send_goal(
        'Describe the room in detail.', max_new_tokens=512, on_feedback=lambda f: feedback.append(f.generated_tokens)
    )
    client.wait_until(lambda: len(feedback) >= 1, CALL_TIMEOUT, 'first feedback')
    cancel = client.cancel(handle)
    assert len(cancel.goals_canceling) == 1
    status, result = client.result(handle, timeout=CALL_TIMEOUT)
    assert status == GoalStatus.STATUS_CANCELED
    assert not result.success and 'cancel' in result.error
    assert result.metrics.generated_tokens < 512


def test_goal_cancelled_while_queued_never_runs(client):
    blocker = client.query_async('Describe everything.', max_new_tokens=512)
    handle = client.send_goal('queued', max_new_tokens=4)
    client.cancel(handle)
    status, result = client.result(handle, timeout=CALL_TIMEOUT)
    assert status == GoalStatus.STATUS_CANCELED and result.metrics.generated_tokens == 0
    assert client._result(blocker, CALL_TIMEOUT, 'blocker').success


def test_ten_concurrent_queries_are_answered_in_arrival_order(client):
    futures = [client.query_async(f'Question number {i}?', max_new_tokens=MAX_NEW) for i in range(10)]
    responses = [client._result(f, CALL_TIMEOUT, f'answer {i}') for i, f in enumerate(futures)]
    assert all(r.success for r in responses), [r.error for r in responses]
    ids = [int(r.metrics.query_id[1:]) for r in responses]
    assert ids == sorted(ids) and len(set(ids)) == 10
    # Reconstruct each query's accept/start/finish on the node's clock from its metrics:
    # one at a time, in order, so each starts only after the previous one finished.
    finish = [r.metrics.header.stamp.sec + r.metrics.header.stamp.nanosec * 1e-9 for r in responses]
    start = [f - (r.metrics.total_ms - r.metrics.queue_ms) / 1e3 for f, r in zip(finish, responses)]
    for i in range(1, 10):
        assert start[i] >= finish[i - 1] - 0.002, (i, start[i], finish[i - 1])
    queue_ms = [r.metrics.queue_ms for r in responses]
    assert queue_ms[1:] == sorted(queue_ms[1:]) and queue_ms[9] > queue_ms[1]


def test_a_full_queue_refuses_with_a_reason_and_loses_nothing(client):
    futures = [client.query_async(f'Flood {i}?', max_new_tokens=64) for i in range(30)]
    responses = [client._result(f, CALL_TIMEOUT * 2, f'flood {i}') for i, f in enumerate(futures)]
    refused = [r for r in responses if not r.success]
    assert len(responses) == 30
    assert refused and all('queue is full' in r.error for r in refused)
    assert sum(r.success for r in responses) >= 11  # queue_size 10 waiting + 1 running


def test_diagnostics_report_the_node_and_remapped_sensor_and_tf_traffic(client):
    from tf2_msgs.msg import TFMessage
    from geometry_msgs.msg import TransformStamped

    image_pub = client.node.create_publisher(
        Image, COLOR_REMAP, QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    tf_pub = client.node.create_publisher(TFMessage, '/tf', 100)
    client.wait_until(
        lambda: image_pub.get_subscription_count() > 0 and tf_pub.get_subscription_count() > 0,
        CALL_TIMEOUT,
        'the node to subscribe to the remapped image topic and /tf',
    )

    def sent_and_seen():
        image_pub.publish(Image(height=1, width=1, encoding='rgb8', step=3, data=[1, 2, 3]))
        tf_pub.publish(TFMessage(transforms=[TransformStamped(child_frame_id='camera')]))
        time.sleep(0.01)  # publishing pace while waiting, not a wait for a condition
        values = client.latest_diagnostics()
        return int(values.get('messages.color_image', 0)) > 0 and int(values.get('messages.tf', 0)) > 0

    client.wait_until(sent_and_seen, CALL_TIMEOUT, 'diagnostics counting remapped image and /tf messages')
    status, values = client.latest_status(), client.latest_diagnostics()
    assert status.name == '/robot/adatoken3d: query engine'
    # matched from the node's side too (what a user checks when a camera seems silent)
    assert int(values['publishers.color_image']) >= 1 and int(values['publishers.tf']) >= 1
    assert status.level == status.WARN and 'untrained' in status.message
    assert values['state'] == 'active' and values['gating'] == 'none'
    assert int(values['queries_answered']) >= 1 and 'latency_p50_ms' in values
    assert values['views_in_memory'] == '0' and 'process_max_rss_mb' in values


def test_a_model_that_does_not_load_leaves_the_node_unconfigured_with_a_reason(tmp_path):
    log = tmp_path / 'bad.log'
    missing = tmp_path / 'no-such-model'
    with (
        NodeProcess(['namespace:=broken', f'model_path:={missing}'], log_path=str(log)) as process,
        QueryClient(namespace='broken', name='broken_client') as client,
    ):
        get_state = client.node.create_client(GetState, '/broken/adatoken3d/get_state')
        assert get_state.wait_for_service(timeout_sec=START_TIMEOUT), process.log()
        client.wait_until(lambda: 'configure failed' in process.log(), START_TIMEOUT, 'the configure error')
        state = client._result(get_state.call_async(GetState.Request()), CALL_TIMEOUT, 'get_state').current_state
        assert state.id == State.PRIMARY_STATE_UNCONFIGURED
        assert str(missing) in process.log()
        assert process.alive()


def test_lifecycle_transitions_without_autostart(random_model, tmp_path):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    log = tmp_path / 'manual.log'
    params = write_params(tmp_path / 'params.yaml', require_scene=False)
    with (
        NodeProcess(
            ['namespace:=manual', f'model_path:={random_model}', 'autostart:=false', f'params_file:={params}'],
            log_path=str(log),
        ) as process,
        QueryClient(namespace='manual', name='manual_client') as client,
    ):
        get_state = client.node.create_client(GetState, '/manual/adatoken3d/get_state')
        change_state = client.node.create_client(ChangeState, '/manual/adatoken3d/change_state')
        assert change_state.wait_for_service(timeout_sec=START_TIMEOUT), process.log()

        def state():
            return client._result(get_state.call_async(GetState.Request()), CALL_TIMEOUT, 'state').current_state.id

        def transition(transition_id):
            request = ChangeState.Request(transition=Transition(id=transition_id))
            return client._result(change_state.call_async(request), START_TIMEOUT, 'transition').success

        def query_service_offered():
            return client.query_service_ready()

        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        assert not query_service_offered()
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        client.wait_for_node(timeout=CALL_TIMEOUT)
        assert client.query('Anyone there?', max_new_tokens=2).success
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
        client.wait_until(lambda: not query_service_offered(), CALL_TIMEOUT, 'the query service to go away')
        assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert 'cleaned up: model freed' in process.log()
        # swap the model at run time: set model_path while unconfigured, then configure again
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        from adatoken3d_lab.random_checkpoint import create_random_llava3d

        second = create_random_llava3d(tmp_path / 'second', tmp_path / 'second-clip', seed=1)
        set_parameters = client.node.create_client(SetParameters, '/manual/adatoken3d/set_parameters')
        assert set_parameters.wait_for_service(timeout_sec=CALL_TIMEOUT)
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(second))
        result = client._result(
            set_parameters.call_async(SetParameters.Request(parameters=[Parameter(name='model_path', value=value)])),
            CALL_TIMEOUT,
            'set_parameters',
        )
        assert result.results[0].successful
        assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
        client.wait_for_node(timeout=CALL_TIMEOUT)
        assert client.query('Back again?', max_new_tokens=2).success
        client.wait_until(
            lambda: client.latest_diagnostics().get('model_path') == str(second),
            CALL_TIMEOUT,
            'diagnostics naming the second model',
        )
        assert f'configured: model {second}' in process.log()
