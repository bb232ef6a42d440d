"""`make demo` / `adatoken3d-demo`: the node in its own process answering over real DDS.

Starts the node with adatoken3d-bringup (its log goes to a file), waits for its
query service and action, asks questions through both, and prints each answer
with its metrics. DDS stays on loopback in a domain of its own.
"""
import argparse
import sys
import tempfile

from .dds_env import apply_loopback_environment

QUESTIONS = ['What is on the table?', 'Where is the chair?']
STREAMED_QUESTION = 'How many chairs are in the room?'
REAL_WEIGHTS_HINT = ('ros2 launch adatoken3d bringup.launch.py device:=cuda model_path:=/path/to/LLaVA-3D-7B '
                     'vision_tower_path:=/path/to/clip-vit-large-patch14-336\n'
                     '  (or the same arguments to adatoken3d-bringup)')


def metrics_rows(how: str, question: str, response) -> list:
    m = response.metrics
    return [
        f'{how}: {question}',
        f'  answer        : {response.answer!r}' if response.success else f'  error         : {response.error}',
        f'  query_id      : {m.query_id}   gating: {m.gating}   views: {m.num_views}   '
        f'spatial tokens in/kept: {m.spatial_tokens}/{m.spatial_tokens_kept}',
        f'  tokens        : {m.text_tokens} prompt, {m.generated_tokens} generated',
        f'  prefill FLOPs : {m.prefill_flops:.3e} (dense {m.prefill_flops_dense:.3e}, '
        f'reduction {m.flops_reduction:.0%})',
        f'  latency ms    : total {m.total_ms:.1f} = queue {m.queue_ms:.1f} + scene {m.scene_ms:.1f} + vision '
        f'{m.vision_ms:.1f} + prefill {m.prefill_ms:.1f} + decode {m.decode_ms:.1f} (+ overhead)',
        f'  budget        : {m.latency_budget_ms:.0f} ms, deadline met: {m.deadline_met}',
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='adatoken3d-demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('launch_arguments', nargs='*', help='name:=value arguments for the node')
    parser.add_argument('--timeout', type=float, default=120.0, help='seconds to wait for the node')
    args = parser.parse_args(argv)
    env = apply_loopback_environment()

    from .client import NodeProcess, QueryClient  # ROS imports after the environment is set
    log = tempfile.NamedTemporaryFile(prefix='adatoken3d-demo-node-', suffix='.log', delete=False).name
    print(f'ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}, DDS on loopback ({env["FASTDDS_DEFAULT_PROFILES_FILE"]})')
    print(f'starting the node: adatoken3d-bringup {" ".join(args.launch_arguments)}  (log: {log})')
    with NodeProcess(args.launch_arguments, log_path=log) as node, QueryClient() as client:
        try:
            client.wait_for_node(timeout=args.timeout)
        except TimeoutError as error:
            print(f'the node did not come up: {error}\n--- node log ---\n{node.log()}', file=sys.stderr)
            return 1
        print(f'node is active: {client.query_service} and {client.ask_action}\n')
        ok = True
        for question in QUESTIONS:
            response = client.query(question, max_new_tokens=16)
            ok &= response.success
            print('\n'.join(metrics_rows('service ~/query', question, response)) + '\n')
        chunks = []
        status, result = client.ask(STREAMED_QUESTION, max_new_tokens=16,
                                    on_feedback=lambda f: chunks.append(f.generated_tokens))
        ok &= result.success
        print('\n'.join(metrics_rows('action ~/ask', STREAMED_QUESTION, result)))
        print(f'  streamed      : {len(chunks)} feedback messages before the result\n')
        untrained = 'untrained' in node.log().lower()
    if untrained:
        print('NOTE: this ran the random-weight tiny model: it is UNTRAINED, so its words are not meaningful.\n'
              'The plumbing, metrics and timings are real. With the real LLaVA-3D weights:\n  '
              + REAL_WEIGHTS_HINT)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
