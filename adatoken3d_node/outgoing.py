"""numpy and query reports -> the messages the node publishes (the inverse of perception/messages.py).

to_stamp(ns)                     builtin_interfaces/Time
structured_cloud(header, arr)    PointCloud2 whose fields are a numpy structured array's
scene_clouds(scene, frame_id)    ~/scene_points (patch centres, view index), ~/scene_tokens (token
                                 centres, patch count)
metrics_msg / answer_msg         QueryMetrics and Answer of an answered or refused query
diagnostic_array(...)            /diagnostics from diagnostics.EngineStatus
"""

from typing import Tuple

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from adatoken3d_interfaces.msg import Answer, QueryMetrics

from .diagnostics import WARN, EngineStatus
from .perception.messages import POINT_FIELD_TYPES
from .queries import QueryOutcome, QueryReport

NUMPY_TO_POINT_FIELD = {np.dtype('<' + kind): datatype for datatype, kind in POINT_FIELD_TYPES.items()}
METRICS_FIELDS = (
    'query_id',
    'latency_budget_ms',
    'deadline_met',
    'total_ms',
    'queue_ms',
    'scene_ms',
    'vision_ms',
    'prefill_ms',
    'decode_ms',
    'num_views',
    'spatial_tokens',
    'spatial_tokens_kept',
    'text_tokens',
    'generated_tokens',
    'prefill_flops_dense',
    'prefill_flops',
    'flops_reduction',
    'gating',
    'prefix_reused',
    'scene_age_ms',
)


def to_stamp(stamp_ns: int) -> Time:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def structured_cloud(header: Header, points: np.ndarray) -> PointCloud2:
    """An unorganised PointCloud2 whose fields are the (little-endian) fields of a numpy structured array."""
    fields = [
        PointField(
            name=name,
            offset=points.dtype.fields[name][1],
            datatype=NUMPY_TO_POINT_FIELD[points.dtype.fields[name][0]],
            count=1,
        )
        for name in points.dtype.names
    ]
    return PointCloud2(
        header=header,
        height=1,
        width=len(points),
        fields=fields,
        is_bigendian=False,
        point_step=points.dtype.itemsize,
        row_step=points.dtype.itemsize * len(points),
        data=points.tobytes(),
        is_dense=True,
    )


def scene_clouds(scene, frame_id: str) -> Tuple[PointCloud2, PointCloud2]:
    """(patch centres with the index of their view, token centres with their patch count) of a
    perception.frontend.SceneGeometry, stamped with its newest view."""
    header = Header(stamp=to_stamp(scene.newest_stamp_ns), frame_id=frame_id)
    views = np.broadcast_to(np.arange(scene.num_views, dtype=np.uint16)[:, None], scene.patch_valid.shape)
    points = np.zeros(int(scene.patch_valid.sum()), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('view', '<u2')])
    xyz = scene.patch_xyz[scene.patch_valid]
    points['x'], points['y'], points['z'], points['view'] = xyz[:, 0], xyz[:, 1], xyz[:, 2], views[scene.patch_valid]
    centres = scene.tokens.centres.numpy()
    tokens = np.zeros(scene.num_tokens, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('count', '<u4')])
    tokens['x'], tokens['y'], tokens['z'] = centres[:, 0], centres[:, 1], centres[:, 2]
    tokens['count'] = scene.tokens.counts.numpy()
    return structured_cloud(header, points), structured_cloud(header, tokens)


def metrics_msg(report: QueryReport, stamp: Time, frame_id: str) -> QueryMetrics:
    msg = QueryMetrics()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    for name in METRICS_FIELDS:
        setattr(msg, name, getattr(report, name))
    msg.scene_stamp = to_stamp(report.scene_stamp_ns)
    return msg


def answer_msg(outcome: QueryOutcome, question: str, metrics: QueryMetrics) -> Answer:
    return Answer(
        header=metrics.header,
        query_id=outcome.report.query_id,
        question=question,
        answer=outcome.answer,
        success=outcome.success,
        error=outcome.error,
        metrics=metrics,
    )


def diagnostic_array(name: str, status: EngineStatus, stamp: Time) -> DiagnosticArray:
    level = DiagnosticStatus.WARN if status.level == WARN else DiagnosticStatus.OK
    message = DiagnosticStatus(
        name=name,
        hardware_id=status.hardware_id,
        level=level,
        message=status.message,
        values=[KeyValue(key=k, value=v) for k, v in status.values.items()],
    )
    array = DiagnosticArray(status=[message])
    array.header.stamp = stamp
    return array
