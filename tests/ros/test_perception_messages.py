"""sensor_msgs -> numpy conversions, on real sensor_msgs messages built here."""

import dataclasses

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from adatoken3d_node.perception.messages import (
    CameraModel,
    MessageFormatError,
    camera_info_to_model,
    depth_to_metres,
    image_to_rgb,
    pointcloud_to_xyz,
)

F32, F64, U32, U16, U8 = PointField.FLOAT32, PointField.FLOAT64, PointField.UINT32, PointField.UINT16, PointField.UINT8
NAN, INF = float('nan'), float('inf')


# --------------------------------------------------------------------------------------------- builders


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, **override) -> Image:
    """Image from (H, W) or (H, W, C) pixels, each row followed by `pad` bytes of 0xEE."""
    pixels = pixels.astype(pixels.dtype.newbyteorder('>' if bigendian else '<'))
    h, w = pixels.shape[:2]
    rows = np.frombuffer(pixels.tobytes(), np.uint8).reshape(h, -1)
    data = np.concatenate([rows, np.full((h, pad), 0xEE, np.uint8)], axis=1)
    msg = Image(
        height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1] + pad, data=data.tobytes()
    )
    msg.header.frame_id = 'camera_color_optical_frame'
    for key, value in override.items():
        setattr(msg, key, value)
    return msg


def shares_data(array: np.ndarray, msg) -> bool:
    return np.shares_memory(array, np.frombuffer(msg.data, np.uint8))


def make_cloud(
    fields, point_step: int, values: dict, height: int = 1, pad: int = 0, bigendian: bool = False, **override
) -> PointCloud2:
    """PointCloud2 with `fields` = [(name, offset, datatype, count)], `values` = {name: (H, W[, count]) array}."""
    order = '>' if bigendian else '<'
    kinds = {PointField.INT8: 'i1', U8: 'u1', U16: 'u2', U32: 'u4', F32: 'f4', F64: 'f8'}
    record = np.dtype(
        {
            'names': [f[0] for f in fields],
            'formats': [(order + kinds[f[2]], (f[3],)) if f[3] > 1 else order + kinds[f[2]] for f in fields],
            'offsets': [f[1] for f in fields],
            'itemsize': point_step,
        }
    )
    width = np.asarray(values['x']).size // height
    points = np.zeros((height, width), record)
    for name, v in values.items():
        points[name] = np.asarray(v).reshape(points[name].shape)
    rows = np.frombuffer(points.tobytes(), np.uint8).reshape(height, -1)
    data = np.concatenate([rows, np.full((height, pad), 0xEE, np.uint8)], axis=1)
    msg = PointCloud2(
        height=height,
        width=width,
        is_bigendian=bigendian,
        point_step=point_step,
        row_step=width * point_step + pad,
        data=data.tobytes(),
        is_dense=False,
        fields=[PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in fields],
    )
    msg.header.frame_id = 'lidar'
    for key, value in override.items():
        setattr(msg, key, value)
    return msg


def packed(rgb) -> np.ndarray:
    """(N, 3) uint8 -> (N,) uint32 0x00RRGGBB, as PCL packs colour."""
    rgb = np.asarray(rgb, np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


XYZ_F32 = [('x', 0, F32, 1), ('y', 4, F32, 1), ('z', 8, F32, 1)]
XYZ = np.array([[0.5, -1.25, 2.0], [3.0, 0.0, -4.5], [1e-3, 7.75, 100.0]], np.float32)  # (3, 3) metres
RGB = np.array([[255, 0, 0], [1, 2, 3], [10, 200, 77]], np.uint8)


# --------------------------------------------------------------------------------------------- colour

RGB_PIXELS = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7  # (H=2, W=3, 3)


def test_rgb8_is_a_view_of_the_message_data():
    msg = make_image(RGB_PIXELS, 'rgb8')
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB_PIXELS)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert shares_data(out, msg)


def test_bgr8_is_reordered_to_rgb():
    msg = make_image(RGB_PIXELS[:, :, ::-1], 'bgr8')
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB_PIXELS)
    assert out[0, 1].tolist() == [21, 28, 35]
    assert out.flags.c_contiguous


