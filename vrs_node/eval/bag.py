"""Rosbag2 bags of camera frames and ground-truth masks, written and read with ``rosbags`` (no ROS
install needed), and the ``vrs-bag`` command (``make``, ``export``, ``info``).

ROS-free: rosbags, numpy, OpenCV and Pillow; both rosbag2 storage plugins, ``mcap`` and ``sqlite3``.

Bags written here (:func:`write_bag`):

- one image topic: ``sensor_msgs/msg/Image`` ``rgb8`` (unpadded, ``step = 3·W``) or
  ``sensor_msgs/msg/CompressedImage`` (``format`` ``"jpeg"`` or ``"png"``; a frame file already in
  that format is stored byte for byte, anything else is encoded with OpenCV);
- optionally a ground-truth mask topic: ``sensor_msgs/msg/Image`` ``mono8``, 0 = background,
  255 = object (the convention of :func:`vrs_node.io.image.mask_to_msg`), for the frames that have
  a mask PNG of the same stem;
- frame i (0-based) has header stamp and bag time ``start_ns + round(i · 1e9 / rate_hz)`` ns
  (nearest, ties to even); a mask has the stamp and ``frame_id`` of its frame.

Reading (:func:`read_images`, :func:`read_masks`): ``Image`` with the encodings of
:data:`vrs_node.io.image.SUPPORTED_ENCODINGS` (row padding given by ``step`` skipped) is decoded by
:func:`vrs_node.io.image.image_msg_to_rgb`, which is duck-typed and works on the messages
``rosbags`` deserialises; ``CompressedImage`` is decoded by ``cv2.imdecode``, whatever its
``format`` string says. A bag is a rosbag2 folder (with ``metadata.yaml``) or one ``.mcap``/``.db3``
storage file. Every failure to open or decode a bag, and a missing topic, raises :class:`BagError`
with the bag path and the reason (for a missing topic: the topics the bag has).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from vrs_node.eval.datasets import image_files, read_label_png, read_rgb
from vrs_node.io.image import ImageConversionError, image_msg_to_rgb, stamp_to_ns

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
COMPRESSED_FORMATS = {"jpeg": (".jpg", ".jpeg"), "png": (".png",)}
IMAGE_TOPIC = "/camera/image_raw"
GROUND_TRUTH_MASK_TOPIC = "/camera/gt_mask"
"""Default topic of the ground-truth masks in a bag (the predicted ones: ``vrs_node.eval.outputs``'s
``PREDICTED_MASK_TOPIC``)."""
START_NS = 1_700_000_000_000_000_000
"""Default stamp of the first frame (2023-11-14T22:13:20Z), as ``vrs-demo`` uses."""

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
_NS_PER_S = 1_000_000_000


def transport_topic(topic: str, msgtype: str) -> str:
    """``topic`` named for ``msgtype`` as image_transport names its topics: a CompressedImage on
    ``<base>/compressed``, an Image on ``<base>``, ``<base>`` being ``topic`` without a trailing
    ``/compressed``; so one name never carries both types."""
    base = topic.removesuffix("/compressed")
    return f"{base}/compressed" if msgtype == COMPRESSED else base


class BagError(RuntimeError):
    """A bag cannot be written, opened or decoded, or lacks a topic; the message says which and why."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag: name, message type and number of messages."""

    name: str
    msgtype: str
    count: int


def _open(bag: Path) -> Reader:
    """An open ``rosbags`` Reader on ``bag``; BagError (path + reason) if it cannot be opened."""
    if not bag.exists():
        raise BagError(f"{bag}: no such bag (expected a rosbag2 folder or a .mcap/.db3 file)")
    if bag.is_dir() and not (bag / "metadata.yaml").exists():
        files = sorted(p.name for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
        hint = (
            f"; its storage file can be read directly (pass {bag / files[0]}) or the metadata rebuilt "
            f"with `ros2 bag reindex {bag}`" if files else "; it holds no .mcap or .db3 file either"
        )
        raise BagError(f"{bag}: not a rosbag2 folder: metadata.yaml is missing{hint}")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as error:  # rosbags raises ReaderError, apsw and OS errors here
        reason = f"{type(error).__name__}: {error}"
        raise BagError(f"{bag}: cannot open bag, truncated or corrupt? ({reason})") from error
    return reader


def _topic_infos(reader: Reader) -> list[TopicInfo]:
    """Topics of an open reader, sorted by name (connections of one topic are summed)."""
    counts: dict[tuple[str, str], int] = {}
    for connection in reader.connections:
        key = (connection.topic, connection.msgtype)
        counts[key] = counts.get(key, 0) + connection.msgcount
    return [TopicInfo(topic, msgtype, count) for (topic, msgtype), count in sorted(counts.items())]


def topics(bag: Path | str) -> list[TopicInfo]:
    """The topics of ``bag`` with their message types and counts, sorted by name."""
    reader = _open(Path(bag))
    try:
        return _topic_infos(reader)
    finally:
        reader.close()


def _no_topic(bag: Path, topic: str, infos: list[TopicInfo]) -> BagError:
    """BagError for a topic the bag lacks, listing the topics it has (``/a (type, n msgs), ...``)."""
    present = ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in infos) or "no topics"
    return BagError(f"{bag}: no topic {topic!r}; the bag has: {present}")


