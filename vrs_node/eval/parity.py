"""``vrs-parity``: run vrs_node's VRS-HQ stages on a golden's inputs and compare every stage.

A golden is a ``<case>.<fp32|bf16>.npz`` written by the authors' own inference code
(``shared/golden/vrshq_tiny``: their classes, transformers 4.31, shared tiny random weights) with a
``<case>.<precision>.json`` beside it (instruction, anchor). The command loads the checkpoint the
golden was made with through :func:`~vrs_node.models.vrshq_checkpoint.load_vrshq_checkpoint`
in the golden's precision as the ``precision`` setting runs it
(:data:`vrs_node.models.precision.PRECISIONS`: for ``bf16`` the MLLM in bfloat16 and SAM-2's
float32 weights under ``torch.autocast`` to bfloat16; for ``fp32`` everything float32), reads
the first ``N`` frames of ``--frames`` in name order (``N`` = the golden's frame count), fixes the
anchor to the golden's (the reference's CLIP-336 anchor model is a stub there), and runs:

- one grounding query, :meth:`vrs_node.core.grounder.Grounder.ground` (the production path:
  prompt, tokenizer, CLIP-224 pre-processing, vision tower, DPC-KNN, LLaMA prefill, SEG/TAK head,
  TDA, TKS, keyframe decode);
- the ``offline`` protocol, :func:`vrs_node.core.offline.segment_offline`: the grounding query above,
  then propagation from the keyframe with TAK' (what ``vrs-replay --mode offline`` runs);
- two stage checks on the golden's own intermediate inputs, so that a difference is pinned to one
  stage: DPC-KNN on the golden's CLIP patch features, and CLIP-224 / SAM-2 pre-processing of frame 0.

Each stage prints one line with its measure (max |Δ|, mismatches, or the share of equal mask
pixels) and its tolerance (:data:`TOLERANCES`); the last line is ``PASS`` or ``FAIL: <stages>``,
and the exit status 0 or 1 (2: the inputs could not be used).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vrs_node.core.grounder import Grounder
from vrs_node.core.grounding import Grounding
from vrs_node.core.offline import segment_offline
from vrs_node.core.tracker import StreamingTracker
from vrs_node.eval.datasets import image_files, read_rgb
from vrs_node.models.dpc_knn import merge_visual_tokens
from vrs_node.models.mllm import DPC_KNN_SEED
from vrs_node.models.precision import PRECISIONS, tracker_precision_options
from vrs_node.models.prompt import clean_instruction
from vrs_node.models.sam2_build import SamImageTransform
from vrs_node.models.vrshq_checkpoint import VrshqCheckpoint, load_vrshq_checkpoint

EXACT, MAX_ABS, AGREEMENT = "mismatches", "max|Δ|", "equal pixels"

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {
        "input_ids": 0, "seg_tak_positions": 0, "hidden_rows": 0,
        "clip224_pixels": 1e-5, "sam_input": 1e-5, "dpc_knn_tokens": 1e-5,
        "seg_tak_hidden": 1e-4, "seg_emb": 1e-4, "tak_emb": 1e-4, "tak_prime": 1e-4,
        "tda_weights": 1e-5, "tks_object_logits": 1e-4, "tks_scores": 1e-4, "keyframe": 0,
        "key_lowres_logits": 1e-3, "keyframe_mask": 0.999, "offline_masks": 0.995,
    },
}
TOLERANCES["bf16"] = TOLERANCES["fp32"] | {
    "sam_input": 0.016, "seg_tak_hidden": 0.15, "seg_emb": 0.04, "tak_emb": 0.04, "tak_prime": 0.04,
    "tda_weights": 2e-3, "tks_object_logits": 5e-3, "tks_scores": 2e-3, "key_lowres_logits": 0.25,
    "keyframe_mask": 0.993, "offline_masks": 0.993,
}
"""bf16: the reference casts the whole model to bf16 (SAM-2 and its input included); here the MLLM
runs in bf16 and SAM-2 keeps float32 weights under ``torch.autocast`` to bf16 (the ``precision``
setting's bf16). Measured on the shared goldens (max over both): SAM input 0.0078 (the reference's
bf16 rounding of it: half a bf16 step at |x| < 4), hidden rows 0.066 (~4 bf16 steps), SEG/TAK/TAK'
0.016, TDA weights 9.4e-4, TKS object logits 0 (both sides give the bf16 value 5.09375; 5e-3 is
below one bf16 step there, so it demands that equality), TKS scores 9.4e-4, keyframe logits 0.113
(one pixel our hole filling sets to 0.1 where the reference has -0.012; mean |Δ| 9e-4), masks
99.66 % (the tiny random SAM-2's logits hover near 0, so bf16 rounding flips 35-44 of the 4096
low-res signs on the keyframe; float32 SAM-2 flipped 30-33, since two independent bf16 roundings
differ more than one does); each tolerance is about twice the measure (masks: twice the differing
share). Token ids, rows and the keyframe stay exact; CLIP pixels and DPC-KNN stay at 1e-5 (the
vision tower takes the pixels rounded to bf16 as the reference does)."""
"""Stage -> tolerance per precision: the most mismatches (exact stages), the largest max |Δ|, or
the smallest share of equal mask pixels (``keyframe_mask``; ``offline_masks`` is the worst frame)."""


@dataclass(frozen=True)
class StageResult:
    """One compared stage: ``measure`` is of kind ``kind`` (:data:`EXACT`, :data:`MAX_ABS`,
    :data:`AGREEMENT`) and ``passed`` says whether it is within ``tolerance``."""

    name: str
    kind: str
    measure: float
    tolerance: float
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.kind == AGREEMENT:
            return self.measure >= self.tolerance
        return self.measure <= self.tolerance

    def line(self) -> str:
        value = f"{self.measure:.4%}" if self.kind == AGREEMENT else (
            f"{int(self.measure)}" if self.kind == EXACT else f"{self.measure:.3g}")
        limit = f">= {self.tolerance:.2%}" if self.kind == AGREEMENT else (
            f"<= {int(self.tolerance)}" if self.kind == EXACT else f"<= {self.tolerance:g}")
        status = "ok" if self.passed else "FAIL"
        return f"{self.name:<20} {self.kind:>12} {value:>12}  {limit:<12} {status}" + (f"  ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Golden:
    """A golden ``.npz`` (arrays) with its ``.json`` (instruction, anchor, ...) and precision."""

    path: Path
    arrays: dict[str, np.ndarray]
    info: dict
    precision: str

    @property
    def num_frames(self) -> int:
        return int(self.arrays["pred_masks_shape"][0])

    def masks(self) -> np.ndarray:
        """The reference's final masks, N x H x W bool."""
        n, h, w = (int(v) for v in self.arrays["pred_masks_shape"])
        return np.unpackbits(self.arrays["pred_masks_bits"], axis=-1)[..., :w].astype(bool).reshape(n, h, w)