def test_rgba8_drops_alpha_without_copying():
    alpha = np.full((2, 3, 1), 99, np.uint8)
    msg = make_image(np.concatenate([RGB_PIXELS, alpha], axis=2), 'rgba8')
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB_PIXELS)
    assert shares_data(out, msg)


def test_bgra8_is_reordered_to_rgb():
    alpha = np.full((2, 3, 1), 99, np.uint8)
    msg = make_image(np.concatenate([RGB_PIXELS[:, :, ::-1], alpha], axis=2), 'bgra8')
    np.testing.assert_array_equal(image_to_rgb(msg), RGB_PIXELS)


def test_mono8_is_replicated_to_three_channels():
    gray = np.array([[0, 17, 255], [1, 2, 3]], np.uint8)
    out = image_to_rgb(make_image(gray, 'mono8'))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_keeps_the_high_byte(bigendian):
    gray = np.array([[0, 255, 256], [0x1234, 0xFF00, 0xFFFF]], np.uint16)
    out = image_to_rgb(make_image(gray, 'mono16', bigendian=bigendian))
    expected = np.array([[0, 0, 1], [0x12, 0xFF, 0xFF]], np.uint8)
    np.testing.assert_array_equal(out, np.stack([expected] * 3, axis=2))


def test_row_padding_8bit_is_skipped_without_copying():
    msg = make_image(RGB_PIXELS, 'rgb8', pad=5)
    assert msg.step == 3 * 3 + 5
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB_PIXELS)
    assert shares_data(out, msg)
    np.testing.assert_array_equal(image_to_rgb(make_image(RGB_PIXELS[:, :, ::-1], 'bgr8', pad=3)), RGB_PIXELS)


def test_row_padding_16bit_with_odd_step():
    gray = np.array([[0x0100, 0x0200], [0x0300, 0xFFFF]], np.uint16)
    msg = make_image(gray, 'mono16', pad=3, bigendian=True)
    assert msg.step == 7
    np.testing.assert_array_equal(image_to_rgb(msg)[:, :, 0], [[1, 2], [3, 255]])


def test_colour_errors_name_the_topic_and_the_problem():
    topic = 'color/image_raw'
    with pytest.raises(
        MessageFormatError,
        match=r"^color/image_raw: Image encoding 'yuv422' is not a colour "
        r"encoding; accepted: rgb8, bgr8, rgba8, bgra8, mono8, mono16$",
    ):
        image_to_rgb(make_image(RGB_PIXELS, 'yuv422'), topic)
    with pytest.raises(MessageFormatError, match=r"^color/image_raw: Image encoding '16UC1'"):
        image_to_rgb(make_image(np.zeros((2, 2), np.uint16), '16UC1'), topic)
    with pytest.raises(MessageFormatError, match=r'^color/image_raw: Image step 8 is less than width\*3 = 9 bytes'):
        image_to_rgb(make_image(RGB_PIXELS, 'rgb8', step=8), topic)
    with pytest.raises(MessageFormatError, match=r'^color/image_raw: Image data has 17 bytes, step\*height needs 18$'):
        image_to_rgb(make_image(RGB_PIXELS, 'rgb8', data=bytes(17)), topic)
    with pytest.raises(MessageFormatError, match=r'^color/image_raw: Image has zero size \(0x2\)$'):
        image_to_rgb(make_image(RGB_PIXELS, 'rgb8', width=0), topic)
    with pytest.raises(MessageFormatError, match=r'^color/image_raw: Image has zero size \(3x0\)$'):
        image_to_rgb(make_image(RGB_PIXELS, 'rgb8', height=0), topic)
    with pytest.raises(MessageFormatError, match=r'^Image has zero size'):  # no topic: no prefix
        image_to_rgb(make_image(RGB_PIXELS, 'rgb8', height=0))


def test_message_format_error_is_a_value_error_with_its_parts():
    err = MessageFormatError('bad step', 'depth/image_raw')
    assert isinstance(err, ValueError)
    assert (str(err), err.topic, err.problem) == ('depth/image_raw: bad step', 'depth/image_raw', 'bad step')


# --------------------------------------------------------------------------------------------- depth

