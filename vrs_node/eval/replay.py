"""``vrs-replay``: replay a rosbag2 bag or a DAVIS-like dataset through the segmentation pipeline,
write what it outputs and score it against the ground truth.

This module is the command: its options, the checks of the input (before any model loads) and the
run. Inputs (one of):

- ``--bag PATH --image-topic T [--gt-topic T]``: a rosbag2 bag (:mod:`vrs_node.eval.bag`); frames in
  bag order with their header stamps, ground truth matched to frames by stamp;
- ``--dataset DIR [--sequences a,b] [--expression first|all|ID]``: a DAVIS-like folder with
  ``meta_expressions.json`` (:func:`vrs_node.eval.datasets.load_davis_expressions`); frame ``i`` is
  stamped ``START_NS + round(i * 1e9 / --rate)``, exactly as ``vrs-bag make`` stamps it
  (:mod:`vrs_node.eval.sequences`).

Prompts (``--prompt``): ``instruction`` (the expression text of ``meta_expressions.json``, or
``--instruction`` for a bag), ``gt-box`` (the box of the first non-empty ground-truth mask: a
tracking-only check) or ``gt-mask`` (that mask itself), given on the frame it comes from.

Modes (``--mode``): ``stream``, ``realtime`` and ``offline`` (VRS-HQ's reference protocol), the
predictors of :mod:`vrs_node.eval.predictors`. The models and the engine are configured by the
settings' own flags (:class:`~vrs_node.models.config.ModelConfig`,
:class:`~vrs_node.core.config.PipelineConfig` but its ``mode``, which the predictor sets), loaded once
by :func:`~vrs_node.models.profiles.load_configured_models`.

Outputs in ``--out``: per sequence, ``<out>/<sequence>/`` (``<sequence>`` is the bag's name without
``.bag``, ``.mcap`` or ``.db3``, or the dataset video; ``<out>/<video>/<expression>/`` with
``--expression all``: the ReVOS/MeViS results layout) with the mask PNGs, ``masks_bag/``,
``overlay.mp4`` and ``frames.csv`` (:mod:`vrs_node.eval.outputs`); at the top, ``summary.json``
(scores, protocol, settings, each sequence's bag and topics; :mod:`vrs_node.eval.summary`) and
``plots/`` (:mod:`vrs_node.eval.report`).

``run(argv, predictor=...)`` runs the whole command with any predictor
(:data:`~vrs_node.eval.sequences.Predictor`) instead of the models. Importing this module imports
no torch: ``--help`` and input errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from vrs_node.core.config import PipelineConfig
from vrs_node.eval import bag as bagio
from vrs_node.eval.bag import BagError
from vrs_node.eval.metrics import BOUND_TH
from vrs_node.eval.outputs import BAG_DIR, PREDICTED_MASK_TOPIC, run_sequence
from vrs_node.eval.report import format_report, write_plots
from vrs_node.eval.sequences import (PROMPTS, Predictor, ReplayError, ReplaySequence, bag_sequence,
                                     dataset_sequences)
from vrs_node.eval.summary import RANDOM_WARNING, protocol, run_scores, without_nans
from vrs_node.models.config import ModelConfig, add_arguments, from_arguments, settings
from vrs_node.models.prompt import clean_instruction

REPLAY_MODES = ("stream", "realtime", "offline")
"""``--mode`` choices (:data:`vrs_node.eval.predictors.PREDICTORS`); not the engine's own modes."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vrs-replay", description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=f"Outputs, per sequence in <out>/<sequence>/ (a bag's name without .bag/.mcap/.db3): one mask PNG "
               f"per frame, frames.csv, overlay.mp4 and {BAG_DIR}/, a rosbag2 folder with the predicted masks on "
               f"--mask-topic, the frames on the input image topic (Image; with --bag-images jpeg CompressedImage "
               f"on <topic>/compressed) and the ground truth on its topic; then <out>/summary.json and <out>/plots/.")
    source = parser.add_argument_group("input (--bag or --dataset)")
    source.add_argument("--bag", type=Path, help="rosbag2 folder or .mcap/.db3 file")
    source.add_argument("--image-topic", default=bagio.IMAGE_TOPIC, help="image topic of --bag (default %(default)s)")
    source.add_argument("--gt-topic", help="ground-truth mask topic of --bag (mono8 0/255, stamps as the frames)")
    source.add_argument("--dataset", type=Path, help="DAVIS-like folder with meta_expressions.json")
    source.add_argument("--sequences", help="comma-separated dataset sequences (default: all)")
    source.add_argument("--expression", default="first",
                        help="dataset expressions: first (default), all, or an expression id")
    source.add_argument("--rate", type=float, default=30.0, help="frame rate of the dataset's stamps in Hz (default 30)")
    source.add_argument("--limit", type=int, default=0, help="only the first N frames of each sequence (0 = all)")
    parser.add_argument("--prompt", choices=PROMPTS, default="instruction", help="what tells the target (default instruction)")
    parser.add_argument("--instruction", help="the instruction for --bag with --prompt instruction")
    parser.add_argument("--mode", choices=REPLAY_MODES, default="stream", help="stream (default), realtime or offline")
    parser.add_argument("--speed", type=float, default=1.0, help="realtime: replay speed factor (2 = twice as fast)")
    model = parser.add_argument_group("model and engine")
    add_arguments(model, ModelConfig, aliases={"model_profile": "--profile"})
    add_arguments(model, PipelineConfig, exclude=("mode",))
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=Path("out/replay"), help="output folder (default %(default)s)")
    output.add_argument("--mask-topic", default=PREDICTED_MASK_TOPIC,
                        help=f"topic of the predicted masks in <out>/<sequence>/{BAG_DIR}/, a rosbag2 folder "
                             "(default %(default)s, as vrs-node publishes them under launch/vrs.launch.py)")
    output.add_argument("--bag-storage", choices=tuple(bagio.STORAGES), default="mcap")
    output.add_argument("--bag-images", choices=("raw", "jpeg"), default="raw",
                        help=f"frames in {BAG_DIR} as Image rgb8 (raw) on the input topic, or CompressedImage "
                             "jpeg on <input topic>/compressed")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Arguments of ``vrs-replay`` (exit 2 with a usage message for options that contradict)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.bag is None) == (args.dataset is None):
        parser.error("give exactly one input: --bag PATH or --dataset DIR")
    if args.bag is not None and (args.sequences or args.expression != "first"):
        parser.error("--sequences and --expression are for --dataset")
    if args.dataset is not None and (args.gt_topic or args.instruction):
        parser.error("--gt-topic and --instruction are for --bag (a dataset brings its ground truth and expressions)")
    if args.prompt != "instruction" and args.instruction:
        parser.error(f"--instruction conflicts with --prompt {args.prompt}")
    if args.limit < 0 or args.rate <= 0 or args.speed <= 0:
        parser.error("--limit must be >= 0, --rate and --speed > 0")
    return args


