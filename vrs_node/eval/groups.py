"""``vrs-replay --all-expressions``: the expressions of a video tracked together in one engine pass,
each written and scored as if it were replayed alone.

The seam: a :data:`GroupPredictor` is any callable ``predictor(group)`` over a group of sequences of
ONE video (the same frames, each with its own expression and ground truth) that yields, per frame
in order, ``{sequence name: Prediction}`` for every sequence of the group; its ``info``, when it
has one, maps a sequence name to that sequence's predictor info (the models' one is
:class:`~vrs_node.eval.predictors.GroupStreamPredictor`). :func:`run_group` feeds each sequence's
predictions to its own :class:`~vrs_node.eval.outputs.SequenceWriter`, so every expression gets the
folder, rows and summary that :func:`~vrs_node.eval.outputs.run_sequence` would write, plus the
summary's ``pass`` (the group and the seconds its pass took).

Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from vrs_node.eval.outputs import SequenceWriter
from vrs_node.eval.sequences import Prediction, ReplaySequence

GroupPredictor = Callable[[list[ReplaySequence]], Iterator[dict[str, Prediction]]]
"""The seam of the module docstring: a group of one video's sequences -> per frame {name: Prediction}."""


def expression_groups(sequences: list[ReplaySequence], size: int) -> list[list[ReplaySequence]]:
    """``sequences`` grouped by video (first-seen order, each group in the given order) and split
    into chunks of at most ``size`` (the engine's ``max_targets``). ValueError if ``size`` < 1."""
    if size < 1:
        raise ValueError(f"a group holds at least one sequence, got size {size}")
    by_video: dict[str, list[ReplaySequence]] = {}
    for seq in sequences:
        by_video.setdefault(seq.video, []).append(seq)
    return [seqs[i:i + size] for seqs in by_video.values() for i in range(0, len(seqs), size)]


def group_name(group: list[ReplaySequence]) -> str:
    """A group's name: its video, with the ids of its expressions (``video[0,1]``)."""
    return f"{group[0].video}[{','.join(s.expression_id or s.name for s in group)}]"


def run_group(group: list[ReplaySequence], predictor: GroupPredictor, out: Path, *, progress: bool = True,
              on_frame: Callable[[int], None] | None = None, **options) -> dict[str, tuple[dict, list[dict]]]:
    """Replay ``group`` (one video's sequences, same frame count) in one pass of ``predictor``
    into ``<out>/<sequence name>/`` each; returns sequence name -> (summary, rows), in the group's
    order. Each summary has the predictor's info for that sequence and ``pass``: ``{"group"
    (:func:`group_name`), "expressions", "pass_s"}``, ``pass_s`` the wall seconds spent inside the
    predictor (frames decoded, engine, masks; not the writing), the same for every sequence of the
    group. ``options``: :class:`~vrs_node.eval.outputs.SequenceWriter`'s output keywords;
    ``on_frame(n)`` after the n-th frame of the pass is written. RuntimeError if the group mixes
    videos or frame counts, or a frame's predictions are not exactly the group's sequences.
    """
    if len({s.video for s in group}) != 1 or len({s.count for s in group}) != 1:
        raise RuntimeError(f"a group is one video's sequences with one frame count: {[s.name for s in group]}")
    names = [seq.name for seq in group]
    writers: dict[str, SequenceWriter] = {}
    pass_s, written = 0.0, 0
    try:
        for seq in group:
            writers[seq.name] = SequenceWriter(seq, out / seq.name, progress=False, **options)
        with tqdm(total=group[0].count, desc=group_name(group), unit="frame", leave=False, disable=not progress) as bar:
            frames = predictor(group)
            while True:
                start = time.perf_counter()
                predictions = next(frames, None)
                pass_s += time.perf_counter() - start
                if predictions is None:
                    break
                if sorted(predictions) != sorted(names):
                    raise RuntimeError(f"{group_name(group)}: the predictor answered {sorted(predictions)}, "
                                       f"expected {sorted(names)}")
                for name, prediction in predictions.items():
                    writers[name].write(prediction)
                written += 1
                bar.update()
                if on_frame is not None:
                    on_frame(written)
    finally:
        for writer in writers.values():
            writer.close()
    info = getattr(predictor, "info", {}) or {}
    shared = {"group": group_name(group), "expressions": len(group), "pass_s": round(pass_s, 4)}
    return {name: writers[name].finish({**info.get(name, {}), "pass": shared}) for name in names}


def pass_totals(summaries: dict[str, dict]) -> dict:
    """The run's ``all_expressions`` section from its sequences' summaries: the passes, the
    expressions they followed and their seconds in all (each pass counted once)."""
    passes = {s["pass"]["group"]: s["pass"] for s in summaries.values() if "pass" in s}
    return {"passes": len(passes), "expressions": sum(p["expressions"] for p in passes.values()),
            "pass_s": round(sum(p["pass_s"] for p in passes.values()), 4)}
