"""A Python client of the adatoken3d node, and a way to run the node in its own process.

Used by the demo, the benchmarks and the tests, and usable from any script:

    with NodeProcess(['model_path:=/data/llava-3d']) as node, QueryClient() as client:
        client.wait_for_node(timeout=60)
        response = client.query('What is on the table?')

The client spins its own rclpy context in a background thread, so calls block
only the caller, with explicit deadlines (never fixed sleeps).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import rclpy
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

from adatoken3d_interfaces.action import Ask
from adatoken3d_interfaces.msg import Answer, QueryMetrics
from adatoken3d_interfaces.srv import Query
from diagnostic_msgs.msg import DiagnosticArray

from . import names
from .qos import DIAGNOSTICS_QOS, OUTPUT_QOS, QUERY_QOS, action_qos_kwargs


class NodeProcess:
    """`adatoken3d-bringup ARGS` in a child process, its output in a log file; stopped with SIGINT."""

    def __init__(
        self, launch_arguments: Sequence[str] = (), log_path: Optional[str] = None, env: Optional[Dict[str, str]] = None
    ):
        self.command = [sys.executable, '-m', 'adatoken3d_node.bringup', *launch_arguments]
        self.log_path = log_path or os.devnull
        self.env = env
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> 'NodeProcess':
        self._log = open(self.log_path, 'ab')
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        if self.log_path == os.devnull:
            return ''
        with open(self.log_path, 'rb') as log:
            return log.read().decode(errors='replace')

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> 'NodeProcess':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class QueryClient:
    """Calls ~/query and ~/ask of the node and collects ~/answer, ~/metrics and /diagnostics."""

    def __init__(self, namespace: str = '', name: str = 'adatoken3d_client'):
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.node_name = names.private_name('~/', namespace).rstrip('/')  # /<namespace>/adatoken3d
        self.query_service = names.private_name(names.QUERY_SERVICE, namespace)
        self.ask_action = names.private_name(names.ASK_ACTION, namespace)
        self._query = self.node.create_client(Query, self.query_service, qos_profile=QUERY_QOS)
        self._ask = ActionClient(self.node, Ask, self.ask_action, **action_qos_kwargs())
        self.answers: List[Answer] = []
        self.metrics: List[QueryMetrics] = []
        self.diagnostics: List[DiagnosticArray] = []
        self.node.create_subscription(
            Answer, names.private_name(names.ANSWER_TOPIC, namespace), self.answers.append, OUTPUT_QOS
        )
        self.node.create_subscription(
            QueryMetrics, names.private_name(names.METRICS_TOPIC, namespace), self.metrics.append, OUTPUT_QOS
        )
        self.node.create_subscription(
            DiagnosticArray, names.DIAGNOSTICS_TOPIC, self.diagnostics.append, DIAGNOSTICS_QOS
        )
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def latest_status(self):
        """The newest /diagnostics status of this client's node, or None before the first one."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.startswith(f'{self.node_name}:'):
                    return status
        return None

    def latest_diagnostics(self) -> Dict[str, str]:
        """Key-values of the newest /diagnostics status of this client's node (empty before the first one)."""
        status = self.latest_status()
        return {kv.key: kv.value for kv in status.values} if status is not None else {}

    def collect(self, msg_type, topic: str, qos=OUTPUT_QOS) -> list:
        """Subscribe to any topic; returns the list its messages are appended to."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shut down
            pass

    # --------------------------------------------------------------- waiting
    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout: float, what: str = 'condition') -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f'timed out after {timeout:.1f} s waiting for {what}')
            time.sleep(0.005)

    @staticmethod
    def _result(future, timeout: float, what: str):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f'timed out after {timeout:.1f} s waiting for {what}')
        return future.result()

    def wait_for_node(self, timeout: float = 60.0) -> None:
        """Until both ~/query and ~/ask are offered (the node is active)."""
        if not self._query.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f'{self.query_service} not available after {timeout:.0f} s')
        if not self._ask.wait_for_server(timeout_sec=timeout):
            raise TimeoutError(f'{self.ask_action} not available after {timeout:.0f} s')

    def wait_for_inputs(self, keys: Iterable[str], timeout: float = 60.0) -> None:
        """Until the node's /diagnostics report a matched publisher on each input (a names.SENSOR_TOPICS key,
        'tf', 'tf_static'). A publisher seeing the node's subscription is not enough: until the node's side
        has matched it too, what it sends is dropped."""
        keys = list(keys)
        self.wait_until(
            lambda: all(int(self.latest_diagnostics().get(f'publishers.{key}', 0)) > 0 for key in keys),
            timeout,
            f'the node to match publishers on {keys}',
        )

    def query_service_ready(self) -> bool:
        """Whether a ~/query server is matched right now (the node is active)."""
        return self._query.service_is_ready()

    # --------------------------------------------------------------- calls
    def query_async(self, question: str, latency_budget_ms: float = 0.0, max_new_tokens: int = 0):
        return self._query.call_async(
            Query.Request(
                question=question, latency_budget_ms=float(latency_budget_ms), max_new_tokens=int(max_new_tokens)
            )
        )

    def query(
        self, question: str, latency_budget_ms: float = 0.0, max_new_tokens: int = 0, timeout: float = 60.0
    ) -> Query.Response:
        return self._result(
            self.query_async(question, latency_budget_ms, max_new_tokens), timeout, f'{self.query_service} response'
        )

    def send_goal(
        self,
        question: str,
        latency_budget_ms: float = 0.0,
        max_new_tokens: int = 0,
        on_feedback: Optional[Callable[[Ask.Feedback], None]] = None,
        timeout: float = 30.0,
    ):
        """Send an ~/ask goal; returns the accepted goal handle."""
        goal = Ask.Goal(
            question=question, latency_budget_ms=float(latency_budget_ms), max_new_tokens=int(max_new_tokens)
        )
        feedback = (lambda msg: on_feedback(msg.feedback)) if on_feedback else None
        handle = self._result(
            self._ask.send_goal_async(goal, feedback_callback=feedback), timeout, f'{self.ask_action} goal response'
        )
        if not handle.accepted:
            raise RuntimeError(f'{self.ask_action} rejected the goal')
        return handle

    def result(self, goal_handle, timeout: float = 60.0):
        """(status, Ask.Result) of a goal; status is an action_msgs GoalStatus value."""
        response = self._result(goal_handle.get_result_async(), timeout, f'{self.ask_action} result')
        return response.status, response.result

    def cancel(self, goal_handle, timeout: float = 30.0):
        return self._result(goal_handle.cancel_goal_async(), timeout, 'cancel response')

    def ask(
        self,
        question: str,
        latency_budget_ms: float = 0.0,
        max_new_tokens: int = 0,
        on_feedback: Optional[Callable[[Ask.Feedback], None]] = None,
        timeout: float = 60.0,
    ):
        return self.result(self.send_goal(question, latency_budget_ms, max_new_tokens, on_feedback), timeout)

    def close(self) -> None:
        self.executor.shutdown()
        self._ask.destroy()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spinner.join(5)

    def __enter__(self) -> 'QueryClient':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
