"""Seeded procedural 3D scenes rendered as posed RGB-D frames (pure numpy, no ROS).

World frame: z up, floor plane z = 0.  Camera optical frame: x right, y down, z forward;
a pose maps optical-frame points to world.  Depth is the optical-frame z in millimetres
(uint16, 0 = no reading).
"""

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .datasets import RGBDFrame

SHAPES = ('box', 'sphere', 'cylinder')
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (220, 30, 30),
    'green': (30, 180, 40),
    'blue': (30, 60, 220),
    'yellow': (230, 220, 30),
    'purple': (140, 40, 170),
    'orange': (250, 140, 20),
    'white': (245, 245, 245),
    'black': (25, 25, 25),
    'cyan': (30, 200, 210),
    'pink': (250, 130, 180),
}
COLOUR_NAMES = tuple(COLOURS)  # class order of every colour label (training's heads)
FLOOR_RGB = (128, 128, 128)
WALL_RGB = (200, 190, 170)
SKY_RGB = (135, 190, 235)
LIGHT_DIR = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
MAX_RANGE_M = 20.0
AREA_HALF_M = 2.0  # objects live inside [-2, 2] x [-2, 2]
WALL_OFFSET_M = 4.5  # optional walls: planes x = -4.5 and y = -4.5
WALL_HEIGHT_M = 2.5
ROOM_HALF_M = 3.2  # room scenes: four walls at x = +-3.2 and y = +-3.2 around the object area
_EPS = 1e-6


@dataclass(frozen=True)
class SceneObject:
    shape: str  # 'box' | 'sphere' | 'cylinder'
    colour_name: str
    rgb: Tuple[int, int, int]
    centre: Tuple[float, float, float]  # metres, world frame
    size: Tuple[float, float, float]  # sphere: diameter x3; cylinder: (d, d, height)

    @property
    def colour_index(self) -> int:
        """Class of the colour in COLOUR_NAMES."""
        return COLOUR_NAMES.index(self.colour_name)

    @property
    def shape_index(self) -> int:
        """Class of the shape in SHAPES."""
        return SHAPES.index(self.shape)

    @property
    def footprint_radius(self) -> float:
        """Radius of a vertical circle containing the object's xy footprint."""
        sx, sy, _ = self.size
        if self.shape == 'box':
            return 0.5 * float(np.hypot(sx, sy))
        return 0.5 * max(sx, sy)


def make_scene(
    seed: int,
    n_objects: Optional[int] = None,
    unique: bool = False,
    min_size_m: float = 0.2,
    max_size_m: float = 0.6,
    shade_jitter: float = 0.0,
) -> List[SceneObject]:
    """2-8 non-overlapping objects resting on the floor inside a 4 m x 4 m area (seeded).

    unique: no two objects share both colour and shape, so "the red box" names one object
    (question-answering scenes need that). min_size_m, max_size_m: smallest and largest
    edge/diameter. shade_jitter: each object's colour is its named colour scaled by a factor in
    1 +- shade_jitter per channel (another shade of the same colour name).
    """
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9)) if n_objects is None else int(n_objects)
    names = list(COLOURS)
    for _restart in range(100):
        objects: List[SceneObject] = []
        for _ in range(n):
            for _attempt in range(500):
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                colour = names[int(rng.integers(len(names)))]
                if unique and any((o.shape, o.colour_name) == (shape, colour) for o in objects):
                    continue
                if shape == 'box':
                    size = tuple(float(v) for v in rng.uniform(min_size_m, max_size_m, 3))
                elif shape == 'sphere':
                    d = float(rng.uniform(min_size_m, max_size_m))
                    size = (d, d, d)
                else:
                    d, h = (float(v) for v in rng.uniform(min_size_m, max_size_m, 2))
                    size = (d, d, h)
                probe = SceneObject(shape, colour, COLOURS[colour], (0.0, 0.0, 0.0), size)
                r = probe.footprint_radius
                x, y = (float(v) for v in rng.uniform(-AREA_HALF_M + r, AREA_HALF_M - r, 2))
                if all(np.hypot(x - o.centre[0], y - o.centre[1]) > r + o.footprint_radius + 0.05 for o in objects):
                    objects.append(SceneObject(shape, colour, COLOURS[colour], (x, y, size[2] / 2), size))
                    break
            else:
                break
        if len(objects) == n:
            if shade_jitter:  # a stream of its own: the same scene, other shades
                shades = np.random.default_rng([seed, 3]).uniform(1 - shade_jitter, 1 + shade_jitter, (n, 3))
                objects = [
                    dataclasses.replace(o, rgb=tuple(int(v) for v in np.clip(np.rint(np.asarray(o.rgb) * f), 0, 255)))
                    for o, f in zip(objects, shades)
                ]
            return objects
    raise RuntimeError(f'could not place {n} non-overlapping objects')


