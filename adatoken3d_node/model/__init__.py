"""ROS-free language-model core of adatoken3d: prompt, tiny test checkpoint, FLOPs accounting, generation engine."""
