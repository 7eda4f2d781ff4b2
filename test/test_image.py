"""Tests for vrs_node.io.image: sensor_msgs/Image <-> numpy conversions.

Expected values are built independently of the implementation: message bytes are assembled
pixel by pixel in plain Python, and expected arrays are plain numpy constructions.
"""

import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vrs_node.io import image as image_module
from vrs_node.io.image import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_msg_to_rgb,
    compressed_size,
    jpeg_reduction,
    image_msg_to_rgb,
    mask_to_msg,
    ns_to_stamp,
    overlay_mask,
    rgb_to_msg,
    stamp_to_ns,
)

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
HEIGHT, WIDTH = 4, 5


def make_header():
    return Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id="cam0_optical")


def pixel_bytes(encoding, r, g, b, a):
    """Byte order of one pixel, written out by hand per ROS encoding."""
    return {
        "rgb8": [r, g, b],
        "bgr8": [b, g, r],
        "rgba8": [r, g, b, a],
        "bgra8": [b, g, r, a],
        "mono8": [r],
    }[encoding]


def make_case(encoding, step, trailing=0, seed=0):
    """Return (message fields, expected RGB); padding and trailing bytes are random garbage."""
    rng = np.random.default_rng(seed)
    expected = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    if encoding == "mono8":
        expected[:, :, 1] = expected[:, :, 0]
        expected[:, :, 2] = expected[:, :, 0]
    alpha = rng.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
    raw = bytearray()
    for y in range(HEIGHT):
        row = bytearray()
        for x in range(WIDTH):
            r, g, b = (int(v) for v in expected[y, x])
            row += bytes(pixel_bytes(encoding, r, g, b, int(alpha[y, x])))
        row += bytes(rng.integers(0, 256, size=step - len(row), dtype=np.uint8))  # padding
        raw += row
    raw += bytes(rng.integers(0, 256, size=trailing, dtype=np.uint8))
    fields = dict(height=HEIGHT, width=WIDTH, encoding=encoding, step=step, data=bytes(raw))
    return fields, expected


def image_msg(**fields):
    return Image(header=make_header(), is_bigendian=0, **fields)


def padded_steps(encoding):
    row = WIDTH * CHANNELS[encoding]
    return [row, row + 7, (row // 8 + 1) * 8]  # none, odd padding, rounded up past a multiple of 8


@pytest.mark.parametrize(
    "encoding,step",
    [(enc, step) for enc in SUPPORTED_ENCODINGS for step in padded_steps(enc)],
)
def test_decode_every_encoding_with_padding(encoding, step):
    fields, expected = make_case(encoding, step)
    msg = image_msg(**fields)
    rgb = image_msg_to_rgb(msg)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    assert rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)
    shared = np.shares_memory(rgb, np.frombuffer(msg.data, dtype=np.uint8))
    assert shared == (encoding == "rgb8" and step == WIDTH * 3), "only unpadded rgb8 is not copied"
    assert not (shared and rgb.flags.writeable), "a view of the message is read-only"


def test_supported_encodings_are_exactly_the_documented_five():
    assert SUPPORTED_ENCODINGS == ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def test_decoded_rgb8_is_a_read_only_view_of_the_message():
    """Unpadded rgb8 is not copied (as cv_bridge's imgmsg_to_cv2): the array is the message's
    buffer, read-only, and keeps it alive."""
    fields, expected = make_case("rgb8", WIDTH * 3)
    msg = image_msg(**fields)
    before = bytes(msg.data)
    rgb = image_msg_to_rgb(msg)
    with pytest.raises(ValueError, match="read-only"):
        rgb[:] = 0
    assert bytes(msg.data) == before
    del msg
    np.testing.assert_array_equal(rgb, expected)


def test_trailing_bytes_after_step_times_height_are_ignored():
    fields, expected = make_case("bgr8", WIDTH * 3 + 3, trailing=11)
    np.testing.assert_array_equal(image_msg_to_rgb(image_msg(**fields)), expected)


def test_duck_typed_message_with_ndarray_data_like_rosbags():
    fields, expected = make_case("bgra8", WIDTH * 4 + 5)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8).copy()
    msg = types.SimpleNamespace(**fields)
    rgb = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(rgb, expected)
    assert not np.shares_memory(rgb, msg.data)


