"""Width-true timing: LLaMA decoder layers and the vision tower at LLaVA-3D-7B's exact shapes on this CPU,
and the 32-layer model's prefill predicted from them beside its exact FLOPs. ROS-free.

    .venv/bin/python -m benchmarks.bench_width          (make bench; about 5 minutes on 2 cores)

Every speed-up elsewhere comes from narrow models, where per-op overhead hides what pruning saves. Here:
  - a LlamaForCausalLM of --layers decoder layers (random weights, seeded) at LLaVA-3D-7B's width
    (hidden 4096, 32 heads, MLP 11008, vocab 32000), float32;
  - the real token counts: 35 text tokens before the spatial ones, 2560 spatial, 25 after (question);
  - per layer, the wall time of a prefill of n tokens for every n the policies below run, the layer-0
    question score (a `fastv:0` selection's own cost) and a question's 25 tokens against a cached
    prefix (a prefix-cache hit);
  - CLIP ViT-L/14-336 (24 layers, 1024 wide) on one view;
  - the 32-layer prefill of each policy predicted as the sum of its layers' measured times, beside its
    exact FLOPs (flops.py), so the time saved can be compared with the FLOPs saved.
bfloat16: timed only as one matmul's throughput, because this CPU has no bfloat16 arithmetic (AVX2):
torch's fallback runs it hundreds of times slower than float32, which says nothing about a GPU.

Writes benchmarks/results/width.json.
"""

import argparse
import math
import statistics
import sys
import time

import torch

from adatoken3d_node.model.flops import LlamaShape, extend_flops, input_scoring_flops, prefill_flops
from adatoken3d_node.model.gating import GatedLlama
from adatoken3d_node.model.gating_policy import parse_gating

from .common import CLIP_VIT_L_14_336, LLAVA_3D_7B, machine, write_results

BEFORE, SPATIAL, AFTER = 35, 2560, 25
TEXT = BEFORE + AFTER
SCHEDULE_LAYERS = (8, 16, 24)  # AdaToken-3D's cuts at 32 layers
KEEP_RATIOS = (0.5, 0.25, 0.1)
SELECTION_RATIO = 0.08  # the README's fastv:0:0.08[near=0.5]~question keeps 8%


