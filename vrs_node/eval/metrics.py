"""Video segmentation metrics: region similarity J, boundary F-measure F, and the per-benchmark
aggregations of ``shared/design/EVALUATION.md`` §1 (the protocols differ; §1.3 is the table).

ROS-free: numpy, OpenCV, scikit-image (``disk``) and SciPy (Hungarian matching) only.

Per frame (§1.1, §1.2; the official ``davis2017-evaluation`` ``metrics.py`` definitions, empty cases
included; M = prediction, G = ground truth, V = void pixels, all boolean, non-zero = True):

- ``J = |M ∩ G \\ V| / |M ∪ G \\ V|``, and J = 1 when that union is empty.
- ``F = 2PR / (P + R)`` (0 when P + R = 0) on 1-px boundaries (:func:`boundary_map`) matched
  within a disk of radius ``ceil(bound_th · ||(H, W)||₂)`` px (``bound_th`` ≥ 1 is taken as pixels).
  No boundary in either mask: F = 1; only one of them has a boundary: F = 0.

Aggregations (§1.3):

- DAVIS-17 semi-supervised and unsupervised: :func:`davis_object_scores` (one sequence) →
  :func:`davis_summary` (J&F-Mean, J/F Mean, Recall, Decay over all objects of all sequences).
- ReVOS, MeViS, ReasonVOS: :func:`expression_jf` (one expression, all frames) →
  :func:`revos_summary` / :func:`summarize_expressions`.

Why not the installed packages: ``vos-benchmark`` computes per-frame J and F only inside its
stateful ``Evaluator.feed_frame`` on label maps (no void pixels, no per-pair call, objects enter
lazily) and aggregates SA-V style; its boundary helper is private (``_seg2bmap``). EVALUATION.md
also asks for an own implementation checked against it. So the formulas are written here and
``vos-benchmark`` is the per-frame oracle of ``test/test_metrics.py``. ``pycocotools`` has no J/F.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.morphology import disk

BOUND_TH = 0.008
"""Boundary tolerance of F: a fraction of the image diagonal (0.8 %), as in DAVIS."""

VOID_LABEL = 255
"""Label of void pixels in DAVIS annotation PNGs."""

MAX_PROPOSALS = 20
"""Most object proposals the DAVIS unsupervised protocol accepts per sequence."""

REVOS_SUBSETS = ("referring", "reasoning")
"""ReVOS subsets scored by J&F (``type_id`` 0 and 1); ``type_id`` 2 (no target) is left out (§1.3)."""


@dataclass(frozen=True)
class JF:
    """Mean region similarity ``j`` and boundary measure ``f`` (fractions, not %); ``jf`` = (j + f) / 2."""

    j: float
    f: float

    @property
    def jf(self) -> float:
        """J&F: the mean of J and F."""
        return (self.j + self.f) / 2


@dataclass(frozen=True)
class ExpressionSummary:
    """Means over expressions, with missing outputs scored two ways.

    ``strict``: a missing output counts as J = F = 0 (MeViS and ReVOS official; our headline).
    ``lenient``: missing outputs are left out (ReasonVOS official, ``eval_reason_vos.py:L28-33``);
    NaN when every output is missing. ``count`` expressions in all, ``missing`` of them without output.
    """

    strict: JF
    lenient: JF
    count: int
    missing: int


def _masks(pred, gt, void) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Boolean (non-zero = True) prediction, ground truth and void; ValueError on a shape mismatch."""
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.shape != gt.shape or pred.ndim < 2:
        raise ValueError(
            f"prediction {pred.shape} and ground truth {gt.shape} must have the same shape (..., H, W)"
        )
    if void is not None:
        void = np.asarray(void) != 0
        if void.shape != gt.shape:
            raise ValueError(f"void {void.shape} must have the ground truth's shape {gt.shape}")
    return pred, gt, void


