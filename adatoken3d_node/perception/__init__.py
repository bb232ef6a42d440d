"""Scene perception, ROS-free: RGB-D views -> per-patch 3D positions -> voxel-pooled spatial tokens."""
