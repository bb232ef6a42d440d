"""Shared fixtures. DDS is forced onto loopback with a domain of this run's own before anything imports rclpy."""
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'

from adatoken3d_node.dds_env import apply_loopback_environment  # noqa: E402  (no ROS import inside)

apply_loopback_environment()


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory) -> pathlib.Path:
    """The random-weight tiny checkpoint, created (seeded) in this session's temp dir."""
    from adatoken3d_node.model.tiny import create_tiny_checkpoint
    return create_tiny_checkpoint(tmp_path_factory.mktemp('models') / 'tiny-random', seed=0)
