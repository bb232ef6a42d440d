"""Launch arguments of `bringup.launch.py` and `adatoken3d-bringup`: defined once here.

Both take the same `name:=value` arguments with the same defaults and turn them
into the same node start: the parameters file, parameter overrides, remaps of
the sensor topics, namespace and log level. An empty value means "not given":
the parameters file decides (for parameters) or the topic keeps its default
relative name (for remaps).
"""

import json
import pathlib
import sys
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from . import parameters
from .names import NODE_NAME, SENSOR_TOPICS


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


# Every node parameter can be overridden straight from the command line, as yolo_ros and llama_ros allow.
PARAMETER_ARGUMENTS = tuple(spec.name for spec in parameters.PARAMETERS)
PARAMETERS_ROW = '<parameter>'  # the one row that stands for all of them in markdown_table

LAUNCH_ARGUMENTS: Tuple[LaunchArgument, ...] = (
    (
        LaunchArgument('namespace', '', 'Namespace of the node (e.g. robot1).'),
        LaunchArgument('params_file', '', "Parameters YAML; empty: the package's config/adatoken3d.yaml."),
        LaunchArgument('use_sim_time', 'false', 'Use /clock (bag replay with --clock).'),
        LaunchArgument('autostart', 'true', 'Configure and activate the lifecycle node at start.'),
        LaunchArgument('log_level', 'info', 'Logger level of the node: debug, info, warn, error.'),
    )
    + tuple(
        LaunchArgument(name, '', f'Overrides parameter {name} (empty: from params_file).')
        for name in PARAMETER_ARGUMENTS
    )
    + tuple(
        LaunchArgument(f'{key}_topic', '', f'Remap of {topic} (empty: {topic} in the node namespace).')
        for key, topic in SENSOR_TOPICS.items()
    )
)

BY_NAME = {arg.name: arg for arg in LAUNCH_ARGUMENTS}


def parse_cli(argv: Sequence[str]) -> Dict[str, str]:
    """`name:=value` arguments -> every launch argument's value (defaults filled in)."""
    values = {arg.name: arg.default for arg in LAUNCH_ARGUMENTS}
    for item in argv:
        name, sep, value = item.partition(':=')
        if not sep:
            raise ValueError(f'argument {item!r} is not of the form name:=value')
        if name not in BY_NAME:
            raise ValueError(f'unknown launch argument {name!r}; known: {", ".join(BY_NAME)}')
        values[name] = value
    return values


def format_cli(values: Dict[str, object]) -> List[str]:
    """{name: value} -> `name:=value` arguments (what parse_cli reads)."""
    return [f'{name}:={value}' for name, value in values.items()]


def default_params_file() -> str:
    """The installed package's config/adatoken3d.yaml (source tree's as a fallback)."""
    from .share import shipped

    return str(shipped(pathlib.Path('config') / 'adatoken3d.yaml'))


def params_file(values: Dict[str, str]) -> str:
    return values['params_file'] or default_params_file()


def parameter_overrides(values: Dict[str, str]) -> Dict[str, object]:
    """Typed parameter overrides given on the command line (use_sim_time always)."""
    overrides: Dict[str, object] = {'use_sim_time': parameters.parse_bool(values['use_sim_time'])}
    for name in PARAMETER_ARGUMENTS:
        if values[name] != '':
            overrides[name] = parameters.coerce(name, values[name])
    return overrides


def remappings(values: Dict[str, str]) -> List[Tuple[str, str]]:
    return [(topic, values[f'{key}_topic']) for key, topic in SENSOR_TOPICS.items() if values[f'{key}_topic'] != '']


def node_arguments(values: Dict[str, str]) -> List[str]:
    """Arguments of the node executable itself (before --ros-args)."""
    return [] if parameters.parse_bool(values['autostart']) else ['--no-autostart']


def ros_arguments(values: Dict[str, str]) -> List[str]:
    """The same start as the launch file, as rcl command-line arguments (for the runner)."""
    args = ['--ros-args', '-r', f'__node:={NODE_NAME}']
    if values['namespace']:
        args += ['-r', f'__ns:=/{values["namespace"].strip("/")}']
    args += ['--params-file', params_file(values)]
    for name, value in parameter_overrides(values).items():
        # json quoting makes every string a YAML string (e.g. "0" stays a string)
        text = (
            json.dumps(value)
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        args += ['-p', f'{name}:={text}']
    for source, target in remappings(values):
        args += ['-r', f'{source}:={target}']
    args += ['--log-level', values['log_level']]
    return args


def describe() -> str:
    width = max(len(arg.name) for arg in LAUNCH_ARGUMENTS)
    return '\n'.join(f'  {arg.name:<{width}}  (default {arg.default!r})  {arg.description}' for arg in LAUNCH_ARGUMENTS)


def markdown_table() -> str:
    """The README's table: the launch's own arguments and remaps, and one row for all the parameters (the
    parameter table lists them; --help lists every argument by name)."""
    rows = ['| argument | default | meaning |', '| --- | --- | --- |']
    for arg in LAUNCH_ARGUMENTS:
        if arg.name in PARAMETER_ARGUMENTS:
            if arg.name == PARAMETER_ARGUMENTS[0]:
                rows.append(
                    f'| `{PARAMETERS_ROW}` | (empty) | Any parameter below, e.g. `fixed_frame:=odom`, overrides '
                    'it (empty: from params_file). |'
                )
            continue
        rows.append(f'| `{arg.name}` | {f"`{arg.default}`" if arg.default else "(empty)"} | {arg.description} |')
    return '\n'.join(rows)


if __name__ == '__main__':
    print(markdown_table() if '--markdown' in sys.argv else describe())