MM = np.array([[0, 1, 1234], [500, 65535, 1000]], np.uint16)
MM_AS_M = np.array([[0.0, 0.001, 1.234], [0.5, 65.535, 1.0]], np.float32)


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
def test_millimetres_become_metres_with_zero_invalid(encoding):
    out = depth_to_metres(make_image(MM, encoding))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, MM_AS_M)


def test_32fc1_invalid_values_become_zero():
    raw = np.array([[1.5, NAN, INF], [-INF, -2.0, 0.0], [0.25, 3.0, -0.0]], np.float32)
    out = depth_to_metres(make_image(raw, '32FC1'))
    np.testing.assert_array_equal(out, np.array([[1.5, 0, 0], [0, 0, 0], [0.25, 3.0, 0]], np.float32))
    assert not np.signbit(out).any()


def test_big_endian_depth():
    np.testing.assert_array_equal(depth_to_metres(make_image(MM, '16UC1', bigendian=True)), MM_AS_M)
    raw = np.array([[1.5, NAN], [2.75, -1.0]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(make_image(raw, '32FC1', bigendian=True)), [[1.5, 0], [2.75, 0]])


def test_depth_row_padding():
    np.testing.assert_array_equal(depth_to_metres(make_image(MM, '16UC1', pad=2)), MM_AS_M)
    raw = np.array([[1.5, 2.0], [2.75, 4.0]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(make_image(raw, '32FC1', pad=5)), raw)


def test_depth_scale_overrides_the_encoding_unit():
    tum = np.array([[0, 5000, 10000, 2500]], np.uint16)  # TUM RGB-D: 5000 units per metre
    np.testing.assert_array_equal(
        depth_to_metres(make_image(tum, '16UC1'), scale=0.0002), np.array([[0, 1.0, 2.0, 0.5]], np.float32)
    )
    raw = np.array([[1.5, NAN, 2.0]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(make_image(raw, '32FC1'), scale=2.0), [[3.0, 0, 4.0]])
    for bad in (0.0, -1.0, NAN, INF):
        with pytest.raises(ValueError, match='depth scale'):
            depth_to_metres(make_image(tum, '16UC1'), scale=bad)


def test_depth_does_not_modify_the_message():
    raw = np.array([[1.5, NAN]], np.float32)
    msg = make_image(raw, '32FC1')
    before = bytes(msg.data)
    depth_to_metres(msg)
    assert bytes(msg.data) == before


def test_depth_errors_name_the_topic_and_the_problem():
    topic = 'depth/image_raw'
    with pytest.raises(
        MessageFormatError,
        match=r"^depth/image_raw: Image encoding 'rgb8' is not a depth encoding; "
        r"accepted: 16UC1, mono16, 32FC1$",
    ):
        depth_to_metres(make_image(RGB_PIXELS, 'rgb8'), topic)
    with pytest.raises(
        MessageFormatError,
        match=r'^depth/image_raw: Image data has 1000 bytes, '
        r'step\*height needs 614400$',
    ):
        depth_to_metres(make_image(np.zeros((480, 640), np.uint16), '16UC1', data=bytes(1000)), topic)
    with pytest.raises(MessageFormatError, match=r'^depth/image_raw: Image step 11 is less than width\*4 = 12'):
        depth_to_metres(make_image(np.zeros((2, 3), np.float32), '32FC1', step=11), topic)
    with pytest.raises(MessageFormatError, match=r'^depth/image_raw: Image has zero size \(0x2\)$'):
        depth_to_metres(make_image(MM, '16UC1', width=0), topic)


# --------------------------------------------------------------------------------------------- camera info


def make_info(k=(525.0, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1), d=(), model='plumb_bob', width=640, height=480):
    msg = CameraInfo(width=width, height=height, k=list(k), d=list(d), distortion_model=model)
    msg.header.frame_id = 'camera_color_optical_frame'
    return msg


def test_camera_info_to_model():
    cam = camera_info_to_model(make_info(d=[0.0] * 5))
    assert isinstance(cam, CameraModel)
    np.testing.assert_array_equal(cam.K, [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    assert cam.K.dtype == np.float64 and cam.D.dtype == np.float64
    assert (cam.width, cam.height) == (640, 480)
    assert (cam.distortion_model, cam.frame_id) == ('plumb_bob', 'camera_color_optical_frame')
    np.testing.assert_array_equal(cam.D, np.zeros(5))
    assert not cam.has_distortion


def test_distortion_flag():
    assert not camera_info_to_model(make_info(d=[], model='')).has_distortion
    cam = camera_info_to_model(make_info(d=[0.1, -0.2, 0, 0, 0.003]))
    assert cam.has_distortion
    np.testing.assert_array_equal(cam.D, [0.1, -0.2, 0, 0, 0.003])


def test_camera_model_is_immutable_and_independent_of_the_message():
    msg = make_info()
    cam = camera_info_to_model(msg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cam.width = 1
    with pytest.raises(ValueError):
        cam.K[0, 0] = 1.0
    msg.k[0] = 1.0
    assert cam.K[0, 0] == 525.0


@pytest.mark.parametrize('fx, fy', [(0.0, 525.0), (525.0, 0.0), (-525.0, 525.0), (NAN, 525.0), (525.0, INF)])
def test_bad_focal_length_is_an_error(fx, fy):
    with pytest.raises(
        MessageFormatError,
        match=r'^color/camera_info: CameraInfo focal length fx=.*, fy=.* must be '
        r'positive and finite',
    ):
        camera_info_to_model(make_info(k=(fx, 0, 319.5, 0, fy, 239.5, 0, 0, 1)), 'color/camera_info')


def test_camera_info_other_errors():
    with pytest.raises(MessageFormatError, match=r'^color/camera_info: CameraInfo has zero size \(0x480\)$'):
        camera_info_to_model(make_info(width=0), 'color/camera_info')
    with pytest.raises(MessageFormatError, match=r'^color/camera_info: CameraInfo k has non-finite values'):
        camera_info_to_model(make_info(k=(525.0, 0, NAN, 0, 525.0, 239.5, 0, 0, 1)), 'color/camera_info')


# --------------------------------------------------------------------------------------------- point clouds


def test_float32_xyz():
    msg = make_cloud(XYZ_F32, 12, {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2]})
    xyz, rgb = pointcloud_to_xyz(msg)
    assert xyz.dtype == np.float32 and xyz.shape == (3, 3) and rgb is None
    np.testing.assert_array_equal(xyz, XYZ)


def test_float64_xyz_becomes_float32():
    fields = [('x', 0, F64, 1), ('y', 8, F64, 1), ('z', 16, F64, 1)]
    xyz64 = np.array([[0.1, -2.5, 3.0], [1e6, 0.3, -0.7]])
    xyz, _ = pointcloud_to_xyz(make_cloud(fields, 24, {'x': xyz64[:, 0], 'y': xyz64[:, 1], 'z': xyz64[:, 2]}))
    assert xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz, xyz64.astype(np.float32))


def test_packed_float_rgb():
    fields = XYZ_F32 + [('rgb', 16, F32, 1)]  # PCL's PointXYZRGB: 4 bytes padding after z
    values = {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'rgb': packed(RGB).view(np.float32)}
    xyz, rgb = pointcloud_to_xyz(make_cloud(fields, 32, values))
    np.testing.assert_array_equal(xyz, XYZ)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 3)
    np.testing.assert_array_equal(rgb, RGB)


def test_rgba_uint32_ignores_alpha():
    fields = XYZ_F32 + [('rgba', 12, U32, 1)]
    values = {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'rgba': packed(RGB) | np.uint32(0xFF000000)}
    _, rgb = pointcloud_to_xyz(make_cloud(fields, 16, values))
    np.testing.assert_array_equal(rgb, RGB)


def test_extra_fields_and_odd_offsets():
    # Unaligned layout with fields the parser must step over: ring (uint16), intensity, a 3-vector normal.
    fields = [
        ('ring', 0, U16, 1),
        ('x', 2, F32, 1),
        ('intensity', 6, F32, 1),
        ('y', 10, F32, 1),
        ('normal', 14, F32, 3),
        ('z', 26, F32, 1),
        ('rgb', 31, U32, 1),
        ('flag', 35, U8, 1),
    ]
    values = {
        'x': XYZ[:, 0],
        'y': XYZ[:, 1],
        'z': XYZ[:, 2],
        'rgb': packed(RGB),
        'ring': [7, 8, 9],
        'intensity': [NAN, 1.0, 2.0],
        'normal': np.full((3, 3), NAN, np.float32),
        'flag': [1, 2, 3],
    }
    xyz, rgb = pointcloud_to_xyz(make_cloud(fields, 37, values))
    np.testing.assert_array_equal(xyz, XYZ)  # NaN in extra fields does not drop points
    np.testing.assert_array_equal(rgb, RGB)


def test_organised_cloud_with_row_padding():
    grid = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) * 0.5  # (H=2, W=3, xyz)
    colours = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    fields = XYZ_F32 + [('rgb', 12, F32, 1)]
    values = {
        'x': grid[..., 0],
        'y': grid[..., 1],
        'z': grid[..., 2],
        'rgb': packed(colours.reshape(-1, 3)).view(np.float32).reshape(2, 3),
    }
    msg = make_cloud(fields, 16, values, height=2, pad=6)
    assert (msg.height, msg.width, msg.row_step) == (2, 3, 54)
    xyz, rgb = pointcloud_to_xyz(msg)
    np.testing.assert_array_equal(xyz, grid.reshape(-1, 3))  # row-major order
    np.testing.assert_array_equal(rgb, colours.reshape(-1, 3))


def test_non_finite_points_are_dropped_with_their_colours():
    pts = np.array([[1, 2, 3], [NAN, NAN, NAN], [4, INF, 5], [6, 7, 8], [9, 10, -INF], [NAN, 0, 0]], np.float32)
    colours = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4], [5, 5, 5], [6, 6, 6]], np.uint8)
    fields = XYZ_F32 + [('rgb', 12, F32, 1)]
    values = {'x': pts[:, 0], 'y': pts[:, 1], 'z': pts[:, 2], 'rgb': packed(colours).view(np.float32)}
    xyz, rgb = pointcloud_to_xyz(make_cloud(fields, 16, values))
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [6, 7, 8]])
    np.testing.assert_array_equal(rgb, [[1, 1, 1], [4, 4, 4]])


