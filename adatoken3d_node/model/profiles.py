"""Calibrated gating profiles: where `gating: auto` finds the schedule of the loaded checkpoint.

A profile is JSON written by adatoken3d-calibrate (the lab's calibrate.py); the node reads its `auto`
point (the policy `gating: auto` runs; older profiles: `schedule`) and its `frontier`, the points the
budget controller picks from. It is looked up next to the checkpoint, then among the profiles the package ships,
which are named by the id of the checkpoint's weights. A checkpoint with no profile (LLaVA-3D-7B until
someone calibrates it) runs `auto` densely, pruning only when a latency budget needs it. ROS-free.
"""

import hashlib
import json
import pathlib
from typing import List

from ..share import share_candidates
from .gating_policy import scores_tokens

PROFILE_NAME = 'adatoken3d_gating.json'  # next to a checkpoint
SHIPPED_PROFILES = pathlib.Path('models') / 'gating_profiles'  # in the package share (and source tree)


def checkpoint_id(path) -> str:
    """A short id of a checkpoint's weights, independent of where it is stored.

    Hashes each safetensors shard's header (names, dtypes, shapes, offsets), its size and its first
    MiB of data: fast on a 14 GB checkpoint, and different for different weights of the same shape.
    """
    digest = hashlib.sha256()
    for shard in sorted(pathlib.Path(path).glob('*.safetensors')):
        with open(shard, 'rb') as f:
            header_len = int.from_bytes(f.read(8), 'little')
            digest.update(f.read(header_len))
            digest.update(f.read(1 << 20))
        digest.update(str(shard.stat().st_size).encode())
    return digest.hexdigest()[:16]


def profile_candidates(model_path) -> List[pathlib.Path]:
    """Where `gating: auto` looks for the profile of the checkpoint at model_path, in order."""
    name = f'{checkpoint_id(model_path)}.json'
    return [pathlib.Path(model_path) / PROFILE_NAME, *share_candidates(SHIPPED_PROFILES / name)]


def load_profile(model_path) -> dict | None:
    """The calibrated profile of the checkpoint at model_path (profile_candidates, first found), or None."""
    for place in profile_candidates(model_path):
        if place.is_file():
            return json.loads(place.read_text())
    return None


def auto_gating(profile: dict) -> str:
    """What `gating: auto` runs under this profile."""
    return profile['auto']['gating'] if 'auto' in profile else profile['schedule']


def frontier_gatings(profile: dict | None) -> List[str]:
    """The profile's frontier policies, least pruned first ([] without a profile or a frontier)."""
    points = (profile or {}).get('frontier', [])
    return [p['gating'] for p in sorted(points, key=lambda p: p['flops_reduction'])]


UNCALIBRATED_AUTO = 'none'  # what `gating: auto` runs for a checkpoint without a profile


def uncalibrated_note(model_path) -> str:
    """Why `gating: auto` runs uncalibrated for the checkpoint at model_path, and how to calibrate it."""
    places = profile_candidates(model_path)
    return (
        f'gating auto: no calibrated profile for the checkpoint at {model_path} (id {checkpoint_id(model_path)}; '
        f'looked in {", ".join(str(p) for p in places)}): answering densely, and under a latency budget '
        f'pruning with the uncalibrated AdaToken-3D schedule. Run adatoken3d-calibrate {model_path} '
        '--dataset KIND:DIR to calibrate it'
    )


def is_auto(text: str) -> bool:
    """Whether a gating text asks for the calibrated policy (`auto`, `auto~question`)."""
    return text.partition('~')[0].strip() == 'auto'


def gating_under(text: str, profile: dict | None) -> str:
    """What `gating: auto` (text, any raters) runs under a checkpoint's loaded profile (None: it has none):
    the calibrated policy, `auto~question` the same scored by the question's tokens (gating.py), or
    UNCALIBRATED_AUTO without a profile (uncalibrated_note says so): a checkpoint nobody calibrated is not
    pruned on a guess."""
    if profile is None:
        return UNCALIBRATED_AUTO
    _, tilde, raters = text.partition('~')
    gating = auto_gating(profile)
    # auto~question: the question's raters wherever the calibrated policy scores tokens at all
    return gating.partition('~')[0] + tilde + raters if tilde and scores_tokens(gating) else gating


def resolve_gating(text: str, model_path) -> str:
    """The gating text to run for the checkpoint at model_path: anything but `auto` as written, `auto` as
    gating_under its profile."""
    return gating_under(text, load_profile(model_path)) if is_auto(text) else text