def load_golden(path: Path | str) -> Golden:
    """Read ``<case>.<precision>.npz`` and the ``.json`` beside it; ValueError naming what is wrong."""
    path = Path(path)
    precision = path.suffixes[-2].lstrip(".") if len(path.suffixes) >= 2 else ""
    if precision not in PRECISIONS:
        raise ValueError(f"{path.name}: the file name must end in .fp32.npz or .bf16.npz (the precision)")
    info_path = path.with_suffix(".json")
    for needed in (path, info_path):
        if not needed.is_file():
            raise FileNotFoundError(f"golden file missing: {needed}")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    info = json.loads(info_path.read_text(encoding="utf-8"))
    for key in ("instruction", "anchor"):
        if key not in info:
            raise ValueError(f"{info_path} lacks {key!r}")
    return Golden(path, arrays, info, precision)


def max_abs(ours: torch.Tensor | np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| in float64; inf when the shapes differ."""
    a = ours.detach().double().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours, np.float64)
    b = np.asarray(theirs, np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


def mismatches(ours: Sequence[int], theirs: Sequence[int]) -> int:
    """Positions that differ, counting a length difference as mismatches."""
    ours, theirs = list(ours), [int(t) for t in theirs]
    return sum(a != b for a, b in zip(ours, theirs)) + abs(len(ours) - len(theirs))


class ParityRun:
    """The checkpoint, frames and golden of one comparison, and the stage checks over them."""

    def __init__(self, checkpoint: VrshqCheckpoint, frames: list[np.ndarray], golden: Golden):
        self.ckpt, self.frames, self.golden = checkpoint, frames, golden
        spec = checkpoint.sam2_spec
        transform = SamImageTransform(spec.image_size, spec.resize, backend="reference")  # VRS-HQ's PIL input
        self.tracker = StreamingTracker(checkpoint.sam2_model, transform, **spec.tracker_options(),
                                        **tracker_precision_options(golden.precision, checkpoint.sam2_model.device))
        self.tolerances = TOLERANCES[golden.precision]

    def stage(self, name: str, kind: str, measure: float, note: str = "") -> StageResult:
        return StageResult(name, kind, measure, self.tolerances[name], note)

    def run(self) -> list[StageResult]:
        """Every stage, in pipeline order."""
        grounder = Grounder(self.ckpt.mllm, self.ckpt.tokenizer, None, self.tracker,
                            special_ids=self.ckpt.special_ids)
        offline = segment_offline(self.tracker, self.frames, clean_instruction(self.golden.info["instruction"]),
                                  grounder, anchor_frame=int(self.golden.info["anchor"]))
        ground, results = offline.grounding, offline.results
        # The offline protocol conditions the keyframe first: its result is the keyframe's conditioned mask.
        return (self._inputs(ground) + self._preprocessing() + self._tokens(ground)
                + self._keyframe(ground, results[ground.keyframe].mask()) + [self._offline(results)])

    def _inputs(self, ground: Grounding) -> list[StageResult]:
        g = self.golden.arrays
        ids = ground.input_ids
        seg_id, tak_id = self.ckpt.special_ids
        positions = [i for i, t in enumerate(ids) if t == seg_id] + [i for i, t in enumerate(ids) if t == tak_id]
        golden_rows = np.concatenate([g["seg_hidden_rows"], g["tak_hidden_rows"]])
        return [
            self.stage("input_ids", EXACT, mismatches(ids, g["input_ids"]), f"{len(ids)} vs {len(g['input_ids'])} ids"),
            self.stage("seg_tak_positions", EXACT,
                       mismatches(positions, np.concatenate([g["seg_positions"], g["tak_positions"]]))),
            self.stage("hidden_rows", EXACT, mismatches(ground.tokens.rows, golden_rows)),
        ]

    def _preprocessing(self) -> list[StageResult]:
        g, mllm = self.golden.arrays, self.ckpt.mllm
        out = [self.stage("sam_input", MAX_ABS,
                          max_abs(self.tracker.transform(self.frames[0])[0], g["sam_input_frame0"]), "frame 0")]
        if "clip224_pixels_frame0" in g:
            pixels = mllm.image_processor([self.frames[0]])[0].to(mllm.dtype)  # as the vision tower takes them
            out.append(self.stage("clip224_pixels", MAX_ABS, max_abs(pixels, g["clip224_pixels_frame0"]), "frame 0"))
        if "clip_patch_features_2frames" in g:
            # prompt positions 0 and 1, in the MLLM's dtype as the vision tower gives them
            patches = torch.from_numpy(g["clip_patch_features_2frames"]).to(mllm.dtype)
            tokens = merge_visual_tokens(patches, generator=torch.Generator().manual_seed(DPC_KNN_SEED))
            out.append(self.stage("dpc_knn_tokens", MAX_ABS, max_abs(tokens, g["dpc_knn_tokens_2frames"]),
                                  "on the golden's patch features"))
        return out

    def _tokens(self, ground: Grounding) -> list[StageResult]:
        g = self.golden.arrays
        hidden = np.concatenate([g["seg_hidden"], g["tak_hidden"]])
        return [
            self.stage("seg_tak_hidden", MAX_ABS, max_abs(ground.tokens.hidden, hidden)),
            self.stage("seg_emb", MAX_ABS, max_abs(ground.tokens.seg, g["seg_emb"])),
            self.stage("tak_emb", MAX_ABS, max_abs(ground.tokens.tak, g["tak_emb"])),
            self.stage("tak_prime", MAX_ABS, max_abs(ground.token, g["tak_prime"])),
            self.stage("tda_weights", MAX_ABS, max_abs(np.array(ground.tda_weights), g["tda_weights"])),
        ]

    def _keyframe(self, ground: Grounding, conditioned_mask: np.ndarray) -> list[StageResult]:
        g = self.golden.arrays
        golden_key = int(g["keyframe"])  # a frame number (the first lattice frame here), not a lattice position
        key_mask = self.golden.masks()[golden_key]
        return [
            self.stage("tks_object_logits", MAX_ABS, max_abs(np.array(ground.tks_object_scores), g["tks_obj_logits"])),
            self.stage("tks_scores", MAX_ABS, max_abs(np.array(ground.tks_scores), g["tks_score"])),
            self.stage("keyframe", EXACT, int(ground.keyframe != golden_key),
                       f"frame {ground.keyframe} vs {golden_key}"),
            self.stage("key_lowres_logits", MAX_ABS,
                       max_abs(ground.keyframe_result.low_res_logits[0, 0], g["key_lowres_logits"])),
            self.stage("keyframe_mask", AGREEMENT, float((conditioned_mask == key_mask).mean()),
                       "TAK' conditioning the keyframe, camera resolution, vs the reference's final mask"),
        ]

    def _offline(self, results: list) -> StageResult:
        golden = self.golden.masks()
        shares = [float((r.mask() == m).mean()) for r, m in zip(results, golden)]
        worst = int(np.argmin(shares))
        return self.stage("offline_masks", AGREEMENT, shares[worst], f"worst frame {worst} of {len(shares)}")


def read_frames(folder: Path | str, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of ``folder`` in name order (RGB); ValueError if it has fewer."""
    files = image_files(folder)
    if len(files) < count:
        raise ValueError(f"{folder} has {len(files)} frames; the golden used {count}")
    return [read_rgb(f) for f in files[:count]]


def check(checkpoint: Path | str, frames: Path | str, golden: Path | str,
          out: Callable[[str], None] = print) -> list[StageResult]:
    """Run every stage and print one line each, then ``PASS`` or ``FAIL: <stages>``."""
    gold = load_golden(golden)
    images = read_frames(frames, gold.num_frames)
    ckpt = load_vrshq_checkpoint(checkpoint, dtype=PRECISIONS[gold.precision])
    out(f"vrs-parity: {gold.path.name}: {gold.info['instruction']!r}, {gold.num_frames} frames, anchor "
        f"{gold.info['anchor']}, {gold.precision}, SAM-2 {ckpt.sam2_variant}")
    results = ParityRun(ckpt, images, gold).run()
    for result in results:
        out(result.line())
    failed = [r.name for r in results if not r.passed]
    out("PASS" if not failed else "FAIL: " + ", ".join(failed))
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vrs-parity",
        description="Compare vrs_node's VRS-HQ stages with golden outputs of the authors' code "
                    "(one line per stage, then PASS or FAIL; exit 0 / 1, 2 for unusable inputs).")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint directory the golden was made with")
    parser.add_argument("--frames", required=True, help="the frame folder (its first N frames in name order)")
    parser.add_argument("--golden", required=True, help="<case>.<fp32|bf16>.npz, with <case>.<precision>.json beside it")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = check(args.checkpoint, args.frames, args.golden)
    except (OSError, ValueError) as err:
        print(f"vrs-parity: {err}", file=sys.stderr)
        return 2
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
