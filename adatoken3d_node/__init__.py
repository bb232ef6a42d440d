"""adatoken3d: LLaVA-3D scene question answering with AdaToken-3D spatial token gating, as a ROS 2 node.

The core modules (model/, queries.py, stats.py) import nothing from ROS; the ROS
layer is node.py (the lifecycle node), bringup.py (the launch-equivalent
runner) and demo.py, all built on the facts defined once in names.py,
parameters.py and launch_args.py.
"""
