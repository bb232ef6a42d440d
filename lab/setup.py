"""ament_python package `adatoken3d_lab`: what builds, checks and demonstrates the runtime (`adatoken3d`).

colcon builds it beside `adatoken3d` (skip it on a robot: `colcon build --packages-skip adatoken3d_lab`);
the Makefile's pip path installs it with `pip install ./lab`, which puts its console scripts on the
venv's PATH. Dependencies are system/venv packages (package.xml, requirements/), as usual for ROS packages.
"""

from setuptools import find_packages, setup

PACKAGE = 'adatoken3d_lab'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='adatoken3d developers',
    maintainer_email='dev@adatoken3d.invalid',
    description='The lab of adatoken3d: training, evaluation, calibration, the demo and bag tools',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'adatoken3d-demo = adatoken3d_lab.demo:main',
            'adatoken3d-bag = adatoken3d_lab.bags:main',
            'adatoken3d-make-random-llava3d = adatoken3d_lab.random_checkpoint:main',
            'adatoken3d-calibrate = adatoken3d_lab.calibrate:main',
            'adatoken3d-train-tiny = adatoken3d_lab.training.train:main',
        ]
    },
)