def timed(fn, repeats: int) -> float:
    """Median wall ms of fn() over repeats, after one warm run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def build(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=LLAVA_3D_7B['hidden'],
        num_attention_heads=LLAVA_3D_7B['heads'],
        num_key_value_heads=LLAVA_3D_7B['heads'],
        intermediate_size=LLAVA_3D_7B['intermediate'],
        vocab_size=LLAVA_3D_7B['vocab'],
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def schedule_counts(ratio: float) -> list:
    """Tokens entering each of the 32 layers under the AdaToken-3D schedule keeping `ratio` at the end."""
    counts, n = [], TEXT + SPATIAL
    for layer in range(LLAVA_3D_7B['layers']):
        if layer in SCHEDULE_LAYERS:
            stage = SCHEDULE_LAYERS.index(layer) + 1
            n = TEXT + math.ceil(round(ratio ** (stage / 3) * SPATIAL, 6))
        counts.append(n)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_width', description=__doc__.split('\n\n')[0])
    parser.add_argument('--layers', type=int, default=2, help='decoder layers built (at least 2)')
    parser.add_argument('--repeats', type=int, default=2)
    args = parser.parse_args(argv)
    start_all = time.monotonic()
    model = build(max(2, args.layers))
    gated = GatedLlama(model)
    L = gated.shape.num_layers
    shape32 = LlamaShape(
        LLAVA_3D_7B['hidden'],
        LLAVA_3D_7B['intermediate'],
        32,
        LLAVA_3D_7B['heads'],
        LLAVA_3D_7B['heads'],
        128,
        LLAVA_3D_7B['vocab'],
    )
    g = torch.Generator().manual_seed(0)
    total = TEXT + SPATIAL
    embeds = torch.randn(1, total, LLAVA_3D_7B['hidden'], generator=g) * 0.02  # [1, T, d]
    none = parse_gating('none', L)

    policies = {'dense': [total] * 32}
    policies.update({f'schedule keep {r}': schedule_counts(r) for r in KEEP_RATIOS})
    kept = TEXT + math.ceil(SELECTION_RATIO * SPATIAL)
    policies[f'fastv:0:{SELECTION_RATIO} selection'] = [kept] * 32
    needed = sorted({n for counts in policies.values() for n in counts}, reverse=True)

    per_layer = {}
    with torch.inference_mode():
        for n in needed:
            x, mask = embeds[:, :n], torch.zeros(n, dtype=torch.bool)
            per_layer[n] = timed(lambda: gated.prefill(x, mask, none), args.repeats) / L
            print(f'{n:5d} tokens: {per_layer[n]:9.1f} ms per layer', flush=True)
        # the layer-0 score of a fastv:0 selection: k of every token, q of the question's rows
        score_ms = timed(lambda: gated.input_scores(embeds, AFTER), args.repeats)
        # a prefix-cache hit: the question's tokens against the cached prefix, per layer
        prefix_mask = torch.zeros(total - AFTER, dtype=torch.bool)
        caches = gated.prefill(embeds[:, : total - AFTER], prefix_mask, none, reserve=AFTER).caches

        def hit():
            gated.extend(embeds[:, total - AFTER :], caches)
            for cache in caches:
                cache.truncate(total - AFTER)

        hit_ms = timed(hit, args.repeats) / L
        print(f'score {score_ms:.1f} ms, hit {hit_ms:.1f} ms per layer', flush=True)

    # CLIP ViT-L/14-336 on one view
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L_14_336)).eval()
    pixels = torch.randn(1, 3, 336, 336, generator=g)
    with torch.inference_mode():
        clip_ms = timed(lambda: clip(pixel_values=pixels), args.repeats)
    print(f'CLIP ViT-L/14-336: {clip_ms:.0f} ms per view', flush=True)

    # bfloat16 on this CPU: one matmul's throughput, to say why nothing else is timed in it
    a = torch.randn(64, 4096, dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, dtype=torch.bfloat16)
    bf16_ms = timed(lambda: a @ w, 1)
    f32_ms = timed(lambda: a.float() @ w.float(), 3)
    gflop = 2 * 64 * 4096 * 4096 / 1e9

    dense_flops = prefill_flops(shape32, policies['dense'])
    dense_ms = sum(per_layer[n] for n in policies['dense'])
    predicted = {}
    for name, counts in policies.items():
        ms = sum(per_layer[n] for n in counts)
        flops = prefill_flops(shape32, counts)
        if name.startswith('fastv:0'):
            ms += score_ms
            flops += input_scoring_flops(shape32, AFTER, total)
        elif name.startswith('schedule'):
            ms += 3 * score_ms  # an upper bound: an in-LM cut reuses its layer's k projection
        predicted[name] = {
            'prefill_ms_32_layers': round(ms, 1),
            'prefill_flops': flops,
            'time_saved': round(1 - ms / dense_ms, 4),
            'flops_saved': round(1 - flops / dense_flops, 4),
        }
    predicted['prefix-cache hit'] = {
        'prefill_ms_32_layers': round(32 * hit_ms, 1),
        'prefill_flops': extend_flops(shape32, AFTER, total - AFTER),
        'time_saved': round(1 - 32 * hit_ms / dense_ms, 4),
        'flops_saved': round(1 - extend_flops(shape32, AFTER, total - AFTER) / dense_flops, 4),
    }
    for name, p in predicted.items():
        print(f'{name:28s} {p}', flush=True)
    write_results(
        'width',
        {
            'benchmark': 'width',
            'machine': machine(),
            'command': 'python -m benchmarks.bench_width',
            'shape': LLAVA_3D_7B,
            'layers_built': L,
            'tokens': {'text_before': BEFORE, 'spatial': SPATIAL, 'question': AFTER},
            'dtype': 'float32',
            'seconds': round(time.monotonic() - start_all, 1),
            'per_layer_ms': {str(n): round(ms, 2) for n, ms in per_layer.items()},
            'layer0_question_score_ms': round(score_ms, 2),
            'hit_per_layer_ms': round(hit_ms, 3),
            'clip_vit_l_336_ms_per_view': round(clip_ms, 1),
            'predicted_32_layers': predicted,
            'bfloat16_matmul_gflops': round(gflop / (bf16_ms / 1e3), 2),
            'float32_matmul_gflops': round(gflop / (f32_ms / 1e3), 2),
        },
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