# --- ray intersections: origin o (3,), directions d (N, 3) unnormalised; return t (N,), normals (N, 3)


def _hit_plane_z(o, d, z0):
    with np.errstate(divide='ignore', invalid='ignore'):
        t = (z0 - o[2]) / d[:, 2]
    t = np.where(np.isfinite(t) & (t > _EPS), t, np.inf)
    n = np.zeros_like(d)
    n[:, 2] = 1.0
    return t, n


def _hit_sphere(o, d, obj):
    c = np.asarray(obj.centre)
    r = obj.size[0] / 2
    oc = o - c
    a = np.einsum('ij,ij->i', d, d)
    b = 2.0 * d @ oc
    cc = oc @ oc - r * r
    disc = b * b - 4 * a * cc
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    t0 = (-b - sq) / (2 * a)
    t1 = (-b + sq) / (2 * a)
    t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
    t = np.where(ok, t, np.inf)
    p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
    return t, (p - c) / r


def _hit_box(o, d, obj):
    c = np.asarray(obj.centre)
    h = np.asarray(obj.size) / 2
    lo, hi = c - h, c + h
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / d
        ta = (lo - o) * inv
        tb = (hi - o) * inv
    # a zero direction component: inside slab -> (-inf, inf), outside -> empty
    zero = d == 0
    inside = (o >= lo) & (o <= hi)
    tnear_ax = np.where(zero, np.where(inside, -np.inf, np.inf), np.minimum(ta, tb))
    tfar_ax = np.where(zero, np.where(inside, np.inf, -np.inf), np.maximum(ta, tb))
    tnear = tnear_ax.max(axis=1)
    tfar = tfar_ax.min(axis=1)
    axis = tnear_ax.argmax(axis=1)
    hit = (tnear <= tfar) & (tfar > _EPS)
    t = np.where(hit & (tnear > _EPS), tnear, np.where(hit, tfar, np.inf))
    n = np.zeros_like(d)
    rows = np.arange(len(d))
    n[rows, axis] = -np.sign(d[rows, axis])
    return t, n


