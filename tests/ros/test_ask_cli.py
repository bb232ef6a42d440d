"""adatoken3d-ask as a user runs it from a shell: a CLI process, a node process, real DDS between them."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from adatoken3d_interfaces.msg import QueryMetrics  # noqa: E402

from adatoken3d_node.ask import TABLE_FIELDS  # noqa: E402
from adatoken3d_node.client import NodeProcess, QueryClient  # noqa: E402
from conftest import write_params  # noqa: E402

NAMESPACE = 'ask_cli'
LIMIT = 3000  # max_new_tokens_limit of the node: long answers allowed (the tiny model has 4096 positions)
START_TIMEOUT = 120.0  # torch import + model load + warm-up on a loaded 2-core CI machine
CALL_TIMEOUT = 90.0  # one CLI run: its rclpy import and discovery, then the answer


@pytest.fixture(scope='module')
def node(random_model, tmp_path_factory):
    log = tmp_path_factory.mktemp('ask_logs') / 'node.log'
    params = write_params(log.parent / 'params.yaml', require_scene=False, max_new_tokens_limit=LIMIT)
    process = NodeProcess(
        [f'namespace:={NAMESPACE}', f'model_path:={random_model}', f'params_file:={params}'], log_path=str(log)
    ).start()
    yield process
    process.stop()
    print(process.log())


@pytest.fixture(scope='module')
def observer(node):
    """A client of the same node: sees each outcome on ~/answer, whoever asked."""
    with QueryClient(namespace=NAMESPACE, name='ask_cli_observer') as client:
        try:
            client.wait_for_node(timeout=START_TIMEOUT)
        except TimeoutError:
            pytest.fail(f'node did not come up; its log:\n{node.log()}')
        yield client


def command(*args: str) -> list:
    return [sys.executable, '-m', 'adatoken3d_node.ask', *args]


def run_ask(*args: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def published_answer(observer, question: str):
    observer.wait_until(
        lambda: any(a.question == question for a in observer.answers), CALL_TIMEOUT, f'~/answer to {question!r}'
    )
    return next(a for a in observer.answers if a.question == question)


def test_json_output_is_one_object_with_the_answer_and_all_metrics(observer):
    question = 'Where is the chair? (json)'
    run = run_ask(question, '--namespace', NAMESPACE, '--budget-ms', '60000', '--max-new-tokens', '6', '--json')
    assert run.returncode == 0, run.stderr
    output = json.loads(run.stdout)  # the whole of stdout: nothing streamed around it
    assert output['question'] == question
    assert output['success'] is True and output['error'] == ''
    assert output['answer'].strip()
    metrics = output['metrics']
    assert set(metrics) == set(QueryMetrics.get_fields_and_field_types()) - {'header', 'scene_stamp'}
    assert 1 <= metrics['generated_tokens'] <= 6
    assert metrics['latency_budget_ms'] == 60000.0 and metrics['deadline_met'] is True
    assert metrics['query_id'].startswith('q') and metrics['total_ms'] > 0
    published = published_answer(observer, question)
    assert published.answer == output['answer'] and published.metrics.query_id == metrics['query_id']


def test_plain_output_is_the_answer_then_a_metrics_table(observer):
    question = 'Where is the chair? (plain)'
    run = run_ask(question, '--namespace', NAMESPACE, '--max-new-tokens', '8')
    assert run.returncode == 0, run.stderr
    published = published_answer(observer, question)
    assert published.success and published.answer.strip()
    # not a terminal: nothing streamed, so stdout is exactly the answer, a blank line, the table
    answer, _, table = run.stdout.partition('\n\n')
    assert answer == published.answer
    rows = table.splitlines()
    assert [row.split()[0] for row in rows] == list(TABLE_FIELDS)
    assert re.fullmatch(r'total_ms\s+\d+\.\d', rows[0])
    assert re.search(rf'^generated_tokens\s+{published.metrics.generated_tokens}$', table, re.M)
    assert f'asking /{NAMESPACE}/adatoken3d/ask' in run.stderr


@pytest.mark.parametrize('json_output', [False, True], ids=['plain', 'json'])
def test_a_refused_question_exits_1_with_the_nodes_reason(observer, json_output):
    json_flag = ['--json'] if json_output else []
    run = run_ask('Where is the chair?', '--namespace', NAMESPACE, '--max-new-tokens', str(LIMIT + 1), *json_flag)
    assert run.returncode == 1, (run.stdout, run.stderr)
    reason = f'max_new_tokens={LIMIT + 1} is above max_new_tokens_limit={LIMIT}'
    assert f'adatoken3d-ask: refused: {reason}' in run.stderr
    if json_output:
        output = json.loads(run.stdout)
        assert output['success'] is False and output['error'] == reason and output['answer'] == ''
    else:
        assert run.stdout == ''


def test_no_node_in_the_namespace_exits_3_quickly_with_a_hint():
    start = time.monotonic()
    run = run_ask('Where is the chair?', '--namespace', 'nobody_here', '--timeout', '2', timeout=60)
    elapsed = time.monotonic() - start
    assert run.returncode == 3, (run.stdout, run.stderr)
    assert (
        'adatoken3d-ask: no adatoken3d node at /nobody_here/adatoken3d/ask after 2 s: '
        'is it running and active, in this ROS_DOMAIN_ID?'
    ) in run.stderr
    assert run.stdout == ''
    assert elapsed < 30.0  # the 2 s wait, plus starting Python and rclpy on a loaded machine


def test_empty_question_is_a_usage_error():
    run = run_ask('   ', '--namespace', NAMESPACE, timeout=60)
    assert run.returncode == 2 and 'the question is empty' in run.stderr


def test_ctrl_c_cancels_the_goal_and_exits_130(observer):
    question = 'Describe the whole room in detail. (ctrl-c)'
    process = subprocess.Popen(
        command(question, '--namespace', NAMESPACE, '--max-new-tokens', str(LIMIT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    stderr_lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [stderr_lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    try:
        seen = []
        deadline = time.monotonic() + CALL_TIMEOUT
        while not any('goal accepted' in line for line in seen):
            assert time.monotonic() < deadline, f'no "goal accepted" line: {seen}'
            try:
                seen.append(stderr_lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pass
        process.send_signal(signal.SIGINT)
        returncode = process.wait(CALL_TIMEOUT)
        reader.join(CALL_TIMEOUT)
        while not stderr_lines.empty():
            seen.append(stderr_lines.get())
        stdout = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode == 130, (seen, stdout)
    assert 'cancelled\n' in seen and stdout == ''
    # the node really stopped it: its outcome is a cancellation, well short of the tokens asked for
    published = published_answer(observer, question)
    assert not published.success and 'cancel' in published.error
    assert published.metrics.generated_tokens < LIMIT