def test_big_endian_cloud():
    fields = [('x', 0, F64, 1), ('y', 8, F32, 1), ('z', 12, F32, 1), ('rgb', 16, U32, 1)]
    values = {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'rgb': packed(RGB)}
    msg = make_cloud(fields, 20, values, bigendian=True)
    assert msg.data[3] == 0 and msg.data[0] == 0x3F  # 0.5 as big-endian float64 starts 3F E0
    xyz, rgb = pointcloud_to_xyz(msg)
    np.testing.assert_array_equal(xyz, XYZ)
    np.testing.assert_array_equal(rgb, RGB)


def test_empty_cloud():
    msg = make_cloud(XYZ_F32 + [('rgb', 12, F32, 1)], 16, {'x': [], 'y': [], 'z': [], 'rgb': []})
    xyz, rgb = pointcloud_to_xyz(msg)
    assert xyz.shape == (0, 3) and xyz.dtype == np.float32 and rgb.shape == (0, 3)


CLOUD_VALUES = {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2]}


def cloud_error(msg) -> str:
    with pytest.raises(MessageFormatError) as caught:
        pointcloud_to_xyz(msg, 'points')
    assert str(caught.value).startswith('points: PointCloud2 ')
    return caught.value.problem


def test_cloud_missing_xyz_fields():
    msg = make_cloud(XYZ_F32, 12, CLOUD_VALUES)
    msg.fields = msg.fields[:2]
    assert cloud_error(msg) == 'PointCloud2 has no field z (fields: x, y)'
    msg.fields = []
    assert cloud_error(msg) == 'PointCloud2 has no field x, y, z (fields: none)'


