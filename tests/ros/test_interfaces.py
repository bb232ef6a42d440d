"""The interface package: types, fields and field types as specified (what `ros2 interface show` would say)."""

import pytest

pytest.importorskip('adatoken3d_interfaces', reason='make test builds adatoken3d_interfaces into .venv')

from adatoken3d_interfaces.action import Ask  # noqa: E402
from adatoken3d_interfaces.msg import Answer, QueryMetrics  # noqa: E402
from adatoken3d_interfaces.srv import Query  # noqa: E402

METRICS_FIELDS = {
    'header': 'std_msgs/Header',
    'query_id': 'string',
    'latency_budget_ms': 'float',
    'deadline_met': 'boolean',
    'total_ms': 'float',
    'queue_ms': 'float',
    'scene_ms': 'float',
    'vision_ms': 'float',
    'prefill_ms': 'float',
    'decode_ms': 'float',
    'num_views': 'uint32',
    'spatial_tokens': 'uint32',
    'spatial_tokens_kept': 'uint32',
    'text_tokens': 'uint32',
    'generated_tokens': 'uint32',
    'prefill_flops_dense': 'double',
    'prefill_flops': 'double',
    'flops_reduction': 'float',
    'gating': 'string',
    'scene_stamp': 'builtin_interfaces/Time',
    'prefix_reused': 'boolean',
    'scene_age_ms': 'float',
}
REQUEST_FIELDS = {'question': 'string', 'latency_budget_ms': 'float', 'max_new_tokens': 'uint32'}
RESPONSE_FIELDS = {
    'success': 'boolean',
    'error': 'string',
    'answer': 'string',
    'metrics': 'adatoken3d_interfaces/QueryMetrics',
}


def test_query_metrics_fields_in_order():
    assert QueryMetrics.get_fields_and_field_types() == METRICS_FIELDS
    assert list(QueryMetrics.get_fields_and_field_types()) == list(METRICS_FIELDS)


def test_answer_fields():
    assert Answer.get_fields_and_field_types() == {
        'header': 'std_msgs/Header',
        'query_id': 'string',
        'question': 'string',
        'answer': 'string',
        'success': 'boolean',
        'error': 'string',
        'metrics': 'adatoken3d_interfaces/QueryMetrics',
    }


def test_query_service_fields():
    assert Query.Request.get_fields_and_field_types() == REQUEST_FIELDS
    assert Query.Response.get_fields_and_field_types() == RESPONSE_FIELDS


def test_ask_action_mirrors_the_service_and_streams_feedback():
    assert Ask.Goal.get_fields_and_field_types() == REQUEST_FIELDS
    assert Ask.Result.get_fields_and_field_types() == RESPONSE_FIELDS
    assert Ask.Feedback.get_fields_and_field_types() == {'partial_answer': 'string', 'generated_tokens': 'uint32'}


def test_types_serialise_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    metrics = QueryMetrics(
        query_id='q000001', total_ms=12.5, spatial_tokens=1600, prefill_flops=2.5e13, gating='schedule:8:0.5'
    )
    back = deserialize_message(serialize_message(Answer(answer='a red mug', metrics=metrics)), Answer)
    assert back.metrics.spatial_tokens == 1600 and back.metrics.prefill_flops == 2.5e13
    assert back.answer == 'a red mug' and back.metrics.gating == 'schedule:8:0.5'


def test_tf2_msgs_type_hash_matches_upstream():
    """Our pip-path tf2_msgs has the upstream RIHS01 hash (rosbags' Kilted typestore is built from upstream)."""
    rclpy = pytest.importorskip('rclpy')
    from rclpy.context import Context
    from rosbags.typesys import Stores, get_typestore
    from tf2_msgs.msg import TFMessage

    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('hash_check', context=context)
        node.create_publisher(TFMessage, '/adatoken3d_hash_check', 1)
        info = node.get_publishers_info_by_topic('/adatoken3d_hash_check')
        assert str(info[0].topic_type_hash) == get_typestore(Stores.ROS2_KILTED).hash_rihs01('tf2_msgs/msg/TFMessage')
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