@pytest.mark.parametrize(
    "encoding", ["16UC1", "yuv422", "bayer_rggb8", "32FC1", "RGB8", "Mono8", "8UC3", ""]
)
def test_unsupported_encoding_is_refused_and_lists_supported(encoding):
    msg = image_msg(height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(ImageConversionError) as info:
        image_msg_to_rgb(msg)
    text = str(info.value)
    assert repr(encoding) in text
    for supported in SUPPORTED_ENCODINGS:
        assert supported in text


@pytest.mark.parametrize("height,width", [(0, 5), (4, 0), (0, 0)])
def test_zero_sized_image_is_refused(height, width):
    msg = image_msg(height=height, width=width, encoding="rgb8", step=15, data=bytes(60))
    with pytest.raises(ImageConversionError) as info:
        image_msg_to_rgb(msg)
    assert f"height={height}" in str(info.value)
    assert f"width={width}" in str(info.value)


@pytest.mark.parametrize("encoding,step", [("rgb8", 14), ("rgba8", 19), ("mono8", 4), ("bgr8", 0)])
def test_step_shorter_than_a_row_is_refused(encoding, step):
    msg = image_msg(height=HEIGHT, width=WIDTH, encoding=encoding, step=step, data=bytes(400))
    with pytest.raises(ImageConversionError) as info:
        image_msg_to_rgb(msg)
    text = str(info.value)
    assert f"step={step}" in text
    assert str(WIDTH * CHANNELS[encoding]) in text


def test_truncated_data_is_refused():
    fields, _ = make_case("rgb8", 16)
    fields["data"] = fields["data"][:-1]  # 63 bytes for step 16 x height 4 = 64
    with pytest.raises(ImageConversionError) as info:
        image_msg_to_rgb(image_msg(**fields))
    text = str(info.value)
    assert "63" in text
    assert "64" in text


def test_data_that_is_not_a_byte_buffer_is_refused():
    msg = types.SimpleNamespace(height=1, width=1, encoding="mono8", step=1, data=[7])
    with pytest.raises(ImageConversionError) as info:
        image_msg_to_rgb(msg)
    assert "list" in str(info.value)


def test_conversion_error_is_a_value_error():
    assert issubclass(ImageConversionError, ValueError)


def test_mask_to_msg_from_bool_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[1, 2] = mask[3, 0] = mask[0, 4] = True
    header = make_header()
    msg = mask_to_msg(mask, header)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.step) == (HEIGHT, WIDTH, WIDTH)
    assert msg.encoding == "mono8"
    assert msg.is_bigendian == 0
    expected = [255 if (y, x) in {(1, 2), (3, 0), (0, 4)} else 0
                for y in range(HEIGHT) for x in range(WIDTH)]
    assert list(msg.data) == expected
    assert msg.header == header
    assert msg.header.stamp.sec == 1_700_000_000
    assert msg.header.stamp.nanosec == 123_456_789
    assert msg.header.frame_id == "cam0_optical"


def test_mask_to_msg_from_uint8_mask_maps_nonzero_to_255():
    mask = np.array([[0, 1, 7], [255, 0, 128]], dtype=np.uint8)
    msg = mask_to_msg(mask, make_header())
    assert list(msg.data) == [0, 255, 255, 255, 0, 255]
    assert (msg.height, msg.width, msg.step) == (2, 3, 3)


def test_mask_to_msg_copies_the_header():
    header = make_header()
    msg = mask_to_msg(np.ones((2, 2), dtype=bool), header)
    msg.header.frame_id = "changed"
    msg.header.stamp.sec = 1
    assert header.frame_id == "cam0_optical"
    assert header.stamp.sec == 1_700_000_000


def test_mask_to_msg_accepts_a_rosbags_like_header():
    header = types.SimpleNamespace(
        stamp=types.SimpleNamespace(sec=42, nanosec=7), frame_id="rosbags_frame"
    )
    msg = mask_to_msg(np.zeros((1, 3), dtype=np.uint8), header)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (42, 7)
    assert msg.header.frame_id == "rosbags_frame"


