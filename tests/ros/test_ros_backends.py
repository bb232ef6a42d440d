"""tf2_ros / message_filters when importable, the built-in equivalents otherwise."""

import pytest

from adatoken3d_node.perception.sync import ApproximateTimeSync
from adatoken3d_node.perception.tf_buffer import TransformBuffer, TransformError
from adatoken3d_node.ros_backends import make_tf_and_sync, ros_modules_available


def test_builtin_is_used_when_asked_or_when_ros_modules_are_missing():
    tf, sync, name = make_tf_and_sync('builtin', None, ('color', 'depth'), 0.05)
    assert name == 'builtin' and isinstance(tf, TransformBuffer) and isinstance(sync, ApproximateTimeSync)
    if not ros_modules_available():
        assert make_tf_and_sync('auto', None, ('color', 'depth'), 0.05)[2] == 'builtin'


def stamped(stamp_ns):
    from std_msgs.msg import Header

    header = Header()
    header.stamp.sec, header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    return header


def test_message_filters_adapter_pairs_like_the_builtin_one():
    pytest.importorskip('message_filters', reason='message_filters comes with a ROS 2 install, not PyPI')
    from adatoken3d_node.ros_backends import MessageFiltersSync
    from sensor_msgs.msg import Image

    sync = MessageFiltersSync(('color', 'depth'), slop_s=0.05)
    color, depth, far = (
        Image(header=stamped(10**9)),
        Image(header=stamped(10**9 + 10**7)),
        Image(header=stamped(3 * 10**9)),
    )
    assert sync.add('color', 10**9, color) == []
    assert sync.add('depth', 3 * 10**9, far) == []
    sets = sync.add('depth', 10**9 + 10**7, depth)
    assert len(sets) == 1 and sets[0]['color'] is color and sets[0]['depth'] is depth


def test_tf2_ros_adapter_looks_up_at_the_stamp_and_refuses_to_extrapolate():
    pytest.importorskip('tf2_ros', reason='tf2_ros comes with a ROS 2 install, not PyPI')
    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.context import Context
    from adatoken3d_node.ros_backends import Tf2RosBuffer

    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('tf2_adapter_check', context=context)
        buffer = Tf2RosBuffer(node)
        for stamp_ns, x in ((10**9, 0.0), (2 * 10**9, 1.0)):
            t = TransformStamped(header=stamped(stamp_ns), child_frame_id='cam')
            t.header.frame_id = 'map'
            t.transform.translation.x = x
            t.transform.rotation.w = 1.0
            buffer._buffer.set_transform(t, 'test')
        T = buffer.lookup('map', 'cam', 1_500_000_000)
        assert abs(T[0, 3] - 0.5) < 1e-9 and buffer.frames() >= {'map', 'cam'}
        with pytest.raises(TransformError):
            buffer.lookup('map', 'cam', 3 * 10**9)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
