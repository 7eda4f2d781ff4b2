"""Helpers the bench scripts share: the DAVIS-2016 sample frames, a mask's box, a filled window,
the several-targets scripts' model arguments, the JSON report.

The DAVIS data lives in ``../shared/data/davis2016`` beside the repository; ``VRS_DAVIS_DIR``
overrides it, as it does for the tests. Bench scripts import this module as ``common`` (the
script's own folder is first on ``sys.path``); they never import from ``test/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DAVIS = Path(os.environ.get("VRS_DAVIS_DIR", REPO.parent / "shared" / "data" / "davis2016"))
"""Root of the DAVIS-2016 sample: one ``<sequence>/JPEGImages`` and ``<sequence>/Annotations`` each."""


def davis_sequence(name: str = "blackswan", count: int | None = None):
    """(RGB frames, GT masks as bool, frame paths) of the first ``count`` (None: all) frames of a
    DAVIS-2016 sequence under :data:`DAVIS`, read by :func:`vrs_node.eval.datasets.load_davis`
    (FileNotFoundError naming the folder when it has no frames)."""
    # lazy: device_check.py uses only box_of, on a machine without the datasets' pycocotools
    from vrs_node.eval.datasets import load_davis

    sample = load_davis(DAVIS, [name])[0]
    paths = list(sample.frame_paths[:count])
    return [sample.image(i) for i in range(len(paths))], [sample.labels(i) > 0 for i in range(len(paths))], paths


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight (x0, y0, x1, y1) box of a non-empty binary mask, in pixels."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def filled_window(tracker, frames: list[np.ndarray], count: int | None = None):
    """A ``FrameWindow`` of ``count`` frames (default: one per frame; ``frames`` repeated in turn
    when fewer), stamped 30 FPS apart, each with its SAM-2 features from ``tracker.encode`` cached
    as the engine caches them (what a grounding query reads)."""
    from vrs_node.core.frames import FrameWindow
    from vrs_node.core.frames import SAM2_KEY

    count = len(frames) if count is None else count
    window = FrameWindow(count)
    for i in range(count):
        frame = window.append(frames[i % len(frames)], i * 33_333_333)
        window.set_feature(frame.index, SAM2_KEY, tracker.encode(frame.image))
    return window


def grid_boxes(height: int, width: int, count: int) -> list[tuple[float, float, float, float]]:
    """``count`` (at most 8) boxes, one per cell of a 4 x 2 grid over the image (row by row): the
    targets' prompts of the several-targets benchmarks."""
    cw, ch = width / 4, height / 2
    return [((i % 4) * cw + 4, (i // 4) * ch + 4, (i % 4 + 1) * cw - 4, (i // 4 + 1) * ch - 4)
            for i in range(count)]


def run_record(argv: list[str] | None, args, started: float) -> dict:
    """The head of a bench script's JSON report: date, the command as run (``argv``, or the
    process's arguments), the machine (CPUs, torch and its threads, ``args.device``, load average),
    every argument and the wall time since ``started`` (a ``time.time()``)."""
    import torch

    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": args.device, "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "args": {k: str(v) for k, v in vars(args).items()},
        "wall_s": round(time.time() - started, 1),
    }


def write_report(path: Path, report: dict) -> None:
    """``report`` as indented JSON at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def add_target_model_arguments(parser: argparse.ArgumentParser, max_batch_nargs: str | None = None) -> None:
    """The several-targets scripts' model arguments: ``--profile`` (tiny-random), ``--size`` (256
    px), ``--device`` (cpu) and ``--max-batch`` (the node's ``target_batch``; ``max_batch_nargs``
    "+" takes several, to compare in one run)."""
    from vrs_node.core.config import PipelineConfig

    parser.add_argument("--profile", default="tiny-random")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    default = PipelineConfig().target_batch
    parser.add_argument("--max-batch", type=int, nargs=max_batch_nargs, default=[default] if max_batch_nargs else default,
                        help="most targets in one batched call (the node's target_batch; 0 = all)"
                             + ("; several: compared in one run" if max_batch_nargs else ""))
