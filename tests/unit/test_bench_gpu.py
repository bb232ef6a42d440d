"""benchmarks/bench_gpu.py: without CUDA it refuses and writes nothing; with --allow-cpu --tiny its whole path
(the model built in place, the front end, every policy, the budgeted pipeline) runs on the CPU at the random
checkpoint's tiny sizes and writes its JSON to --out only."""

import importlib
import json
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
POLICIES = (
    'dense',
    'schedule keep 0.5',
    'schedule keep 0.25',
    'schedule keep 0.1',
    'fastv:0:0.08[near=0.5]~question',
    'kcentre:0.25[merge]',
    'prefix-cache hit',
)


@pytest.fixture(scope='module')
def bench():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO))  # benchmarks/ is a package of the source tree, not installed
        yield importlib.import_module('benchmarks.bench_gpu')


@pytest.fixture(scope='module')
def tiny(bench, tmp_path_factory) -> dict:
    """The benchmark's JSON at the tiny shape on the CPU; benchmarks/results redirected, and left empty."""
    root = tmp_path_factory.mktemp('bench_gpu')
    out = root / 'gpu.json'
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.import_module('benchmarks.common'), 'RESULTS', root / 'results')
        assert bench.main(['--allow-cpu', '--tiny', '--out', str(out)]) == 0
    assert not (root / 'results').exists()
    return json.loads(out.read_text())


def test_without_cuda_it_refuses_and_writes_nothing(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # a CPU machine, wherever this runs
    monkeypatch.setattr(importlib.import_module('benchmarks.common'), 'RESULTS', tmp_path / 'results')
    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith('bench_gpu needs a CUDA GPU: torch.cuda.is_available() is False')
    assert 'make bench skips it' in err
    assert list(tmp_path.iterdir()) == []


def test_the_cpu_test_mode_writes_only_where_it_is_told(bench):
    with pytest.raises(SystemExit) as refused:
        bench.parse_args(['--allow-cpu', '--tiny'])
    assert refused.value.code == 2


def test_the_tiny_run_says_what_ran(tiny):
    assert tiny['benchmark'] == 'gpu' and '--tiny' in tiny['command'] and tiny['seconds'] > 0
    assert tiny['gpu'] is None and tiny['model']['dtype'] == 'float32'
    assert tiny['model']['llama']['num_hidden_layers'] == 4 and tiny['model']['parameters']['total'] > 0
    assert tiny['scene']['views'] == 2 and tiny['scene']['spatial_tokens'] == 256
    assert tiny['clip_ms_one_view'] > 0 and tiny['clip_ms_all_views'] > 0


def test_every_policy_is_timed_with_its_flops_and_memory(tiny):
    rows = tiny['policies']
    assert tuple(rows) == POLICIES
    for name, row in rows.items():
        assert row['ttft_ms'] > 0 and row['prefill_ms'] > 0 and row['decode_ms_per_token'] > 0, name
        assert row['end_to_end_ms'] >= row['ttft_ms'], name  # one repeat: the same answer
        assert row['generated_tokens'] == [tiny['max_new_tokens']] * tiny['repeats'], name  # EOS ignored
        assert row['stop_reasons'] == ['max_new_tokens'], name
        assert 'peak_gpu_memory_mb' in row and row['peak_gpu_memory_mb'] is None, name  # CPU: no GPU memory
        assert 0 < row['prefill_flops'] <= row['prefill_flops_dense'], name
        # a new scene runs CLIP on every view; a hit has no scene of its own to be new
        assert (row['ttft_new_scene_ms'] is None) == (name == 'prefix-cache hit'), name
    dense = rows['dense']
    assert dense['spatial_tokens_kept'] == dense['spatial_tokens'] == 256 and dense['flops_saved'] == 0
    for name in POLICIES[1:]:
        assert rows[name]['prefill_flops'] < dense['prefill_flops'], name
    kept = [rows[f'schedule keep {r}']['spatial_tokens_kept'] for r in (0.5, 0.25, 0.1)]
    assert kept == [128, 64, 26]  # ceil(r * 256)
    assert rows['prefix-cache hit']['vision_ms'] == 0 and rows['prefix-cache hit']['prefix_build_ms'] > 0


def test_the_deadline_section_has_three_levels_of_rates(tiny):
    deadline = tiny['deadline']
    dense_ms = deadline['dense_end_to_end_ms']
    assert dense_ms > 0 and deadline['prefix_cache'] is False and deadline['frontier'] == []
    levels = deadline['levels']
    assert [level['fraction_of_dense'] for level in levels] == [0.3, 0.5, 0.8]
    for level in levels:
        assert level['budget_ms'] == pytest.approx(level['fraction_of_dense'] * dense_ms, abs=0.01)
        assert level['queries'] == 3
        assert 0.0 <= level['hit_rate'] <= 1.0
        assert level['hit_rate_where_floor_fits'] is None or 0.0 <= level['hit_rate_where_floor_fits'] <= 1.0
        assert 0 <= level['floor_predicted_misses'] <= level['queries']
        assert 0 < level['latency_ms_p50'] <= level['latency_ms_p95']
        assert deadline['min_keep_ratio'] <= level['keep_ratio_mean'] <= 1.0
