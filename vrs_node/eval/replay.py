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

Benchmark scale: ``--workers N`` runs the sequences as tasks on Ray workers that load the models
once each (:mod:`vrs_node.eval.parallel`: embedded local Ray, or ``--ray-address``; same files and,
in ``stream`` mode, the same figures as one process; a sequence failing twice is listed under
``failures`` and the run goes on, ending with exit status 1). Every finished sequence leaves a
completion record; ``--resume`` skips the sequences whose record matches the run
(:mod:`vrs_node.eval.resume`). Ray is imported only with ``--workers`` > 1.

Several expressions in one pass: ``--all-expressions`` (``--dataset``, ``stream``, ``instruction``;
implies ``--expression all``) groups each video's expressions (chunks of ``--max-targets``) and
follows each group as the targets of one engine pass (:mod:`vrs_node.eval.groups`); every
expression gets the folder, rows and summary row of ``--expression all``, plus its pass; the
summary's ``all_expressions`` gives the passes and their seconds in all.

``run(argv, predictor=...)`` runs the whole command with any predictor
(:data:`~vrs_node.eval.sequences.Predictor`; with ``--all-expressions`` a
:data:`~vrs_node.eval.groups.GroupPredictor`) instead of the models. Importing this module imports
no torch: ``--help`` and input errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from vrs_node.core.config import PipelineConfig
from vrs_node.core.process_exit import safe_exit_code
from vrs_node.eval import bag as bagio
from vrs_node.eval.bag import BagError
from vrs_node.eval.groups import pass_totals
from vrs_node.eval.metrics import BOUND_TH
from vrs_node.eval.model_predictor import configs, predictor_and_meta, predictor_name
from vrs_node.eval.outputs import BAG_DIR, PREDICTED_MASK_TOPIC
from vrs_node.eval.report import format_report, write_plots
from vrs_node.eval.resume import RECORD_NAME, checkpoint_fingerprint, record_key, resume_plan
from vrs_node.eval.sequences import (PROMPTS, Predictor, ReplayError, ReplaySequence, bag_sequence,
                                     dataset_sequences)
from vrs_node.eval.summary import RANDOM_WARNING, protocol, run_scores, without_nans
from vrs_node.eval.tasks import replay_tasks, run_task
from vrs_node.models.config import ModelConfig, add_arguments, settings
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
    source.add_argument("--all-expressions", action="store_true",
                        help="track all expressions of each video together, one engine pass per video (at most "
                             "--max-targets at once), each written and scored as with --expression all; stream "
                             "mode, instruction prompt")
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
    output.add_argument("--resume", action="store_true",
                        help=f"skip the sequences whose <out>/<sequence>/{RECORD_NAME} matches this run's settings "
                             "(profile, mode, prompt, instruction, checkpoint, frames, settings); re-run the others")
    ray_group = parser.add_argument_group("parallel (Ray; with --workers N > 1)")
    ray_group.add_argument("--workers", type=int, default=1,
                           help="run the sequences as tasks on N Ray workers, each loading the models once "
                                "(default 1: this process, no Ray)")
    ray_group.add_argument("--ray-address", help="join this Ray cluster (e.g. HEAD_IP:6379 or auto; default: "
                                                 "start a local Ray for the run)")
    ray_group.add_argument("--gpus-per-worker", type=float,
                           help="GPUs per worker (default 1 when the Ray cluster has GPUs, else 0)")
    ray_group.add_argument("--threads-per-worker", type=int, default=1,
                           help="torch CPU threads (and Ray CPUs) per worker (default %(default)s)")
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
    if args.all_expressions and (args.dataset is None or args.mode != "stream" or args.prompt != "instruction"
                                 or args.expression not in ("first", "all")):
        parser.error("--all-expressions needs --dataset, --mode stream and --prompt instruction (it implies "
                     "--expression all)")
    if args.all_expressions:
        args.expression = "all"
    if args.prompt != "instruction" and args.instruction:
        parser.error(f"--instruction conflicts with --prompt {args.prompt}")
    if args.limit < 0 or args.rate <= 0 or args.speed <= 0:
        parser.error("--limit must be >= 0, --rate and --speed > 0")
    if args.workers < 1 or args.threads_per_worker < 1 or (args.gpus_per_worker or 0) < 0:
        parser.error("--workers and --threads-per-worker must be >= 1, --gpus-per-worker >= 0")
    if args.workers == 1 and (args.ray_address or args.gpus_per_worker is not None or args.threads_per_worker != 1):
        parser.error("--ray-address, --gpus-per-worker and --threads-per-worker are for --workers N > 1")
    if args.workers > 1:  # workers may run in another folder or on another machine (a shared file system)
        args.out, args.bag, args.dataset = (None if p is None else p.resolve() for p in (args.out, args.bag, args.dataset))
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
    if not seqs:
        raise ReplayError("no sequences to replay")
    for seq in seqs:
        if args.prompt == "instruction":
            try:  # refuse an empty or too long text before loading models
                clean_instruction(seq.instruction or "")
            except ValueError as error:
                raise ReplayError(f"{seq.name}: {error}") from None
        elif seq.gt_hw is None:
            raise ReplayError(f"{seq.name}: --prompt {args.prompt} needs ground truth; the sequence has none")
    return seqs


