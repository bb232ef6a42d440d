"""Posed RGB-D frames from files on disk (the real frames in ../shared/data), as plain arrays. ROS-free.

Used to write test and demo bags; each loader documents its format's units and
conventions so that the bag carries them the way a real driver would.
"""

import json
import pathlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass(frozen=True)
class RGBDFrame:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) uint16 millimetres (16UC1) or float32 metres (32FC1); 0 = none
    K: np.ndarray  # (3, 3) float64 pinhole intrinsics
    pose: Optional[np.ndarray]  # (4, 4) float64 camera optical frame -> fixed frame; None = unknown
    stamp_ns: int

    @property
    def depth_encoding(self) -> str:
        return '16UC1' if self.depth.dtype == np.uint16 else '32FC1'


def read_image(path: pathlib.Path) -> np.ndarray:
    from PIL import Image  # Pillow: only the dataset loaders need it

    with Image.open(path) as image:
        return np.asarray(image)


def read_trajectory_log(path: pathlib.Path) -> List[np.ndarray]:
    """Redwood/ICL-NUIM trajectory.log: per frame a line 'i i i+1' then a row-major 4x4 camera-to-world."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    poses = []
    for start in range(0, len(lines), 5):
        poses.append(np.array(lines[start + 1 : start + 5], dtype=np.float64))
    return poses


def load_redwood(directory, period_s: float = 1.0 / 30.0, start_ns: int = 1_000_000_000) -> List[RGBDFrame]:
    """redwood_livingroom_5: colour JPGs, depth PNGs in mm (registered to colour), poses, fx=fy=525."""
    directory = pathlib.Path(directory)
    intrinsics = json.loads((directory / 'camera_primesense.json').read_text())
    K = np.array(intrinsics['intrinsic_matrix'], dtype=np.float64).reshape(3, 3).T  # stored column-major
    poses = read_trajectory_log(directory / 'trajectory.log')
    colours = sorted((directory / 'color').glob('*.jpg'))
    depths = sorted((directory / 'depth').glob('*.png'))
    if not (len(colours) == len(depths) == len(poses)):
        raise ValueError(f'{directory}: {len(colours)} colour, {len(depths)} depth images, {len(poses)} poses')
    return [
        RGBDFrame(
            read_image(c)[..., :3], read_image(d).astype(np.uint16), K, pose, start_ns + int(round(i * period_s * 1e9))
        )
        for i, (c, d, pose) in enumerate(zip(colours, depths, poses))
    ]


def load_tum_single(directory, start_ns: int = 1_000_000_000) -> List[RGBDFrame]:
    """tum_single: one Kinect frame, depth PNG at 5000 units per metre (-> float32 metres), no pose."""
    directory = pathlib.Path(directory)
    depth_m = read_image(directory / 'TUM_depth.png').astype(np.float32) / 5000.0
    K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])  # TUM's default intrinsics for its Kinect
    return [RGBDFrame(read_image(directory / 'TUM_color.png')[..., :3], depth_m, K, None, start_ns)]
