"""Train the small scene LLaVA-3D that ships as the node's default model (`make train-tiny`). ROS-free.

    adatoken3d-train-tiny [--out models/scene-llava3d-tiny] [--train-scenes 1000] [--symbolic-steps 1200]
                          [--vision-steps 18000] [--steps 2500] [--seed 0]

Same model code and on-disk layout as LLaVA-3D-7B (CLIP vision tower, 3D position embedding,
voxel pooling, mlp2x_gelu projector, LLaMA, tokenizer), scaled down to train on a 2-core CPU
in under half an hour:

    CLIP ViT     160 px, 10 px patches -> 16 x 16 patches, width 64, 2 layers     (trained from scratch)
    LLaMA        hidden 128, 6 layers, 4 heads, vocabulary 512                     (trained from scratch)

Data: dataset.py (rendered room scenes through the node's front end, patch xyz at the patch
centre) and questions.py. Three stages; LLaVA's two, after a stand-in for the language
pretraining LLaVA-3D inherits from Vicuna:

  0. symbolic scenes (--symbolic-steps, symbolic.py): the LLM learns to answer about scenes
     whose spatial tokens are the ideal ones (its own colour and shape word embeddings plus a
     position code), 16 scenes a step, no rendering, questions drawn evenly over families and
     their templates; a referent probe (referents.py) gives the first of the two attention hops
     every answer needs its own signal, an object-start probe tells each spatial token whether it
     is the first of its object, a running-count probe has it say how many objects of each shape
     have started up to it, and a count probe teaches the words that can name several objects
     how many they name (counting objects rather than tokens); rarer counts weigh more in the
     answer loss (questions.count_weights), here and in stage 2;
  1. alignment (--vision-steps): the vision tower, 3D position embedding and projector learn,
     from the renderer's labels, the colour and shape of the object under every CLIP patch
     and every spatial token (linear probes, AuxHeads; not saved), and the spatial tokens move
     onto the symbolic tokens of the objects they lie on (alignment_loss); warm-up and cosine
     decay, like the other stages;
  2. instruction tuning (--steps): the whole model answers every question the scene answers
     (all families), on a random 5-8 of its 8 views; the auxiliary token loss, the alignment and
     the probes stay on.

The prompt is the node's: build_inputs' llava_v1 prompt, the answer follows "ASSISTANT:" and
ends with </s>. The spatial tokens come before the question, so the shared prefix (system
prompt + spatial tokens) runs once per scene and its KV cache is repeated for the batch of
questions: exactly single-question training (tests/unit/test_training.py checks it), for a
fraction of the compute.

Everything is seeded (data, initialisation, order): the same command gives the same weights
on the same machine and torch build. Writes the checkpoint (fp16 safetensors, CLIP in
vision_tower/), training_log.json (losses and validation accuracy) and training_curves.png.
"""

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from adatoken3d_node.perception.frontend import FrontEndConfig
from adatoken3d_node.share import SHIPPED_MODEL
from . import questions
from ..synthetic import make_scene
from .dataset import MIN_OBJECT_SIZE_M, SPLITS, TRAINING_MIX, VIEWS_PER_SCENE, SceneRecord, render_split, token_objects
from .evaluate import evaluate
from .referents import Probes
from .symbolic import HEIGHT_GAIN, SymbolicTokens, alignment_loss, family_balanced, symbolic_scene

VISION_TOWER_DIR = 'vision_tower'  # the CLIP checkpoint, inside the model directory
CLIP = dict(
    image_size=160,
    patch_size=10,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=64,
)
LLAMA = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,
)
MIN_VIEWS = 5
# Auxiliary loss (training only, its heads are not saved): every spatial token entering the LLM
# predicts the colour and shape of the object it lies on (or "none": floor, wall). Dense labels
# from the renderer teach the from-scratch vision tower in hundreds of steps what the answers
# alone would teach it in tens of thousands.
AUX_WEIGHT = 0.5
PROBE_WEIGHT = 1.0  # ReferentProbe (referents.py), stages 0 and 2
ALIGN_WEIGHT = 1.0  # spatial tokens onto the symbolic tokens of stage 0 (relative squared error)
SYMBOLIC_SCENES_PER_STEP = 16
SYMBOLIC_QUESTIONS_PER_SCENE = 8


PATCH_XYZ = 'centre'  # small objects span few patches: a patch's corner pixel is often the floor beside it


