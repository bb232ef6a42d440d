"""ros2 launch adatoken3d bringup.launch.py [name:=value ...]

Starts the adatoken3d lifecycle node (configured and activated unless
autostart:=false). The arguments, their defaults and how they become
parameters and remaps are defined once in adatoken3d_node/launch_args.py and
shared with the `adatoken3d-bringup` runner; list them with
`ros2 launch adatoken3d bringup.launch.py --show-args`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from adatoken3d_node import launch_args
from adatoken3d_node.names import NODE_EXECUTABLE, NODE_NAME, PACKAGE


def start_node(context):
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in launch_args.LAUNCH_ARGUMENTS}
    return [
        Node(
            package=PACKAGE,
            executable=NODE_EXECUTABLE,
            name=NODE_NAME,
            namespace=values['namespace'],
            parameters=[launch_args.params_file(values), launch_args.parameter_overrides(values)],
            remappings=launch_args.remappings(values),
            arguments=launch_args.node_arguments(values),
            ros_arguments=['--log-level', values['log_level']],
            output='screen',
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
            for arg in launch_args.LAUNCH_ARGUMENTS
        ]
        + [OpaqueFunction(function=start_node)]
    )
