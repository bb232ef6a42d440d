"""The query queue and worker (ROS-free): order, bounds, cancellation, robustness."""

import math
import threading
import time

import pytest

from adatoken3d_node.queries import NOT_ACCEPTING, QueryLimits, QueryOutcome, QueryReport, QueryWorker, resolve_request

LIMITS = QueryLimits(max_question_chars=20, max_new_tokens=8, max_new_tokens_limit=64, latency_budget_ms=250.0)


class Recorder:
    """Collects outcomes; lets the test hold the worker inside a job until released."""

    def __init__(self):
        self.outcomes = []
        self.started = []
        self.release = threading.Event()
        self.release.set()
        self.done = threading.Condition()

    def answer(self, job):
        self.started.append(job.question)
        self.release.wait(10)
        if job.question == 'boom':
            raise RuntimeError('model exploded')
        return QueryOutcome(True, answer=job.question.upper(), report=QueryReport(generated_tokens=1))

    def on_done(self, outcome):
        with self.done:
            self.outcomes.append(outcome)
            self.done.notify_all()

    def wait_for(self, count, timeout=10.0):
        with self.done:
            assert self.done.wait_for(lambda: len(self.outcomes) >= count, timeout), self.outcomes


def opened(worker: QueryWorker) -> QueryWorker:
    worker.open()
    return worker


def test_resolve_request_fills_defaults_and_refuses_bad_requests():
    assert resolve_request('  where?  ', 0.0, 0, LIMITS) == (None, 'where?', 250.0, 8)
    assert resolve_request('where?', 100.0, 5, LIMITS) == (None, 'where?', 100.0, 5)
    assert 'empty' in resolve_request(' \n\t', 0.0, 0, LIMITS)[0]
    assert 'max_question_chars=20' in resolve_request('x' * 21, 0.0, 0, LIMITS)[0]
    assert resolve_request('x' * 20, 0.0, 0, LIMITS)[0] is None
    assert 'latency_budget_ms' in resolve_request('q', -1.0, 0, LIMITS)[0]
    assert 'latency_budget_ms' in resolve_request('q', math.nan, 0, LIMITS)[0]
    assert 'max_new_tokens_limit=64' in resolve_request('q', 0.0, 65, LIMITS)[0]


def test_worker_answers_in_arrival_order_one_at_a_time_with_queue_time():
    recorder = Recorder()
    recorder.release.clear()
    worker = opened(QueryWorker(recorder.answer, capacity=10))
    jobs = [worker.submit(f'q{i}', 0.0, 4, recorder.on_done)[0] for i in range(5)]
    assert [job.seq for job in jobs] == sorted(job.seq for job in jobs)
    time.sleep(0.05)  # jobs wait behind the held first one: measurable queue time
    assert worker.depth == 5
    recorder.release.set()
    recorder.wait_for(5)
    assert [o.answer for o in recorder.outcomes] == ['Q0', 'Q1', 'Q2', 'Q3', 'Q4']
    assert [o.report.query_id for o in recorder.outcomes] == [job.query_id for job in jobs]
    queue_ms = [o.report.queue_ms for o in recorder.outcomes]
    assert queue_ms[1] >= 50.0 and queue_ms == sorted(queue_ms)
    assert all(o.report.total_ms >= o.report.queue_ms for o in recorder.outcomes)
    worker.stop()
    assert worker.depth == 0


def test_full_queue_refuses_with_a_reason_and_loses_nothing_queued():
    recorder = Recorder()
    recorder.release.clear()
    worker = opened(QueryWorker(recorder.answer, capacity=2))
    first, _ = worker.submit('running', 0.0, 1, recorder.on_done)
    wait_deadline = time.monotonic() + 5
    while recorder.started != ['running'] and time.monotonic() < wait_deadline:
        time.sleep(0.001)
    accepted = [worker.submit(f'w{i}', 0.0, 1, recorder.on_done) for i in range(2)]
    refused, reason = worker.submit('one too many', 0.0, 1, recorder.on_done)
    assert all(job is not None for job, _ in accepted)
    assert refused is None and 'queue is full' in reason and 'queue_size=2' in reason
    recorder.release.set()
    recorder.wait_for(3)
    assert [o.answer for o in recorder.outcomes] == ['RUNNING', 'W0', 'W1']
    worker.stop()


def test_a_failing_query_is_answered_with_its_error_and_the_worker_goes_on():
    recorder = Recorder()
    worker = opened(QueryWorker(recorder.answer, capacity=4))
    worker.submit('boom', 0.0, 1, recorder.on_done)
    worker.submit('fine', 0.0, 1, recorder.on_done)
    recorder.wait_for(2)
    assert not recorder.outcomes[0].success and 'model exploded' in recorder.outcomes[0].error
    assert recorder.outcomes[1].success and recorder.outcomes[1].answer == 'FINE'
    worker.stop()


def test_a_query_cancelled_while_queued_never_runs():
    recorder = Recorder()
    recorder.release.clear()
    worker = opened(QueryWorker(recorder.answer, capacity=4))
    worker.submit('first', 0.0, 1, recorder.on_done)
    worker.submit('cancelled', 0.0, 1, recorder.on_done, should_stop=lambda: True)
    recorder.release.set()
    recorder.wait_for(2)
    assert recorder.started == ['first']
    assert recorder.outcomes[1].cancelled and not recorder.outcomes[1].success
    worker.stop()