def _hit_cylinder(o, d, obj):
    cx, cy, cz = obj.centre
    r = obj.size[0] / 2
    z0, z1 = cz - obj.size[2] / 2, cz + obj.size[2] / 2
    ox, oy = o[0] - cx, o[1] - cy
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (ox * d[:, 0] + oy * d[:, 1])
    cc = ox * ox + oy * oy - r * r
    disc = b * b - 4 * a * cc
    ok = (disc >= 0) & (a > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    with np.errstate(divide='ignore', invalid='ignore'):
        t_side = np.full(len(d), np.inf)
        for root in ((-b - sq) / (2 * a), (-b + sq) / (2 * a)):
            z = o[2] + root * d[:, 2]
            good = ok & (root > _EPS) & (z >= z0) & (z <= z1)
            t_side = np.where(good & (root < t_side), root, t_side)
        t_caps = np.full(len(d), np.inf)
        for zc in (z0, z1):
            tc = (zc - o[2]) / d[:, 2]
            px, py = ox + tc * d[:, 0], oy + tc * d[:, 1]
            good = np.isfinite(tc) & (tc > _EPS) & (px * px + py * py <= r * r)
            t_caps = np.where(good & (tc < t_caps), tc, t_caps)
    t = np.minimum(t_side, t_caps)
    ts = np.where(np.isfinite(t), t, 0.0)
    n = np.zeros_like(d)
    side = t_side <= t_caps
    n[:, 0] = np.where(side, (ox + ts * d[:, 0]) / r, 0.0)
    n[:, 1] = np.where(side, (oy + ts * d[:, 1]) / r, 0.0)
    n[:, 2] = np.where(side, 0.0, np.where(o[2] + ts * d[:, 2] >= cz, 1.0, -1.0))
    return t, n


_HITTERS = {'sphere': _hit_sphere, 'box': _hit_box, 'cylinder': _hit_cylinder}


def _screen_rays(obj, K, pose, width: int, height: int) -> Optional[np.ndarray]:
    """Indices (into the H*W rays) of the pixels the object's bounding sphere can cover, or None
    when the sphere reaches behind the image plane (then every ray is tested)."""
    r = 0.5 * float(np.linalg.norm(obj.size)) + 1e-3
    pose = np.asarray(pose, dtype=np.float64)
    x, y, z = pose[:3, :3].T @ (np.asarray(obj.centre) - pose[:3, 3])  # optical frame
    if z - r <= 0.05:
        return None
    corners = [
        ((x + sx * r) / (z + sz * r), (y + sy * r) / (z + sz * r)) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)
    ]  # the sphere's box, projected
    us = [K[0, 0] * a + K[0, 2] for a, _ in corners]
    vs = [K[1, 1] * b + K[1, 2] for _, b in corners]
    u0, u1 = max(int(np.floor(min(us))) - 1, 0), min(int(np.ceil(max(us))) + 1, width - 1)
    v0, v1 = max(int(np.floor(min(vs))) - 1, 0), min(int(np.ceil(max(vs))) + 1, height - 1)
    if u0 > u1 or v0 > v1:
        return np.zeros(0, dtype=np.int64)
    rows, cols = np.meshgrid(np.arange(v0, v1 + 1), np.arange(u0, u1 + 1), indexing='ij')
    return (rows * width + cols).ravel()


def _checker(points: np.ndarray) -> np.ndarray:
    """Boxes: a 0.15 m checkerboard, light squares at full brightness, dark ones at half."""
    cells = np.floor(points / 0.15).astype(np.int64).sum(axis=1)
    return np.where(cells % 2 == 0, 1.0, 0.5)


def _bands(points: np.ndarray) -> np.ndarray:
    """Cylinders: horizontal bands 0.1 m high, alternating full and half brightness."""
    return np.where(np.floor(points[:, 2] / 0.1).astype(np.int64) % 2 == 0, 1.0, 0.5)


def _stripes(points: np.ndarray) -> np.ndarray:
    """Vertical stripes 0.08 m wide along x + y, alternating full and 0.6 brightness."""
    return np.where(np.floor((points[:, 0] + points[:, 1]) / 0.08).astype(np.int64) % 2 == 0, 1.0, 0.6)


def _dots(points: np.ndarray) -> np.ndarray:
    """Dark dots on a 0.1 m grid (0.55 brightness within 0.025 m of a grid point)."""
    offset = np.abs(points / 0.1 - np.rint(points / 0.1)) * 0.1
    return np.where(np.linalg.norm(offset, axis=1) < 0.025, 0.55, 1.0)


def _tiles(points: np.ndarray) -> np.ndarray:
    """Floors: 0.5 m tiles with dark 2 cm grout lines."""
    edge = np.abs(points[:, :2] / 0.5 - np.rint(points[:, :2] / 0.5)) * 0.5
    return np.where((edge < 0.01).any(axis=1), 0.45, 1.0)


PATTERNS = {'checker': _checker, 'bands': _bands, 'stripes': _stripes, 'dots': _dots, 'tiles': _tiles}

# The material of each shape (render(textured=True)): like the materials of real object classes, it
# makes the shape visible in a small patch, not only in an object's outline; spheres are plain.
SHAPE_TEXTURES = {'box': _checker, 'cylinder': _bands}
CEILING_RGB = (235, 235, 230)


