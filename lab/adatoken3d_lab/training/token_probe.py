"""What a checkpoint's spatial tokens say about the objects they lie on: linear probes of colour and shape.

    python -m adatoken3d_lab.training.token_probe MODEL_DIR [--rooms standard|mixed]

Fits one linear head per label on the spatial token embeddings (after the projector, the LLM's input)
of the tokens on objects in training-split rooms (standard or dataset.TRAINING_MIX), then reports its
accuracy on the val, test, shifted and clutter splits. A label the heads cannot read there is one the
language model cannot read from a single token either (model card, "Rooms drawn other ways").
"""

import argparse
import sys
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from .dataset import TRAINING_MIX, SceneRecord, render_split, token_objects

PROBE_STEPS = 400
SPLIT_SCENES = {'val': 30, 'test': 30, 'shifted': 30, 'clutter': 8}


def object_tokens(model, records: Sequence[SceneRecord], config) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Spatial token embeddings on objects (K, D) and their objects' labels {'colour': (K,), 'shape': (K,)}."""
    embeddings, colour, shape = [], [], []
    with torch.no_grad():
        for record in records:
            scene = record.geometry(config)
            on = token_objects(record.objects, scene.tokens.centres.numpy())  # (M,)
            embeddings.append(model.spatial_embeddings(scene).float()[torch.from_numpy(on >= 0)])
            colour += [record.objects[i].colour_index for i in on[on >= 0]]
            shape += [record.objects[i].shape_index for i in on[on >= 0]]
    return torch.cat(embeddings), {'colour': torch.tensor(colour), 'shape': torch.tensor(shape)}


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = PROBE_STEPS, seed: int = 0):
    """A linear head on standardised x (N, D) -> y (N,): (predict(x) -> (N,) classes)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], classes)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head((x - mean) / std), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return lambda z: head((z - mean) / std).argmax(-1).detach()


def main(argv=None) -> int:
    from adatoken3d_node.model.loader import load_llava3d
    from .train import front_end_config

    parser = argparse.ArgumentParser(prog='token_probe', description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='checkpoint directory')
    parser.add_argument('--rooms', choices=('standard', 'mixed'), default='standard', help='rooms the probes fit on')
    parser.add_argument('--train-scenes', type=int, default=150)
    args = parser.parse_args(argv)
    model, _, _ = load_llava3d(args.model, None, 'cpu', 'float32')
    config = front_end_config()
    kind = TRAINING_MIX if args.rooms == 'mixed' else None
    x, labels = object_tokens(model, render_split('train', args.train_scenes, config, kind=kind), config)
    splits = {
        split: object_tokens(model, render_split(split, count, config, kind=kind if split == 'val' else None), config)
        for split, count in SPLIT_SCENES.items()
    }
    for name, y in labels.items():
        predict = fit_linear_probe(x, y, int(y.max()) + 1)
        right = {split: float((predict(sx) == sy[name]).float().mean()) for split, (sx, sy) in splits.items()}
        chance = max(np.bincount(y.numpy()) / len(y))
        print(
            f'{name}: fit {float((predict(x) == y).float().mean()):.1%} ({len(y)} tokens, commonest class '
            f'{chance:.1%}); ' + ', '.join(f'{split} {v:.1%}' for split, v in right.items()),
            flush=True,
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