def _settings(args) -> dict:
    """The summary's ``settings``: the engine's (``PipelineConfig`` but its mode) and replay's."""
    engine = {s.name: getattr(args, s.name) for s in settings(PipelineConfig) if s.name != "mode"}
    if args.mode == "offline":
        engine["window_frames"] = "whole video"
    return {"limit": args.limit, **engine, "all_expressions": args.all_expressions, "speed": args.speed if args.mode == "realtime" else None,
            "bound_th": BOUND_TH, "mask_topic": args.mask_topic}


def _input(args) -> dict:
    """The summary's ``input``."""
    if args.bag is not None:
        return {"kind": "bag", "path": str(args.bag.resolve()), "image_topic": args.image_topic,
                "gt_topic": args.gt_topic}
    return {"kind": "dataset", "path": str(args.dataset.resolve()), "sequences": args.sequences,
            "expression": args.expression, "stamp_rate_hz": args.rate}


def _run_key(args, predictor: Predictor | None) -> dict:
    """The run's part of each completion record's key (:mod:`vrs_node.eval.resume`)."""
    model = {s.name: getattr(args, s.name) for s in settings(ModelConfig) if s.name != "model_profile"}
    return {"profile": args.model_profile if predictor is None else predictor_name(predictor), "mode": args.mode,
            "prompt": args.prompt,
            "checkpoint": checkpoint_fingerprint([args.sam2_checkpoint, args.vrshq_checkpoint, args.clip_anchor]),
            "settings": {**model, **_settings(args)}}


def _output_options(args) -> dict:
    """:func:`run_sequence`'s output keywords from the command's options."""
    return {"image_topic": args.image_topic, "mask_topic": args.mask_topic,
            "gt_topic": args.gt_topic or bagio.GROUND_TRUTH_MASK_TOPIC, "bag_storage": args.bag_storage,
            "bag_images": args.bag_images}


def _replay_here(args, sequences: list[ReplaySequence], predictor: Predictor | None,
                 keys: dict[str, dict]) -> tuple[dict[str, tuple[dict, list[dict]]], dict | None]:
    """Replay ``sequences`` one after another in this process (models loaded here unless
    ``predictor`` is given; with ``--all-expressions`` one pass per group of
    :func:`~vrs_node.eval.groups.expression_groups`, ``predictor`` a group predictor), each followed
    by its completion record; (name -> (summary, rows),
    the summary's model fields; None when there was nothing to run)."""
    if not sequences:
        return {}, None
    predictor, meta = predictor_and_meta(args, predictor)
    grouped, results = args.all_expressions, {}
    tasks = replay_tasks(sequences, grouped, args.max_targets)
    for task in tqdm(tasks, desc="passes" if grouped else "sequences", unit="pass" if grouped else "seq",
                     disable=args.quiet or (not grouped and len(tasks) < 2)):
        results |= run_task(task, predictor, args.out, grouped, keys, meta, progress=not args.quiet,
                            **_output_options(args))
    return results, meta


