"""The environment every test, demo and benchmark process runs in: DDS on loopback, a domain of its own.

Fast DDS reads FASTDDS_DEFAULT_PROFILES_FILE and ROS_DOMAIN_ID when a ROS
context starts, so this must be applied before rclpy.init() (and is inherited
by the node processes started from here).
"""

import os
import pathlib
import random
from typing import MutableMapping, Optional

from adatoken3d_node.share import shipped

PROFILE_NAME = 'fastdds_loopback.xml'


def loopback_profile() -> str:
    """The project's loopback-only Fast DDS profile: installed share dir, else the source tree."""
    return str(shipped(pathlib.Path('config') / PROFILE_NAME))


def apply_loopback_environment(
    env: Optional[MutableMapping[str, str]] = None, domain_id: Optional[int] = None
) -> MutableMapping[str, str]:
    """Force the loopback profile and Fast DDS; keep a ROS_DOMAIN_ID already chosen (e.g. by make), else pick one."""
    env = os.environ if env is None else env
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = loopback_profile()
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    elif not env.get('ROS_DOMAIN_ID'):
        env['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))
    return env
