"""Queries: validation, the bounded FIFO queue, and the single worker thread that answers them.

ROS-free. The node's service and action callbacks only validate and submit;
one worker thread answers queries in arrival order, so inference never runs in
an executor callback and never competes with itself for the GPU. Queries that
wait together may be answered together (answer_batch: one scene prefix, batched
decoding), each still finished, streamed and cancelled on its own. While no
query waits, the worker calls on_idle (the scene prefix refresh).
"""

import collections

import itertools
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple


@dataclass
class QueryReport:
    """Everything QueryMetrics carries, without ROS types (times in ms, stamps in ns)."""

    query_id: str = ''
    latency_budget_ms: float = 0.0
    deadline_met: bool = True
    total_ms: float = 0.0
    queue_ms: float = 0.0
    scene_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    num_views: int = 0
    spatial_tokens: int = 0
    spatial_tokens_kept: int = 0
    text_tokens: int = 0
    generated_tokens: int = 0
    prefill_flops_dense: float = 0.0
    prefill_flops: float = 0.0
    flops_reduction: float = 0.0
    gating: str = ''
    scene_stamp_ns: int = 0
    prefix_reused: bool = False  # answered on a scene prefix cached before it
    scene_age_ms: float = 0.0  # how long before the answer the scene memory had moved past the scene used


@dataclass
class QueryOutcome:
    success: bool
    answer: str = ''
    error: str = ''
    cancelled: bool = False
    report: QueryReport = field(default_factory=QueryReport)


@dataclass
class QueryJob:
    seq: int
    question: str
    latency_budget_ms: float
    max_new_tokens: int
    accepted_at: float  # time.monotonic() at accept
    on_done: Callable[[QueryOutcome], None]
    on_token: Optional[Callable[[str, int], None]] = None  # (partial answer, tokens so far)
    should_stop: Callable[[], bool] = lambda: False  # e.g. the action goal was cancelled

    @property
    def query_id(self) -> str:
        return f'q{self.seq:06d}'


@dataclass(frozen=True)
class QueryLimits:
    max_question_chars: int
    max_new_tokens: int  # used when a request says 0
    max_new_tokens_limit: int
    latency_budget_ms: float  # used when a request says 0

    @classmethod
    def from_parameters(cls, config) -> 'QueryLimits':
        """From the node's parameters by name (parameters.PARAMETERS)."""
        return cls(
            config['max_question_chars'],
            config['max_new_tokens'],
            config['max_new_tokens_limit'],
            config['latency_budget_ms'],
        )


def resolve_request(
    question: str, latency_budget_ms: float, max_new_tokens: int, limits: QueryLimits
) -> Tuple[Optional[str], str, float, int]:
    """Check a request and fill in the node's defaults.

    Returns (error or None, stripped question, budget ms, max new tokens).
    """
    text = question.strip()
    if not text:
        return 'the question is empty', text, 0.0, 0
    if len(question) > limits.max_question_chars:
        return (
            f'the question has {len(question)} characters, more than max_question_chars={limits.max_question_chars}',
            text,
            0.0,
            0,
        )
    if not math.isfinite(latency_budget_ms) or latency_budget_ms < 0:
        return f'latency_budget_ms must be >= 0 (0 = the node default), got {latency_budget_ms}', text, 0.0, 0
    if max_new_tokens > limits.max_new_tokens_limit:
        return (
            f'max_new_tokens={max_new_tokens} is above max_new_tokens_limit={limits.max_new_tokens_limit}',
            text,
            0.0,
            0,
        )
    budget = latency_budget_ms or limits.latency_budget_ms
    return None, text, budget, max_new_tokens or limits.max_new_tokens


NOT_ACCEPTING = 'the node is not active (lifecycle state); activate it to ask questions'
_STOP = object()  # queued by stop(): the worker ends after what is before it