def _sequences(args) -> list[ReplaySequence]:
    """The input's sequences, checked: each has what ``--prompt`` needs (ReplayError otherwise)."""
    if args.bag is not None:
        if args.prompt == "instruction" and not args.instruction:
            raise ReplayError("--prompt instruction with --bag needs --instruction TEXT (or use --prompt gt-box/gt-mask "
                              "with --gt-topic)")
        if args.prompt != "instruction" and not args.gt_topic:
            raise ReplayError(f"--prompt {args.prompt} takes the prompt from the ground truth: pass --gt-topic")
        seqs = [bag_sequence(args.bag, args.image_topic, args.gt_topic, args.limit, args.instruction)]
    else:
        names = [s.strip() for s in (args.sequences or "").split(",") if s.strip()]
        seqs = dataset_sequences(args.dataset, names or None, args.expression, args.limit, args.rate)
    for seq in seqs:
        if args.prompt == "instruction":
            try:  # refuse an empty or too long text before loading models
                clean_instruction(seq.instruction or "")
            except ValueError as error:
                raise ReplayError(f"{seq.name}: {error}") from None
        elif seq.gt_hw is None:
            raise ReplayError(f"{seq.name}: --prompt {args.prompt} needs ground truth; the sequence has none")
    return seqs


def _model_predictor(args) -> tuple[Predictor, dict]:
    """The ``--mode`` predictor over the configured models, and the summary's model fields.
    ReplayError for a bad setting (before any model loads) or models that cannot be loaded."""
    try:  # --mode is replay's; each predictor sets the engine's
        model_config = from_arguments(ModelConfig, args)
        config = from_arguments(PipelineConfig, args, mode="sync")
    except ValueError as error:
        raise ReplayError(str(error)) from None
    from vrs_node.eval.predictors import PREDICTORS  # torch: only once models load
    from vrs_node.models.profiles import load_configured_models

    try:
        profile, device, models = load_configured_models(model_config)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        raise ReplayError(f"model profile {model_config.model_profile!r} could not be loaded: {error}") from None
    predictor = PREDICTORS[args.mode](models, args.prompt, config, speed=args.speed, progress=not args.quiet)
    return predictor, {"profile": profile.name, "random_weights": profile.random_weights, "device": str(device),
                       "image_size": models.transform.image_size, "precision": models.precision}


