"""What every benchmark records about where it ran, and how it writes its results."""

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / 'results'

# LLaVA-3D-7B's language model and vision tower, the shapes bench_width and bench_gpu build
LLAVA_3D_7B = dict(hidden=4096, heads=32, intermediate=11008, vocab=32000, layers=32)
CLIP_VIT_L_14_336 = dict(  # transformers CLIPVisionConfig keys
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)


def machine() -> dict:
    import torch

    cpu = platform.processor() or ''
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {
        'cpu': cpu,
        'cores': os.cpu_count(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        'date': time.strftime('%Y-%m-%d'),
        'commit': subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=RESULTS.parent
        ).stdout.strip()
        or None,
    }


def write_results(name: str, results: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f'{name}.json'
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + '\n')
    print(f'wrote {path}', file=sys.stderr)
    return path
