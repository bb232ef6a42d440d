"""Exact-ish geometry checks for the procedural RGB-D scene generator (pure numpy)."""

import time

import numpy as np
import pytest

from adatoken3d_lab.datasets import RGBDFrame
from adatoken3d_lab.synthetic import (
    COLOURS,
    SHAPES,
    SceneObject,
    look_at,
    make_scene,
    orbit_frames,
    render,
    scene_centre,
)

W, H = 161, 121  # odd sizes: the principal point is a pixel centre
K = np.array([[120.0, 0.0, 80.0], [0.0, 120.0, 60.0], [0.0, 0.0, 1.0]])


def down_pose(height=2.0):
    pose = np.eye(4)
    pose[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # columns: x, y, z
    pose[:3, 3] = (0.0, 0.0, height)
    return pose


def obj(shape, centre, size, colour='red'):
    return SceneObject(shape, colour, COLOURS[colour], tuple(centre), tuple(size))


def test_straight_down_on_empty_floor_is_flat():
    pose = down_pose(2.0)
    assert np.isclose(np.linalg.det(pose[:3, :3]), 1.0)
    rgb, depth = render([], K, pose, W, H)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert depth.shape == (H, W) and depth.dtype == np.uint16
    assert depth[60, 80] == 2000
    assert np.all(depth == 2000)  # optical z, not ray length: a flat plane is constant
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) == 1


def test_sphere_projects_to_expected_pixel_with_expected_depth():
    eye, r = np.array([0.0, 0.0, 0.25]), 0.25
    pose = look_at(eye, eye + [1.0, 0.0, 0.0])
    on_axis = obj('sphere', (3.0, 0.0, 0.25), (0.5, 0.5, 0.5))
    rgb, depth = render([on_axis], K, pose, W, H)
    assert depth[60, 80] == 2750  # distance 3 - radius 0.25
    assert tuple(rgb[60, 80]) != tuple(rgb[60, 0])
    # off-axis: world -y is optical +x, so (3, -0.5) projects to u = 80 + 120 * 0.5 / 3 = 100
    c = np.array([3.0, -0.5, 0.25])
    rgb, depth = render([obj('sphere', c, (0.5, 0.5, 0.5), 'blue')], K, pose, W, H)
    dist = np.linalg.norm(c - eye)
    expected_z = (dist - r) * 3.0 / dist  # nearest surface point along the centre ray, optical z
    assert abs(depth[60, 100] / 1000.0 - expected_z) < 0.002
    _, empty = render([], K, pose, W, H)
    ys, xs = np.nonzero(depth != empty)  # pixels where the sphere is the nearest hit
    assert abs(xs.mean() - 100) < 1.0 and abs(ys.mean() - 60) < 1.0
    # apparent radius ~ f * r / sqrt(dist^2 - r^2)
    assert abs((xs.max() - xs.min() + 1) / 2 - 120 * r / np.sqrt(dist**2 - r**2)) < 1.5


def test_box_occludes_sphere_behind_it():
    eye = np.array([0.0, 0.0, 0.25])
    pose = look_at(eye, eye + [1.0, 0.0, 0.0])
    box = obj('box', (2.0, 0.0, 0.25), (0.5, 0.5, 0.5), 'green')
    sphere = obj('sphere', (4.0, 0.0, 0.25), (0.5, 0.5, 0.5), 'red')
    rgb_s, depth_s = render([sphere], K, pose, W, H)
    assert depth_s[60, 80] == 3750
    for order in ([box, sphere], [sphere, box]):
        rgb, depth = render(order, K, pose, W, H)
        assert depth[60, 80] == 1750  # front face of the box at x = 1.75
        g = rgb[60, 80].astype(int)
        assert g[1] > g[0] and g[1] > g[2]  # green, not red


def test_cylinder_side_and_cap():
    cyl = obj('cylinder', (0.0, 0.0, 0.2), (0.4, 0.4, 0.4), 'yellow')
    _, depth = render([cyl], K, down_pose(2.0), W, H)
    assert depth[60, 80] == 1600  # top cap at z = 0.4
    eye = np.array([-3.0, 0.0, 0.2])
    _, depth = render([cyl], K, look_at(eye, [0.0, 0.0, 0.2]), W, H)
    assert depth[60, 80] == 2800  # side at distance 3 - 0.2


def _overlap(a, b):
    return np.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]) <= a.footprint_radius + b.footprint_radius


@pytest.mark.parametrize('seed', range(20))
def test_make_scene_valid_and_deterministic(seed):
    objects = make_scene(seed)
    assert objects == make_scene(seed)
    assert 2 <= len(objects) <= 8
    for o in objects:
        assert o.shape in SHAPES and o.colour_name in COLOURS and o.rgb == COLOURS[o.colour_name]
        assert all(0.2 <= s <= 0.6 for s in o.size)
        assert np.isclose(o.centre[2], o.size[2] / 2)
        if o.shape == 'sphere':
            assert o.size[0] == o.size[1] == o.size[2]
        if o.shape == 'cylinder':
            assert o.size[0] == o.size[1]
        r = o.footprint_radius
        assert abs(o.centre[0]) + r <= 2.0 and abs(o.centre[1]) + r <= 2.0
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            assert not _overlap(a, b)