def _settings(args) -> dict:
    """The summary's ``settings``: the engine's (``PipelineConfig`` but its mode) and replay's."""
    engine = {s.name: getattr(args, s.name) for s in settings(PipelineConfig) if s.name != "mode"}
    if args.mode == "offline":
        engine["window_frames"] = "whole video"
    return {"limit": args.limit, **engine, "speed": args.speed if args.mode == "realtime" else None,
            "bound_th": BOUND_TH, "mask_topic": args.mask_topic}


def _input(args) -> dict:
    """The summary's ``input``."""
    if args.bag is not None:
        return {"kind": "bag", "path": str(args.bag.resolve()), "image_topic": args.image_topic,
                "gt_topic": args.gt_topic}
    return {"kind": "dataset", "path": str(args.dataset.resolve()), "sequences": args.sequences,
            "expression": args.expression, "stamp_rate_hz": args.rate}


def replay(args: argparse.Namespace, predictor: Predictor | None = None) -> dict:
    """Run the parsed command: load sequences (and models unless ``predictor`` is given), replay,
    score, write ``summary.json`` and the plots; returns the summary."""
    sequences = _sequences(args)
    if predictor is None:
        predictor, meta = _model_predictor(args)
    else:
        meta = {"profile": getattr(predictor, "name", getattr(predictor, "__name__", type(predictor).__name__)),
                "random_weights": None, "device": args.device, "image_size": args.image_size or None}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results, per_frame = {}, {}
    for seq in tqdm(sequences, desc="sequences", unit="seq", disable=args.quiet or len(sequences) < 2):
        results[seq.name], per_frame[seq.name] = run_sequence(
            seq, predictor, out / seq.name, image_topic=args.image_topic, mask_topic=args.mask_topic,
            gt_topic=args.gt_topic or bagio.GROUND_TRUTH_MASK_TOPIC, bag_storage=args.bag_storage,
            bag_images=args.bag_images, progress=not args.quiet)
    realtime = args.mode == "realtime"
    summary = {
        "tool": "vrs-replay", "input": _input(args), "mode": args.mode, "prompt": args.prompt, **meta,
        "warning": RANDOM_WARNING if meta["random_weights"] else (
            "predictions from a custom predictor, not the models" if meta["random_weights"] is None else None),
        "protocol": protocol(args.mode, args.prompt), "settings": _settings(args),
        **run_scores(results, per_frame, realtime), "sequences": results,
    }
    note = f"{args.mode}, {args.prompt} prompt, {meta['profile']}" + (" (random weights)" if meta["random_weights"] else "")
    plots = write_plots(out / "plots", per_frame,
                        {n: s.get("time_to_first_mask_s") for n, s in results.items()} if realtime else None, note)
    summary_path = out / "summary.json"
    summary["files"] = {"summary": str(summary_path.resolve()), "plots": plots}
    summary = without_nans(summary)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(argv=None, predictor: Predictor | None = None) -> dict:
    """Run ``vrs-replay``; returns (and prints) the summary. Bad input ends with SystemExit and a
    one-line message (no traceback). ``predictor`` replaces the models (tests, custom methods)."""
    args = parse_args(argv)
    try:
        summary = replay(args, predictor)
    except (ReplayError, BagError) as error:
        raise SystemExit(f"vrs-replay: error: {error}") from None
    print(format_report(summary))
    return summary


def main(argv=None) -> int:
    """Console entry point ``vrs-replay``."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