def test_mask_msg_round_trips_through_decoder():
    mask = np.random.default_rng(3).integers(0, 2, size=(HEIGHT, WIDTH)).astype(bool)
    rgb = image_msg_to_rgb(mask_to_msg(mask, make_header()))
    expected = np.stack([mask.astype(np.uint8) * 255] * 3, axis=-1)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((4, 5), dtype=np.float32),
        np.zeros((4, 5), dtype=np.int64),
        np.zeros((4, 5, 1), dtype=bool),
        np.zeros((0, 5), dtype=bool),
    ],
    ids=["float32", "int64", "3d", "empty"],
)
def test_mask_to_msg_refuses_bad_arrays(mask):
    with pytest.raises(ImageConversionError) as info:
        mask_to_msg(mask, make_header())
    assert str(mask.shape) in str(info.value)
    assert str(mask.dtype) in str(info.value)


def test_rgb_to_msg_round_trip_and_bytes():
    image = np.random.default_rng(4).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    header = make_header()
    msg = rgb_to_msg(image, header)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.step) == (HEIGHT, WIDTH, WIDTH * 3)
    assert msg.encoding == "rgb8"
    assert msg.is_bigendian == 0
    assert msg.header == header
    expected_bytes = [int(v) for y in range(HEIGHT) for x in range(WIDTH) for v in image[y, x]]
    assert list(msg.data) == expected_bytes
    np.testing.assert_array_equal(image_msg_to_rgb(msg), image)


def test_rgb_to_msg_accepts_non_contiguous_arrays():
    base = np.random.default_rng(5).integers(0, 256, size=(HEIGHT, 2 * WIDTH, 3), dtype=np.uint8)
    view = base[:, ::2, ::-1]
    assert not view.flags.c_contiguous
    msg = rgb_to_msg(view, make_header())
    assert msg.step == WIDTH * 3
    np.testing.assert_array_equal(image_msg_to_rgb(msg), view)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 5), dtype=np.uint8),
        np.zeros((4, 5, 4), dtype=np.uint8),
        np.zeros((4, 5, 3), dtype=np.float32),
        np.zeros((0, 5, 3), dtype=np.uint8),
    ],
    ids=["2d", "4-channel", "float32", "empty"],
)
def test_rgb_to_msg_refuses_bad_arrays(image):
    with pytest.raises(ImageConversionError) as info:
        rgb_to_msg(image, make_header())
    assert str(image.shape) in str(info.value)


def make_overlay_inputs():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[1:3, 1:4] = True
    return image, mask


def test_overlay_blends_inside_and_keeps_outside():
    image, mask = make_overlay_inputs()
    original = image.copy()
    color = (10, 200, 30)
    out = overlay_mask(image, mask, color=color, alpha=0.25)
    assert out.dtype == np.uint8
    assert out.shape == image.shape
    np.testing.assert_array_equal(out[~mask], original[~mask])
    for y, x in zip(*np.nonzero(mask)):
        for c in range(3):
            # (1 - 0.25) * p + 0.25 * color, exact in quarters; round() is half-to-even like rint
            assert out[y, x, c] == round((3 * int(original[y, x, c]) + color[c]) / 4)
    np.testing.assert_array_equal(image, original)  # input untouched


def test_overlay_alpha_extremes_and_uint8_mask():
    image, mask = make_overlay_inputs()
    np.testing.assert_array_equal(overlay_mask(image, mask, alpha=0.0), image)
    full = overlay_mask(image, mask.astype(np.uint8) * 9, color=(1, 2, 3), alpha=1.0)
    assert (full[mask] == [1, 2, 3]).all()
    np.testing.assert_array_equal(full[~mask], image[~mask])


