"""QoS of every entity the node and its clients create: defined here once.

Requests are queued deep on both sides: with the default service QoS (keep
last 10) a burst of queries silently overwrites the oldest requests in the DDS
history before the node can take them, so the client never gets an answer.
With a deep history every request reaches the node, which then answers or
refuses it explicitly (queue_size).
"""

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

REQUEST_DEPTH = 1000

QUERY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=REQUEST_DEPTH,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Answers and metrics are few and must not be lost: reliable, a generous history.
OUTPUT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# As tf2_ros: /tf volatile, /tf_static transient local so late joiners get the static transforms.
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(
    depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def sensor_qos(reliability: str, depth: int) -> QoSProfile:
    """REP-2003 sensor data QoS (keep last, volatile) with the reliability a parameter."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort' else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def action_qos_kwargs() -> dict:
    """Keyword arguments of ActionServer/ActionClient for deep goal/result/cancel queues."""
    return {
        'goal_service_qos_profile': QUERY_QOS,
        'result_service_qos_profile': QUERY_QOS,
        'cancel_service_qos_profile': QUERY_QOS,
    }