@dataclass(frozen=True)
class RenderStyle:
    """How a room is drawn, beyond its objects: what a model must not learn to lean on.

    The default is the standard style, the one the shipped model was trained on: boxes checkered,
    cylinders banded, spheres plain, a plain floor, no ceiling, LIGHT_DIR at 0.45 ambient + 0.55.
    """

    textures: Tuple[Tuple[str, str], ...] = (('box', 'checker'), ('cylinder', 'bands'))  # (shape, pattern)
    floor: str = 'plain'  # plain, or a PATTERNS name
    ceiling: bool = False  # closed rooms only
    light_dir: Tuple[float, float, float] = tuple(float(v) for v in LIGHT_DIR)
    ambient: float = 0.45
    light: float = 0.55


STANDARD_STYLE = RenderStyle()


def _wall_hits(o, d, room_half_m: Optional[float] = None):
    """Vertical walls, 0 <= z <= WALL_HEIGHT_M: x = -WALL_OFFSET_M and y = -WALL_OFFSET_M, or, with
    room_half_m, the four walls x = +-room_half_m and y = +-room_half_m of a closed room."""
    planes = (
        [(0, -WALL_OFFSET_M), (1, -WALL_OFFSET_M)]
        if room_half_m is None
        else [(axis, sign * room_half_m) for axis in (0, 1) for sign in (-1.0, 1.0)]
    )
    out = []
    for axis, offset in planes:
        with np.errstate(divide='ignore', invalid='ignore'):
            t = (offset - o[axis]) / d[:, axis]
        z = o[2] + t * d[:, 2]
        good = np.isfinite(t) & (t > _EPS) & (z >= 0) & (z <= WALL_HEIGHT_M)
        n = np.zeros_like(d)
        n[:, axis] = -np.sign(offset)  # facing the room
        out.append((np.where(good, t, np.inf), n))
    return out


