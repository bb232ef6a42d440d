"""adatoken3d: LLaVA-3D scene question answering with AdaToken-3D spatial token gating, as a ROS 2 node.

The runtime, what runs on the robot. The core (perception/, model/, queries.py, pipeline.py,
budget.py) imports nothing from ROS; the ROS edge is node.py (the lifecycle node) with
outgoing.py and diagnostics.py, and bringup.py (the launch-equivalent runner), all built on the
facts defined once in names.py, parameters.py, qos.py and launch_args.py.
"""
