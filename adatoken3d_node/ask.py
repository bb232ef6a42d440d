"""`adatoken3d-ask`: ask the node one question from a shell, over its ~/ask action.

    adatoken3d-ask "Where is the chair?" --namespace robot1 --budget-ms 500

On a terminal the answer is streamed as it is generated; then the answer and
its metrics are printed (a table, or one JSON object with --json). Exit status:
0 answered, 1 refused (the node's reason on stderr), 2 bad arguments, 3 no node,
130 interrupted (Ctrl-C cancels the goal). DDS is set up from the environment
(ROS_DOMAIN_ID, RMW_IMPLEMENTATION, FASTDDS_DEFAULT_PROFILES_FILE), as
adatoken3d-bringup does.
"""

import argparse
import json
import os
import sys
import threading
import time
from typing import List, Optional

PROG = 'adatoken3d-ask'
TABLE_FIELDS = (
    'total_ms',
    'queue_ms',
    'vision_ms',
    'prefill_ms',
    'decode_ms',
    'spatial_tokens',
    'spatial_tokens_kept',
    'generated_tokens',
    'flops_reduction',
    'latency_budget_ms',
    'deadline_met',
    'prefix_reused',
    'gating',
)
NOT_IN_JSON = ('header', 'scene_stamp')
EXIT_OK, EXIT_REFUSED, EXIT_NO_NODE, EXIT_INTERRUPTED = 0, 1, 3, 130


class NodeUnavailable(Exception):
    pass


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    def question(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError('the question is empty')
        return text

    def non_negative(kind):
        def convert(text: str):
            value = kind(text)
            if value < 0:
                raise argparse.ArgumentTypeError(f'{text} is negative')
            return value

        return convert

    def positive(text: str) -> float:
        if float(text) <= 0:
            raise argparse.ArgumentTypeError(f'{text} is not positive')
        return float(text)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Ask the adatoken3d node one question (its ~/ask action): stream the answer, '
        'then print it with its metrics.',
        epilog='exit status: 0 answered, 1 refused by the node (its reason on stderr), 2 bad arguments, '
        '3 no node, 130 interrupted (Ctrl-C cancels the goal)',
    )
    parser.add_argument('question', type=question, help='the question, e.g. "Where is the chair?"')
    parser.add_argument(
        '--namespace', default='', metavar='NS', help="the node's namespace (default: none, i.e. /adatoken3d/ask)"
    )
    parser.add_argument(
        '--budget-ms',
        type=non_negative(float),
        metavar='MS',
        default=0.0,
        help="latency budget in ms (default 0: the node's latency_budget_ms)",
    )
    parser.add_argument(
        '--max-new-tokens',
        type=non_negative(int),
        metavar='N',
        default=0,
        help="most tokens to generate (default 0: the node's max_new_tokens)",
    )
    parser.add_argument('--json', action='store_true', help='print one JSON object, nothing streamed')
    parser.add_argument(
        '--timeout',
        type=positive,
        metavar='S',
        default=30.0,
        help='seconds to wait for the node to be available (default 30)',
    )
    return parser.parse_args(argv)


def metrics_dict(metrics) -> dict:
    """Every QueryMetrics field but the stamps, as plain values (float32 without float noise)."""
    values = {}
    for field, kind in metrics.get_fields_and_field_types().items():
        if field in NOT_IN_JSON:
            continue
        value = getattr(metrics, field)
        values[field] = float(f'{value:.7g}') if kind == 'float' else value
    return values


def metrics_table(metrics) -> str:
    values = metrics_dict(metrics)
    width = max(map(len, TABLE_FIELDS))
    rows = []
    for field in TABLE_FIELDS:
        value = values[field]
        if isinstance(value, float):
            value = f'{value:.3f}' if field == 'flops_reduction' else f'{value:.1f}'
        rows.append(f'{field:<{width}}  {value}')
    return '\n'.join(rows)


class Stream:
    """Writes the new suffix of each partial answer to stdout (when enabled), until closed."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.written = ''
        self._lock = threading.Lock()

    def on_feedback(self, feedback) -> None:
        with self._lock:
            partial = feedback.partial_answer
            if self.enabled and partial.startswith(self.written) and len(partial) > len(self.written):
                sys.stdout.write(partial[len(self.written) :])
                sys.stdout.flush()
                self.written = partial

    def close(self) -> str:
        """Stop streaming; returns what was written."""
        with self._lock:
            self.enabled = False
            return self.written


def wait_for_result(client, goal_handle, timeout: float):
    """(status, Ask.Result), waiting as long as the answer takes while the node is there."""
    done = threading.Event()
    future = goal_handle.get_result_async()
    future.add_done_callback(lambda _: done.set())
    lost_since = None
    while not done.wait(0.2):
        if client.query_service_ready():
            lost_since = None
        elif lost_since is None:
            lost_since = time.monotonic()
        elif time.monotonic() - lost_since > timeout:
            raise NodeUnavailable(
                f'lost the node at {client.ask_action} for {timeout:.0f} s while waiting for the answer'
            )
    response = future.result()
    return response.status, response.result


def report(args, result, streamed: str) -> int:
    if args.json:
        output = {
            'question': args.question,
            'answer': result.answer,
            'success': result.success,
            'error': result.error,
            'metrics': metrics_dict(result.metrics),
        }
        print(json.dumps(output, indent=2))
    elif result.success:
        if streamed and result.answer.startswith(streamed):
            print(result.answer[len(streamed) :])
        else:
            print(('\n' if streamed else '') + result.answer)
        print()
        print(metrics_table(result.metrics))
    elif streamed:
        print()
    if not result.success:
        print(f'{PROG}: refused: {result.error}', file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def ask(args, client) -> int:
    try:
        client.wait_for_node(timeout=args.timeout)
    except TimeoutError:
        raise NodeUnavailable(
            f'no adatoken3d node at {client.ask_action} after {args.timeout:g} s: '
            'is it running and active, in this ROS_DOMAIN_ID?'
        ) from None
    stream = Stream(enabled=sys.stdout.isatty() and not args.json)
    try:
        goal_handle = client.send_goal(
            args.question, args.budget_ms, args.max_new_tokens, on_feedback=stream.on_feedback, timeout=args.timeout
        )
    except RuntimeError as error:  # rejected
        print(f'{PROG}: refused: {error}', file=sys.stderr)
        return EXIT_REFUSED
    except TimeoutError as error:
        raise NodeUnavailable(str(error)) from None
    print(f'asking {client.ask_action}: goal accepted', file=sys.stderr, flush=True)
    try:
        status, result = wait_for_result(client, goal_handle, args.timeout)
    except KeyboardInterrupt:
        stream.close()
        try:
            client.cancel(goal_handle, timeout=5.0)
            print('\ncancelled' if stream.written else 'cancelled', file=sys.stderr)
        except (TimeoutError, KeyboardInterrupt):
            print('cancelled (the node did not confirm it)', file=sys.stderr)
        return EXIT_INTERRUPTED
    return report(args, result, stream.close())


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    client = None
    try:
        from .client import QueryClient  # after argument checks: importing ROS takes a while

        client = QueryClient(namespace=args.namespace, name=f'adatoken3d_ask_{os.getpid()}')
        return ask(args, client)
    except NodeUnavailable as error:
        print(f'{PROG}: {error}', file=sys.stderr)
        return EXIT_NO_NODE
    except KeyboardInterrupt:  # before the goal was accepted: nothing to cancel
        print('cancelled', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if client is not None:
            client.close()


if __name__ == '__main__':
    sys.exit(main())
