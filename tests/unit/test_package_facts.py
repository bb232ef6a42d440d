"""Facts defined once stay the same everywhere: parameters, YAML, README, launch arguments, package.xml."""

import pathlib
import py_compile
import xml.etree.ElementTree as ET

import pytest
import yaml

from adatoken3d_node import launch_args, names, parameters

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_params_yaml_holds_exactly_the_declared_defaults():
    loaded = yaml.safe_load((REPO / 'config' / 'adatoken3d.yaml').read_text())
    assert list(loaded) == ['/**']
    assert loaded['/**']['ros__parameters'] == parameters.defaults()
    installed = pathlib.Path(launch_args.default_params_file())
    assert installed.is_file() and yaml.safe_load(installed.read_text()) == loaded


def test_readme_parameter_table_lists_every_parameter():
    readme = (REPO / 'README.md').read_text()
    for row in parameters.markdown_table().splitlines():
        assert row in readme, f'README is missing the row: {row}'


def test_readme_lists_every_launch_argument_topic_and_interface():
    readme = (REPO / 'README.md').read_text()
    for row in launch_args.markdown_table().splitlines():
        assert row in readme, f'README is missing the row: {row}'
    for topic in (
        *names.SENSOR_TOPICS.values(),
        names.QUERY_SERVICE,
        names.ASK_ACTION,
        names.ANSWER_TOPIC,
        names.SCENE_POINTS_TOPIC,
        names.SCENE_TOKENS_TOPIC,
        names.METRICS_TOPIC,
        names.DIAGNOSTICS_TOPIC,
        names.TF_TOPIC,
        names.TF_STATIC_TOPIC,
    ):
        assert f'`{topic}`' in readme, topic


@pytest.mark.parametrize(
    'name, text, value',
    [
        ('latency_budget_ms', '150', 150.0),
        ('max_new_tokens', '7', 7),
        ('warmup', 'False', False),
        ('allow_pickle', 'true', True),
        ('model_path', '/data/m', '/data/m'),
    ],
)
def test_command_line_values_take_the_parameter_type(name, text, value):
    parsed = parameters.coerce(name, text)
    assert parsed == value and type(parsed) is type(parameters.BY_NAME[name].default)


def test_bad_values_are_refused_with_the_parameter_named():
    with pytest.raises(ValueError, match='warmup'):
        parameters.coerce('warmup', 'yes')
    with pytest.raises(ValueError, match='max_new_tokens takes a int'):
        parameters.coerce('max_new_tokens', 'many')
    assert 'not one of' in parameters.BY_NAME['dtype'].validate('float8')
    assert 'below the minimum' in parameters.BY_NAME['queue_size'].validate(0)
    assert all(spec.validate(spec.default) is None for spec in parameters.PARAMETERS)


def test_launch_arguments_turn_into_the_documented_node_start():
    values = launch_args.parse_cli(
        [
            'namespace:=robot1',
            'model_path:=/m',
            'latency_budget_ms:=250',
            'use_sim_time:=true',
            'color_image_topic:=/cam/color',
            'autostart:=false',
            'gating:=none',
        ]
    )
    assert launch_args.parameter_overrides(values) == {
        'use_sim_time': True,
        'model_path': '/m',
        'latency_budget_ms': 250.0,
        'gating': 'none',
    }
    assert launch_args.remappings(values) == [('color/image_raw', '/cam/color')]
    assert launch_args.node_arguments(values) == ['--no-autostart']
    assert launch_args.ros_arguments(values) == [
        '--ros-args',
        '-r',
        '__node:=adatoken3d',
        '-r',
        '__ns:=/robot1',
        '--params-file',
        launch_args.default_params_file(),
        '-p',
        'use_sim_time:=true',
        '-p',
        'model_path:="/m"',
        '-p',
        'gating:="none"',
        '-p',
        'latency_budget_ms:=250.0',
        '-r',
        'color/image_raw:=/cam/color',
        '--log-level',
        'info',
    ]


def test_every_parameter_is_a_launch_argument_of_its_type():
    from conftest import other_value

    specs = parameters.PARAMETERS
    wanted = {spec.name: other_value(spec) for spec in specs}
    assert all(wanted[spec.name] != spec.default and spec.validate(wanted[spec.name]) is None for spec in specs)
    values = launch_args.parse_cli(launch_args.format_cli(wanted))
    assert launch_args.parameter_overrides(values) == {'use_sim_time': False, **wanted}
    assert all(type(v) is type(parameters.BY_NAME[n].default) for n, v in wanted.items())
    with pytest.raises(ValueError, match="unknown launch argument 'fixed_frames'.*fixed_frame"):
        launch_args.parse_cli(['fixed_frames:=odom'])


