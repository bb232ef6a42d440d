"""`make demo`'s main job: the node in its own process, answers over a real service and action call."""
import pathlib
import subprocess
import sys

DEMO = str(pathlib.Path(sys.executable).parent / 'adatoken3d-demo')


def test_demo_prints_answers_and_metrics_over_real_dds():
    result = subprocess.run([DEMO], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count('service ~/query:') == 2 and out.count('action ~/ask:') == 1
    assert out.count('  answer        :') == 3 and '  error         :' not in out
    assert 'latency ms    : total' in out and 'prefill FLOPs' in out
    streamed = [line for line in out.splitlines() if line.strip().startswith('streamed')]
    assert streamed and int(streamed[0].split(':')[1].split()[0]) > 0
    assert 'UNTRAINED' in out and 'model_path:=' in out