def region_similarity(pred, gt, void=None):
    """J (Jaccard index, IoU) of a prediction against ground truth, per frame (§1.1).

    ``J = |M ∩ G \\ V| / |M ∪ G \\ V|``; J = 1 when ``M ∪ G \\ V`` is empty (both masks empty).
    Inputs are (H, W) or (..., H, W) arrays of any dtype, non-zero = True; ``void`` (optional, same
    shape) marks pixels that count for neither. Returns a float for (H, W) input, otherwise a float64
    array of the leading shape (one value per frame).
    """
    pred, gt, void = _masks(pred, gt, void)
    keep = True if void is None else ~void
    inter = np.count_nonzero(pred & gt & keep, axis=(-2, -1))
    union = np.count_nonzero((pred | gt) & keep, axis=(-2, -1))
    j = np.divide(inter, union, out=np.ones(np.shape(union)), where=union > 0)
    return float(j) if j.ndim == 0 else j


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-px boundary of a binary (H, W) mask, offset ½ px toward the origin (D. Martin's ``seg2bmap``).

    With E, S, SE the mask shifted one pixel left, up and up-left (pixel (y, x) sees its right, lower
    and lower-right neighbour; outside the image is background)::

        b = (m ^ E) | (m ^ S) | (m ^ SE)
        b[-1, :] = m[-1, :] ^ E[-1, :];  b[:, -1] = m[:, -1] ^ S[:, -1];  b[-1, -1] = 0

    Returns a bool array of the mask's shape (§1.2 step 1).
    """
    m = np.asarray(mask) != 0
    e, s, se = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    e[:, :-1] = m[:, 1:]
    s[:-1, :] = m[1:, :]
    se[:-1, :-1] = m[1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[-1, :] = m[-1, :] ^ e[-1, :]
    b[:, -1] = m[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Tolerance of F in px: ``bound_th`` if ≥ 1, else ``ceil(bound_th · ||(H, W)||₂)`` (480×854 → 8)."""
    return bound_th if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(shape)))


def _f_frame(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None, bound_th: float) -> float:
    """F of one (H, W) frame: §1.2 steps 1-5, with the official empty-boundary cases."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    footprint = disk(boundary_radius(pred.shape, bound_th)).astype(np.uint8)
    pred_dil = cv2.dilate(pred_b.view(np.uint8), footprint) != 0
    gt_dil = cv2.dilate(gt_b.view(np.uint8), footprint) != 0
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    precision = np.count_nonzero(pred_b & gt_dil) / float(n_pred)
    recall = np.count_nonzero(gt_b & pred_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_measure(pred, gt, void=None, bound_th: float = BOUND_TH):
    """Boundary F-measure F of a prediction against ground truth, per frame (§1.2).

    P = |pred boundary ∩ dilate(GT boundary)| / |pred boundary|, R = |GT boundary ∩ dilate(pred
    boundary)| / |GT boundary|, F = 2PR / (P + R) (0 if P + R = 0); dilation by a disk of radius
    :func:`boundary_radius`; void pixels are cleared in both masks before boundary extraction.
    Empty cases (on boundaries): neither → F = 1; only one → F = 0.
    Inputs are (H, W) or (T, H, W), non-zero = True. Returns a float for (H, W), else a float64
    array of T values.
    """
    pred, gt, void = _masks(pred, gt, void)
    if pred.ndim == 2:
        return _f_frame(pred, gt, void, bound_th)
    if pred.ndim != 3:
        raise ValueError(f"boundary_measure takes (H, W) or (T, H, W) masks, got {pred.shape}")
    return np.array(
        [_f_frame(pred[t], gt[t], None if void is None else void[t], bound_th) for t in range(len(pred))]
    )


def davis_statistics(values) -> tuple[float, float, float]:
    """DAVIS per-object statistics of per-frame J or F values: (Mean, Recall, Decay) (§1.3).

    Mean = nanmean(v); Recall = mean(v > 0.5); Decay = nanmean(bin 0) − nanmean(bin 3), with
    ``ids = round(linspace(1, n, 5) + 1e-10) − 1`` and bin i = ``v[ids[i] : ids[i+1] + 1]``
    (``davis2017 utils.py db_statistics``). Deviation: ``ids`` are int64 here; upstream casts them to
    uint8, which wraps for n > 256 and gives a wrong Decay on long streams (EVALUATION.md §5.3).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {v.shape}")
    ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    first, last = v[ids[0] : ids[1] + 1], v[ids[3] : ids[4] + 1]
    return float(np.nanmean(v)), float(np.mean(v > 0.5)), float(np.nanmean(first) - np.nanmean(last))