def pixel_rays(K: np.ndarray, pose: np.ndarray, width: int, height: int):
    """World-frame ray origin (3,) and unnormalised directions (H*W, 3) with optical z component 1,
    so the ray parameter t equals the optical-frame depth."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    d_cam = pix @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T
    d_cam /= d_cam[:, 2:3]
    pose = np.asarray(pose, dtype=np.float64)
    return pose[:3, 3].copy(), d_cam @ pose[:3, :3].T


def render(
    objects: Sequence[SceneObject],
    K: np.ndarray,
    pose: np.ndarray,
    width: int,
    height: int,
    walls: bool = False,
    room_half_m: Optional[float] = None,
    textured: bool = False,
    style: Optional[RenderStyle] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Ray-cast one ray per pixel centre; returns (rgb (H,W,3) uint8, depth (H,W) uint16 mm).
    walls: two walls behind the scene; room_half_m: a closed square room of that half-width instead.
    textured: each shape has its material's pattern (SHAPE_TEXTURES) over its colour.
    style: textures, floor, ceiling and lighting (RenderStyle); it overrides `textured`."""
    if style is not None:
        textured = True
        textures = {shape: PATTERNS[name] for shape, name in style.textures if name != 'plain'}
    else:
        style, textures = STANDARD_STYLE, SHAPE_TEXTURES
    o, d = pixel_rays(K, pose, width, height)
    n_rays = len(d)
    best_t = np.full(n_rays, np.inf)
    best_n = np.zeros((n_rays, 3))
    best_rgb = np.tile(np.asarray(SKY_RGB, dtype=np.float64), (n_rays, 1))
    shaded = np.zeros(n_rays, dtype=bool)
    shape_of = np.full(n_rays, '', dtype=object) if textured else None

    # (ray indices or None for all, (t, normals) of those rays, colour); an object is only
    # intersected with the rays of its projected bounding box: most of the image never meets it.
    candidates = [(None, _hit_plane_z(o, d, 0.0), FLOOR_RGB, 'floor')]
    if walls or room_half_m is not None:
        candidates += [(None, hit, WALL_RGB) for hit in _wall_hits(o, d, room_half_m)]
    if style.ceiling and room_half_m is not None:
        t, n = _hit_plane_z(o, d, WALL_HEIGHT_M)
        inside = np.all(np.abs(o[:2] + d[:, :2] * np.where(np.isfinite(t), t, 0.0)[:, None]) <= room_half_m, axis=1)
        candidates.append((None, (np.where(inside, t, np.inf), -n), CEILING_RGB))
    for obj in objects:
        rays = _screen_rays(obj, K, pose, width, height)
        candidates.append((rays, _HITTERS[obj.shape](o, d if rays is None else d[rays], obj), obj.rgb, obj.shape))
    for rays, (t, n), rgb, *shape in candidates:
        rays = np.arange(n_rays) if rays is None else rays
        closer = t < best_t[rays]
        hit = rays[closer]
        best_t[hit] = t[closer]
        best_n[hit] = n[closer]
        best_rgb[hit] = rgb
        shaded[hit] = True
        if textured:
            shape_of[hit] = shape[0] if shape else ''
    if textured:
        for shape_name, pattern in [
            *textures.items(),
            *([('floor', PATTERNS[style.floor])] if style.floor != 'plain' else []),
        ]:
            on = np.flatnonzero((shape_of == shape_name) & np.isfinite(best_t))
            if len(on):
                best_rgb[on] *= pattern(o + d[on] * best_t[on, None])[:, None]

    ray_len = best_t * np.linalg.norm(d, axis=1)
    valid = np.isfinite(best_t) & (ray_len <= MAX_RANGE_M)
    light_dir = (
        LIGHT_DIR
        if style.light_dir == STANDARD_STYLE.light_dir
        else np.asarray(style.light_dir) / np.linalg.norm(style.light_dir)
    )
    shade = style.ambient + style.light * np.clip(best_n @ light_dir, 0.0, 1.0)
    colour = np.where((valid & shaded)[:, None], best_rgb * shade[:, None], np.asarray(SKY_RGB, float))
    rgb = np.clip(np.rint(colour), 0, 255).astype(np.uint8).reshape(height, width, 3)
    depth_mm = np.where(valid, np.rint(np.where(valid, best_t, 0.0) * 1000.0), 0.0)
    depth = np.clip(depth_mm, 0, 65535).astype(np.uint16).reshape(height, width)
    return rgb, depth


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 optical-to-world pose for a camera at `eye` looking at `target` (x right, y down, z forward)."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:  # looking along `up`: pick any right vector
        x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def intrinsics(width: int, height: int) -> np.ndarray:
    f = width * 0.8
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def scene_centre(objects: Sequence[SceneObject]) -> np.ndarray:
    """Centre of the scene on the floor: mean object xy at z = 0 (origin when empty)."""
    if not objects:
        return np.zeros(3)
    xy = np.mean([o.centre[:2] for o in objects], axis=0)
    return np.array([xy[0], xy[1], 0.0])


def add_depth_defects(
    depth: np.ndarray, rng: np.random.Generator, missing_fraction: float = 0.05, noise_fraction: float = 0.01
) -> np.ndarray:
    """Gaussian noise of `noise_fraction` x depth, then `missing_fraction` of pixels set to 0."""
    d = depth.astype(np.float64)
    noisy = d * (1.0 + noise_fraction * rng.standard_normal(d.shape))
    noisy = np.where(d > 0, np.clip(np.rint(noisy), 1, 65535), 0)
    noisy[rng.random(d.shape) < missing_fraction] = 0
    return noisy.astype(np.uint16)


