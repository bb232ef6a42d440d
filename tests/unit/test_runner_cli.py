"""adatoken3d-bringup as a user meets it on the command line (no ROS graph needed)."""

import pathlib
import subprocess
import sys

from adatoken3d_node import launch_args

BRINGUP = str(pathlib.Path(sys.executable).parent / 'adatoken3d-bringup')


def run(*args):
    return subprocess.run([BRINGUP, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_launch_argument_with_its_default():
    result = run('--help')
    assert result.returncode == 0
    for arg in launch_args.LAUNCH_ARGUMENTS:
        assert f'{arg.name} ' in result.stdout and f'(default {arg.default!r})' in result.stdout


def test_unknown_argument_is_refused_with_the_known_ones():
    result = run('modle_path:=/x')
    assert result.returncode == 2
    assert "unknown launch argument 'modle_path'" in result.stderr and 'model_path' in result.stderr


def test_missing_params_file_is_refused_before_starting_ros(tmp_path):
    result = run(f'params_file:={tmp_path / "nope.yaml"}')
    assert result.returncode == 2 and 'nope.yaml does not exist' in result.stderr
