"""ROS-free model code: LLaVA-3D (llava3d, loader, prompt), the gated prefill (gating, gating_policy, flops),
gating profiles and scene QA."""