class QueryWorker:
    """A bounded FIFO of queries and the one thread that answers them.

    It accepts queries only while open (the node's active state); closing it refuses new ones and
    lets the queued ones finish (drain).
    """

    def __init__(
        self,
        answer: Callable[[QueryJob], QueryOutcome],
        capacity: int,
        name: str = 'adatoken3d-query-worker',
        answer_batch: Optional[Callable[[List[QueryJob], Callable[[QueryJob, QueryOutcome], None]], None]] = None,
        max_batch: int = 1,
        on_idle: Optional[Callable[[], None]] = None,
        idle_period_s: float = 0.05,
    ):
        """answer_batch(jobs, finish) answers up to max_batch waiting queries together, calling
        finish(job, outcome) once per job as each is done; on_idle() runs every idle_period_s while
        nothing waits (it should return soon after next_waiting() is no longer None)."""
        self._answer = answer
        self._answer_batch = answer_batch
        self._max_batch = max_batch if answer_batch is not None else 1
        self._on_idle = on_idle
        self._idle_period_s = idle_period_s
        self._held = collections.deque()  # taken from the queue behind a batch, to run next
        self._open = False
        self._queue: 'queue.Queue' = queue.Queue(maxsize=capacity)  # QueryJob, a call() or _STOP
        self._capacity = capacity
        self._submit_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._unfinished = 0  # accepted queries not yet finished
        self._idle = threading.Condition()  # guards _unfinished; notified whenever a query finishes
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Queries accepted and not yet finished (waiting plus the one running)."""
        return self._unfinished

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        """Refuse new queries; the queued ones are still answered."""
        self._open = False

    def drain(self, timeout_s: float) -> int:
        """Wait until every accepted query has finished, at most timeout_s; returns how many are left."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            self._idle.wait_for(lambda: self.depth == 0, max(0.0, deadline - time.monotonic()))
            return self.depth

    def submit(
        self,
        question: str,
        latency_budget_ms: float,
        max_new_tokens: int,
        on_done: Callable[[QueryOutcome], None],
        on_token: Optional[Callable[[str, int], None]] = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Tuple[Optional[QueryJob], str]:
        """Queue a query; returns (job, '') or (None, reason) when closed or the queue is full."""
        # Numbering and enqueueing under one lock: query ids follow arrival order.
        with self._submit_lock:
            if not self._open:
                return None, NOT_ACCEPTING
            job = QueryJob(
                next(self._seq),
                question,
                latency_budget_ms,
                max_new_tokens,
                time.monotonic(),
                on_done,
                on_token,
                should_stop,
            )
            with self._idle:
                self._unfinished += 1  # before the put: the worker may finish it at once
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                with self._idle:
                    self._unfinished -= 1
                return None, (
                    f'the query queue is full ({self._capacity} waiting, queue_size='
                    f'{self._capacity}); retry later or raise queue_size'
                )
        return job, ''

    def call(self, fn: Callable[[], object], timeout: Optional[float] = None) -> object:
        """Run fn on the worker thread and return its result (for model warm-up at configure).

        Torch work is slower on a thread that did not warm it up, so everything that times the model
        runs where the queries will run.
        """
        done, box = threading.Event(), {}

        def run() -> None:
            try:
                box['result'] = fn()
            except Exception as error:  # handed to the caller
                box['error'] = error
            done.set()

        self._queue.put(run)
        if not done.wait(timeout):
            raise TimeoutError(f'the worker did not run {fn} within {timeout} s')
        if 'error' in box:
            raise box['error']
        return box['result']

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued queries, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def next_waiting(self) -> Optional[object]:
        """The query (or call) that would run next, without taking it; None when nothing waits."""
        if self._held:
            return self._held[0]
        with self._queue.mutex:  # queue.Queue's own lock: a peek at its deque
            return self._queue.queue[0] if self._queue.queue else None

    def _next(self) -> object:
        """The next item, calling on_idle while there is none."""
        if self._held:
            return self._held.popleft()
        while True:
            try:
                return self._queue.get(timeout=self._idle_period_s if self._on_idle is not None else None)
            except queue.Empty:
                try:
                    self._on_idle()
                except Exception:
                    pass  # a refresh that failed leaves the cache as it was; queries report their own errors

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is _STOP:
                return
            if not isinstance(job, QueryJob):  # a call() from the node, e.g. the warm-up
                job()
                continue
            jobs = [job]
            while len(jobs) < self._max_batch and not self._held:  # what waits with it, in order
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, QueryJob):
                    jobs.append(more)
                else:
                    self._held.append(more)  # a call or the stop: after this batch, in order
            self._run_jobs(jobs)

    def _run_jobs(self, jobs: List[QueryJob]) -> None:
        started = time.monotonic()
        pending = {id(job): job for job in jobs}
        started_at = {}  # id(job) -> when it started alone, for one answered after its batch

        def finish(job: QueryJob, outcome: QueryOutcome) -> None:
            if pending.pop(id(job), None) is None:
                return  # finished already
            finished = time.monotonic()
            report = outcome.report
            report.query_id = job.query_id
            report.latency_budget_ms = job.latency_budget_ms
            report.queue_ms = (started_at.get(id(job), started) - job.accepted_at) * 1e3
            report.total_ms = (finished - job.accepted_at) * 1e3
            report.deadline_met = job.latency_budget_ms <= 0 or report.total_ms <= job.latency_budget_ms
            try:
                job.on_done(outcome)
            except Exception:
                pass  # a client that went away must not stop the worker
            with self._idle:
                self._unfinished -= 1
                self._idle.notify_all()

        runnable = []
        for job in jobs:
            if job.should_stop():
                finish(job, QueryOutcome(False, error='cancelled before it started', cancelled=True))
            else:
                runnable.append(job)
        if len(runnable) > 1:
            try:
                self._answer_batch(runnable, finish)
            except Exception:
                pass  # what the batch did not finish is answered one at a time, each with its own error
        for job in runnable:  # alone, or what a batch left
            if id(job) in pending:
                started_at[id(job)] = time.monotonic()
                try:
                    outcome = self._answer(job)
                except Exception as error:  # the worker must survive any query
                    outcome = QueryOutcome(False, error=f'{type(error).__name__}: {error}')
                finish(job, outcome)