def test_cloud_field_outside_the_point():
    msg = make_cloud(XYZ_F32, 12, CLOUD_VALUES)
    msg.fields[2].offset = 10
    assert cloud_error(msg) == "PointCloud2 field 'z' (offset 10, f4 x 1) does not fit in point_step 12"
    msg = make_cloud(XYZ_F32 + [('normal', 12, F32, 3)], 24, {**CLOUD_VALUES, 'normal': np.zeros((3, 3))})
    msg.point_step, msg.row_step = 20, 60  # an extra field that overruns is an error too
    assert cloud_error(msg) == "PointCloud2 field 'normal' (offset 12, f4 x 3) does not fit in point_step 20"


def test_cloud_size_errors():
    msg = make_cloud(XYZ_F32, 12, CLOUD_VALUES)
    msg.point_step = 0
    assert cloud_error(msg) == 'PointCloud2 point_step is 0'
    assert (
        cloud_error(make_cloud(XYZ_F32, 12, CLOUD_VALUES, row_step=35))
        == 'PointCloud2 row_step 35 is less than width*point_step = 3*12 = 36'
    )
    assert (
        cloud_error(make_cloud(XYZ_F32, 12, CLOUD_VALUES, data=bytes(35)))
        == 'PointCloud2 data has 35 bytes, row_step*height needs 36'
    )
    organised = make_cloud(XYZ_F32, 12, {k: np.zeros(6) for k in 'xyz'}, height=2, pad=4)
    organised.data = bytes(79)
    assert cloud_error(organised) == 'PointCloud2 data has 79 bytes, row_step*height needs 80'