def front_end_config() -> FrontEndConfig:
    """The front end the model is trained with: the node's defaults at this vision tower's size, with
    PATCH_XYZ (the checkpoint records it: config.json adatoken3d_patch_xyz, the node's patch_xyz: auto)."""
    return FrontEndConfig(
        image_size=CLIP['image_size'], patch_grid=CLIP['image_size'] // CLIP['patch_size'], patch_xyz=PATCH_XYZ
    )


def build_model(seed: int):
    """A randomly initialised scene LLaVA-3D -> (model, tokenizer, config.json dict)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from adatoken3d_node.model.llava3d import Llava3D, Llava3DConfig
    from ..tokenizer_files import build_tokenizer
    from ..random_checkpoint import released_config

    tokenizer = build_tokenizer(extra_corpus=questions.corpus())
    raw = released_config(tokenizer, VISION_TOWER_DIR, CLIP['hidden_size'], LLAMA)
    raw['mm_vision_select_layer'] = -1  # 2 CLIP layers: use the last (LLaVA's -2 would waste one)
    raw['num_frames'] = VIEWS_PER_SCENE
    raw['adatoken3d_patch_xyz'] = PATCH_XYZ
    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    model = Llava3D(Llava3DConfig.from_dict(raw), tower)
    with torch.no_grad():  # the spatial tokens' height as distinct as in the symbolic codes (symbolic.HEIGHT_GAIN)
        model.video_pos_emb.position_embedding_head[0].weight[:, 2] *= HEIGHT_GAIN
    return model, tokenizer, raw


class PromptCache:
    """Token ids of the node's prompt around the spatial tokens, per question (tokenized once)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self._dummy = torch.zeros(1, model.config.hidden_size)
        self._cache = {}
        self.prefix_ids = self._split('What is there?')[0]

    def _split(self, question: str):
        from adatoken3d_node.model.llava3d import IMAGE_TOKEN_INDEX

        with torch.no_grad():
            inputs = self.model.build_inputs(question, self._dummy, self.tokenizer)
        ids = inputs.input_ids.tolist()
        at = ids.index(IMAGE_TOKEN_INDEX)
        return ids[:at], ids[at + 1 :], inputs.locations

    def suffix(self, question: str):
        """-> (ids after the spatial tokens, LOCATION_TOKEN_INDEX at points; points (K, 3))."""
        if question not in self._cache:
            _, suffix, locations = self._split(question)
            self._cache[question] = (suffix, locations)
        return self._cache[question]

    def answer_ids(self, answer: str) -> List[int]:
        key = ('answer', answer)
        if key not in self._cache:
            self._cache[key] = self.tokenizer(' ' + answer, add_special_tokens=False).input_ids + [
                self.tokenizer.eos_token_id
            ]
        return self._cache[key]


class AuxHeads(torch.nn.Module):
    """Linear probes (training only) for the colour (len(COLOURS) + none) and shape (len(SHAPES) + none)
    of the object under a feature: one pair on the spatial tokens (D), one on CLIP patch features (C)."""

    def __init__(self, hidden: int, clip_width: int):
        super().__init__()
        from ..synthetic import COLOUR_NAMES, SHAPES

        self.none_colour, self.none_shape = len(COLOUR_NAMES), len(SHAPES)  # the extra class: floor, wall
        self.colour = torch.nn.Linear(hidden, len(COLOUR_NAMES) + 1)
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)
        self.patch_colour = torch.nn.Linear(clip_width, len(COLOUR_NAMES) + 1)
        self.patch_shape = torch.nn.Linear(clip_width, len(SHAPES) + 1)

    def _targets(self, on: np.ndarray, objects):
        colour = torch.tensor([objects[i].colour_index if i >= 0 else self.none_colour for i in on.ravel()])
        shape = torch.tensor([objects[i].shape_index if i >= 0 else self.none_shape for i in on.ravel()])
        # objects are a few percent of the patches: weigh them as much as the background together
        weight = torch.tensor(
            np.where(on.ravel() >= 0, max(1.0, (on < 0).sum() / max((on >= 0).sum(), 1)), 1.0), dtype=torch.float32
        )
        return colour, shape, weight

    @staticmethod
    def _ce(logits, target, weight):
        return (F.cross_entropy(logits, target, reduction='none') * weight).sum() / weight.sum()

    def loss(self, spatial: torch.Tensor, on: np.ndarray, objects) -> torch.Tensor:
        """spatial (M, D), on (M,) the object under each token -> weighted cross-entropy of both labels."""
        colour, shape, weight = self._targets(on, objects)
        return self._ce(self.colour(spatial), colour, weight) + self._ce(self.shape(spatial), shape, weight)

    def patch_loss(self, features: torch.Tensor, patch_objects: np.ndarray, objects) -> torch.Tensor:
        """features (V, P, C) CLIP patch features, patch_objects (V, P) -> the same loss per patch."""
        colour, shape, weight = self._targets(patch_objects, objects)
        flat = features.reshape(-1, features.shape[-1])
        return self._ce(self.patch_colour(flat), colour, weight) + self._ce(self.patch_shape(flat), shape, weight)


