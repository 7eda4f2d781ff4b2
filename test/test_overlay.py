"""Several targets drawn (vrs_node.io.overlay) and the instance map as a message (vrs_node.io.image)."""

from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header

from vrs_node.io.image import ImageConversionError, image_msg_to_rgb, instance_map_to_msg, overlay_mask
from vrs_node.io.overlay import LABEL_CHARS, PALETTE, label_text, overlay_instances, target_color


def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    instance_map = np.zeros((120, 200), np.uint8)
    instance_map[60:100, 20:70] = 1
    instance_map[10:50, 120:190] = 7
    return image, instance_map


def test_one_unlabelled_target_id_1_is_exactly_the_mask_overlay():
    image, instance_map = scene()
    out = overlay_instances(image, instance_map, [(1, "the cup", None)])
    assert np.array_equal(out, overlay_mask(image, instance_map == 1))
    assert target_color(1) == (255, 0, 0)


def test_each_target_in_its_colour_with_its_label_near_its_box():
    image, instance_map = scene()
    plain = overlay_instances(image, instance_map, [(1, "a", None), (7, "b", None)])
    expected = overlay_mask(overlay_mask(image, instance_map == 1, target_color(1)), instance_map == 7, target_color(7))
    assert np.array_equal(plain, expected) and target_color(7) != target_color(1)
    assert np.array_equal(plain[instance_map == 0], image[instance_map == 0])
    labelled = overlay_instances(image, instance_map, [(1, "a", (20, 60, 69, 99)), (7, "b", (120, 10, 189, 49))])
    changed = np.argwhere((labelled != plain).any(axis=2))
    assert len(changed)
    near_1 = (changed[:, 0] < 70) & (changed[:, 1] >= 15) & (changed[:, 1] < 110)  # above target 1's box
    near_7 = (changed[:, 0] < 40) & (changed[:, 1] >= 115)  # inside target 7's box, at the image's top
    assert (near_1 | near_7).all() and near_1.any() and near_7.any()
    assert not np.shares_memory(labelled, image)


def test_ids_not_listed_are_not_drawn_and_colours_cycle():
    image, instance_map = scene()
    assert np.array_equal(overlay_instances(image, instance_map, []), image)
    assert target_color(1 + len(PALETTE)) == target_color(1) and len(set(PALETTE)) == len(PALETTE)


def test_labels_are_short_printable_ascii():
    assert label_text(3, "the cup") == "3 the cup"
    assert label_text(2, "la tête") == "2 la t?te"
    long = label_text(1, "x" * 100)
    assert long == "1 " + "x" * (LABEL_CHARS - 3) + "..."


def test_a_map_of_another_size_or_type_is_refused():
    image, instance_map = scene()
    with pytest.raises(ImageConversionError, match="instance map must be uint8"):
        overlay_instances(image, instance_map[:10], [])
    with pytest.raises(ImageConversionError, match="instance map must be uint8"):
        overlay_instances(image, instance_map.astype(bool), [])
    with pytest.raises(ValueError, match="alpha=1.5"):
        overlay_instances(image, instance_map, [(1, "a", None)], alpha=1.5)


def test_the_instance_map_message_holds_the_ids_with_the_header():
    _, instance_map = scene()
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 5, 7
    msg = instance_map_to_msg(instance_map, header)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("mono8", 120, 200, 200)
    assert msg.header == header and msg.header is not header
    assert np.array_equal(image_msg_to_rgb(msg)[:, :, 0], instance_map)
    for bad in (instance_map.astype(bool), instance_map[None], np.zeros((0, 5), np.uint8)):
        with pytest.raises(ImageConversionError, match="instance map must be uint8 with shape"):
            instance_map_to_msg(bad, header)
