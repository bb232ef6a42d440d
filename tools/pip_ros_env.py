#!/usr/bin/env python3
"""Make a virtualenv of ROS 2 PyPI wheels usable for building and running adatoken3d.

Run with the venv's own interpreter (the Makefile does):

    .venv/bin/python tools/pip_ros_env.py fix-venv
    .venv/bin/python tools/pip_ros_env.py build-interfaces

`fix-venv` repairs two things the wheels get wrong (see ../shared/ROS_ON_PIP.md):
  * their exported CMake files carry the include paths of the machine they were
    built on (/opt/python/cp311-cp311/...): rewritten to this interpreter's
    Python include dir and numpy's include dir;
  * ament_index_python needs AMENT_PREFIX_PATH at run time: a .pth file puts
    the venv on it for every interpreter started from the venv.

`build-interfaces` builds and installs into the venv prefix, with plain CMake,
the packages that have no wheel: adatoken3d_interfaces, and tf2_msgs unless the
system already provides it. It is the pip-path equivalent of `colcon build`.

Standard library only: it runs before anything of ours is installed.
"""

import argparse
import glob
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
INTERFACE_PACKAGES = [
    # (source dir, python module that proves it is installed, build only if missing?)
    (REPO / 'ros2_ws' / 'pip_only' / 'tf2_msgs', 'tf2_msgs', True),
    (REPO / 'ros2_ws' / 'src' / 'adatoken3d_interfaces', 'adatoken3d_interfaces', False),
]
WHEEL_BUILD_PREFIX = '/opt/python/cp311-cp311'
AMENT_PTH = 'adatoken3d_ament_prefix.pth'


def fix_cmake_include_paths(prefix: pathlib.Path) -> int:
    """Rewrite build-machine include paths in the wheels' CMake exports; returns files changed."""
    import numpy  # installed from the wheels before this runs

    python_include = sysconfig.get_paths()['include']
    replacements = [
        (f'{WHEEL_BUILD_PREFIX}/lib/python3.11/site-packages/numpy/_core/include', numpy.get_include()),
        (f'{WHEEL_BUILD_PREFIX}/include/python3.11', python_include),
    ]
    changed = 0
    for path in glob.glob(str(prefix / 'share' / '**' / '*.cmake'), recursive=True):
        text = pathlib.Path(path).read_text()
        new_text = text
        for old, new in replacements:
            new_text = new_text.replace(old, new)
        if new_text != text:
            pathlib.Path(path).write_text(new_text)
            changed += 1
    return changed


def write_ament_pth(prefix: pathlib.Path) -> pathlib.Path:
    site_packages = pathlib.Path(sysconfig.get_paths()['purelib'])
    pth = site_packages / AMENT_PTH
    # A .pth line starting with "import" is executed at interpreter start-up.
    pth.write_text(
        "import os, sys; p = os.environ.get('AMENT_PREFIX_PATH', ''); "
        "sys.prefix in p.split(os.pathsep) or os.environ.__setitem__("
        "'AMENT_PREFIX_PATH', os.pathsep.join(x for x in (sys.prefix, p) if x))\n"
    )
    return pth


def build_interface_package(source: pathlib.Path, prefix: pathlib.Path, build_root: pathlib.Path) -> None:
    build_dir = build_root / source.name
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    env = dict(os.environ)
    env['AMENT_PREFIX_PATH'] = os.pathsep.join(x for x in (str(prefix), env.get('AMENT_PREFIX_PATH', '')) if x)
    env['PATH'] = os.pathsep.join((str(prefix / 'bin'), env.get('PATH', '')))
    configure = [
        'cmake',
        str(source),
        f'-DCMAKE_INSTALL_PREFIX={prefix}',
        f'-DCMAKE_PREFIX_PATH={prefix}',
        f'-DPython3_EXECUTABLE={sys.executable}',
        '-DBUILD_TESTING=OFF',
    ]
    build = ['cmake', '--build', '.', '--target', 'install', '--', f'-j{os.cpu_count() or 2}']
    for command in (configure, build):
        log = build_dir / 'build.log'
        with open(log, 'a') as out:
            result = subprocess.run(command, cwd=build_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = log.read_text().splitlines()[-30:]
            sys.exit(
                f'building {source.name} failed ({" ".join(command[:2])}); last lines of {log}:\n' + '\n'.join(tail)
            )


def system_provides(module: str, prefix: pathlib.Path) -> bool:
    """True when `module` is importable from outside this venv (e.g. /opt/ros/<distro>)."""
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None and not spec.origin.startswith(str(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('command', choices=['fix-venv', 'build-interfaces'])
    parser.add_argument('--build-dir', default=str(REPO / 'build' / 'pip_interfaces'))
    args = parser.parse_args()
    prefix = pathlib.Path(sys.prefix)
    if prefix == pathlib.Path(sys.base_prefix):
        sys.exit('run this with the virtualenv interpreter (.venv/bin/python), not the system one')

    if args.command == 'fix-venv':
        changed = fix_cmake_include_paths(prefix)
        pth = write_ament_pth(prefix)
        print(f'fix-venv: rewrote include paths in {changed} CMake files; wrote {pth.name}')
        return

    for source, module, only_if_missing in INTERFACE_PACKAGES:
        if only_if_missing and system_provides(module, prefix):
            print(f'build-interfaces: {module} is provided by the system, not building it')
            continue
        start = time.monotonic()
        build_interface_package(source, prefix, pathlib.Path(args.build_dir))
        print(f'build-interfaces: {source.name} built and installed into {prefix} in {time.monotonic() - start:.1f} s')


if __name__ == '__main__':
    main()