def test_cloud_unsupported_datatypes():
    msg = make_cloud([XYZ_F32[0], ('y', 4, U32, 1), XYZ_F32[2]], 12, CLOUD_VALUES)
    assert cloud_error(msg) == "PointCloud2 field 'y' has datatype 6, needs FLOAT32 (7) or FLOAT64 (8)"
    msg = make_cloud(XYZ_F32 + [('rgb', 12, U8, 3)], 16, {**CLOUD_VALUES, 'rgb': RGB})
    assert cloud_error(msg) == "PointCloud2 colour field 'rgb' has datatype 2, needs packed FLOAT32 (7) or UINT32 (6)"


# --------------------------------------------------------------------------------------------- reference libraries


def test_same_points_as_sensor_msgs_py():
    point_cloud2 = pytest.importorskip(
        'sensor_msgs_py.point_cloud2', reason='sensor_msgs_py is not installed here (a robot has it)'
    )
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)).astype(np.float32)
    pts[rng.random(500) < 0.1, rng.integers(0, 3)] = NAN
    fields = XYZ_F32 + [('intensity', 12, F32, 1), ('rgb', 16, F32, 1)]
    msg = make_cloud(
        fields,
        24,
        {
            'x': pts[:, 0],
            'y': pts[:, 1],
            'z': pts[:, 2],
            'intensity': pts[:, 0] * 2,
            'rgb': packed(rng.integers(0, 256, (500, 3))).view(np.float32),
        },
    )
    expected = point_cloud2.read_points_numpy(msg, field_names=('x', 'y', 'z'), skip_nans=True)
    np.testing.assert_array_equal(pointcloud_to_xyz(msg)[0], expected)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_same_colour_as_cv_bridge(encoding):
    cv_bridge = pytest.importorskip('cv_bridge', reason='cv_bridge is not installed here (a robot has it)')
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}[encoding]
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, channels), dtype=np.uint8).squeeze()
    msg = make_image(pixels, encoding, pad=2 * channels)  # cv_bridge honours step only in whole pixels
    np.testing.assert_array_equal(image_to_rgb(msg), cv_bridge.CvBridge().imgmsg_to_cv2(msg, 'rgb8'))


def test_same_depth_as_cv_bridge():  # little-endian only: cv_bridge's byte swap uses an API numpy 2 removed
    cv_bridge = pytest.importorskip('cv_bridge', reason='cv_bridge is not installed here (a robot has it)')
    bridge = cv_bridge.CvBridge()
    mm = np.random.default_rng(0).integers(1, 10000, (5, 7), dtype=np.uint16)
    msg = make_image(mm, '16UC1', pad=2)
    np.testing.assert_array_equal(
        depth_to_metres(msg), (bridge.imgmsg_to_cv2(msg, 'passthrough') * 0.001).astype(np.float32)
    )
    metres = np.random.default_rng(1).uniform(0.1, 10, (5, 7)).astype(np.float32)
    msg = make_image(metres, '32FC1')
    np.testing.assert_array_equal(depth_to_metres(msg), bridge.imgmsg_to_cv2(msg, 'passthrough'))