def vision_step(model, aux: AuxHeads, symbolic: SymbolicTokens, record, config) -> torch.Tensor:
    """Stage 1 (LLaVA's alignment stage, here with dense labels): the vision tower, 3D position
    embedding and projector learn colour and shape per patch and per spatial token, and the
    spatial tokens move onto the symbolic tokens stage 0 taught the LLM to read."""
    scene = record.geometry(config)
    features = model.image_features(scene.images)  # (V, P, C)
    spatial = model.mm_projector(model.spatial_features(features, scene))  # (M, D)
    words = model.language_model.get_input_embeddings().weight
    on = token_objects(record.objects, scene.tokens.centres.numpy())  # (M,)
    return (
        aux.patch_loss(features, record.patch_objects(), record.objects)
        + aux.loss(spatial, on, record.objects)
        + ALIGN_WEIGHT * alignment_loss(spatial, symbolic, scene, on, record.objects, words)
    )


def answer_batch(model, prompts: PromptCache, qas: Sequence[questions.QA]):
    """The prompt after the spatial tokens and the answer, for a batch of questions ->
    (suffix (N, Ts, D) input embeddings, right-padded; target (N, Ts): answer ids, -100 elsewhere)."""
    from adatoken3d_node.model.llava3d import LOCATION_TOKEN_INDEX

    embed = model.language_model.get_input_embeddings()
    rows, labels = [], []
    for qa in qas:
        ids, locations = prompts.suffix(qa.question)
        answer = prompts.answer_ids(qa.answer)
        seq = torch.tensor(ids + answer)
        text = seq != LOCATION_TOKEN_INDEX
        row = torch.empty(len(seq), embed.embedding_dim)
        row[text] = embed(seq[text])
        if len(locations):
            row[~text] = model.location_embeddings(locations)
        rows.append(row)
        labels.append([-100] * len(ids) + answer)
    T = max(len(r) for r in rows)
    suffix = torch.zeros(len(rows), T, embed.embedding_dim)
    target = torch.full((len(rows), T), -100)
    for i, (row, lab) in enumerate(zip(rows, labels)):
        suffix[i, : len(row)] = row
        target[i, : len(lab)] = torch.tensor(lab)
    return suffix, target


