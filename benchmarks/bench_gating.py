"""Spatial-token gating side by side with dense prefill: FLOPs, wall time, agreement. ROS-free.

    .venv/bin/python -m benchmarks.bench_gating                 (CPU, mid-size LLaMA shape; make bench)
    python -m benchmarks.bench_gating --shape llava-7b --device cuda --dtype bfloat16   (a GPU machine)

Needs only torch and transformers (it imports nothing from ROS), so it runs on a GPU
machine that has neither the ROS wheels nor registry access. Random weights (seeded):
the numbers measure cost and the agreement of each policy with dense on these
weights; attention on random weights is nearly uniform, so score-based policies
have little to go on and agreement here is a lower bound for a trained model.

Input: 40 text tokens (system prompt), 1600 spatial tokens, 20 text tokens
(question, ASSISTANT:), as LLaVA-3D's prompt on a ~1.6k-token ScanNet scene.
Writes benchmarks/results/gating.json (or --output).
"""

import argparse
import json
import pathlib
import statistics
import sys

import torch

from adatoken3d_node.model.gating import GatedLlama
from adatoken3d_node.model.gating_policy import parse_gating

from .common import machine

SHAPES = {
    # name: (layers, hidden, heads, kv heads, intermediate, vocab)
    'cpu-mid': (12, 1024, 16, 16, 2816, 32000),
    'llava-7b': (32, 4096, 32, 32, 11008, 32000),
}
TEXT_BEFORE, SPATIAL, TEXT_AFTER = 40, 1600, 20


def policies(num_layers: int) -> dict:
    q, h, t = num_layers // 4, num_layers // 2, 3 * num_layers // 4
    schedule = f'schedule:{q}:0.5,{h}:0.25,{t}:0.125'  # AdaToken-3D's 8/16/24 at 32 layers
    early = f'schedule:2:0.5,{q}:0.25,{h}:0.125'  # cuts earlier: aims at the paper's 63%
    return {
        'dense': 'none',
        'fastv_k2_50': 'fastv:2:0.5',
        'fastv_k2_25': 'fastv:2:0.25',
        'adatoken_schedule': schedule,
        'early_schedule': early,
        'mass_p0.5': f'mass:0.5@2,{q},{h}',
        'mass_p0.7': f'mass:0.7@2,{q},{h}',
        'mass_p0.9': f'mass:0.9@2,{q},{h}',
        'random_schedule': 'random' + schedule[len('schedule') :],
    }


def build(shape: str, device: str, dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    ids = torch.randint(0, vocab, (1, TEXT_BEFORE + TEXT_AFTER), device=device)
    text = model.model.embed_tokens(ids)  # (1, 60, d)
    spatial = torch.randn(1, SPATIAL, hidden, device=device, dtype=dtype) * text.std()  # like embeddings
    embeds = torch.cat([text[:, :TEXT_BEFORE], spatial, text[:, TEXT_BEFORE:]], dim=1)  # (1, T, d)
    mask = torch.zeros(embeds.shape[1], dtype=torch.bool, device=device)
    mask[TEXT_BEFORE : TEXT_BEFORE + SPATIAL] = True
    return model, embeds, mask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shape', choices=sorted(SHAPES), default='cpu-mid')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'], default='float32')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--new-tokens', type=int, default=8)
    parser.add_argument('--output', default=None, help='default: benchmarks/results/gating.json')
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    model, embeds, mask = build(args.shape, args.device, dtype, seed=0)
    gated = GatedLlama(model)
    num_layers = model.config.num_hidden_layers
    results = {}
    with torch.inference_mode():
        for name, text in policies(num_layers).items():
            policy = parse_gating(text, num_layers)
            gated.prefill(embeds, mask, policy)  # warm-up
            runs = [gated.prefill(embeds, mask, policy) for _ in range(args.repeats)]
            ids, run, _ = gated.generate(embeds, mask, policy, args.new_tokens)
            results[name] = {'policy': str(policy), 'runs': runs, 'ids': ids, 'logits': run.logits.float()}
            print(f'{name:>18}: {statistics.median(r.prefill_ms for r in runs):9.1f} ms', file=sys.stderr)

    dense = results['dense']
    dense_ms = statistics.median(r.prefill_ms for r in dense['runs'])
    dense_logp = torch.log_softmax(dense['logits'].double(), dim=-1)
    table = {}
    for name, result in results.items():
        run = result['runs'][0]
        ms = statistics.median(r.prefill_ms for r in result['runs'])
        logp = torch.log_softmax(result['logits'].double(), dim=-1)
        table[name] = {
            'policy': result['policy'],
            'spatial_tokens_per_layer': run.spatial_per_layer,
            'spatial_kept_after_last_cut': int(run.spatial_per_layer[-1]),
            'prefill_flops': run.prefill_flops,
            'flops_reduction': round(1 - run.prefill_flops / run.prefill_flops_dense, 4),
            'prefill_ms_median': round(ms, 1),
            'prefill_speedup_vs_dense': round(dense_ms / ms, 3),
            'scoring_ms_median': round(statistics.median(r.scoring_ms for r in result['runs']), 2),
            'scoring_overhead_share': round(statistics.median(r.scoring_ms for r in result['runs']) / dense_ms, 4),
            'greedy_agreement': sum(a == b for a, b in zip(result['ids'], dense['ids'])) / len(dense['ids']),
            'next_token_kl': float((dense_logp.exp() * (dense_logp - logp)).sum()),
        }
    layers, hidden, heads, kv, inter, vocab = SHAPES[args.shape]
    output = {
        'benchmark': 'gated prefill vs dense, random weights (seed 0)',
        'command': f'python -m benchmarks.bench_gating --shape {args.shape} --device {args.device} '
        f'--dtype {args.dtype}',
        'machine': machine(),
        'shape': {
            'name': args.shape,
            'layers': layers,
            'hidden': hidden,
            'heads': heads,
            'kv_heads': kv,
            'intermediate': inter,
            'vocab': vocab,
            'dtype': args.dtype,
            'device': args.device,
        },
        'tokens': {'text_before': TEXT_BEFORE, 'spatial': SPATIAL, 'text_after': TEXT_AFTER},
        'repeats': args.repeats,
        'greedy_new_tokens': args.new_tokens,
        'dense_prefill_flops': dense['runs'][0].prefill_flops_dense,
        'policies': table,
    }
    path = (
        pathlib.Path(args.output)
        if args.output
        else (pathlib.Path(__file__).resolve().parent / 'results' / 'gating.json')
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + '\n')
    print(f'wrote {path}', file=sys.stderr)
    print(f'{"policy":>18} {"FLOPs red.":>10} {"speed-up":>9} {"scoring":>8} {"greedy":>7} {"KL":>9}')
    for name, row in table.items():
        print(
            f'{name:>18} {row["flops_reduction"]:>10.1%} {row["prefill_speedup_vs_dense"]:>8.2f}x '
            f'{row["scoring_overhead_share"]:>8.2%} {row["greedy_agreement"]:>7.0%} {row["next_token_kl"]:>9.2e}'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
