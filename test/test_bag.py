"""Tests for vrs_node.eval.bag: rosbag2 write/read round trips, damaged bags, the vrs-bag command.

Expected pixels come from Pillow/OpenCV decoding the source files, expected stamps from the rate
arithmetic written out here, and hand-built messages are written with ``rosbags`` directly.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import DAVIS, REPO, davis_sequence
from PIL import Image
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vrs_node.eval.bag import (COMPRESSED, IMAGE, BagError, TopicInfo, main, read_images, read_masks, topics,
                               transport_topic, write_bag)

COUNT = 10
TYPES = get_typestore(Stores.ROS2_KILTED)
STORAGE_FILE = {"mcap": ".mcap", "sqlite3": ".db3"}


@pytest.fixture(scope="module")
def blackswan10():
    """(RGB frames decoded by Pillow, GT masks, JPEG paths) of the first 10 blackswan frames."""
    return davis_sequence("blackswan", COUNT)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, blackswan10):
    """A frame folder and a mask folder with the first 10 blackswan frames."""
    root = tmp_path_factory.mktemp("blackswan10")
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    for path in blackswan10[2]:
        shutil.copy(path, root / "frames" / path.name)
        shutil.copy(DAVIS / "blackswan" / "Annotations" / f"{path.stem}.png", root / "masks" / f"{path.stem}.png")
    return root / "frames", root / "masks"


def expected_stamps(start_ns, rate_hz, count):
    # frame i at start + i / rate seconds, rounded to the nearest ns
    return [start_ns + round(i * 1_000_000_000 / rate_hz) for i in range(count)]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [None, "jpeg", "png"])
def test_round_trip_of_frames_and_masks(tmp_path, folders, blackswan10, storage, compressed):
    frames, gts, paths = blackswan10
    bag = tmp_path / "bag"
    start_ns, rate = 1_234_567_890_123_456_789, 7.5  # 133333333.3 ns period: rounding matters
    count = write_bag(bag, *folders, storage=storage, rate_hz=rate, compressed=compressed,
                      image_topic="/cam/image", mask_topic="/cam/gt", frame_id="cam_optical", start_ns=start_ns)
    assert count == COUNT
    assert (bag / f"bag{STORAGE_FILE[storage]}").is_file()
    image_type = "sensor_msgs/msg/Image" if compressed is None else "sensor_msgs/msg/CompressedImage"
    assert topics(bag) == [TopicInfo("/cam/gt", "sensor_msgs/msg/Image", COUNT), TopicInfo("/cam/image", image_type, COUNT)]

    images = list(read_images(bag, "/cam/image"))
    stamps = expected_stamps(start_ns, rate, COUNT)
    assert [s for s, _, _ in images] == stamps
    assert {f for _, f, _ in images} == {"cam_optical"}
    for (_, _, image), frame, path in zip(images, frames, paths, strict=True):
        assert image.dtype == np.uint8 and image.shape == frame.shape
        if compressed == "jpeg":  # the JPEG file is stored as is: OpenCV's decoding of that file
            assert np.array_equal(image, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            assert np.abs(image.astype(int) - frame).mean() < 2  # and close to Pillow's
        else:  # raw rgb8 and lossless PNG: exactly the Pillow-decoded frame
            assert np.array_equal(image, frame)

    masks = list(read_masks(bag, "/cam/gt"))
    assert [(s, f) for s, f, _ in masks] == [(s, "cam_optical") for s in stamps]
    for (_, _, mask), gt in zip(masks, gts, strict=True):
        assert mask.dtype == bool and np.array_equal(mask, gt)


def test_bag_time_equals_header_stamp_and_jpeg_bytes_are_kept(tmp_path, folders, blackswan10):
    bag = tmp_path / "bag"
    write_bag(bag, *folders, compressed="jpeg", rate_hz=30, start_ns=5, image_topic="/img")
    with Reader(bag) as reader:
        (connection,) = [c for c in reader.connections if c.topic == "/img"]
        for (_, timestamp, raw), path in zip(reader.messages([connection]), blackswan10[2], strict=True):
            msg = TYPES.deserialize_cdr(raw, connection.msgtype)
            assert timestamp == msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert msg.format == "jpeg" and msg.data.tobytes() == path.read_bytes()


def padded_message(rgb, encoding, step, stamp_ns):
    """A rosbags Image of ``rgb`` in ``encoding`` with rows padded to ``step`` bytes (padding = 7)."""
    alpha = np.full(rgb.shape[:2] + (1,), 99, np.uint8)
    pixels = {
        "rgb8": rgb, "bgr8": rgb[:, :, ::-1], "mono8": rgb[:, :, :1],
        "rgba8": np.concatenate([rgb, alpha], 2), "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], 2),
    }[encoding]
    height, width, channels = pixels.shape
    rows = np.full((height, step), 7, np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, -1)
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    header = TYPES.types["std_msgs/msg/Header"](
        stamp=TYPES.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=encoding
    )
    return TYPES.types["sensor_msgs/msg/Image"](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=rows.reshape(-1)
    )


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_reads_every_supported_encoding_and_skips_row_padding(tmp_path, storage):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = np.repeat(rgb[:, :, :1], 3, axis=2)
    cases = [("rgb8", 21, rgb), ("bgr8", 24, rgb), ("rgba8", 30, rgb), ("bgra8", 28, rgb), ("mono8", 9, gray)]
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=getattr(StoragePlugin, storage.upper())) as writer:
        connection = writer.add_connection("/img", "sensor_msgs/msg/Image", typestore=TYPES)
        for index, (encoding, step, _) in enumerate(cases):
            msg = padded_message(rgb, encoding, step, 1000 + index)
            writer.write(connection, 1000 + index, TYPES.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    read = list(read_images(bag, "/img"))
    assert [(s, f) for s, f, _ in read] == [(1000 + i, c[0]) for i, c in enumerate(cases)]
    for (_, _, image), (_, _, expected) in zip(read, cases, strict=True):
        assert np.array_equal(image, expected)
    masks = list(read_masks(bag, "/img"))
    assert np.array_equal(masks[4][2], rgb[:, :, 0] != 0)


def test_unsupported_encoding_and_undecodable_jpeg_raise_bag_error(tmp_path):
    bag = tmp_path / "bag"
    stamp = TYPES.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2)
    header = TYPES.types["std_msgs/msg/Header"](stamp=stamp, frame_id="x")
    image = TYPES.types["sensor_msgs/msg/Image"](
        header=header, height=2, width=2, encoding="16UC1", is_bigendian=0, step=4, data=np.zeros(8, np.uint8)
    )
    not_jpeg = np.arange(50, dtype=np.uint8)
    jpeg = TYPES.types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=not_jpeg)
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msg in (("/raw", image), ("/jpeg", jpeg)):
            connection = writer.add_connection(topic, msg.__msgtype__, typestore=TYPES)
            writer.write(connection, 1, TYPES.serialize_cdr(msg, msg.__msgtype__))
    with pytest.raises(BagError, match="'/raw'.*1000000002 ns.*16UC1"):
        list(read_images(bag, "/raw"))
    with pytest.raises(BagError, match="'/jpeg'.*does not decode"):
        list(read_images(bag, "/jpeg"))


# --- damaged bags and missing topics -------------------------------------------------------------


@pytest.fixture(scope="module")
def good_bags(tmp_path_factory, folders):
    """One small bag per storage (3 frames with masks), copied by the tests that damage them."""
    root = tmp_path_factory.mktemp("good")
    for storage in STORAGE_FILE:
        write_bag(root / storage, *folders, storage=storage, limit=3)
    return root


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("damage", ["cut half", "cut tail", "garbage"])
def test_truncated_or_garbage_storage_raises_bag_error(tmp_path, good_bags, storage, damage):
    bag = tmp_path / "bag"
    shutil.copytree(good_bags / storage, bag)
    storage_file = bag / f"{storage}{STORAGE_FILE[storage]}"
    size = storage_file.stat().st_size
    if damage == "garbage":
        storage_file.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    else:
        with storage_file.open("r+b") as handle:
            # less than one sqlite page (4 KiB) off the end may lose nothing; cut 5000 bytes
            handle.truncate(size // 2 if damage == "cut half" else size - 5000)
    with pytest.raises(BagError, match="truncated or corrupt") as error:
        list(read_images(bag, "/camera/image_raw"))
    assert str(bag) in str(error.value)


def test_fewer_messages_than_the_metadata_lists_raise_bag_error(tmp_path, good_bags):
    bag = tmp_path / "bag"
    shutil.copytree(good_bags / "sqlite3", bag)
    metadata = (bag / "metadata.yaml").read_text()
    assert metadata.count("message_count: 3") == 2  # image and mask topics
    (bag / "metadata.yaml").write_text(metadata.replace("message_count: 3", "message_count: 5"))
    with pytest.raises(BagError, match="ended after 3 of the 5 messages the bag lists, truncated or corrupt"):
        list(read_images(bag, "/camera/image_raw"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_missing_metadata_names_the_storage_file_which_still_reads(tmp_path, good_bags, storage):
    bag = tmp_path / "bag"
    shutil.copytree(good_bags / storage, bag)
    (bag / "metadata.yaml").unlink()
    storage_file = bag / f"{storage}{STORAGE_FILE[storage]}"
    with pytest.raises(BagError, match="metadata.yaml is missing") as error:
        topics(bag)
    assert str(storage_file) in str(error.value) and "ros2 bag reindex" in str(error.value)
    assert len(list(read_images(storage_file, "/camera/image_raw"))) == 3


def test_missing_bag_topic_or_wrong_type_raise_bag_error(tmp_path, good_bags):
    with pytest.raises(BagError, match="no such bag"):
        topics(tmp_path / "nothing")
    with pytest.raises(BagError, match="metadata.yaml is missing; it holds no .mcap or .db3"):
        topics(tmp_path)
    with pytest.raises(BagError) as error:
        list(read_images(good_bags / "mcap", "/camera/depth"))
    message = str(error.value)
    assert "no topic '/camera/depth'" in message
    assert "/camera/gt_mask (sensor_msgs/msg/Image, 3 msgs)" in message
    assert "/camera/image_raw (sensor_msgs/msg/Image, 3 msgs)" in message
    bag = tmp_path / "strings"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TYPES)
        hello = TYPES.types["std_msgs/msg/String"](data="hi")
        writer.write(connection, 1, TYPES.serialize_cdr(hello, "std_msgs/msg/String"))
    with pytest.raises(BagError, match="'/chatter' has type std_msgs/msg/String"):
        list(read_images(bag, "/chatter"))


def test_write_errors_leave_no_half_written_bag(tmp_path, folders):
    frames, masks = folders
    with pytest.raises(BagError, match="exists already"):
        write_bag(tmp_path, frames)
    with pytest.raises(BagError, match="no JPEG/PNG frames"):
        write_bag(tmp_path / "a", tmp_path / "empty")
    with pytest.raises(BagError, match="storage must be"):
        write_bag(tmp_path / "a", frames, storage="rosbag1")
    with pytest.raises(BagError, match="no mask in"):
        write_bag(tmp_path / "a", frames, frames.parent)
    broken = tmp_path / "broken"
    shutil.copytree(frames, broken)
    (broken / "00005.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BagError, match="writing failed"):
        write_bag(tmp_path / "half", broken, masks)
    assert not (tmp_path / "half").exists()


# --- vrs-bag command -----------------------------------------------------------------------------


def test_cli_make_info_export_end_to_end(tmp_path, folders, blackswan10, capsys):
    frames, gts, _ = blackswan10
    bag = tmp_path / "bag"
    assert main(["make", str(folders[0]), str(bag), "--masks", str(folders[1]), "--storage", "sqlite3",
                 "--rate", "10", "--compressed", "png", "--limit", "4"]) == 0
    assert "wrote 4 frames" in capsys.readouterr().out
    assert (bag / "bag.db3").is_file()

    assert main(["info", str(bag)]) == 0
    out = capsys.readouterr().out
    assert "/camera/image_raw/compressed  sensor_msgs/msg/CompressedImage  4 msgs" in out
    assert "/camera/gt_mask  sensor_msgs/msg/Image  4 msgs" in out

    assert main(["export", str(bag), "/camera/image_raw/compressed", str(tmp_path / "rgb")]) == 0
    assert main(["export", str(bag), "/camera/gt_mask", str(tmp_path / "gt"), "--mask"]) == 0
    for index in range(4):
        assert np.array_equal(np.array(Image.open(tmp_path / "rgb" / f"{index:05d}.png")), frames[index])
        assert np.array_equal(np.array(Image.open(tmp_path / "gt" / f"{index:05d}.png")), gts[index] * np.uint8(255))
    with (tmp_path / "gt" / "stamps.csv").open() as handle:
        rows = list(csv.reader(handle))
    start = 1_700_000_000_000_000_000  # the documented default first stamp, 10 Hz
    assert rows[0] == ["index", "stamp_ns", "frame_id"]
    assert rows[1:] == [[str(i), str(start + i * 100_000_000), "camera"] for i in range(4)]
    assert sorted(os.listdir(tmp_path / "rgb")) == ["00000.png", "00001.png", "00002.png", "00003.png", "stamps.csv"]

    assert main(["export", str(bag), "/nope", str(tmp_path / "x")]) == 1
    assert "no topic '/nope'; the bag has: /camera/gt_mask" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["make", str(folders[0]), str(bag)]) == 1
    assert "exists already" in capsys.readouterr().err


def test_cli_runs_as_a_module_with_exit_status(tmp_path, folders):
    bag = tmp_path / "bag"
    made = subprocess.run([sys.executable, "-m", "vrs_node.eval.bag", "make", str(folders[0]), str(bag),
                           "--compressed", "--limit", "2"], cwd=REPO, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert topics(bag)[0] == TopicInfo("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", 2)
    failed = subprocess.run([sys.executable, "-m", "vrs_node.eval.bag", "info", str(tmp_path / "none")],
                            cwd=REPO, capture_output=True, text=True)
    assert failed.returncode == 1 and "vrs-bag: error:" in failed.stderr and "no such bag" in failed.stderr


@pytest.mark.parametrize("topic, msgtype, named", [
    ("/cam/image", IMAGE, "/cam/image"), ("/cam/image", COMPRESSED, "/cam/image/compressed"),
    ("/cam/image/compressed", IMAGE, "/cam/image"), ("/cam/image/compressed", COMPRESSED, "/cam/image/compressed"),
    ("/compressed_cam", COMPRESSED, "/compressed_cam/compressed"),
])
def test_topics_are_named_for_their_type_as_image_transport_does(topic, msgtype, named):
    assert transport_topic(topic, msgtype) == named
