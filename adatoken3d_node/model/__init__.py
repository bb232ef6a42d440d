"""ROS-free model code: LLaVA-3D (llava3d, loader, tiny_llava3d), the gated prefill (gating, flops), calibration and scene QA."""