def _messages(bag: Path, topic: str) -> Iterator[tuple[str, object]]:
    """(message type, deserialised message) of every Image/CompressedImage message on ``topic``, in bag order.

    BagError (raised when iteration reaches it) for a missing topic, another message type, a storage
    or CDR error, or fewer messages than the bag's metadata lists for the topic.
    """
    reader = _open(bag)
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise _no_topic(bag, topic, _topic_infos(reader))
        if wrong := {c.msgtype for c in connections} - {IMAGE, COMPRESSED}:
            wrong_types = ", ".join(sorted(wrong))
            raise BagError(f"{bag}: topic {topic!r} has type {wrong_types}, not {IMAGE} or {COMPRESSED}")
        stream = reader.messages(connections=connections)
        listed, read = sum(c.msgcount for c in connections), 0
        while True:
            try:
                connection, _, raw = next(stream)
                msg = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            except StopIteration:
                if read < listed:
                    raise BagError(
                        f"{bag}: {topic!r} ended after {read} of the {listed} messages the bag lists, "
                        "truncated or corrupt?"
                    ) from None
                return
            except Exception as error:  # storage (apsw, mcap) and CDR errors of a damaged bag
                raise BagError(
                    f"{bag}: cannot read {topic!r}, truncated or corrupt? ({type(error).__name__}: {error})"
                ) from error
            read += 1
            yield connection.msgtype, msg
    finally:
        reader.close()


