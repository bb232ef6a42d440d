"""Shared fixtures. DDS is forced onto loopback with a domain of this run's own before anything imports rclpy."""
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'

from adatoken3d_node.dds_env import apply_loopback_environment  # noqa: E402  (no ROS import inside)

apply_loopback_environment()


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory) -> pathlib.Path:
    """The random-weight tiny LLaVA-3D (and its tiny CLIP beside it), seeded, in this session's temp dir."""
    from adatoken3d_node.model.tiny_llava3d import create_tiny_llava3d
    root = tmp_path_factory.mktemp('models')
    create_tiny_llava3d(root / 'tiny-llava3d', root / 'tiny-llava3d-clip', seed=0)
    return root / 'tiny-llava3d'


def write_params(path: pathlib.Path, **overrides) -> pathlib.Path:
    """A parameters file: the node's defaults with some overridden (for NodeProcess params_file:=)."""
    import yaml
    from adatoken3d_node import parameters
    values = parameters.defaults()
    values.update(overrides)
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return path