def answer_forward(
    model, prompts: PromptCache, prefix: torch.Tensor, qas: Sequence[questions.QA], hidden_states: bool = False
):
    """The LLM over B shared prefixes (B, Tp, D) (system prompt + spatial tokens), each followed by
    its len(qas) / B questions in order: the prefix runs once and its KV cache is repeated for its
    questions -> (the LLM's output over the suffixes: logits (N, Ts, V) [, hidden_states]; target (N, Ts);
    with hidden_states, the prefix's hidden states too (a tuple of (B, Tp, D)), else None)."""
    lm = model.language_model
    prefix_out = lm.model(inputs_embeds=prefix, use_cache=True, output_hidden_states=hidden_states)
    cache = prefix_out.cache
    cache.batch_repeat_interleave(len(qas) // prefix.shape[0])
    suffix, target = answer_batch(model, prompts, qas)  # (N, Ts, D)
    # Right padding: causal attention keeps the pad positions out of every real position.
    positions = torch.arange(prefix.shape[1], prefix.shape[1] + suffix.shape[1])[None].expand(len(qas), -1)
    out = lm(inputs_embeds=suffix, cache=cache, position_ids=positions, output_hidden_states=hidden_states)
    return out, target, prefix_out.hidden_states if hidden_states else None


def scene_loss(
    model,
    prompts: PromptCache,
    scene,
    qas: Sequence[questions.QA],
    aux: AuxHeads = None,
    objects=(),
    probes: Probes = None,
    symbolic: SymbolicTokens = None,
    count_weights: dict = None,
):
    """Mean cross-entropy of the answer tokens (and </s>) of every question about one scene, each
    question weighted by questions.question_weights(qas, count_weights) when given (plus
    AUX_WEIGHT x the auxiliary token loss when aux is given, PROBE_WEIGHT x the probes' (referents.py),
    ALIGN_WEIGHT x the symbolic alignment's) -> (loss to minimise, (N,) detached mean loss of each
    question's answer)."""
    embed = model.language_model.get_input_embeddings()
    spatial = model.mm_projector(model.spatial_features(model.image_features(scene.images), scene))  # (M, D)
    on = token_objects(objects, scene.tokens.centres.numpy())  # (M,) the object under each spatial token
    aux_loss = aux.loss(spatial, on, objects) if aux is not None else 0.0
    align_loss = alignment_loss(spatial, symbolic, scene, on, objects, embed.weight) if symbolic is not None else 0.0
    prefix = torch.cat([embed(torch.tensor(prompts.prefix_ids)), spatial])[None]  # (1, Tp, D)
    out, target, prefix_states = answer_forward(model, prompts, prefix, qas, probes is not None)
    logits = out.logits  # (N, Ts, V)
    probe_loss = 0.0
    if probes is not None:  # the spatial tokens follow the system prompt, in the front end's voxel order
        probe_loss = probes.loss(
            out.hidden_states, prefix_states, len(prompts.prefix_ids), prompts, qas, [objects] * len(qas), [on]
        )
    per_token = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), target[:, 1:], ignore_index=-100, reduction='none'
    )  # (N, Ts - 1)
    counted = (target[:, 1:] != -100).sum(1)  # (N,)
    answer_loss = weighted_answer_loss(per_token, counted, qas, count_weights)
    loss = answer_loss + AUX_WEIGHT * aux_loss + PROBE_WEIGHT * probe_loss + ALIGN_WEIGHT * align_loss
    return loss, per_token.sum(1).detach() / counted


def weighted_answer_loss(
    per_token: torch.Tensor, counted: torch.Tensor, qas: Sequence[questions.QA], count_weights: dict = None
) -> torch.Tensor:
    """per_token (N, T): each answer token's cross-entropy (0 where none), counted (N,): answer tokens
    per question -> their mean, each question's tokens weighted by question_weights (all 1 without
    count_weights)."""
    if count_weights is None:
        return per_token.sum() / counted.sum()
    weight = torch.tensor(questions.question_weights(qas, count_weights), dtype=per_token.dtype)  # (N,)
    return (per_token.sum(1) * weight).sum() / (counted * weight).sum()


def symbolic_loss(
    model,
    prompts: PromptCache,
    symbolic: SymbolicTokens,
    seeds: Sequence[int],
    rng: np.random.Generator,
    per_scene: int,
    probes: Probes = None,
    probe_weight: float = 1.0,
    count_weights: dict = None,
):
    """Answer loss (weighted as scene_loss's) over per_scene questions about each of the symbolic
    scenes make_scene(seed), plus probe_weight x the probes' (referents.py) when given -> (loss, the
    questions in batch order, (N,) bool: every answer token predicted right)."""
    embed = model.language_model.get_input_embeddings()
    prefixes, qas, objects_of, on_of = [], [], [], []
    for seed in seeds:
        objects = make_scene(int(seed), unique=True, min_size_m=MIN_OBJECT_SIZE_M)
        xyz, on = symbolic_scene(objects, rng)
        on_of.append(on.numpy())
        tokens = symbolic(xyz, on, objects, embed.weight)  # (S, D)
        prefixes.append(torch.cat([embed(torch.tensor(prompts.prefix_ids)), tokens]))
        qas += family_balanced(objects, rng, per_scene)
        objects_of += [objects] * per_scene
    out, target, prefix_states = answer_forward(
        model, prompts, torch.stack(prefixes), qas, probes is not None
    )  # (B * Q, Ts, V)
    logits = out.logits
    per_token = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), target[:, 1:], ignore_index=-100, reduction='none'
    )  # (N, Ts - 1)
    answered = target[:, 1:] != -100  # (N, Ts - 1)
    loss = weighted_answer_loss(per_token, answered.sum(1), qas, count_weights)
    if probes is not None:
        loss = loss + probe_weight * probes.loss(
            out.hidden_states, prefix_states, len(prompts.prefix_ids), prompts, qas, objects_of, on_of
        )
    right = (logits[:, :-1].argmax(-1) == target[:, 1:]) | ~answered
    return loss, qas, right.all(1)


