"""Every parameter of the adatoken3d node: name, default, type, meaning. Defined once here.

The node declares exactly these (plus ROS's own `use_sim_time`);
config/adatoken3d.yaml holds exactly these defaults and the README's table lists
exactly these rows (both checked by tests/unit/test_package_facts.py). Print the
README table with `python -m adatoken3d_node.parameters`.
"""

from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any  # its Python type is the parameter's type
    description: str
    choices: Optional[Sequence[str]] = None
    min_value: Optional[float] = None
    max_value: Optional[float] = None

    def validate(self, value: Any) -> Optional[str]:
        """None when `value` is acceptable, otherwise a reason a user can act on."""
        if self.choices is not None and value not in self.choices:
            return f'{self.name}={value!r} is not one of {list(self.choices)}'
        if self.min_value is not None and value < self.min_value:
            return f'{self.name}={value!r} is below the minimum {self.min_value}'
        if self.max_value is not None and value > self.max_value:
            return f'{self.name}={value!r} is above the maximum {self.max_value}'
        return None


RELIABILITY_CHOICES = ('best_effort', 'reliable')

PARAMETERS = (
    ParameterSpec('fixed_frame', 'map', 'Frame in which views are fused; frame_id of answers and metrics.'),
    ParameterSpec(
        'model_path',
        '',
        'LLaVA-3D checkpoint directory (config.json, *.safetensors, tokenizer files). Empty: the small '
        'scene LLaVA-3D shipped in models/scene-llava3d-tiny, trained on synthetic rooms of coloured '
        'boxes, spheres and cylinders (it knows nothing else).',
    ),
    ParameterSpec(
        'vision_tower_path',
        '',
        "Local CLIP directory (LLaVA-3D's checkpoint does not hold the CLIP weights). Empty: the "
        "checkpoint's mm_vision_tower, which must then be a local directory.",
    ),
    ParameterSpec('device', 'auto', 'Where the model runs: auto (cuda when available), cpu, cuda, cuda:N.'),
    ParameterSpec(
        'dtype',
        'auto',
        'Model dtype: auto (float32 on cpu, bfloat16 on cuda), float32, float16, bfloat16.',
        choices=('auto', 'float32', 'float16', 'bfloat16'),
    ),
    ParameterSpec(
        'allow_pickle',
        False,
        'Also load pickle (.bin) weights. Off: only safetensors are read; never enable it for files you do not trust.',
    ),
    ParameterSpec(
        'gating',
        'auto',
        'Spatial-token gating: none (dense) | auto (the calibrated profile of the loaded checkpoint; '
        'without one, dense, and the AdaToken-3D schedule when a budget needs pruning) | '
        'schedule:L:r,... (keep r of the spatial tokens from layer L on) | mass:p[@L,...] (keep the '
        'fewest holding p of the attention) | fastv:K:r | random:L:r,...; a scored one (auto, schedule, '
        'mass, fastv) followed by ~question is scored by the attention of the question\'s tokens, not '
        'only the last token\'s. Before the language model: kcentre:r (a 3D + feature cover) | fastv:0:r '
        '(layer-0 scores) | random:0:r | voxel:SIZE (coarser voxels), [merge] to average each dropped '
        'token into its nearest kept one, [near=R] to keep the tokens within R m of a point the question '
        'names first, + and an in-LM policy after it',
    ),
    ParameterSpec(
        'latency_budget_ms',
        1000.0,
        'Default per-query latency budget in ms, accept to answer; 0 = no budget. With a budget the node '
        'chooses the pruning per query (overriding gating): the dense answer (or the cached scene '
        'prefix) when it is predicted to fit, else the least pruned policy predicted to fit (with gating '
        'auto, from the calibrated frontier); deadline_met is measured. 1000 ms binds for LLaVA-3D-7B '
        'on a robot GPU (docs/gating.md#the-default-budget).',
        min_value=0.0,
    ),
    ParameterSpec(
        'budget_min_keep_ratio',
        0.05,
        'With a latency budget, never keep fewer than this share of the spatial tokens (protects '
        'answer quality); a budget not reachable even then is answered late and reported.',
        min_value=0.001,
        max_value=1.0,
    ),
    ParameterSpec('max_new_tokens', 32, 'Default number of tokens generated per answer.', min_value=1),
    ParameterSpec(
        'temperature', 0.0, 'Decoding: 0 = greedy; > 0 samples (reproducibly, seeded per query number).', min_value=0.0
    ),
    ParameterSpec(
        'top_p',
        1.0,
        'Nucleus for sampled decoding: sample among the tokens holding top_p of the probability.',
        min_value=1e-6,
        max_value=1.0,
    ),
    ParameterSpec('max_new_tokens_limit', 512, 'Largest max_new_tokens a request may ask for.', min_value=1),
    ParameterSpec(
        'queue_size',
        10,
        'Queries waiting behind the one being answered; more are refused with a reason.',
        min_value=1,
        max_value=1000,
    ),
    ParameterSpec(
        'prefix_cache',
        True,
        'Keep the key/value cache of the scene part of the prompt (system prompt and spatial tokens) per '
        'scene snapshot: a question about an unchanged scene prefills only its own tokens. Used when gating '
        'does not depend on the question (none: answers exactly as dense; or a kcentre, random or voxel '
        'selection) or with a default latency_budget_ms (which takes it when it fits); a question-guided '
        'gating without a budget runs uncached.',
    ),
    ParameterSpec(
        'prefix_refresh',
        True,
        'While no question waits, prefill the prefix of a changed scene in the background; a question '
        'that would be answered sooner without it does not wait for it (the refresh is abandoned).',
    ),
    ParameterSpec(
        'prefix_refresh_min_interval_ms', 200.0, 'Least time between two background refreshes.', min_value=0.0
    ),
    ParameterSpec(
        'max_scene_age_ms',
        0.0,
        'How long after the scene memory changed a question may still be answered on the cached prefix '
        'of the older scene; 0 = always on the newest views.',
        min_value=0.0,
    ),
    ParameterSpec(
        'max_batch_size',
        16,
        'Questions waiting together are answered as one batch on the cached scene prefix (batched '
        'prefill and decoding, each stopping, streaming and cancelled on its own); 1 = one at a time.',
        min_value=1,
        max_value=256,
    ),
    ParameterSpec('max_question_chars', 2000, 'Longer questions are refused with a reason.', min_value=1),
    ParameterSpec(
        'require_scene',
        True,
        'Refuse (with a reason) queries that arrive before any view is in the scene memory; false: '
        'answer them from the question alone.',
    ),
    ParameterSpec(
        'max_point_distance_m',
        1.0,
        'A question naming a point [x, y, z] farther than this from every spatial token is refused '
        '(the point is unknown to the scene).',
        min_value=0.0,
    ),
    ParameterSpec(
        'warmup',
        True,
        'At configure, run one short answer (so the first query is not slow) and '
        'measure the cost model for latency budgets (a short sweep over prompt lengths).',
    ),
    ParameterSpec(
        'depth_source',
        'depth',
        'Where per-pixel depth comes from: depth (depth image + its camera_info) or points '
        '(PointCloud2 projected into the colour camera, the LiDAR + camera case).',
        choices=('depth', 'points'),
    ),
    ParameterSpec(
        'depth_scale',
        0.0,
        'Metres per depth unit, overriding the encoding (16UC1 = mm, 32FC1 = m); 0 = by encoding.',
        min_value=0.0,
    ),
    ParameterSpec(
        'sync_slop_s',
        0.05,
        'Largest stamp difference between colour, depth and camera_info of one view.',
        min_value=0.0,
    ),
    ParameterSpec(
        'tf_timeout_s', 0.2, 'How long a view waits for TF at its stamp before it is skipped (logged).', min_value=0.0
    ),
    ParameterSpec(
        'tf_sync_backend',
        'auto',
        'auto: tf2_ros and message_filters when importable (a ROS install), else the built-in '
        'equivalents; builtin: always the built-in ones.',
        choices=('auto', 'builtin'),
    ),
    ParameterSpec('max_views', 20, 'Views kept in the scene memory (LLaVA-3D uses 20).', min_value=1),
    ParameterSpec(
        'keyframe_min_translation_m', 0.25, 'A new view is kept when the camera moved this far ...', min_value=0.0
    ),
    ParameterSpec(
        'keyframe_min_rotation_deg', 15.0, '... or turned this much since the last kept view ...', min_value=0.0
    ),
    ParameterSpec(
        'keyframe_max_interval_s',
        10.0,
        '... or this much time passed (a still robot refreshes its memory).',
        min_value=0.0,
    ),
    ParameterSpec(
        'patch_xyz',
        'auto',
        "3D position of a patch: nearest (LLaVA-3D: its top-left pixel), centre (its centre pixel), "
        "median (of its valid pixels), or auto: what the checkpoint was trained with (config.json "
        "adatoken3d_patch_xyz; nearest when it does not say).",
        choices=('auto', 'nearest', 'centre', 'median'),
    ),
    ParameterSpec(
        'voxel_size', 0.2, 'Edge of the voxels that pool patches into spatial tokens, metres.', min_value=0.01
    ),
    ParameterSpec(
        'max_spatial_tokens',
        2560,
        'Cap on spatial tokens; above it a deterministic farthest-point subset keeps coverage.',
        min_value=1,
    ),
    ParameterSpec('publish_scene', True, 'Publish ~/scene_points and ~/scene_tokens when the memory changes.'),
    ParameterSpec(
        'sensor_qos_reliability',
        'best_effort',
        'Reliability of the sensor subscriptions (REP-2003 sensor data QoS is best_effort).',
        choices=RELIABILITY_CHOICES,
    ),
    ParameterSpec(
        'sensor_qos_depth',
        5,
        'History depth of the sensor subscriptions (keep last); with reliable QoS also how many synchronised '
        'sets may wait for the perception thread (best effort: 4, the oldest dropped when it falls behind).',
        min_value=1,
    ),
    ParameterSpec('diagnostics_period_s', 1.0, 'Period of the /diagnostics status.', min_value=0.05),
)

BY_NAME = {spec.name: spec for spec in PARAMETERS}


def defaults() -> dict:
    return {spec.name: spec.default for spec in PARAMETERS}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ('true', 'false'):
        raise ValueError(f'expected true or false, not {text!r}')
    return lowered == 'true'


def coerce(name: str, text: str) -> Any:
    """Parse a command-line string into the type of parameter `name` (for name:=value arguments)."""
    kind = type(BY_NAME[name].default)
    try:
        return parse_bool(text) if kind is bool else kind(text)
    except ValueError as error:
        raise ValueError(
            f'{name}: {error}' if kind is bool else f'{name} takes a {kind.__name__}, not {text!r}'
        ) from None


def markdown_table() -> str:
    rows = ['| parameter | default | meaning |', '| --- | --- | --- |']
    for spec in PARAMETERS:
        default = repr(spec.default) if isinstance(spec.default, str) else str(spec.default).lower()
        rows.append(f'| `{spec.name}` | `{default}` | {spec.description} |')
    return '\n'.join(rows)


if __name__ == '__main__':
    print(markdown_table())
