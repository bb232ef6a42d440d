"""`make demo`'s main job: a rendered scene replayed as a bag into the node, questions over real DDS."""
import pathlib
import subprocess
import sys

DEMO = str(pathlib.Path(sys.executable).parent / 'adatoken3d-demo')


def test_demo_replays_a_scene_and_prints_answers_and_metrics_over_real_dds():
    result = subprocess.run([DEMO], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert 'wrote' in out and '12 RGB-D views' in out and 'replayed 60 messages' in out
    assert 'scene memory: 12 views' in out
    assert out.count('service ~/query:') == 3 and out.count('action ~/ask, budget') == 1
    assert out.count('  answer        :') == 4 and '  error         :' not in out
    assert out.count('  ground truth  :') == 4
    assert out.count('views: 12') == 4 and 'latency ms    : total' in out and 'prefill FLOPs' in out
    budgeted = out.split('action ~/ask, budget')[1]
    assert 'gating: budget' in budgeted and 'reduction 0%' not in budgeted   # the budget made it prune
    streamed = [line for line in out.splitlines() if line.strip().startswith('streamed')]
    assert streamed and int(streamed[0].split(':')[1].split()[0]) > 0
    assert 'UNTRAINED' in out and 'model_path:=' in out