@pytest.mark.parametrize("mask_dtype", [bool, np.uint8, np.int32, np.float32])
def test_overlay_of_a_strided_view_with_any_mask_dtype_follows_the_formula(mask_dtype):
    """OpenCV's look-up and masked copy read strided views and every mask dtype (non-zero = object)."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(9, 14, 3), dtype=np.uint8)[::2, 1::3]
    mask = (rng.integers(0, 3, size=image.shape[:2]) * 0.5).astype(mask_dtype)
    out = overlay_mask(image, mask, color=(300, -4, 77), alpha=0.75)
    expected = np.clip(np.rint(0.25 * image + 0.75 * np.array([300.0, -4.0, 77.0])), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, np.where((mask != 0)[:, :, None], expected, image))
    assert out.flags.c_contiguous and not np.shares_memory(out, image)


def test_overlay_default_color_is_red():
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    out = overlay_mask(image, np.array([[True, False]]), alpha=1.0)
    np.testing.assert_array_equal(out, [[[255, 0, 0], [0, 0, 0]]])


def test_overlay_refuses_mismatched_mask_and_bad_alpha():
    image, mask = make_overlay_inputs()
    with pytest.raises(ImageConversionError) as info:
        overlay_mask(image, mask[:, :-1])
    assert str(mask[:, :-1].shape) in str(info.value)
    with pytest.raises(ImageConversionError):
        overlay_mask(image.astype(np.float32), mask)
    with pytest.raises(ValueError) as info:
        overlay_mask(image, mask, alpha=1.5)
    assert "1.5" in str(info.value)


@pytest.mark.parametrize(
    "sec,nanosec", [(0, 0), (1, 5), (1_700_000_000, 999_999_999), (2**31 - 1, 0)]
)
def test_stamp_round_trip(sec, nanosec):
    stamp = Time(sec=sec, nanosec=nanosec)
    ns = stamp_to_ns(stamp)
    assert ns == sec * 1_000_000_000 + nanosec
    assert isinstance(ns, int)
    back = ns_to_stamp(ns)
    assert isinstance(back, Time)
    assert back == stamp


def test_ns_to_stamp_splits_seconds_and_nanoseconds():
    stamp = ns_to_stamp(3_000_000_001)
    assert (stamp.sec, stamp.nanosec) == (3, 1)


def test_numpy_side_imports_and_runs_without_ros():
    """image_msg_to_rgb and overlay_mask must work where no ROS message package is importable."""
    code = (
        "import sys\n"
        "for name in ('rclpy', 'sensor_msgs', 'std_msgs', 'builtin_interfaces'):\n"
        "    sys.modules[name] = None\n"
        "import types, numpy as np\n"
        "from vrs_node.io.image import image_msg_to_rgb, overlay_mask\n"
        "msg = types.SimpleNamespace(height=1, width=2, encoding='bgr8', step=6,\n"
        "                            data=bytes([1, 2, 3, 4, 5, 6]))\n"
        "rgb = image_msg_to_rgb(msg)\n"
        "assert rgb.tolist() == [[[3, 2, 1], [6, 5, 4]]], rgb.tolist()\n"
        "overlay_mask(rgb, np.array([[True, False]]))\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_overlay_refuses_a_color_that_is_not_three_values():
    image, mask = make_overlay_inputs()
    with pytest.raises(ValueError) as info:
        overlay_mask(image, mask, color=(1, 2, 3, 4))
    assert "[1.0, 2.0, 3.0, 4.0]" in str(info.value)


def test_message_builders_work_with_ros_field_checks_enabled():
    """ROS_PYTHON_CHECK_FIELDS=1 makes rclpy assert every field type; the builders must pass."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[0, 0] = True
    image = np.full((HEIGHT, WIDTH, 3), 9, dtype=np.uint8)
    for msg in (mask_to_msg(mask, make_header()), rgb_to_msg(image, make_header())):
        checked = Image(check_fields=True)
        for field in Image.get_fields_and_field_types():
            setattr(checked, field, getattr(msg, field))
        assert checked == msg


# --- image size limits (max_image_pixels) and compressed headers ---------------------------------

