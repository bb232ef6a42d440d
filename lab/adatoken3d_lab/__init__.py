"""adatoken3d's lab: what builds, checks and demonstrates the runtime, never needed on the robot.

Synthetic scenes and real-dataset loaders, training and evaluation of the shipped model,
calibration of gating profiles, the random test checkpoint, the demo and the bag tools. The lab
imports the runtime (adatoken3d_node); the runtime never imports the lab.
"""
