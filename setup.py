"""ament_python package `adatoken3d` (the repository root).

colcon installs it with `setup.py develop/install` (setup.cfg puts the node
executables in lib/adatoken3d for `ros2 run` / `ros2 launch`); the Makefile's
pip path installs it with `pip install .`, which puts the same console scripts
on the venv's PATH. Dependencies are system/venv packages (package.xml,
requirements/), not install_requires, as usual for ROS packages.
"""

import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'adatoken3d'

setup(
    name=PACKAGE,
    version='0.1.0',
    # what runs on the robot; the lab (training, evaluation, calibration, demo, bag tools) is lab/, a package of its own
    packages=find_packages(include=['adatoken3d_node', 'adatoken3d_node.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob.glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob.glob('config/*.yaml') + glob.glob('config/*.xml')),
        (f'share/{PACKAGE}/models', glob.glob('models/*.md') + glob.glob('models/*.json')),
        (f'share/{PACKAGE}/models/gating_profiles', glob.glob('models/gating_profiles/*.json')),
        # the trained default model (a checkpoint directory, its CLIP in vision_tower/)
        *[
            (f'share/{PACKAGE}/{d}', [f for f in sorted(glob.glob(f'{d}/*')) if os.path.isfile(f)])
            for d in sorted(glob.glob('models/*/')) + sorted(glob.glob('models/*/*/'))
            if 'gating_profiles' not in d
        ],
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='adatoken3d developers',
    maintainer_email='dev@adatoken3d.invalid',
    description='LLaVA-3D scene question answering with AdaToken-3D spatial token gating, as a ROS 2 node',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'adatoken3d_node = adatoken3d_node.node:main',
            'adatoken3d-bringup = adatoken3d_node.bringup:main',
            'adatoken3d-ask = adatoken3d_node.ask:main',
        ]
    },
)