def save(model, tokenizer, raw: dict, out: pathlib.Path, marker: dict) -> None:
    from ..random_checkpoint import write_clip, write_llava3d

    write_clip(model.vision_tower.float(), out / VISION_TOWER_DIR, {**marker, 'kind': marker['kind'] + '-clip'})
    write_llava3d(model, raw, tokenizer, out, marker, dtype=torch.float16)


def plot_curves(log: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_symbolic, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(16, 4))
    if log['symbolic']:
        for family in questions.FAMILIES:
            rows = [(r['step'], r['right'][family]) for r in log['symbolic'] if family in r['right']]
            if len(rows) > 1:
                steps, right = zip(*rows)
                window = max(1, min(50, len(right) // 2))
                ax_symbolic.plot(
                    steps[window - 1 :], np.convolve(right, np.ones(window) / window, mode='valid'), label=family
                )
        ax_symbolic.legend(fontsize=8)
    ax_symbolic.set(
        xlabel='step (16 symbolic scenes)',
        ylabel='answers right (training batches)',
        ylim=(0, 1.02),
        title='stage 0: symbolic scenes',
    )
    steps, losses = zip(*[(r['step'], r['loss']) for r in log['train']])
    window = max(1, min(50, len(losses) // 2))
    smooth = np.convolve(losses, np.ones(window) / window, mode='valid')
    ax_loss.plot(steps, losses, color='0.8', lw=0.6, label='per step')
    ax_loss.plot(steps[window - 1 :], smooth, color='C0', label=f'mean of {window}')
    ax_loss.set(
        xlabel='step (one scene, all its questions)',
        ylabel='loss',
        yscale='log',
        title='stage 2 loss (answers + token, alignment and probe losses)',
    )
    ax_loss.legend()
    for family in questions.FAMILIES:
        ax_acc.plot(
            [r['step'] for r in log['val']],
            [r['families'][family]['accuracy'] for r in log['val']],
            marker='o',
            ms=3,
            label=family,
        )
    ax_acc.plot([r['step'] for r in log['val']], [r['overall'] for r in log['val']], 'k--', label='overall')
    ax_acc.set(xlabel='step', ylabel='exact-match accuracy', ylim=(0, 1.02), title='validation (dense)')
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def validate(model, tokenizer, records: Sequence[SceneRecord], step: int) -> dict:
    from adatoken3d_node.model.gating_policy import parse_gating
    from adatoken3d_node.model.scene_qa import SceneAnswerer

    model.eval()
    answerer = SceneAnswerer(model, tokenizer, path=None)
    result = evaluate(
        answerer, records, front_end_config(), {'dense': parse_gating('none', LLAMA['num_hidden_layers'])}
    )
    model.train()
    return {'step': step, **result['dense'].summary()}


def mean_by_family(values: Sequence[float], qas: Sequence[questions.QA]) -> Dict[str, float]:
    """One step's mean of a per-question value (right or not, answer loss) in each family it asked."""
    return {
        f: round(float(np.mean([float(v) for v, qa in zip(values, qas) if qa.family == f])), 4)
        for f in dict.fromkeys(qa.family for qa in qas)
    }


def recent_means(rows: Sequence[dict], field: str) -> Dict[str, float]:
    """Mean of each entry of row[field] over the log rows that have it."""
    keys = dict.fromkeys(key for r in rows for key in r.get(field, {}))
    return {key: float(np.mean([r[field][key] for r in rows if key in r.get(field, {})])) for key in keys}


def progress(rows: Sequence[dict], families_field: str, label: str) -> str:
    """'loss 1.2345  <label> attri 0.98 count 0.71 ...  probe count 0.97 colour 0.98 ...' over recent log rows."""
    families = recent_means(rows, families_field)
    return (
        f'loss {np.mean([r["loss"] for r in rows]):.4f}  {label} '
        + ' '.join(f'{f[:5]} {families[f]:.2f}' for f in questions.FAMILIES if f in families)
        + '  probe '
        + ' '.join(f'{head} {v:.2f}' for head, v in recent_means(rows, 'probe').items())
    )


def cosine_with_warmup(optimiser, steps: int):
    warmup = max(1, steps // 30)
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))),
    )


def symbolic_training(
    model, prompts: PromptCache, symbolic: SymbolicTokens, probes: Probes, args, log: dict, count_weights: dict
) -> None:
    """Stage 0 (symbolic.py): the LLM, the location-token embedding and the symbolic tokens learn to
    answer about symbolic scenes, SYMBOLIC_SCENES_PER_STEP of them per step (train-split seeds),
    with the probes (referents.py) and the answers weighted by count_weights."""
    params = [
        *model.language_model.parameters(),
        *model.prompt_pos_emb.parameters(),
        *symbolic.parameters(),
        *probes.parameters(),
    ]
    optimiser = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = cosine_with_warmup(optimiser, args.symbolic_steps)
    rng = np.random.default_rng(args.seed + 1)
    seeds = iter(range(SPLITS['train'], SPLITS['val']))
    started = time.monotonic()
    for step in range(args.symbolic_steps):
        batch = [next(seeds) for _ in range(SYMBOLIC_SCENES_PER_STEP)]
        loss, qas, right = symbolic_loss(
            model, prompts, symbolic, batch, rng, SYMBOLIC_QUESTIONS_PER_SCENE, probes, PROBE_WEIGHT, count_weights
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        log['symbolic'].append(
            {
                'step': step,
                'loss': round(float(loss.detach()), 5),
                'right': mean_by_family(right.tolist(), qas),
                'probe': {k: round(v, 3) for k, v in probes.accuracy.items()},
            }
        )
        if step % 50 == 0:
            print(
                f'symbolic step {step:5d}  {time.monotonic() - started:.0f} s  '
                + progress(log['symbolic'][-50:], 'right', 'right'),
                flush=True,
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='adatoken3d-train-tiny', description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=pathlib.Path, default=SHIPPED_MODEL)
    parser.add_argument('--train-scenes', type=int, default=1000)
    parser.add_argument('--val-scenes', type=int, default=40)
    parser.add_argument('--steps', type=int, default=2500)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--symbolic-steps', type=int, default=1200, help='stage 0: symbolic-scene steps')
    parser.add_argument('--vision-steps', type=int, default=18000, help='stage 1: vision alignment steps')
    parser.add_argument('--vision-lr', type=float, default=3e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--val-every', type=int, default=500)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: one per core)')
    parser.add_argument(
        '--rooms',
        choices=('standard', 'mixed'),
        default='standard',
        help='training and validation rooms: standard (the shipped model) or mixed (dataset.TRAINING_MIX: '
        'standard, randomised and cluttered rooms; the held-out settings of the shifted split are never drawn)',
    )
    parser.add_argument(
        '--max-questions',
        type=int,
        default=0,
        help='stage 2: at most this many questions a scene a step, drawn at random (0: all; a cluttered room '
        'asks about 150)',
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    config = front_end_config()

    print(f'rendering {args.train_scenes} training and {args.val_scenes} validation scenes ...', flush=True)
    kind = TRAINING_MIX if args.rooms == 'mixed' else None  # None: the splits' standard rooms
    train_records = render_split('train', args.train_scenes, config, kind=kind)
    val_records = render_split('val', args.val_scenes, config, kind=kind)
    render_s = time.monotonic() - started
    print(f'  {render_s:.0f} s', flush=True)

    model, tokenizer, raw = build_model(args.seed)
    model.train()
    prompts = PromptCache(model, tokenizer)
    aux = AuxHeads(LLAMA['hidden_size'], CLIP['hidden_size'])
    probes = Probes(LLAMA['hidden_size'], tokenizer)
    symbolic = SymbolicTokens(LLAMA['hidden_size'], tokenizer)
    params = sum(p.numel() for p in model.parameters())
    named = [*model.named_parameters(), *aux.named_parameters(prefix='aux'), *probes.named_parameters(prefix='probes')]
    decay = [p for n, p in named if p.ndim >= 2 and 'embed' not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and 'embed' not in n)]
    optimiser = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': 0.01}, {'params': no_decay, 'weight_decay': 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    schedule = cosine_with_warmup(optimiser, args.steps)
    rng = np.random.default_rng(args.seed)
    count_weights = questions.count_weights([record.objects for record in train_records], args.seed)
    log = {
        'args': {k: str(v) for k, v in vars(args).items()},
        'parameters': params,
        'symbolic': [],
        'vision': [],
        'train': [],
        'val': [],
        'render_s': round(render_s, 1),
        'count_weights': {f'{kind}: {answer}': round(w, 2) for (kind, answer), w in sorted(count_weights.items())},
    }
    print(f'model: {params / 1e6:.2f} M parameters; {args.steps} steps', flush=True)
    print('count weights: ' + ', '.join(f'{k} {w}' for k, w in log['count_weights'].items()), flush=True)

    train_start = time.monotonic()
    symbolic_training(model, prompts, symbolic, probes, args, log, count_weights)
    log['symbolic_s'] = round(time.monotonic() - train_start, 1)
    vision_params = [
        *model.vision_tower.parameters(),
        *model.video_pos_emb.parameters(),
        *model.mm_projector.parameters(),
        *aux.parameters(),
    ]
    vision_optimiser = torch.optim.AdamW(vision_params, lr=args.vision_lr, weight_decay=0.0)
    # Warm-up and cosine decay: at a constant rate the stage diverges when lengthened. Every view every
    # step, and long, because shape is what the vision side reads worst (model card, "Training recipe").
    vision_schedule = cosine_with_warmup(vision_optimiser, args.vision_steps)
    for step in range(args.vision_steps):
        record = train_records[int(rng.integers(len(train_records)))]
        loss = vision_step(model, aux, symbolic, record, config)
        vision_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        vision_optimiser.step()
        vision_schedule.step()
        log['vision'].append({'step': step, 'loss': round(float(loss.detach()), 5)})
        if step % 250 == 0:
            print(
                f'vision step {step:5d}  loss {np.mean([r["loss"] for r in log["vision"][-250:]]):.4f}  '
                f'{time.monotonic() - train_start:.0f} s',
                flush=True,
            )
    log['vision_s'] = round(time.monotonic() - train_start - log['symbolic_s'], 1)

    order = []
    for step in range(args.steps):
        if not order:
            order = list(rng.permutation(len(train_records)))
        record = train_records[order.pop()]
        views = rng.choice(len(record.images), size=int(rng.integers(MIN_VIEWS, len(record.images) + 1)), replace=False)
        scene = record.geometry(config, views)
        # Every question the scene answers: the prefix is shared, so each costs only its suffix, and a
        # smaller draw learns less (model card, "Ablations behind the recipe").
        qas = [qa for family in questions.candidates(record.objects, rng).values() for qa in family]
        if args.max_questions and len(qas) > args.max_questions:  # a cluttered room asks ~150
            qas = [qas[i] for i in sorted(rng.choice(len(qas), args.max_questions, replace=False))]
        loss, per_question = scene_loss(
            model, prompts, scene, qas, aux, record.objects, probes, symbolic, count_weights
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimiser.step()
        schedule.step()
        log['train'].append(
            {
                'step': step,
                'loss': round(float(loss.detach()), 5),
                'tokens': scene.num_tokens,
                'families': mean_by_family(per_question, qas),  # answer loss
                'probe': {k: round(v, 3) for k, v in probes.accuracy.items()},
            }
        )
        if step % 50 == 0:
            print(
                f'step {step:5d}  lr {schedule.get_last_lr()[0]:.2e}  {time.monotonic() - train_start:.0f} s  '
                + progress(log['train'][-50:], 'families', 'answer loss'),
                flush=True,
            )
        if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
            val = validate(model, tokenizer, val_records, step + 1)
            log['val'].append(val)
            print(
                f'  val @ {step + 1}: overall {val["overall"]:.3f}  '
                + '  '.join(f'{f} {v["accuracy"]:.2f}' for f, v in val['families'].items()),
                flush=True,
            )
    log['train_s'] = round(time.monotonic() - train_start, 1)
    log['total_s'] = round(time.monotonic() - started, 1)

    marker = {
        'kind': 'scene-llava3d-tiny',
        'seed': args.seed,
        'trained': True,
        'note': 'Trained by adatoken3d-train-tiny on synthetic room scenes (adatoken3d_lab.training): '
        'answers questions about coloured boxes, spheres and cylinders; out of that domain its '
        'answers mean little.',
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save(model, tokenizer, raw, args.out, marker)
    (args.out / 'training_log.json').write_text(json.dumps(log, indent=1) + '\n')
    plot_curves(log, args.out / 'training_curves.png')
    print(
        f'wrote {args.out} ({sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6:.1f} MB); '
        f'rendering {render_s:.0f} s, training {log["train_s"]:.0f} s',
        flush=True,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