@pytest.mark.parametrize('budget, total_needed, met', [(0.0, 0.0, True), (10_000.0, 0.0, True), (1.0, 0.02, False)])
def test_deadline_met_is_measured_against_the_budget(budget, total_needed, met):
    recorder = Recorder()

    def slow(job):
        time.sleep(total_needed)
        return recorder.answer(job)

    worker = opened(QueryWorker(slow, capacity=1))
    worker.submit('q', budget, 1, recorder.on_done)
    recorder.wait_for(1)
    assert recorder.outcomes[0].report.deadline_met is met
    assert recorder.outcomes[0].report.latency_budget_ms == budget
    worker.stop()


def test_call_runs_on_the_worker_thread_in_turn_and_returns_or_raises():
    recorder = Recorder()
    worker = opened(QueryWorker(recorder.answer, capacity=4))
    worker_thread = worker.call(lambda: threading.current_thread())
    assert worker_thread is not threading.current_thread() and worker_thread.name == 'adatoken3d-query-worker'
    assert worker.call(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    worker.submit('after', 0.0, 1, recorder.on_done)  # the worker goes on answering
    recorder.wait_for(1)
    assert recorder.outcomes[0].answer == 'AFTER'
    worker.stop()


def test_a_closed_worker_refuses_new_queries_and_drain_waits_for_the_queued_ones():
    recorder = Recorder()
    worker = QueryWorker(recorder.answer, capacity=4)
    assert not worker.is_open and worker.submit('early', 0.0, 1, recorder.on_done) == (None, NOT_ACCEPTING)
    worker.open()
    recorder.release.clear()  # hold the first query inside the model
    for question in ('a', 'b'):
        assert worker.submit(question, 0.0, 1, recorder.on_done)[0] is not None
    worker.close()
    assert worker.submit('late', 0.0, 1, recorder.on_done) == (None, NOT_ACCEPTING)
    assert worker.drain(0.05) == 2  # held: nothing has finished
    recorder.release.set()
    assert worker.drain(10.0) == 0 and worker.depth == 0
    assert [o.answer for o in recorder.outcomes] == ['A', 'B']  # queued queries are answered, not dropped
    worker.stop()


def test_queries_waiting_together_are_handed_over_as_one_batch_in_order_and_calls_keep_their_turn():
    recorder, batches, order = Recorder(), [], []

    def answer_batch(jobs, finish):
        batches.append([job.question for job in jobs])
        for job in reversed(jobs):  # each finished on its own, in any order
            finish(job, QueryOutcome(True, answer=job.question.upper()))

    worker = opened(QueryWorker(recorder.answer, capacity=10, answer_batch=answer_batch, max_batch=3))
    recorder.release.clear()
    worker.submit('hold', 0.0, 4, recorder.on_done)  # the worker sits in this one
    deadline = time.monotonic() + 10
    while not recorder.started and time.monotonic() < deadline:
        time.sleep(0.001)
    for question in ('a', 'b', 'c', 'd'):
        worker.submit(question, 0.0, 4, recorder.on_done)
    caller = threading.Thread(target=lambda: worker.call(lambda: order.append('call')))
    caller.start()
    deadline = time.monotonic() + 10
    while worker._queue.qsize() < 4 + 1 and time.monotonic() < deadline:  # the call is queued behind d
        time.sleep(0.001)
    worker.submit('e', 0.0, 4, recorder.on_done)
    worker.submit('f', 0.0, 4, recorder.on_done)
    recorder.release.set()
    recorder.wait_for(7)
    caller.join(10)
    worker.stop()
    # a, b, c together; d alone (the call behind it ends its batch), then the call, then e and f together
    assert batches == [['a', 'b', 'c'], ['e', 'f']]
    assert recorder.started == ['hold', 'd'] and order == ['call']
    assert sorted(o.answer for o in recorder.outcomes) == ['A', 'B', 'C', 'D', 'E', 'F', 'HOLD']
    assert worker.depth == 0


def test_what_a_failed_batch_leaves_is_answered_one_at_a_time():
    recorder = Recorder()

    def answer_batch(jobs, finish):
        finish(jobs[0], QueryOutcome(True, answer='batched'))
        raise RuntimeError('batch exploded')

    worker = opened(QueryWorker(recorder.answer, capacity=10, answer_batch=answer_batch, max_batch=4))
    recorder.release.clear()
    worker.submit('hold', 0.0, 4, recorder.on_done)
    deadline = time.monotonic() + 10
    while not recorder.started and time.monotonic() < deadline:
        time.sleep(0.001)
    for question in ('a', 'boom', 'c'):
        worker.submit(question, 0.0, 4, recorder.on_done)
    recorder.release.set()
    recorder.wait_for(4)
    worker.stop()
    answers = sorted((o.answer, o.error) for o in recorder.outcomes)
    assert answers == [('', 'RuntimeError: model exploded'), ('C', ''), ('HOLD', ''), ('batched', '')]


def test_on_idle_runs_while_nothing_waits_and_sees_what_arrives():
    seen, recorder = [], Recorder()
    worker = None

    def on_idle():
        seen.append(worker.next_waiting())

    worker = opened(QueryWorker(recorder.answer, capacity=10, on_idle=on_idle, idle_period_s=0.01))
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(seen) >= 3 and all(item is None for item in seen)
    worker.submit('a', 0.0, 4, recorder.on_done)
    recorder.wait_for(1)
    worker.stop()
