"""Shared fixtures. DDS is forced onto loopback with a domain of this run's own before anything imports rclpy.

tests/unit: pure modules, runnable without ROS (`pytest -m "not ros"`); tests/ros: ROS 2 messages,
rclpy and DDS across processes, marked `ros` here.
"""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / 'shared' / 'data'

from adatoken3d_lab.dds_env import apply_loopback_environment  # noqa: E402  (no ROS import inside)

apply_loopback_environment()

try:
    import rclpy  # noqa: F401  (after the environment above)
except ImportError:  # no ROS 2 here: tests/ros cannot even be imported; tests/unit still run
    collect_ignore_glob = ['ros/*']


def pytest_collection_modifyitems(config, items):
    ros_tests = REPO / 'tests' / 'ros'
    for item in items:
        if ros_tests in pathlib.Path(item.fspath).parents:
            item.add_marker(pytest.mark.ros)


@pytest.fixture(scope='session')
def random_model(tmp_path_factory) -> pathlib.Path:
    """The random checkpoint: a random-weight LLaVA-3D (and its CLIP beside it), seeded, in this session's temp dir."""
    from adatoken3d_lab.random_checkpoint import create_random_llava3d

    root = tmp_path_factory.mktemp('models')
    create_random_llava3d(root / 'random-llava3d', root / 'random-llava3d-clip', seed=0)
    return root / 'random-llava3d'


def write_params(path: pathlib.Path, **overrides) -> pathlib.Path:
    """A parameters file: the node's defaults with some overridden (for NodeProcess params_file:=)."""
    import yaml
    from adatoken3d_node import parameters

    values = parameters.defaults()
    values.update(overrides)
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return path


def other_value(spec, strings=None):
    """A valid value of a parameter other than its default (its type, choices and bounds kept), for tests that
    set every parameter; strings: values for the free-text ones (a path, a frame), by name."""
    default = spec.default
    if spec.choices is not None:
        return next(c for c in reversed(spec.choices) if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        return (strings or {}).get(spec.name, default + '_other')
    value = default + 1 if isinstance(default, int) else (default * 1.5 if default else 0.5)
    if spec.max_value is not None and value > spec.max_value:
        value = type(default)((default + (spec.min_value or 0)) / 2)
    return value
