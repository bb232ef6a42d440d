"""The robot path: `colcon build` of ros2_ws, and the node executable it installs answering over DDS.

On a robot the underlay is /opt/ros/<distro>; here it is the venv of ROS 2 wheels
(which is why tf2_msgs comes from the venv). `ros2 launch` itself cannot be
installed here; the launch file is checked in test_package_facts.py.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from adatoken3d_node.client import NodeProcess, QueryClient

REPO = pathlib.Path(__file__).resolve().parents[2]
COLCON = shutil.which('colcon', path=str(pathlib.Path(sys.executable).parent))


@pytest.fixture(scope='module')
def colcon_install(tmp_path_factory):
    if COLCON is None:
        pytest.skip('colcon is not installed in this environment (make test installs it)')
    base = tmp_path_factory.mktemp('colcon')
    env = dict(os.environ, PATH=f'{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    result = subprocess.run(
        [
            COLCON,
            '--log-base',
            str(base / 'log'),
            'build',
            '--base-paths',
            str(REPO / 'ros2_ws' / 'src'),
            '--build-base',
            str(base / 'build'),
            '--install-base',
            str(base / 'install'),
            '--cmake-args',
            '-DBUILD_TESTING=OFF',
            f'-DPython3_EXECUTABLE={sys.executable}',
        ],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Summary: 3 packages finished' in result.stdout
    return base / 'install'


def test_colcon_installs_every_package_where_ros2_expects_it(colcon_install):
    assert (colcon_install / 'adatoken3d' / 'lib' / 'adatoken3d' / 'adatoken3d_node').is_file()
    share = colcon_install / 'adatoken3d' / 'share' / 'adatoken3d'
    for relative in ('package.xml', 'launch/bringup.launch.py', 'config/adatoken3d.yaml'):
        assert (share / relative).is_file(), relative
    assert (
        colcon_install / 'adatoken3d' / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'adatoken3d'
    ).is_file()
    assert (
        colcon_install / 'adatoken3d_interfaces' / 'share' / 'adatoken3d_interfaces' / 'msg' / 'QueryMetrics.msg'
    ).is_file()
    # the lab is a package of its own: its tools beside it, nothing of it in the runtime's install
    assert (colcon_install / 'adatoken3d_lab' / 'lib' / 'adatoken3d_lab' / 'adatoken3d-demo').is_file()
    assert not list((colcon_install / 'adatoken3d').rglob('adatoken3d_lab'))


def test_the_colcon_installed_node_answers_a_query(colcon_install, random_model, tmp_path):
    node_exe = colcon_install / 'adatoken3d' / 'lib' / 'adatoken3d' / 'adatoken3d_node'
    script = (
        f'cd {tmp_path} && source {colcon_install / "setup.bash"} && python -c "import adatoken3d_node; '
        f'print(adatoken3d_node.__file__)" && exec {node_exe} --ros-args -r __ns:=/colcon '
        f'-p model_path:={random_model} -p require_scene:=false'
    )
    log = tmp_path / 'colcon_node.log'
    env = dict(os.environ, PATH=f'{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    process = NodeProcess(log_path=str(log), env=env)
    process.command = ['bash', '-c', script]
    with process, QueryClient(namespace='colcon', name='colcon_client') as client:
        client.wait_for_node(timeout=120)
        response = client.query('Which workspace am I from?', max_new_tokens=3)
        assert response.success, response.error
        assert str(colcon_install) in process.log().splitlines()[0]  # the colcon install, not the venv copy
