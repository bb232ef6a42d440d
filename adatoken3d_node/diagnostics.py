"""What the node reports on /diagnostics, as text key/value pairs. ROS-free.

One status, "query engine": lifecycle state, model, gating, the query queue and latencies, each
sensor input (rate, count, matched publishers), the views kept and skipped and why, the scene
memory, the latency-budget cost model, the scene prefix cache and memory use. outgoing.diagnostic_array wraps it in a
DiagnosticArray.
"""

import resource
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

OK, WARN = 'OK', 'WARN'  # diagnostic_msgs/DiagnosticStatus levels, by name


@dataclass
class EngineStatus:
    level: str  # OK | WARN
    message: str
    hardware_id: str  # the torch device the model runs on
    values: Dict[str, str]


def scene_values(scene) -> Dict[str, str]:
    """The scene memory's size, from a perception.frontend.SceneGeometry."""
    return {
        'scene.views': str(scene.num_views),
        'scene.spatial_tokens': str(scene.num_tokens),
        'scene.voxels_before_cap': str(scene.tokens.num_voxels_before_cap),
        'scene.dropped_patches': str(scene.dropped_patches),
    }


def engine_status(
    engine,
    sensors,
    publisher_counts: Mapping[str, int],
    tf_sync_backend: str,
    scene: Mapping[str, str],
    latency,
    queue_size: int,
) -> EngineStatus:
    """engine: a pipeline.QueryEngine or None (unconfigured); sensors: a sensors.SensorPipeline or None
    (inactive); publisher_counts: DDS publishers matched per input; scene: scene_values of the last
    scene published; latency: a stats.LatencyStats."""
    answerer = engine.answerer if engine is not None else None
    accepting = engine is not None and engine.worker.is_open
    values = {
        'state': 'active' if accepting else 'inactive',
        'model_path': engine.model_path if engine else '',
        'model_untrained': str(answerer.is_untrained).lower() if answerer else '',
        'gating': engine.gating if engine else '',
        'gating_note': engine.gating_note if engine else '',
        'queue_depth': str(engine.worker.depth if engine else 0),
        'queue_size': str(queue_size),
        'queries_answered': str(latency.answered),
        'queries_failed': str(latency.failed),
        'views_in_memory': str(len(engine.frontend.memory)) if engine else '0',
    }
    if sensors is not None:
        for key, meter in sensors.rates.items():
            values[f'rate_hz.{key}'] = f'{meter.rate_hz():.2f}'
            values[f'messages.{key}'] = str(meter.count)
        # Matched at the DDS level from this side: a sensor publishing while this is 0 is not heard.
        values.update({f'publishers.{key}': str(count) for key, count in publisher_counts.items()})
        values.update({f'views.{k}': str(v) for k, v in sensors.counters.items()})
        values.update({f'problems.{k}': str(v) for k, v in sensors.problems.counts.items()})
        values.update({f'sync_dropped.{k}': str(v) for k, v in sensors.sync.dropped.items()})
        values['tf_frames'] = ' '.join(sorted(sensors.tf.frames()))
        values['tf_sync_backend'] = tf_sync_backend
    values.update(scene)
    if engine is not None and engine.pipeline.budget is not None:
        values.update(budget_values(engine.pipeline, engine.limits.max_new_tokens))
    if engine is not None:
        values.update(engine.pipeline.cache.values())
    values.update({k: f'{v:.3f}' for k, v in latency.summary().items()})
    values.update(memory_values(answerer.device if answerer else None))
    if answerer is not None and answerer.is_untrained:
        return EngineStatus(
            WARN, 'untrained model (random weights): answers are not meaningful', str(answerer.device), values
        )
    return EngineStatus(OK, 'ready' if accepting else 'inactive', str(answerer.device) if answerer else '', values)


def budget_values(pipeline, max_new_tokens: int) -> Dict[str, str]:
    """The latency-budget cost model: its prediction errors, fitted coefficients, and the answer length it
    plans for a request of max_new_tokens (the node's default)."""
    cost = pipeline.budget.cost
    error, unmodelled, late = cost.mean_relative_error(), cost.unmodelled_ms(), cost.late_ms()
    keep = pipeline.last_keep_ratio
    return {
        'budget.prediction_error': f'{error:.3f}' if error is not None else '',
        'budget.late_ms_p98': f'{late:.2f}' if late is not None else '',
        'budget.unmodelled_ms': f'{unmodelled:.2f}' if unmodelled is not None else '',
        'budget.last_keep_ratio': f'{keep:.3f}' if keep is not None else '',
        'budget.prefill_ms_per_linear_gflop': f'{cost.prefill_coef[0]:.3f}',
        'budget.prefill_ms_per_attention_gflop': f'{cost.prefill_coef[1]:.3f}',
        'budget.decode_ms_per_token': f'{cost.decode_coef[0]:.3f}',
        'budget.planned_new_tokens': str(cost.planned_new_tokens(max_new_tokens)),
        **{f'budget.error_ms.{term}': f'{e:.2f}' if e is not None else '' for term, e in cost.term_errors_ms().items()},
    }


def memory_values(device: Optional[object]) -> Dict[str, str]:
    """GPU memory on CUDA, the process's peak resident memory otherwise."""
    if device is not None and device.type == 'cuda':
        import torch

        return {
            'gpu_memory_allocated_mb': f'{torch.cuda.memory_allocated(device) / 2**20:.1f}',
            'gpu_memory_reserved_mb': f'{torch.cuda.memory_reserved(device) / 2**20:.1f}',
        }
    return {'process_max_rss_mb': f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}'}
