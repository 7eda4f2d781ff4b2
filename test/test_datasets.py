"""Tests for vrs_node.eval.datasets.

Fixtures are written by the tests to the on-disk schemas of EVALUATION.md §2 (COCO RLE encoded
with pycocotools, palette PNGs with Pillow); the shared DAVIS-2016 sample is checked against its
files and its ``meta_expressions.json`` read here with plain ``json``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DAVIS
from PIL import Image
from pycocotools import mask as coco_mask

from vrs_node.eval.datasets import (
    image_files,
    load_davis,
    load_davis_expressions,
    load_mevis,
    load_reasonvos,
    load_revos,
    read_label_png,
)

H, W = 12, 16


def write_jpegs(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (W, H), (40, 80, 120)).save(folder / f"{name}.jpg")


def write_palette(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (253 * 3))
    image.save(path)


def rle(mask):
    """COCO RLE of a mask with ``counts`` as str, as the json files store it."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def random_masks(seed, count):
    rng = np.random.default_rng(seed)
    return [rng.random((H, W)) < 0.3 for _ in range(count)]


# --- DAVIS ----------------------------------------------------------------------------------------


def test_davis_2017_official_layout_keeps_palette_ids_and_void(tmp_path):
    names = ["00000", "00001", "00002"]
    write_jpegs(tmp_path / "JPEGImages" / "480p" / "dogs", names)
    labels = np.zeros((H, W), np.uint8)
    labels[1:4, 1:5], labels[6:9, 8:12], labels[0, :] = 1, 2, 255
    for name in names[:2]:  # the last frame has no annotation
        write_palette(tmp_path / "Annotations" / "480p" / "dogs" / f"{name}.png", labels)
    write_palette(tmp_path / "Annotations_unsupervised" / "480p" / "dogs" / "00000.png", labels == 2)

    (sample,) = load_davis(tmp_path)
    assert sample.name == "dogs" and sample.frames == tuple(names)
    assert np.array_equal(sample.labels(1), labels)
    assert sample.labels(2) is None
    assert sample.object_ids() == (1, 2)
    assert sample.image(0).shape == (H, W, 3) and sample.image(0).dtype == np.uint8
    (unsup,) = load_davis(tmp_path, annotations="Annotations_unsupervised")
    assert np.array_equal(unsup.labels(0), (labels == 2).astype(np.uint8))
    assert unsup.labels(1) is None
    with pytest.raises(FileNotFoundError, match="cats"):
        load_davis(tmp_path, sequences=["cats"])