def _decode(bag: Path, topic: str, msgtype: str, msg) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one Image or CompressedImage message; BagError if it does not decode."""
    where = f"{bag}: {topic!r} message stamped {stamp_to_ns(msg.header.stamp)} ns"
    if msgtype == IMAGE:
        try:
            return image_msg_to_rgb(msg)
        except ImageConversionError as error:
            raise BagError(f"{where}: {error}") from error
    bgr = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BagError(f"{where}: CompressedImage ({msg.format!r}, {len(msg.data)} bytes) does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_images(bag: Path | str, topic: str) -> Iterator[tuple[int, str, np.ndarray]]:
    """(header stamp in ns, frame_id, RGB uint8 (H, W, 3)) of each message on ``topic``, in bag order.

    ``topic`` carries ``sensor_msgs/msg/Image`` (rgb8, bgr8, rgba8, bgra8, mono8; ``step`` honoured)
    or ``sensor_msgs/msg/CompressedImage``. BagError for a missing/corrupt bag, a missing topic, a
    topic of another type, or a message that does not decode.
    """
    bag = Path(bag)
    for msgtype, msg in _messages(bag, topic):
        yield stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), _decode(bag, topic, msgtype, msg)


def read_masks(bag: Path | str, topic: str) -> Iterator[tuple[int, str, np.ndarray]]:
    """(header stamp in ns, frame_id, bool (H, W)) of each mask on ``topic``: a pixel is True where any
    channel of the decoded image is non-zero (mono8 0/255 → False/True). Errors as :func:`read_images`."""
    for stamp_ns, frame_id, rgb in read_images(bag, topic):
        yield stamp_ns, frame_id, rgb.any(axis=2)


def header_msg(stamp_ns: int, frame_id: str):
    """A rosbags ``std_msgs/msg/Header``."""
    sec, nanosec = divmod(stamp_ns, _NS_PER_S)
    time = TYPESTORE.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return TYPESTORE.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def image_msg(pixels: np.ndarray, encoding: str, header):
    """An unpadded rosbags ``sensor_msgs/msg/Image`` of a uint8 (H, W) or (H, W, C) array."""
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels).reshape(-1)
    return TYPESTORE.types[IMAGE](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
        step=data.size // height, data=data,
    )


def _compressed_msg(path: Path, fmt: str, header):
    """A rosbags ``sensor_msgs/msg/CompressedImage`` of the frame file: its bytes if already ``fmt``."""
    if path.suffix.lower() in COMPRESSED_FORMATS[fmt]:
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    else:
        bgr = cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(COMPRESSED_FORMATS[fmt][0], bgr)
        if not ok:
            raise BagError(f"cannot encode {path} as {fmt}")
        data = encoded.reshape(-1)
    return TYPESTORE.types[COMPRESSED](header=header, format=fmt, data=data)


def _gt_mask(path: Path) -> np.ndarray:
    """A mask PNG as bool: every object of its label map (:func:`read_label_png`), void 255 excluded."""
    return np.isin(read_label_png(path), (0, 255), invert=True)


def _check_write_options(bag: Path, storage: str, compressed: str | None, rate_hz: float) -> None:
    """BagError for an unknown ``storage`` or ``compressed`` format, a rate not > 0, or an existing ``bag``."""
    if storage not in STORAGES:
        raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if compressed is not None and compressed not in COMPRESSED_FORMATS:
        raise BagError(f"compressed must be one of {', '.join(COMPRESSED_FORMATS)}, got {compressed!r}")
    if not rate_hz > 0:
        raise BagError(f"rate_hz must be > 0, got {rate_hz}")
    if bag.exists():
        raise BagError(f"{bag} exists already; a bag is only written to a new path")


def _masks_of(frames: list[Path], masks_dir: Path | str, frames_dir: Path | str) -> dict[str, Path]:
    """Frame name (stem) -> the mask of ``masks_dir`` named like it; BagError if no frame has one."""
    available = {p.stem: p for p in image_files(masks_dir)} if Path(masks_dir).is_dir() else {}
    masks = {p.stem: available[p.stem] for p in frames if p.stem in available}
    if not masks:
        raise BagError(f"no mask in {masks_dir} is named like a frame of {frames_dir}")
    return masks


def write_bag(
    bag: Path | str,
    frames_dir: Path | str,
    masks_dir: Path | str | None = None,
    *,
    storage: str = "mcap",
    rate_hz: float = 30.0,
    compressed: str | None = None,
    image_topic: str = IMAGE_TOPIC,
    mask_topic: str = GROUND_TRUTH_MASK_TOPIC,
    frame_id: str = "camera",
    start_ns: int = START_NS,
    limit: int = 0,
) -> int:
    """Write the frames of ``frames_dir`` (JPEG/PNG, sorted by name; the first ``limit`` if > 0) to a new
    bag at ``bag``, with the masks of ``masks_dir`` (PNG named like the frame; any object = 255, void
    255 and background = 0) on ``mask_topic``; returns the number of frames written.

    ``storage``: ``"mcap"`` or ``"sqlite3"``. ``compressed``: None (Image rgb8), ``"jpeg"`` or
    ``"png"`` (CompressedImage). Stamps: see the module docstring. BagError if ``bag`` exists, the
    folder has no frames, ``masks_dir`` has no mask for any frame, or an option is invalid; a bag left
    half written by an error is removed.
    """
    bag = Path(bag)
    _check_write_options(bag, storage, compressed, rate_hz)
    frames = image_files(frames_dir) if Path(frames_dir).is_dir() else []
    frames = frames[:limit] if limit > 0 else frames
    if not frames:
        raise BagError(f"no JPEG/PNG frames in {frames_dir}")
    masks = _masks_of(frames, masks_dir, frames_dir) if masks_dir is not None else {}
    try:
        with Writer(bag, version=9, storage_plugin=STORAGES[storage]) as writer:
            image_type = IMAGE if compressed is None else COMPRESSED
            image_conn = writer.add_connection(image_topic, image_type, typestore=TYPESTORE)
            mask_conn = writer.add_connection(mask_topic, IMAGE, typestore=TYPESTORE) if masks else None
            for index, path in enumerate(tqdm(frames, desc=f"writing {bag.name}", unit="frame")):
                stamp_ns = start_ns + round(index * _NS_PER_S / rate_hz)
                header = header_msg(stamp_ns, frame_id)
                if compressed is None:
                    msg = image_msg(read_rgb(path), "rgb8", header)
                else:
                    msg = _compressed_msg(path, compressed, header)
                writer.write(image_conn, stamp_ns, TYPESTORE.serialize_cdr(msg, image_type))
                if path.stem in masks:
                    pixels = _gt_mask(masks[path.stem]).view(np.uint8) * np.uint8(255)
                    mask = image_msg(pixels, "mono8", header)
                    writer.write(mask_conn, stamp_ns, TYPESTORE.serialize_cdr(mask, IMAGE))
    except BaseException as error:
        shutil.rmtree(bag, ignore_errors=True)
        if isinstance(error, Exception) and not isinstance(error, BagError):
            raise BagError(f"{bag}: writing failed ({type(error).__name__}: {error})") from error
        raise
    return len(frames)


def export_topic(
    bag: Path | str, topic: str, out_dir: Path | str, image_format: str = "png", masks: bool = False
) -> int:
    """Write every message of ``topic`` to ``out_dir`` as ``NNNNN.<png|jpg>`` (bag order, from 00000) plus
    ``stamps.csv`` (``index,stamp_ns,frame_id``); returns the number of files written.

    ``masks=True``: each message becomes a single-channel 0/255 PNG of :func:`read_masks` (always PNG,
    lossless). Otherwise RGB in ``image_format`` (``"png"`` or ``"jpg"``, JPEG quality 95).
    """
    if image_format not in ("png", "jpg"):
        raise BagError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    infos = topics(bag)
    total = next((t.count for t in infos if t.name == topic), None)
    if total is None:
        raise _no_topic(Path(bag), topic, infos)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    frames = tqdm(read_masks(bag, topic) if masks else read_images(bag, topic),
                  total=total, desc=f"exporting {topic}", unit="msg")
    for index, (stamp_ns, frame_id, pixels) in enumerate(frames):
        if masks:
            PILImage.fromarray(pixels.view(np.uint8) * np.uint8(255)).save(out_dir / f"{index:05d}.png")
        else:
            PILImage.fromarray(pixels).save(out_dir / f"{index:05d}.{image_format}", quality=95)
        rows.append((index, stamp_ns, frame_id))
    with (out_dir / "stamps.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("index", "stamp_ns", "frame_id"), *rows])
    return len(rows)


def parse_args(argv=None) -> argparse.Namespace:
    """Arguments of ``vrs-bag``."""
    parser = argparse.ArgumentParser(
        prog="vrs-bag", description="Write, inspect and export rosbag2 bags of camera frames and masks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="frame folder (+ mask folder) -> new bag")
    make.add_argument("frames", type=Path, help="folder of JPEG/PNG frames (sorted by name)")
    make.add_argument("bag", type=Path, help="bag folder to create")
    make.add_argument("--masks", type=Path, help="folder of ground-truth mask PNGs named like the frames")
    make.add_argument("--storage", choices=tuple(STORAGES), default="mcap")
    make.add_argument("--rate", type=float, default=30.0, help="frame rate in Hz for the stamps (default 30)")
    make.add_argument("--compressed", nargs="?", const="jpeg", choices=tuple(COMPRESSED_FORMATS),
                      help="write sensor_msgs/CompressedImage (jpeg if no format given) instead of Image rgb8")
    make.add_argument("--topic", help=f"image topic (default {IMAGE_TOPIC}, + /compressed when compressed)")
    make.add_argument("--mask-topic", default=GROUND_TRUTH_MASK_TOPIC)
    make.add_argument("--frame-id", default="camera")
    make.add_argument("--start-ns", type=int, default=START_NS, help="stamp of the first frame in ns")
    make.add_argument("--limit", type=int, default=0, help="only the first N frames (0 = all)")
    export = commands.add_parser("export", help="one image or mask topic of a bag -> folder of PNG/JPG")
    export.add_argument("bag", type=Path)
    export.add_argument("topic")
    export.add_argument("out", type=Path, help="output folder")
    export.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    export.add_argument("--mask", action="store_true", help="write 0/255 mask PNGs (non-zero pixel = object)")
    info = commands.add_parser("info", help="topics, types and message counts of a bag")
    info.add_argument("bag", type=Path)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Console entry point ``vrs-bag``; returns the exit status (1 with a message on stderr on error)."""
    args = parse_args(argv)
    try:
        if args.command == "make":
            topic = args.topic or transport_topic(IMAGE_TOPIC, COMPRESSED if args.compressed else IMAGE)
            count = write_bag(
                args.bag, args.frames, args.masks, storage=args.storage, rate_hz=args.rate,
                compressed=args.compressed, image_topic=topic, mask_topic=args.mask_topic,
                frame_id=args.frame_id, start_ns=args.start_ns, limit=args.limit,
            )
            print(f"vrs-bag: wrote {count} frames to {args.bag} ({args.storage}, {topic})")
        elif args.command == "export":
            count = export_topic(args.bag, args.topic, args.out, args.format, args.mask)
            print(f"vrs-bag: exported {count} messages of {args.topic} to {args.out}")
        else:
            print(f"{args.bag}:")
            for info in topics(args.bag):
                print(f"  {info.name}  {info.msgtype}  {info.count} msgs")
    except BagError as error:
        print(f"vrs-bag: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
