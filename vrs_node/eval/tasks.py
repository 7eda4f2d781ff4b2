"""Replay tasks: what one replay step runs, the same in one process and on each Ray worker.

A task is one sequence, or with ``--all-expressions`` one group of a video's expressions tracked in
one engine pass (:func:`~vrs_node.eval.groups.expression_groups`). :func:`run_task` replays it into
``<out>/<sequence>/`` and writes each of its sequences' completion record
(:func:`~vrs_node.eval.resume.write_record`). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vrs_node.eval.groups import expression_groups, run_group
from vrs_node.eval.outputs import run_sequence
from vrs_node.eval.resume import write_record
from vrs_node.eval.sequences import Predictor, ReplaySequence


def replay_tasks(sequences: list[ReplaySequence], grouped: bool, max_targets: int) -> list[list[ReplaySequence]]:
    """The tasks of a run: the groups of :func:`expression_groups` (at most ``max_targets``
    expressions each) when ``grouped``, else one task per sequence, in order."""
    return expression_groups(sequences, max_targets) if grouped else [[seq] for seq in sequences]


def run_task(task: list[ReplaySequence], predictor: Predictor, out: Path, grouped: bool, keys: dict[str, dict],
             meta: dict, *, progress: bool = True, on_frame: Callable[[int], None] | None = None,
             **options) -> dict[str, tuple[dict, list[dict]]]:
    """Replay ``task`` (a group in one pass of a group ``predictor`` when ``grouped``:
    :func:`run_group`; else its one sequence: :func:`run_sequence`) into ``<out>/<sequence>/``,
    then write each sequence's completion record with its key in ``keys`` and ``meta`` (the
    summary's model fields). Returns sequence name -> (summary, rows). ``options``: the output
    keywords of :func:`run_sequence`; ``on_frame(n)`` after the n-th frame."""
    if grouped:
        results = run_group(task, predictor, out, progress=progress, on_frame=on_frame, **options)
    else:
        results = {task[0].name: run_sequence(task[0], predictor, out / task[0].name, progress=progress,
                                              on_frame=on_frame, **options)}
    for seq in task:
        write_record(out / seq.name, keys[seq.name], *results[seq.name], meta)
    return results