def test_davis_2016_grayscale_masks_become_object_1(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[2:7, 3:9] = 255
    (tmp_path / "Annotations").mkdir()
    Image.fromarray(mask, mode="L").save(tmp_path / "Annotations" / "00000.png")
    labels = read_label_png(tmp_path / "Annotations" / "00000.png")
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
    assert np.array_equal(labels == 1, mask == 255)


def test_shared_davis2016_sample_matches_its_files():
    samples = load_davis(DAVIS)
    assert [s.name for s in samples] == sorted(p.name for p in DAVIS.iterdir() if (p / "JPEGImages").is_dir())
    for sample in samples:
        jpgs = sorted((DAVIS / sample.name / "JPEGImages").glob("*.jpg"))
        assert list(sample.frame_paths) == jpgs
        assert all(p is not None and p.parent.name == "Annotations" for p in sample.annotation_paths)
        assert sample.object_ids() == (1,)
        labels = sample.labels(len(jpgs) - 1)
        with Image.open(jpgs[-1]) as image:
            assert labels.shape == (image.height, image.width)
        with Image.open(sample.annotation_paths[-1]) as png:
            assert np.array_equal(labels == 1, np.array(png) == 255)


def test_shared_davis2016_expressions_come_from_its_meta_json():
    meta = json.loads((DAVIS / "meta_expressions.json").read_text())["videos"]
    expressions = load_davis_expressions(DAVIS)
    expected = {(v, k): e for v, video in meta.items() for k, e in video["expressions"].items()}
    assert {(e.video, e.expression_id) for e in expressions} == set(expected)
    for expression in expressions:
        entry = expected[(expression.video, expression.expression_id)]
        assert expression.text == entry["exp"]
        assert expression.subset == {0: "referring", 1: "reasoning"}[entry["type_id"]]
        assert expression.frames == tuple(meta[expression.video]["frames"])
        assert len(expression.frame_paths) == len(list((DAVIS / expression.video / "JPEGImages").glob("*.jpg")))
    blackswan = next(e for e in expressions if e.video == "blackswan")
    for index in (0, 17, 49):
        mask = blackswan.gt_mask(index)
        png = np.array(Image.open(DAVIS / "blackswan" / "Annotations" / f"{index:05d}.png"))
        assert mask.dtype == bool and mask.shape == png.shape == (480, 854)
        assert np.array_equal(mask, png == 255)
    with pytest.raises(IndexError):
        blackswan.gt_mask(50)


# --- ReVOS ---------------------------------------------------------------------------------------


def write_revos(root):
    """Two videos; returns the per-anno-id masks (None where absent)."""
    frames = {"vidA": ["f0", "f1", "f2"], "vidB": ["00000", "00001"]}
    for video, names in frames.items():
        write_jpegs(root / "JPEGImages" / video, names)
    a, b = random_masks(1, 3), random_masks(2, 3)
    masks = {
        "11": [a[0], None, a[2]],
        "12": [b[0], b[1], None],
        "13": [None, None],  # an object never visible
    }
    meta = {"videos": {
        "vidA": {"vid_id": 0, "frames": frames["vidA"], "expressions": {
            "0": {"exp": "the two dogs", "obj_id": [1, 2], "anno_id": [11, 12], "type_id": 0},
            "1": {"exp": "what could fetch a ball", "obj_id": [1], "anno_id": [11], "type_id": 1},
        }},
        "vidB": {"vid_id": 1, "frames": frames["vidB"], "expressions": {
            "0": {"exp": "the unicorn", "obj_id": [], "anno_id": [13], "type_id": 2},
        }},
    }}
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(
        json.dumps({k: [None if m is None else rle(m) for m in v] for k, v in masks.items()})
    )
    return masks


def test_revos_ground_truth_is_the_union_of_anno_ids(tmp_path):
    masks = write_revos(tmp_path)
    expressions = {(e.video, e.expression_id): e for e in load_revos(tmp_path)}
    both = expressions[("vidA", "0")]
    assert both.text == "the two dogs" and both.subset == "referring" and both.object_ids == (1, 2)
    assert both.frame_paths[1] == tmp_path / "JPEGImages" / "vidA" / "f1.jpg"
    assert np.array_equal(both.gt_mask(0), masks["11"][0] | masks["12"][0])
    assert np.array_equal(both.gt_mask(1), masks["12"][1])
    assert np.array_equal(both.gt_mask(2), masks["11"][2])
    one = expressions[("vidA", "1")]
    assert one.subset == "reasoning"
    assert one.gt_mask(1).dtype == bool and one.gt_mask(1).shape == (H, W) and not one.gt_mask(1).any()
    unicorn = expressions[("vidB", "0")]
    assert unicorn.subset == "no-target"
    assert unicorn.gt_mask(0).shape == (H, W) and not unicorn.gt_mask(0).any()  # size from the image


def test_revos_refuses_unknown_anno_ids_and_wrong_mask_counts(tmp_path):
    write_revos(tmp_path)
    masks = json.loads((tmp_path / "mask_dict.json").read_text())
    masks["12"] = masks["12"][:2]
    (tmp_path / "mask_dict.json").write_text(json.dumps(masks))
    with pytest.raises(ValueError, match="anno_id \\[12\\]"):
        load_revos(tmp_path)
    del masks["12"]
    (tmp_path / "mask_dict.json").write_text(json.dumps(masks))
    with pytest.raises(KeyError, match="12"):
        load_revos(tmp_path)


# --- MeViS ---------------------------------------------------------------------------------------


def test_mevis_valid_u_and_valid_without_ground_truth(tmp_path):
    split = tmp_path / "valid_u"
    write_jpegs(split / "JPEGImages" / "m1", ["00000", "00001"])
    m = random_masks(5, 4)
    (split / "meta_expressions.json").write_text(json.dumps({"videos": {"m1": {"frames": ["00000", "00001"],
        "expressions": {"0": {"exp": "cars moving left", "obj_id": [0, 1], "anno_id": ["7", "8"]}}}}}))
    (split / "mask_dict.json").write_text(json.dumps({"7": [rle(m[0]), rle(m[1])], "8": [rle(m[2]), None]}))
    (expression,) = load_mevis(tmp_path)
    assert (expression.video, expression.expression_id, expression.subset) == ("m1", "0", "referring")
    assert expression.text == "cars moving left" and expression.object_ids == (0, 1)
    assert np.array_equal(expression.gt_mask(0), m[0] | m[2])
    assert np.array_equal(expression.gt_mask(1), m[1])

    valid = tmp_path / "valid"
    valid.mkdir()
    (valid / "meta_expressions.json").write_text((split / "meta_expressions.json").read_text())
    (hidden,) = load_mevis(tmp_path, split="valid")
    assert hidden.gt_mask(0) is None and hidden.gt_mask(1) is None


# --- ReasonVOS -----------------------------------------------------------------------------------


def test_reasonvos_layout_with_dict_and_list_expressions(tmp_path):
    write_jpegs(tmp_path / "JPEGImages" / "v1", ["00000", "00001", "00002"])
    write_jpegs(tmp_path / "JPEGImages" / "v2", ["00000", "00001"])
    gt = random_masks(9, 3)
    folder = tmp_path / "Annotations" / "mevis_v1_3"  # benchmark_check.py lower-cases the source
    folder.mkdir(parents=True)
    for index in (0, 2):  # frame 1 is not annotated
        Image.fromarray(gt[index].astype(np.uint8) * 255, mode="L").save(folder / f"{index:05d}.png")
    meta = {"videos": {
        "v1": {"source": "MeViS", "frames": ["00000", "00001", "00002"], "is_sent": True,
               "expressions": {"0": {"obj_id": 3, "exp_text": "which animal is hungry?"}}},
        "v2": {"source": "BURST", "is_sent": False,  # no frame list: every JPEG of the video
               "expressions": [{"obj_id": 1, "exp_id": "e5", "exp_text": "umbrella", "is_sent": False}]},
    }}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    first, second = load_reasonvos(tmp_path)
    assert (first.video, first.expression_id, first.subset) == ("v1", "0", "reasoning")
    assert first.text == "which animal is hungry?"
    assert first.object_ids == (3,) and first.meta["source"] == "MeViS" and first.meta["is_sent"] is True
    assert np.array_equal(first.gt_mask(0), gt[0])
    assert first.gt_mask(1) is None
    assert np.array_equal(first.gt_mask(2), gt[2])
    assert (second.expression_id, second.text, second.meta["is_sent"]) == ("e5", "umbrella", False)
    assert second.frame_paths == tuple(image_files(tmp_path / "JPEGImages" / "v2"))
    assert second.gt_mask(0) is None  # no Annotations/BURST_v2_1 folder: not scored