def png_bytes(width, height, row=None):
    """A grey 8-bit PNG of ``width`` x ``height`` built by hand, row by row (``row``: the pixel
    bytes of every row, zeros by default), so that a huge one needs no huge array: 10000 x 10000
    zeros compress to ~97 KB, the issue's decompression bomb."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    line = b"\x00" + (bytes(width) if row is None else row)  # filter type 0, then the pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(line) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def compressed(data, fmt="png"):
    return types.SimpleNamespace(format=fmt, data=data)


def test_an_image_above_max_pixels_is_refused_before_its_data_is_read():
    msg = types.SimpleNamespace(height=10_000, width=10_000, encoding="rgb8", step=30_000, data=b"")
    with pytest.raises(ImageConversionError, match="image is 10000x10000 = 100000000 pixels; the limit is "
                                                   f"{DEFAULT_MAX_IMAGE_PIXELS} \\(parameter max_image_pixels\\)"):
        image_msg_to_rgb(msg)
    fields, expected = make_case("rgb8", 15)
    np.testing.assert_array_equal(image_msg_to_rgb(image_msg(**fields), max_pixels=HEIGHT * WIDTH), expected)
    with pytest.raises(ImageConversionError, match=f"limit is {HEIGHT * WIDTH - 1}"):
        image_msg_to_rgb(image_msg(**fields), max_pixels=HEIGHT * WIDTH - 1)


def test_the_hand_built_png_is_a_real_png():
    row = bytes(range(7))
    rgb, camera_hw = compressed_msg_to_rgb(compressed(png_bytes(7, 3, row)))
    assert rgb.shape == (3, 7, 3) and (rgb == np.frombuffer(row, np.uint8)[None, :, None]).all()
    assert camera_hw == (3, 7)


def test_a_png_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    bomb = png_bytes(10_000, 10_000)
    assert len(bomb) < 100_000

    def no_decode(*args):
        raise AssertionError("cv2.imdecode must not be reached")

    monkeypatch.setattr(image_module.cv2, "imdecode", no_decode)
    with pytest.raises(ImageConversionError, match="compressed image \\(format 'png'\\) is 10000x10000 = "
                                                   "100000000 pixels; the limit is 16000000"):
        compressed_msg_to_rgb(compressed(bomb))


def test_compressed_images_up_to_the_limit_decode():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    for ext in (".png", ".jpg"):
        _, data = cv2.imencode(ext, rgb)
        assert compressed_msg_to_rgb(compressed(data.tobytes()), max_pixels=54)[0].shape == (6, 9, 3)
        with pytest.raises(ImageConversionError, match="9x6 = 54 pixels; the limit is 53"):
            compressed_msg_to_rgb(compressed(data.tobytes()), max_pixels=53)


def jpeg_with_segments(width, height, segments):
    """A cv2 JPEG of ``width`` x ``height`` with ``segments`` (raw bytes) inserted after SOI."""
    _, data = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))
    data = data.tobytes()
    return data[:2] + b"".join(segments) + data[2:]


def test_the_jpeg_frame_header_is_found_past_metadata_and_fill_bytes():
    app1 = b"\xff\xe1" + struct.pack(">H", 60_002) + bytes(60_000)  # EXIF-sized metadata
    app2 = b"\xff\xe2" + struct.pack(">H", 2)  # an empty segment
    data = jpeg_with_segments(33, 17, [app1, b"\xff\xff\xff", app2, app1])
    assert compressed_size(data) == (33, 17)
    assert compressed_msg_to_rgb(compressed(data, "jpeg"))[0].shape == (17, 33, 3)


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n", png_bytes(3, 2)[:23], b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02",  # cut short / scan first
    b"\xff\xd8\xff\xe0\x00\x01" + bytes(10),  # a segment length below 2
    b"\xff\xd8\x00" + bytes(10), b"GIF89a" + bytes(20), b"BM" + bytes(60),
])
def test_compressed_size_is_none_without_a_readable_png_or_jpeg_header(data):
    assert compressed_size(data) is None
    with pytest.raises(ImageConversionError, match="neither PNG nor JPEG, or its header is cut short"):
        compressed_msg_to_rgb(compressed(data))


def test_other_formats_opencv_decodes_are_refused():
    _, bmp = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))
    assert cv2.imdecode(bmp, cv2.IMREAD_COLOR).shape == (4, 4, 3)  # its size is not read from a header here
    with pytest.raises(ImageConversionError, match=f"format 'bmp', {bmp.size} bytes\\) is neither PNG nor JPEG"):
        compressed_msg_to_rgb(compressed(bmp.tobytes(), "bmp"))


def test_a_compressed_header_without_pixels_is_refused():
    with pytest.raises(ImageConversionError, match="has no pixels: its header says 0x5"):
        compressed_msg_to_rgb(compressed(png_bytes(0, 5)))


# --- reduced JPEG decoding (compressed_msg_to_rgb's min_size) ----------------------------------

@pytest.mark.parametrize("height, width, min_hw, expected", [
    (1080, 1920, (256, 256), 4),    # squash S=256: 270 x 480 covers it, 135 x 240 does not
    (1080, 1920, (144, 256), 4),    # pad S=256 (content 144 x 256): 135 < 144 at 1/8
    (1080, 1920, (576, 1024), 1),   # pad S=1024: 960 < 1024 at 1/2
    (720, 1280, (288, 512), 2),     # pad S=512: 360 x 640
    (720, 1280, (512, 512), 1),     # squash S=512: 360 < 512 at 1/2
    (1081, 1921, (136, 241), 8),    # ceil: 1/8 of 1081 x 1921 is 136 x 241
    (1081, 1921, (137, 241), 4),
    (480, 640, (1, 1), 8),
])
def test_jpeg_reduction_is_the_largest_factor_still_covering_the_minimum(height, width, min_hw, expected):
    assert jpeg_reduction(height, width, min_hw) == expected


def jpeg_bytes(height, width, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    _, data = cv2.imencode(".jpg", cv2.resize(small, (width, height)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return data.tobytes()


@pytest.mark.parametrize("height, width, min_hw, decoded", [
    (1080, 1920, (256, 256), (270, 480)),
    (1080, 1920, (144, 256), (270, 480)),
    (1081, 1921, (136, 241), (136, 241)),
    (1081, 1921, (1081, 1921), (1081, 1921)),
    (720, 1280, (288, 512), (360, 640)),
])
def test_a_jpeg_is_decoded_at_the_smallest_scale_covering_min_size(height, width, min_hw, decoded):
    """The decode is OpenCV's reduced one (not a resize of the full decode), the camera size comes
    from the header, and min_size is asked with that camera size."""
    data = jpeg_bytes(height, width)
    asked = []
    rgb, camera_hw = compressed_msg_to_rgb(compressed(data, "jpeg"),
                                           min_size=lambda h, w: asked.append((h, w)) or min_hw)
    assert asked == [(height, width)] and camera_hw == (height, width)
    assert rgb.shape == (*decoded, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    f = jpeg_reduction(height, width, min_hw)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), flags.get(f, cv2.IMREAD_REDUCED_COLOR_8))
    np.testing.assert_array_equal(rgb, cv2.cvtColor(reduced, cv2.COLOR_BGR2RGB))
    full, _ = compressed_msg_to_rgb(compressed(data, "jpeg"))
    assert full.shape == (height, width, 3)


def test_a_png_is_decoded_at_full_size_whatever_min_size_says():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    _, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    decoded, camera_hw = compressed_msg_to_rgb(compressed(data.tobytes()), min_size=lambda h, w: (1, 1))
    assert camera_hw == (40, 64)
    np.testing.assert_array_equal(decoded, rgb)


def test_the_exif_orientation_is_not_applied_so_the_image_keeps_the_header_size():
    """An EXIF orientation of 6 ("rotate 90"): the pixels are taken as stored, as image_transport's
    decoder does, so the decoded size is the header's (full and reduced)."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + bytes(4)
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    data = jpeg_with_segments(64, 16, [exif])
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (64, 16, 3), "OpenCV rotates it"
    assert compressed_msg_to_rgb(compressed(data, "jpeg"))[0].shape == (16, 64, 3)
    assert compressed_msg_to_rgb(compressed(data, "jpeg"), min_size=lambda h, w: (8, 32))[0].shape == (8, 32, 3)


@pytest.mark.parametrize("mask", [
    np.arange(30).reshape(5, 6) % 3 == 0,                     # bool
    np.asfortranarray(np.arange(30).reshape(5, 6) % 4 == 0),  # not C-contiguous
    (np.arange(60).reshape(5, 12) % 3 == 0)[:, ::2],          # strided
    (np.arange(30).reshape(5, 6) % 5).astype(np.uint8),       # uint8, values 0..4
])
def test_mask_to_msg_maps_any_layout_to_0_and_255(mask):
    msg = mask_to_msg(mask, make_header())
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 6, 6, "mono8")
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(5, 6), np.where(mask != 0, 255, 0))