def orbit_frames(
    objects: Sequence[SceneObject],
    n_views: int = 12,
    width: int = 160,
    height: int = 120,
    radius: float = 3.0,
    height_m: float = 1.5,
    seed: int = 0,
    defects: bool = False,
    start_ns: int = 1_000_000_000,
    period_s: float = 0.2,
    walls: bool = False,
) -> List[RGBDFrame]:
    """Camera circling the scene centre at `radius`, `height_m` above the floor, looking at the centre."""
    K = intrinsics(width, height)
    centre = scene_centre(objects)
    rng = np.random.default_rng(seed)
    period_ns = int(round(period_s * 1e9))
    frames = []
    for i in range(n_views):
        angle = 2.0 * np.pi * i / n_views
        eye = centre + np.array([radius * np.cos(angle), radius * np.sin(angle), height_m])
        pose = look_at(eye, centre)
        rgb, depth = render(objects, K, pose, width, height, walls=walls)
        if defects:
            depth = add_depth_defects(depth, rng)
        frames.append(RGBDFrame(rgb=rgb, depth=depth, K=K.copy(), pose=pose, stamp_ns=start_ns + i * period_ns))
    return frames


@dataclass(frozen=True)
class CameraPath:
    """Where room_frames' camera walks. The default is the standard path: once around the room
    between the walls and the object area (2.5-2.9 m from the centre), 1.0-1.6 m high, aimed at a
    point within aim_m of the centre. A smaller radius circles within the object area, as a robot
    driving among the objects would; outward: looking away from the centre (at the floor 2 m out)
    instead of at it."""

    radius_m: Tuple[float, float] = (2.5, 2.9)
    height_m: Tuple[float, float] = (1.0, 1.6)
    aim_m: float = 0.4
    outward: bool = False


STANDARD_PATH = CameraPath()
# sample_style's training paths, 0.5-1.8 m high: around the object area (listed twice: half the rooms),
# circling its rim looking in, or near its centre looking out. None circles 1.0-1.5 m (held out).
AROUND_PATH = CameraPath(radius_m=(2.2, 2.9), height_m=(0.5, 1.8), aim_m=1.0)
RIM_PATH = CameraPath(radius_m=(1.6, 2.0), height_m=(0.5, 1.8), aim_m=0.4)
CENTRE_OUT_PATH = CameraPath(radius_m=(0.3, 0.8), height_m=(0.5, 1.8), aim_m=0.3, outward=True)
TRAINING_PATHS = (AROUND_PATH, AROUND_PATH, RIM_PATH, CENTRE_OUT_PATH)


@dataclass(frozen=True)
class DepthDefects:
    """Depth sensor defects: relative Gaussian noise, missing pixels at random, and missing blobs
    (glossy or dark surfaces) and a missing border strip (a stereo camera's invalid band)."""

    noise_fraction: float = 0.01
    missing_fraction: float = 0.05
    blobs: int = 0
    border_px: int = 0


STANDARD_DEFECTS = DepthDefects()


def add_depth_holes(depth: np.ndarray, rng: np.random.Generator, defects: DepthDefects) -> np.ndarray:
    """Blobs of radius 3-12% of the image height set to 0, and a left border strip."""
    out = depth.copy()
    h, w = out.shape
    rows, cols = np.mgrid[0:h, 0:w]
    for _ in range(defects.blobs):
        r = rng.uniform(0.03, 0.12) * h
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        out[(rows - cy) ** 2 + (cols - cx) ** 2 < r * r] = 0
    out[:, : defects.border_px] = 0
    return out