def replay(args: argparse.Namespace, predictor: Predictor | None = None) -> dict:
    """Run the parsed command: load sequences (and models unless ``predictor`` is given), replay
    (here, or on Ray with ``--workers N``; ``--resume`` skips sequences with a matching completion
    record), score, write ``summary.json`` and the plots; returns the summary."""
    sequences = _sequences(args)
    if predictor is None:
        configs(args)  # a bad setting is refused here, before Ray starts or models load
    run_key = _run_key(args, predictor)
    keys = {seq.name: record_key(seq, run_key) for seq in sequences}
    done, notes = resume_plan(sequences, args.out, keys) if args.resume else ({}, [])
    todo = [seq for seq in sequences if seq.name not in done]
    extra = {"resume": {"skipped": list(done), "notes": notes}} if args.resume else {}
    if args.workers > 1 and todo:
        from vrs_node.eval.parallel import replay_on_ray  # Ray: only for --workers N

        ray_run = replay_on_ray(args, todo, predictor, keys, _output_options(args),
                                frames_done=sum(seq.count for seq in sequences if seq.name in done))
        ran, meta = ray_run.results, ray_run.meta
        extra.update(parallel=ray_run.report, failures=ray_run.failures)
    else:
        ran, meta = _replay_here(args, todo, predictor, keys)
    if meta is None:  # everything resumed: the records say which models made them
        meta = next(iter(done.values()))["meta"]
    outcome = {name: (record["summary"], record["rows"]) for name, record in done.items()} | ran
    order = [seq.name for seq in sequences if seq.name in outcome]
    if args.all_expressions:
        extra["all_expressions"] = pass_totals({n: outcome[n][0] for n in order})
    return _write_summary(args, meta, {n: outcome[n][0] for n in order}, {n: outcome[n][1] for n in order}, extra)


def _write_summary(args, meta: dict, results: dict[str, dict], per_frame: dict[str, list[dict]], extra: dict) -> dict:
    """Score the sequences' summaries and rows, write ``summary.json`` and the plots; returns the
    summary (``extra``: the resume, parallel and failures sections, when the run has them)."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    realtime = args.mode == "realtime"
    summary = {
        "tool": "vrs-replay", "input": _input(args), "mode": args.mode, "prompt": args.prompt, **meta,
        "warning": RANDOM_WARNING if meta["random_weights"] else (
            "predictions from a custom predictor, not the models" if meta["random_weights"] is None else None),
        "protocol": protocol(args.mode, args.prompt), "settings": _settings(args),
        **run_scores(results, per_frame, realtime), "sequences": results, **extra,
    }
    note = f"{args.mode}, {args.prompt} prompt, {meta['profile']}" + (" (random weights)" if meta["random_weights"] else "")
    plots = write_plots(out / "plots", per_frame,
                        {n: s.get("time_to_first_mask_s") for n, s in results.items()} if realtime else None, note)
    summary_path = out / "summary.json"
    summary["files"] = {"summary": str(summary_path.resolve()), "plots": plots}
    summary = without_nans(summary)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run_notes(summary: dict) -> list[str]:
    """Printed after the table: the passes of ``--all-expressions``, resumed sequences, re-run notes,
    retries and failures."""
    lines = []
    if "all_expressions" in summary:
        grouped = summary["all_expressions"]
        lines.append(f"  all expressions: {grouped['passes']} pass(es) over {grouped['expressions']} expression(s), "
                     f"{grouped['pass_s']:.2f} s in the passes")
    if "resume" in summary:
        skipped = summary["resume"]["skipped"]
        lines.append(f"  resumed: {len(skipped)} sequence(s) skipped (completion record matches)"
                     + (f": {', '.join(skipped)}" if skipped else ""))
        lines += [f"  note: {note}" for note in summary["resume"]["notes"]]
    if "parallel" in summary:
        ray_run = summary["parallel"]
        lines.append(f"  ray: {ray_run['workers']} worker(s) on {ray_run['ray_address']}, "
                     f"{ray_run['retries_total']} retr{'y' if ray_run['retries_total'] == 1 else 'ies'}"
                     + "".join(f", {name} x{n}" for name, n in ray_run["retries"].items()))
        lines += [f"  FAILED {f['sequence']} after {f['attempts']} attempt(s): {f['error']}" for f in summary["failures"]]
    return lines


def run(argv=None, predictor: Predictor | None = None) -> dict:
    """Run ``vrs-replay``; returns (and prints) the summary. Bad input ends with SystemExit and a
    one-line message (no traceback). ``predictor`` replaces the models (tests, custom methods)."""
    args = parse_args(argv)
    try:
        summary = replay(args, predictor)
    except (ReplayError, BagError) as error:
        raise SystemExit(f"vrs-replay: error: {error}") from None
    print("\n".join([format_report(summary), *_run_notes(summary)]))
    return summary


def main(argv=None) -> int:
    """Console entry point ``vrs-replay``: 0, or 1 when sequences failed (listed in the summary); a
    query still inside a model call at the end is not waited for
    (:func:`~vrs_node.core.process_exit.safe_exit_code`)."""
    return safe_exit_code(1 if run(argv).get("failures") else 0)


if __name__ == "__main__":
    sys.exit(main())
