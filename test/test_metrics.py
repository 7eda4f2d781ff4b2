"""Tests for vrs_node.eval.metrics.

Expectations come from outside the code under test: the golden vectors of EVALUATION.md §1.6
(computed with the official davis2017 ``metrics.py``), the ``vos-benchmark`` package as per-frame
oracle (its J and F equal the official ones exactly, EVALUATION.md §1.5), and aggregation values
worked out by hand in the comments.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import davis_sequence
from vos_benchmark.evaluator import Evaluator

from vrs_node.eval.metrics import (
    JF,
    boundary_map,
    boundary_measure,
    boundary_radius,
    davis_object_scores,
    davis_statistics,
    davis_summary,
    expression_jf,
    region_similarity,
    revos_summary,
    summarize_expressions,
)


def box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def oracle(pred, gt):
    """vos-benchmark's (J, F) of one frame.

    Its Evaluator only scores objects seen so far, so a first frame in which object 1 exists primes
    it; the second value of each list is then the frame under test, empty masks included.
    """
    evaluator = Evaluator()
    prime = np.zeros(gt.shape, dtype=np.uint8)
    prime[0, 0] = 1
    evaluator.feed_frame(prime, prime)
    evaluator.feed_frame(pred.astype(np.uint8), gt.astype(np.uint8))
    return evaluator.object_iou[1][1], evaluator.boundary_f[1][1]


# --- golden vectors, EVALUATION.md §1.6 ---------------------------------------------------------

S480, S720 = (480, 854), (720, 1280)
GT480 = box(S480, 100, 200, 100, 200)
GOLDEN = {
    "A shift 4 px": (box(S480, 100, 200, 104, 204), GT480, 0.923077, 1.000000),
    "B shift 12 px": (box(S480, 100, 200, 112, 212), GT480, 0.785714, 0.525000),
    "C eroded 5 px": (box(S480, 105, 195, 105, 195), GT480, 0.810000, 1.000000),
    "D pred empty": (np.zeros(S480, bool), GT480, 0.0, 0.0),
    "E both empty": (np.zeros(S480, bool), np.zeros(S480, bool), 1.0, 1.0),
    "F 720p shift 10 px": (box(S720, 210, 410, 210, 410), box(S720, 200, 400, 200, 400), 0.822323, 0.991250),
    "G top-left border": (box(S480, 0, 50, 0, 100), box(S480, 0, 50, 0, 100), 1.0, 1.0),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_vectors_of_evaluation_md(case):
    pred, gt, j, f = GOLDEN[case]
    assert region_similarity(pred, gt) == pytest.approx(j, abs=1e-6)
    assert boundary_measure(pred, gt) == pytest.approx(f, abs=1e-6)


@pytest.mark.parametrize(
    "shape, radius", [((360, 640), 6), ((480, 854), 8), ((720, 1280), 12), ((1024, 1024), 12), ((1080, 1920), 18)]
)
def test_boundary_radius_is_0_8_percent_of_the_diagonal_rounded_up(shape, radius):
    assert boundary_radius(shape) == radius  # radii listed in EVALUATION.md §1.2


def test_boundary_threshold_of_one_or_more_is_pixels():
    assert boundary_radius((480, 854), 3) == 3
    # the B golden shift (12 px) is inside a 12-px tolerance: every boundary pixel matches
    pred, gt, _, _ = GOLDEN["B shift 12 px"]
    assert boundary_measure(pred, gt, bound_th=12) == 1.0


def test_boundary_map_of_a_box_is_its_half_pixel_shifted_outline():
    # seg2bmap marks a pixel whose right, lower or lower-right neighbour differs: for the box
    # rows 2..4, cols 3..6 of a 8x10 image that is rows 1..4 x cols 2..6 minus the interior.
    mask = box((8, 10), 2, 5, 3, 7)
    expected = box((8, 10), 1, 5, 2, 7) & ~box((8, 10), 2, 4, 3, 6)
    assert np.array_equal(boundary_map(mask), expected)


# --- per-frame equality with vos-benchmark ------------------------------------------------------


def random_cases(shape, rng):
    """Mask pairs: ellipses, noise, shifted/eroded copies, 1-px objects, borders, empty, full."""
    h, w = shape

    def ellipses():
        mask = np.zeros(shape, np.uint8)
        for _ in range(rng.integers(1, 4)):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(1, max(2, w // 3))), int(rng.integers(1, max(2, h // 3))))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        return mask.astype(bool)

    empty, full = np.zeros(shape, bool), np.ones(shape, bool)
    dot = np.zeros(shape, bool)
    dot[rng.integers(0, h), rng.integers(0, w)] = True
    a = ellipses()
    cases = [
        (ellipses(), ellipses()),
        (a, np.roll(a, (int(rng.integers(-9, 10)), int(rng.integers(-9, 10))), axis=(0, 1))),
        (a, cv2.erode(a.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)),
        (rng.random(shape) < 0.5, rng.random(shape) < 0.3),
        (a, empty), (empty, a), (empty, empty), (full, a), (full, full), (dot, dot), (dot, a),
        (box(shape, 0, max(1, h // 2), 0, w), box(shape, h // 3, h, w // 4, w)),
    ]
    return cases


@pytest.mark.parametrize("shape", [(480, 854), (360, 640), (97, 131), (17, 5), (1, 1)])
def test_per_frame_j_and_f_equal_vos_benchmark_on_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    for pred, gt in random_cases(shape, rng):
        expected_j, expected_f = oracle(pred, gt)
        assert region_similarity(pred, gt) == expected_j
        assert boundary_measure(pred, gt) == expected_f


def test_j_and_f_equal_vos_benchmark_on_real_davis_masks():
    _, gts, _ = davis_sequence("blackswan", 10)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    preds = []
    for index, gt in enumerate(gts):
        preds += [
            (cv2.erode(gt.view(np.uint8), kernel) != 0, gt),
            (cv2.dilate(gt.view(np.uint8), kernel) != 0, gt),
            (np.roll(gt, (6, -11), axis=(0, 1)), gt),
            (gts[(index + 5) % len(gts)], gt),
        ]
    values = [oracle(p, g) for p, g in preds]
    assert len({v for v in values}) > 20  # the cases really differ
    for (pred, gt), (expected_j, expected_f) in zip(preds, values, strict=True):
        assert region_similarity(pred, gt) == expected_j
        assert boundary_measure(pred, gt) == expected_f


def test_frame_stacks_give_the_per_frame_values():
    rng = np.random.default_rng(7)
    pairs = random_cases((60, 90), rng)
    preds = np.stack([p for p, _ in pairs])
    gts = np.stack([g for _, g in pairs])
    expected = [oracle(p, g) for p, g in pairs]
    assert region_similarity(preds, gts).tolist() == [j for j, _ in expected]
    assert boundary_measure(preds, gts).tolist() == [f for _, f in expected]


def test_void_pixels_count_for_neither_mask():
    rng = np.random.default_rng(3)
    for pred, gt in random_cases((120, 160), rng):
        void = rng.random(gt.shape) < 0.2
        expected_j, expected_f = oracle(pred & ~void, gt & ~void)
        assert region_similarity(pred, gt, void) == expected_j
        assert boundary_measure(pred, gt, void) == expected_f
    # by hand: the prediction's extra 10x10 block lies in the void -> a perfect score
    gt = box((50, 50), 10, 20, 10, 20)
    pred = gt | box((50, 50), 30, 40, 30, 40)
    void = box((50, 50), 30, 40, 30, 40)
    assert region_similarity(pred, gt) == 0.5
    assert region_similarity(pred, gt, void) == 1.0
    assert boundary_measure(pred, gt, void) == 1.0


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        region_similarity(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="void"):
        boundary_measure(np.zeros((4, 5)), np.zeros((4, 5)), np.zeros((4, 4)))


# --- DAVIS statistics and aggregation -----------------------------------------------------------


def test_davis_statistics_by_hand_with_the_half_rounding_of_the_bins():
    # n = 7: ids = round(linspace(1, 7, 5) + 1e-10) - 1 = round([1, 2.5, 4, 5.5, 7]) - 1 = [0, 2, 3, 5, 6]
    # first bin v[0:3] = 1, .9, .5 -> 0.8; last bin v[5:7] = .3, .1 -> 0.2; Decay 0.6.
    # (banker's rounding without the 1e-10 would give a first bin v[0:2] and Decay 0.75)
    values = [1.0, 0.9, 0.5, 0.5, 0.5, 0.3, 0.1]
    mean, recall, decay = davis_statistics(values)
    assert mean == pytest.approx(3.8 / 7)
    assert recall == pytest.approx(2 / 7)  # 0.5 is not > 0.5
    assert decay == pytest.approx(0.6)


def test_davis_decay_is_right_on_streams_longer_than_255_frames():
    # n = 300: ids = [0, 75, 150, 224, 299]; first bin v[0:76] = 1, last bin v[224:300] = 0 -> 1.
    # Upstream's uint8 ids wrap (299 -> 43), making the last bin empty and the Decay NaN.
    values = np.r_[np.ones(100), np.zeros(200)]
    assert davis_statistics(values) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 1.0)


def test_davis_summary_by_hand():
    j_rows = [[1.0, 0.8, 0.6, 0.4], [0.2, 0.2, 0.2]]
    f_rows = [[1.0, 1.0, 1.0, 1.0], [0.6, 0.6, 0.0]]
    # n = 4: ids [0, 1, 2, 2, 3] -> bins v[0:2], v[2:4];  n = 3: ids [0, 1, 1, 2, 2] -> v[0:2], v[2:3]
    # J: means .7, .2; recalls 3/4, 0; decays .9 - .5 = .4, .2 - .2 = 0
    # F: means 1, .4; recalls 1, 2/3; decays 0, .6 - 0 = .6
    expected = {
        "J-Mean": 0.45, "J-Recall": 0.375, "J-Decay": 0.2,
        "F-Mean": 0.7, "F-Recall": 5 / 6, "F-Decay": 0.3,
        "J&F-Mean": 0.575,
    }
    summary = davis_summary(j_rows, f_rows)
    assert summary.keys() == expected.keys()
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value), key
    with pytest.raises(ValueError, match="as many"):
        davis_summary(j_rows, f_rows[:1])


SHAPE = (40, 60)  # F tolerance ceil(0.008 * 72.1) = 1 px


def two_objects(frames=5):
    """Label maps with object 1 (left box) and object 2 (right box) in every frame."""
    labels = np.zeros((frames, *SHAPE), np.uint8)
    labels[:, 5:20, 5:20] = 1
    labels[:, 20:35, 35:55] = 2
    return labels


def test_semi_supervised_drops_the_first_and_last_frame():
    gt = two_objects()
    pred = gt.copy()
    pred[0] = 0
    pred[-1] = 0  # wrong only on frames that are not scored
    j, f = davis_object_scores(gt, pred)
    assert j.shape == f.shape == (2, 3)
    assert (j == 1).all() and (f == 1).all()


def test_semi_supervised_scores_object_k_against_object_k():
    gt = two_objects()
    pred = gt.copy()
    pred[2] = np.where(gt[2] == 1, 2, np.where(gt[2] == 2, 1, 0))  # swapped on scored frame index 1
    pred[3][gt[3] == 2] = 0  # object 2 missing on scored frame index 2
    j, f = davis_object_scores(gt, pred)
    # swapped boxes are disjoint and > 1 px apart: J = F = 0; a missing object: J = F = 0
    assert j.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert f.tolist() == [[1, 0, 1], [1, 0, 0]]


def test_semi_supervised_pads_missing_objects_and_refuses_extra_ids():
    gt = two_objects()
    only_one = np.where(gt == 2, 0, gt)
    j, f = davis_object_scores(gt, only_one)
    assert j.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert f.tolist() == [[1, 1, 1], [0, 0, 0]]
    extra = gt.copy()
    extra[2, 0:3, 0:3] = 3
    with pytest.raises(ValueError, match="object id 3"):
        davis_object_scores(gt, extra)
    # GT objects are counted on the first frame (object 2 appears later: only 1 object)
    late = gt.copy()
    late[0][late[0] == 2] = 0
    with pytest.raises(ValueError, match="object id 2"):
        davis_object_scores(late, gt)


def test_semi_supervised_does_not_apply_void():
    gt = two_objects()
    gt[:, 0:5, 0:60] = 255  # void strip, 5 x 60 = 300 px
    pred = np.where(gt == 255, 1, gt)  # object 1 also covers the void strip
    j, _ = davis_object_scores(gt, pred)
    # object 1: |GT| = 225, prediction 225 + 300 -> J = 225 / 525
    assert j[0].tolist() == pytest.approx([225 / 525] * 3)
    assert j[1].tolist() == [1, 1, 1]


def test_unsupervised_matches_proposals_to_objects_on_all_frames_with_void():
    gt = two_objects()
    gt[:, 0:5, 0:60] = 255
    swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, 0)).astype(np.uint8)
    swapped[:, 0:5, 0:60] = 2  # spill into the void: ignored in this protocol
    j, f = davis_object_scores(gt, swapped, task="unsupervised")
    assert j.shape == (2, 5)  # all frames
    assert (j == 1).all() and (f == 1).all()
    three = gt.copy()
    three[:, 24:34, 22:30] = 3
    # proposal 1 = GT object 3, proposal 2 = GT object 1, GT object 2 not found (padded proposal 3)
    proposals = np.select([three == 3, three == 1], [1, 2], 0).astype(np.uint8)
    j, f = davis_object_scores(three, proposals, task="unsupervised")
    assert j.tolist() == [[1] * 5, [0] * 5, [1] * 5]  # rows in GT object order
    assert f.tolist() == [[1] * 5, [0] * 5, [1] * 5]
    too_many = gt.copy()
    too_many[:, 36:40, 0:21] = np.arange(21).reshape(1, 1, 21)  # ids up to 20 fit
    davis_object_scores(gt, np.where(too_many == 255, 0, too_many), task="unsupervised")
    too_many[:, 39, 30] = 21
    with pytest.raises(ValueError, match="object id 21"):
        davis_object_scores(gt, np.where(too_many == 255, 0, too_many), task="unsupervised")


# --- expression protocols (ReVOS, MeViS, ReasonVOS) ---------------------------------------------


def test_expression_jf_averages_all_frames():
    gt = np.zeros((3, 20, 30), bool)
    gt[0, 5:10, 5:10] = True
    gt[2, 5:10, 5:10] = True
    pred = gt.copy()
    pred[2] = False
    # frame 0 identical (1, 1); frame 1 both empty (1, 1); frame 2 prediction empty (0, 0)
    score = expression_jf(pred.astype(np.uint8) * 38, gt)  # any non-zero value is foreground
    assert (score.j, score.f) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert score.jf == pytest.approx(2 / 3)


def test_missing_outputs_score_zero_strictly_and_are_skipped_leniently():
    summary = summarize_expressions([JF(0.8, 0.6), None, JF(0.4, 0.2)])
    assert (summary.count, summary.missing) == (3, 1)
    assert summary.strict.j == pytest.approx(0.4) and summary.strict.f == pytest.approx(0.8 / 3)
    assert summary.strict.jf == pytest.approx((0.4 + 0.8 / 3) / 2)
    assert summary.lenient.j == pytest.approx(0.6) and summary.lenient.f == pytest.approx(0.4)
    nothing = summarize_expressions([None])
    assert nothing.strict == JF(0.0, 0.0) and math.isnan(nothing.lenient.j)


def test_revos_overall_is_the_unweighted_mean_of_the_two_subsets():
    scores = [
        ("referring", JF(0.9, 0.7)), ("referring", JF(0.6, 0.5)), ("referring", JF(0.3, 0.3)),
        ("reasoning", JF(0.8, 0.6)), ("reasoning", None),
        ("no-target", JF(1.0, 1.0)),  # type_id 2: excluded
    ]
    table = revos_summary(scores)
    # referring: J .6, F .5; reasoning (missing = 0): J .4, F .3; overall J .5, F .4, J&F .45
    # (count-weighted it would be J = 2.6 / 5 = .52)
    assert table["referring"].strict.j == pytest.approx(0.6)
    assert table["referring"].strict.f == pytest.approx(0.5)
    assert table["reasoning"].strict.j == pytest.approx(0.4)
    assert table["reasoning"].strict.f == pytest.approx(0.3)
    assert table["overall"].strict.j == pytest.approx(0.5)
    assert table["overall"].strict.f == pytest.approx(0.4)
    assert table["overall"].strict.jf == pytest.approx(0.45)
    assert (table["overall"].count, table["overall"].missing) == (5, 1)
    assert table["reasoning"].lenient.j == pytest.approx(0.8)
    assert table["overall"].lenient.j == pytest.approx(0.7)