def davis_object_scores(
    gt_labels, pred_labels, task: str = "semi-supervised", bound_th: float = BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F of one DAVIS-2017 sequence, scored as ``DAVISEvaluation`` does (§1.3).

    ``gt_labels`` and ``pred_labels`` are (T, H, W) integer label maps of all T frames (palette index
    k = object k, 0 = background; 255 = void in the GT). GT objects are 1..max(GT frame 0 without void).

    - ``"semi-supervised"``: frames 1..T−2 only (first and last dropped); prediction objects are
      1..max(prediction over those frames); more than the GT has → ValueError (upstream exits);
      missing ones are empty masks; prediction k is scored against GT object k; void is NOT applied
      (255 is background).
    - ``"unsupervised"``: all frames; void (GT == 255) applied; at most 20 proposals (ValueError
      otherwise); fewer proposals than objects are padded with empty ones; every (proposal, object)
      pair is scored and proposals are assigned to objects by ``linear_sum_assignment`` maximising
      the frame-mean of (J + F) / 2.

    Returns (J, F), each float64 (objects, scored frames), row i = GT object i + 1 (upstream orders
    unsupervised rows by proposal instead; the set of rows and every mean are the same).
    """
    gt = np.asarray(gt_labels)
    pred = np.asarray(pred_labels)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(f"GT {gt.shape} and prediction {pred.shape} must be equal (T, H, W) label maps")
    if task not in ("semi-supervised", "unsupervised"):
        raise ValueError(f"task must be 'semi-supervised' or 'unsupervised', got {task!r}")
    void = gt == VOID_LABEL
    n_gt = int(np.where(void[0], 0, gt[0]).max())
    if task == "semi-supervised":
        if len(gt) < 3:
            raise ValueError(f"semi-supervised scoring drops the first and last frame: {len(gt)} frames are too few")
        gt, pred, void = gt[1:-1], pred[1:-1], None
    n_pred = int(pred.max())
    limit = n_gt if task == "semi-supervised" else MAX_PROPOSALS
    if n_pred > limit:
        raise ValueError(
            f"prediction has object id {n_pred}, more than the {limit} allowed "
            f"({'objects in the GT' if task == 'semi-supervised' else 'proposals'})"
        )
    # Object k is label k; ids above max(n_pred, n_gt) never occur, so padding is implicit.
    if task == "semi-supervised":
        j = np.zeros((n_gt, len(gt)))
        f = np.zeros_like(j)
        for k in range(n_gt):
            j[k] = region_similarity(pred == k + 1, gt == k + 1)
            f[k] = boundary_measure(pred == k + 1, gt == k + 1, bound_th=bound_th)
        return j, f
    n_proposals = max(n_pred, n_gt)
    j = np.zeros((n_proposals, n_gt, len(gt)))
    f = np.zeros_like(j)
    for p in range(n_proposals):
        for k in range(n_gt):
            j[p, k] = region_similarity(pred == p + 1, gt == k + 1, void)
            f[p, k] = boundary_measure(pred == p + 1, gt == k + 1, void, bound_th)
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    order = np.argsort(cols)
    return j[rows[order], cols[order]], f[rows[order], cols[order]]


def davis_summary(j_per_object: Iterable, f_per_object: Iterable) -> dict[str, float]:
    """DAVIS global table from per-object per-frame J and F rows of all sequences (§1.3).

    Each row (one object of one sequence, e.g. a row of :func:`davis_object_scores`) goes through
    :func:`davis_statistics`; ``X-Mean``, ``X-Recall``, ``X-Decay`` are the means over all objects,
    ``J&F-Mean = (J-Mean + F-Mean) / 2`` (``evaluation_method.py:L43``). Fractions, not %.
    """
    rows = {"J": list(j_per_object), "F": list(f_per_object)}
    if not rows["J"] or len(rows["J"]) != len(rows["F"]):
        raise ValueError(f"need as many J rows as F rows (>= 1), got {len(rows['J'])} and {len(rows['F'])}")
    # (objects, 3) per metric -> means over objects of Mean, Recall, Decay
    stats = {name: np.array([davis_statistics(row) for row in rows[name]]).mean(axis=0) for name in rows}
    summary = {"J&F-Mean": float((stats["J"][0] + stats["F"][0]) / 2)}
    for name in ("J", "F"):
        for index, statistic in enumerate(("Mean", "Recall", "Decay")):
            summary[f"{name}-{statistic}"] = float(stats[name][index])
    return summary


def expression_jf(pred_masks, gt_masks, bound_th: float = BOUND_TH) -> JF:
    """J and F of one expression: means over ALL its (T, H, W) frames (ReVOS, MeViS, ReasonVOS; §1.3).

    Prediction and GT are binarised (non-zero = foreground; a multi-object GT is the union of its
    objects); no void, no frames dropped.
    """
    pred, gt, _ = _masks(pred_masks, gt_masks, None)
    if pred.ndim != 3 or len(pred) == 0:
        raise ValueError(f"expression masks must be (T, H, W) with T >= 1, got {pred.shape}")
    j = region_similarity(pred, gt)
    f = boundary_measure(pred, gt, bound_th=bound_th)
    return JF(float(np.mean(j)), float(np.mean(f)))


def _mean_jf(scores: list[JF]) -> JF:
    """Mean J and mean F of ``scores``; NaN for an empty list."""
    if not scores:
        return JF(math.nan, math.nan)
    return JF(float(np.mean([s.j for s in scores])), float(np.mean([s.f for s in scores])))


def summarize_expressions(scores: Iterable[JF | None]) -> ExpressionSummary:
    """Mean J, F and J&F over expressions; ``None`` = no output for that expression (§1.3, §5.3).

    ``strict``: J = mean_e J_e with missing J_e = F_e = 0, same for F, J&F = (J + F) / 2 — MeViS's
    official number (``eval_mevis.py``: missing video → [0, 0]). ``lenient``: the same over the
    expressions that have output — ReasonVOS's official number (missing predictions are skipped).
    """
    scores = list(scores)
    present = [s for s in scores if s is not None]
    strict = [s if s is not None else JF(0.0, 0.0) for s in scores]
    return ExpressionSummary(_mean_jf(strict), _mean_jf(present), len(scores), len(scores) - len(present))


def revos_summary(scores: Iterable[tuple[str, JF | None]]) -> dict[str, ExpressionSummary]:
    """ReVOS table (VISA ``eval_revos.py:L142-162``) from (subset, score or None) per expression.

    Subsets are ``"referring"`` (type_id 0) and ``"reasoning"`` (type_id 1), as
    ``vrs_node.eval.datasets`` tags them; anything else (type_id 2, no target) is left out. Each
    subset is :func:`summarize_expressions` of its expressions; ``overall`` is their unweighted mean,
    ``(referring + reasoning) / 2`` for J, F and J&F (not weighted by counts). The official number
    is ``strict`` (a missing video or any failure scores 0). VISA rounds each expression's score to
    0.01 % before averaging; this does not (the means differ by at most 0.005 points).
    """
    groups: dict[str, list[JF | None]] = {name: [] for name in REVOS_SUBSETS}
    for subset, score in scores:
        if subset in groups:
            groups[subset].append(score)
    table = {name: summarize_expressions(group) for name, group in groups.items()}
    ref, reason = table["referring"], table["reasoning"]
    table["overall"] = ExpressionSummary(
        strict=JF((ref.strict.j + reason.strict.j) / 2, (ref.strict.f + reason.strict.f) / 2),
        lenient=JF((ref.lenient.j + reason.lenient.j) / 2, (ref.lenient.f + reason.lenient.f) / 2),
        count=ref.count + reason.count,
        missing=ref.missing + reason.missing,
    )
    return table