def test_make_scene_n_objects_override_and_variety():
    assert len(make_scene(3, n_objects=8)) == 8
    assert len(make_scene(3, n_objects=2)) == 2
    many = [o for s in range(30) for o in make_scene(s)]
    assert {o.shape for o in many} == set(SHAPES)
    assert len({o.colour_name for o in many}) >= 8
    assert make_scene(1) != make_scene(2)


def _backproject(frame, u, v):
    z = frame.depth[v, u] / 1000.0
    p_cam = z * np.linalg.inv(frame.K) @ np.array([u, v, 1.0])
    return frame.pose[:3, :3] @ p_cam + frame.pose[:3, 3]


def _on_object(p, o, tol=0.03):
    c, s = np.asarray(o.centre), np.asarray(o.size) / 2
    return np.all(np.abs(p - c) <= s + tol)


@pytest.mark.parametrize("seed", range(8))
def test_orbit_frames_look_at_centre(seed):
    objects = make_scene(seed)
    frames = orbit_frames(objects, n_views=12)
    assert len(frames) == 12
    centre = scene_centre(objects)
    largest = max(max(o.size) for o in objects)
    for i, f in enumerate(frames):
        assert isinstance(f, RGBDFrame)
        assert f.rgb.shape == (120, 160, 3) and f.rgb.dtype == np.uint8
        assert f.depth.shape == (120, 160) and f.depth.dtype == np.uint16
        assert f.stamp_ns == 1_000_000_000 + i * 200_000_000
        assert np.allclose(f.K, [[128, 0, 79.5], [0, 128, 59.5], [0, 0, 1]])
        R, t = f.pose[:3, :3], f.pose[:3, 3]
        assert np.allclose(R.T @ R, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
        assert np.isclose(np.hypot(*(t - centre)[:2]), 3.0) and np.isclose(t[2], 1.5)
        to_centre = (centre - t) / np.linalg.norm(centre - t)
        assert np.degrees(np.arccos(np.clip(R[:, 2] @ to_centre, -1, 1))) < 1.0
        assert R[2, 1] < 0  # optical y (down) points down in the world
        p = _backproject(f, 80, 60)
        assert f.depth[60, 80] > 0
        on_floor = abs(p[2]) < 0.03 and np.linalg.norm(p - centre) < 0.1
        on_surface = any(_on_object(p, o) for o in objects)
        # either the floor at the centre, or an object surface on the line of sight to the centre
        # (an object between camera and centre can occlude it, so it need not be near the centre)
        ray = (p - t) / np.linalg.norm(p - t)
        assert np.degrees(np.arccos(np.clip(ray @ to_centre, -1, 1))) < 1.0
        in_front = np.linalg.norm(p - t) <= np.linalg.norm(centre - t) + largest
        assert on_floor or (on_surface and in_front)


def test_orbit_sees_objects_and_floor():
    objects = make_scene(5, n_objects=6)
    f = orbit_frames(objects, n_views=4)[0]
    ys, xs = np.nonzero(f.depth)
    pts = (np.linalg.inv(f.K) @ np.stack([xs, ys, np.ones_like(xs)])) * (f.depth[ys, xs] / 1000.0)
    world = f.pose[:3, :3] @ pts + f.pose[:3, 3:4]
    assert np.all(world[2] > -0.01) and np.all(world[2] < 0.62)  # nothing below the floor or above objects
    assert np.mean(np.abs(world[2]) < 0.01) > 0.3  # mostly floor
    assert np.mean(world[2] > 0.05) > 0.02  # but objects are visible


def test_defects():
    objects = make_scene(7)
    clean = orbit_frames(objects, n_views=3, seed=4)
    noisy = orbit_frames(objects, n_views=3, seed=4, defects=True)
    again = orbit_frames(objects, n_views=3, seed=4, defects=True)
    other = orbit_frames(objects, n_views=3, seed=5, defects=True)
    for c, n, a, o in zip(clean, noisy, again, other):
        assert np.array_equal(n.depth, a.depth) and np.array_equal(n.rgb, c.rgb)
        assert np.array_equal(n.pose, c.pose)
        assert not np.array_equal(n.depth, o.depth)
        valid = c.depth > 0
        missing = valid & (n.depth == 0)
        assert 0.035 < missing.sum() / valid.sum() < 0.065
        assert np.all(n.depth[~valid] == 0)
        both = valid & (n.depth > 0)
        rel = np.abs(n.depth[both].astype(float) - c.depth[both]) / c.depth[both]
        assert 0.005 < np.median(rel) < 0.012  # ~1% Gaussian: median |x| = 0.67 sigma
        assert rel.max() < 0.07
        assert np.mean(rel > 0) > 0.9


def test_deterministic_arrays():
    a = orbit_frames(make_scene(11), n_views=4, seed=2, defects=True)
    b = orbit_frames(make_scene(11), n_views=4, seed=2, defects=True)
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.rgb, fb.rgb) and np.array_equal(fa.depth, fb.depth)
        assert np.array_equal(fa.pose, fb.pose) and fa.stamp_ns == fb.stamp_ns


def test_render_is_fast():
    objects = make_scene(0, n_objects=8)
    orbit_frames(objects, n_views=1)
    start = time.perf_counter()
    orbit_frames(objects, n_views=12, defects=True)
    assert time.perf_counter() - start < 3.0  # well under 1 s normally; slack for loaded CI
