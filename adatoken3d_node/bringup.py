"""`adatoken3d-bringup`: start the node exactly as `ros2 launch adatoken3d bringup.launch.py` does.

`ros2 launch` (the `launch` packages) cannot be installed from PyPI, so this
runner takes the same `name:=value` arguments with the same defaults
(launch_args.py), reads the same parameters file and starts the same node,
in this process, with the equivalent rcl arguments.

    adatoken3d-bringup model_path:=/data/llava-3d-7b color_image_topic:=/camera/color/image_raw
"""

import pathlib
import sys
from typing import List, Optional

from . import launch_args
from .names import NODE_EXECUTABLE

USAGE = 'usage: adatoken3d-bringup [name:=value ...]\n\nlaunch arguments:\n'


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ('-h', '--help', '--show-args', '-s') for arg in argv):
        print(USAGE + launch_args.describe())
        return 0
    try:
        values = launch_args.parse_cli(argv)
    except ValueError as error:
        print(f'adatoken3d-bringup: {error}\n\n{USAGE}{launch_args.describe()}', file=sys.stderr)
        return 2
    params_file = launch_args.params_file(values)
    if not pathlib.Path(params_file).is_file():
        print(f'adatoken3d-bringup: params_file {params_file} does not exist', file=sys.stderr)
        return 2
    from .node import main as node_main  # after argument checks: importing ROS and torch takes a while

    return node_main([NODE_EXECUTABLE, *launch_args.node_arguments(values), *launch_args.ros_arguments(values)])


if __name__ == '__main__':
    sys.exit(main())