def test_a_lossless_replay_is_asked_for_with_launch_arguments_of_the_right_type():
    from adatoken3d_lab.bags import LOSSLESS_REPLAY_PARAMETERS

    values = launch_args.parse_cli(launch_args.format_cli(LOSSLESS_REPLAY_PARAMETERS))
    assert launch_args.parameter_overrides(values) == {
        'use_sim_time': False,
        'sensor_qos_reliability': 'reliable',
        'sensor_qos_depth': 20,
    }
    assert ['-p', 'sensor_qos_depth:=20'] == launch_args.ros_arguments(values)[-4:-2]


def test_defaults_override_nothing_and_unknown_arguments_are_named():
    values = launch_args.parse_cli([])
    assert launch_args.parameter_overrides(values) == {'use_sim_time': False}
    assert launch_args.remappings(values) == [] and launch_args.node_arguments(values) == []
    with pytest.raises(ValueError, match="unknown launch argument 'modelpath'"):
        launch_args.parse_cli(['modelpath:=/m'])
    with pytest.raises(ValueError, match='name:=value'):
        launch_args.parse_cli(['model_path=/m'])


def test_every_sensor_topic_has_a_remap_argument():
    arg_names = {arg.name for arg in launch_args.LAUNCH_ARGUMENTS}
    assert {f'{key}_topic' for key in names.SENSOR_TOPICS} <= arg_names
    assert {
        'namespace',
        'params_file',
        'use_sim_time',
        'model_path',
        'device',
        'latency_budget_ms',
        'gating',
    } <= arg_names


def test_launch_file_compiles_everywhere():
    py_compile.compile(str(REPO / 'launch' / 'bringup.launch.py'), doraise=True)


def test_launch_file_declares_exactly_the_shared_arguments():
    pytest.importorskip(
        'launch', reason='launch (ros2 launch) is not installable from PyPI; a ROS 2 install provides it'
    )
    pytest.importorskip('launch_ros', reason='launch_ros comes with a ROS 2 install')
    import importlib.util
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location('bringup_launch', REPO / 'launch' / 'bringup.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name: e.default_value for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert list(declared) == [arg.name for arg in launch_args.LAUNCH_ARGUMENTS]


def test_package_xml_declares_the_real_dependencies():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3' and root.findtext('name') == names.PACKAGE
    depends = {e.text for e in root.findall('depend')}
    assert {
        'rclpy',
        'sensor_msgs',
        'std_msgs',
        'geometry_msgs',
        'tf2_msgs',
        'diagnostic_msgs',
        'adatoken3d_interfaces',
    } <= depends
    assert {'launch', 'launch_ros'} <= {e.text for e in root.findall('exec_depend')}
    assert root.find('export/build_type').text == 'ament_python'


def test_the_package_is_installed_in_the_ament_index():
    packages = pytest.importorskip('ament_index_python.packages', reason='ament_index_python comes with ROS 2')
    share = pathlib.Path(packages.get_package_share_directory(names.PACKAGE))
    for relative in (
        'package.xml',
        'launch/bringup.launch.py',
        'config/adatoken3d.yaml',
        'config/fastdds_loopback.xml',
    ):
        assert (share / relative).is_file(), relative


def test_the_lab_is_a_package_of_its_own_that_depends_on_the_runtime():
    runtime, lab = ET.parse(REPO / 'package.xml').getroot(), ET.parse(REPO / 'lab' / 'package.xml').getroot()
    assert lab.findtext('name') == 'adatoken3d_lab' and lab.findtext('version') == runtime.findtext('version')
    assert names.PACKAGE in {e.text for e in lab.findall('exec_depend')}
    assert 'adatoken3d_lab' not in {e.text for e in runtime.iter() if e.tag.endswith('depend')}
    assert lab.find('export/build_type').text == 'ament_python'
    assert (REPO / 'ros2_ws' / 'src' / 'adatoken3d_lab').resolve() == (REPO / 'lab').resolve()  # colcon finds it