def room_frames(
    objects: Sequence[SceneObject],
    n_views: int = 8,
    width: int = 214,
    height: int = 160,
    seed: int = 0,
    defects: bool = True,
    room_half_m: float = ROOM_HALF_M,
    max_range_m: float = 4.5,
    start_ns: int = 1_000_000_000,
    period_s: float = 0.2,
    style: Optional[RenderStyle] = None,
    path: CameraPath = STANDARD_PATH,
    depth_defects: DepthDefects = STANDARD_DEFECTS,
) -> List[RGBDFrame]:
    """A robot's camera walking once around the inside of a closed room, looking at its middle.

    Seeded per scene: start angle, direction, distance from the room centre, camera height and aim
    (CameraPath) vary, so no two scenes are seen from the same poses. The room centre is the world
    origin; objects stand inside +-2 m. Depth reads 0 beyond max_range_m, as an RGB-D camera's
    does (the colour still shows it). Objects are textured by shape (SHAPE_TEXTURES), or as `style`
    says.
    """
    K = intrinsics(width, height)
    rng = np.random.default_rng(seed)
    start, direction = rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0])
    period_ns = int(round(period_s * 1e9))
    frames = []
    for i in range(n_views):
        angle = start + direction * 2.0 * np.pi * (i + rng.uniform(-0.2, 0.2)) / n_views
        radius, cam_height = rng.uniform(*path.radius_m), rng.uniform(*path.height_m)
        eye = np.array([radius * np.cos(angle), radius * np.sin(angle), cam_height])
        target = np.array([*rng.uniform(-path.aim_m, path.aim_m, 2), rng.uniform(0.0, 0.3)])
        if path.outward:
            target[:2] += eye[:2] + 2.0 * np.array([np.cos(angle), np.sin(angle)])
        pose = look_at(eye, target)
        rgb, depth = render(objects, K, pose, width, height, room_half_m=room_half_m, textured=True, style=style)
        depth[depth > max_range_m * 1000.0] = 0
        if defects:
            depth = add_depth_defects(depth, rng, depth_defects.missing_fraction, depth_defects.noise_fraction)
            if depth_defects != STANDARD_DEFECTS:
                depth = add_depth_holes(depth, rng, depth_defects)
        frames.append(RGBDFrame(rgb=rgb, depth=depth, K=K.copy(), pose=pose, stamp_ns=start_ns + i * period_ns))
    return frames


def sample_style(rng: np.random.Generator, held_out: bool) -> Tuple[RenderStyle, CameraPath, DepthDefects]:
    """A randomised way to draw a room. held_out=False draws from the ranges a randomised training
    set may use; held_out=True from settings those never produce (the shifted test split):

        textures     training: any pattern or none on boxes and cylinders, spheres plain, banded or dotted
                     held out: checkered or striped spheres
        lighting     training: light 30-90 degrees above the horizon, ambient 0.30-0.60
                     held out: light 10-25 degrees above the horizon, ambient 0.62-0.75
        camera path  training: 0.5-1.8 m high; around the room outside the object area (half the
                     rooms), circling its rim 1.6-2.0 m from the centre looking in, or near the
                     centre (0.3-0.8 m) looking out
                     held out: circling inside the object area (1.0-1.5 m from the centre) looking
                     in, 1.3-1.7 m high
    Both: floors plain, checkered or tiled, a ceiling half the time, depth holes of several kinds.
    """
    patterns = ('plain', 'checker', 'bands', 'stripes', 'dots')
    box, cylinder = (str(rng.choice(patterns)) for _ in range(2))
    sphere = str(rng.choice(('checker', 'stripes') if held_out else ('plain', 'bands', 'dots')))
    elevation = np.radians(rng.uniform(10, 25) if held_out else rng.uniform(30, 90))
    azimuth = rng.uniform(0, 2 * np.pi)
    light_dir = (
        float(np.cos(elevation) * np.cos(azimuth)),
        float(np.cos(elevation) * np.sin(azimuth)),
        float(np.sin(elevation)),
    )
    ambient = float(rng.uniform(0.62, 0.75) if held_out else rng.uniform(0.30, 0.60))
    style = RenderStyle(
        textures=(('box', box), ('cylinder', cylinder), ('sphere', sphere)),
        floor=str(rng.choice(('plain', 'checker', 'tiles'))),
        ceiling=bool(rng.random() < 0.5),
        light_dir=light_dir,
        ambient=ambient,
        light=float(min(1.0 - ambient + 0.2, rng.uniform(0.4, 0.7))),
    )
    if held_out:
        path = CameraPath(radius_m=(1.0, 1.5), height_m=(1.3, 1.7), aim_m=0.4)
    else:
        path = TRAINING_PATHS[int(rng.integers(len(TRAINING_PATHS)))]
    defects = DepthDefects(
        noise_fraction=float(rng.uniform(0.005, 0.02)),
        missing_fraction=float(rng.uniform(0.0, 0.08)),
        blobs=int(rng.integers(0, 5)),
        border_px=int(rng.choice((0, 0, 4, 8))),
    )
    return style, path, defects
