"""``vrs-replay --workers N``: a run's sequences as tasks on Ray, with the same files and figures as
one process.

Contract of :func:`replay_on_ray`:

- **Ray.** An embedded local Ray is started (CPUs: the machine's, or ``workers x threads`` if more;
  no dashboard; usage stats off) unless ``--ray-address`` joins a running cluster or Ray is already
  initialised in this process (then it is used as it is). Ray is shut down at the end only if it
  was started here.
- **Workers.** ``min(N, tasks)`` actors (:class:`SequenceWorker`), each loading the models once
  (:func:`~vrs_node.eval.model_predictor.model_predictor`) with ``--threads-per-worker`` torch
  threads, that many Ray CPUs and ``--gpus-per-worker`` GPUs (default 1 when the cluster has GPUs,
  else 0). ReplayError, before any sequence runs, when the cluster cannot hold them all or a worker
  cannot load the models.
- **Tasks.** One sequence per task (with ``--all-expressions`` one group of
  :func:`~vrs_node.eval.groups.expression_groups`, named by :func:`~vrs_node.eval.groups.group_name`)
  and one task per worker at a time (a dying worker costs only the task it runs). A task writes
  each of its sequences' ``<out>/<sequence>/`` exactly as one process does
  (:func:`~vrs_node.eval.outputs.run_sequence`, :func:`~vrs_node.eval.groups.run_group`), then
  their completion records (:mod:`vrs_node.eval.resume`), and returns their summaries and rows to
  the driver, which writes ``summary.json`` and the plots once.
- **Faults.** Ray's own mechanisms: a worker process that dies is restarted (``max_restarts``) and
  its task retried; an exception in a task is retried too; each task has :data:`MAX_ATTEMPTS`
  attempts in all (``max_task_retries``). The run's ledger actor counts the attempts per task
  (retries = attempts - 1) and the frames written (one progress bar over all frames; a group's
  frame counts once per sequence). Each sequence of a task whose last attempt fails is a failure
  (name, attempts, error) and the run goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import deque
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError, WorkerCrashedError
from tqdm import tqdm

from vrs_node.eval.groups import group_name
from vrs_node.eval.model_predictor import predictor_and_meta
from vrs_node.eval.sequences import Predictor, ReplayError, ReplaySequence
from vrs_node.eval.tasks import replay_tasks, run_task

MAX_ATTEMPTS = 2
"""Attempts per sequence (the first and one Ray retry) before it counts as a failure."""
POLL_S = 0.5
"""How often the driver refreshes the progress bar while tasks run."""
EMBEDDED_OBJECT_STORE_BYTES = 256 * 2**20
"""Object store of the embedded Ray: tasks pass only sequence descriptions, summaries and rows."""


@dataclass
class RayRun:
    """What the workers did: per sequence its summary and rows (in the order of the sequences run),
    the model fields of the summary (from the first worker), the failures and the summary's
    ``parallel`` section (workers, resources, retries)."""

    results: dict[str, tuple[dict, list[dict]]]
    meta: dict
    failures: list[dict]
    report: dict


@ray.remote
class Ledger:
    """Attempts and frames written, per task, of one run (one actor, shared by the workers)."""

    def __init__(self):
        self.attempts: dict[str, int] = {}
        self.frames: dict[str, int] = {}

    def start(self, name: str) -> int:
        """Count an attempt at task ``name``; returns its number (1 = first)."""
        self.attempts[name] = self.attempts.get(name, 0) + 1
        return self.attempts[name]

    def advance(self, name: str, frames: int) -> None:
        """``frames`` of ``name`` written (a retry's restart does not count its frames again)."""
        self.frames[name] = max(self.frames.get(name, 0), frames)

    def snapshot(self) -> tuple[dict[str, int], int]:
        """(attempts per task, frames written in all)."""
        return dict(self.attempts), sum(self.frames.values())


@ray.remote
class SequenceWorker:
    """One worker: the models (or a given predictor; a group predictor with ``--all-expressions``)
    loaded once; one task per :meth:`run`."""

    def __init__(self, args: argparse.Namespace, predictor: Predictor | None, options: dict):
        import torch

        torch.set_num_threads(args.threads_per_worker)
        self.predictor, self.meta = predictor_and_meta(args, predictor, progress=False)
        self.out, self.options, self.grouped = args.out, options, args.all_expressions

    def describe(self) -> dict:
        """The summary's model fields of this worker's models."""
        return self.meta

    @ray.method(retry_exceptions=True)
    def run(self, name: str, task: list[ReplaySequence], keys: dict[str, dict],
            ledger) -> dict[str, tuple[dict, list[dict]]]:
        """Replay task ``name``'s sequences into ``<out>/<sequence>/`` (one sequence, or a group in
        one pass), write their completion records with ``keys``; returns sequence name -> (its
        summary, its rows)."""
        ray.get(ledger.start.remote(name))
        on_frame = lambda frames: ledger.advance.remote(name, frames * len(task))  # noqa: E731
        return run_task(task, self.predictor, self.out, self.grouped, keys, self.meta, progress=False,
                        on_frame=on_frame, **self.options)


def replay_on_ray(args: argparse.Namespace, sequences: list[ReplaySequence], predictor: Predictor | None,
                  keys: dict[str, dict], options: dict, frames_done: int = 0) -> RayRun:
    """Run ``sequences`` on ``args.workers`` Ray workers (module docstring). ``keys``: sequence name
    -> its completion record key; ``options``: :func:`run_sequence`'s output keywords;
    ``frames_done``: frames of the run already done (resumed), where the progress bar starts."""
    tasks = {group_name(t) if args.all_expressions else t[0].name: t
             for t in replay_tasks(sequences, args.all_expressions, args.max_targets)}
    started, actors = start_ray(args), []
    try:
        gpus = args.gpus_per_worker if args.gpus_per_worker is not None else \
            (1 if ray.cluster_resources().get("GPU", 0) > 0 else 0)
        count = min(args.workers, len(tasks))
        _check_resources(count, args.threads_per_worker, gpus)
        actor = SequenceWorker.options(num_cpus=args.threads_per_worker, num_gpus=gpus,
                                       max_restarts=MAX_ATTEMPTS * len(tasks), max_task_retries=MAX_ATTEMPTS - 1)
        ledger = Ledger.remote()
        workers = [actor.remote(args, predictor, options) for _ in range(count)]
        actors = [ledger, *workers]
        try:
            meta = ray.get([w.describe.remote() for w in workers])[0]
        except RayError as error:
            raise ReplayError(f"a Ray worker could not start: {_error_text(error)}") from None
        total = frames_done + sum(seq.count for seq in sequences)
        with tqdm(total=total, initial=frames_done, desc="frames", unit="frame", disable=args.quiet) as bar:
            outcomes = _dispatch(workers, tasks, keys, ledger, bar, frames_done)
        attempts, _ = ray.get(ledger.snapshot.remote())
    finally:  # release the actors' CPUs and GPUs now, also in a Ray that outlives the run
        for handle in actors:
            ray.kill(handle)
        if started:
            ray.shutdown()
    retries = {name: n - 1 for name, n in attempts.items() if n > 1}
    failures = [{"sequence": seq.name, "attempts": attempts.get(name, 0), "error": _error_text(outcome)}
                for name, outcome in outcomes.items() if isinstance(outcome, RayError) for seq in tasks[name]]
    report = {"workers": count, "ray_address": args.ray_address or "local", "gpus_per_worker": gpus,
              "threads_per_worker": args.threads_per_worker, "max_attempts": MAX_ATTEMPTS,
              "retries": retries, "retries_total": sum(retries.values())}
    results = {seq: ran for name in tasks if not isinstance(outcomes[name], RayError)
               for seq, ran in outcomes[name].items()}
    return RayRun(results, meta, failures, report)


def start_ray(args: argparse.Namespace) -> bool:
    """Join ``--ray-address`` or start the embedded Ray, unless Ray already runs in this process;
    returns whether it was started here. ReplayError if the cluster cannot be reached."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if ray.is_initialized():
        return False
    common = {"log_to_driver": not args.quiet, "logging_level": logging.WARNING}
    try:
        if args.ray_address:
            ray.init(address=args.ray_address, **common)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, args.workers * args.threads_per_worker),
                     include_dashboard=False, object_store_memory=EMBEDDED_OBJECT_STORE_BYTES, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ReplayError(f"cannot start or join Ray (--ray-address {args.ray_address or 'none: local'}): "
                          f"{error}") from None
    return True


def _check_resources(workers: int, threads: int, gpus: float) -> None:
    """ReplayError if the Ray cluster has fewer CPUs or GPUs than ``workers`` workers need (their
    tasks would wait for ever)."""
    have = ray.cluster_resources()
    cpus, gpus_there = have.get("CPU", 0), have.get("GPU", 0)
    if workers * threads > cpus or workers * gpus > gpus_there:
        raise ReplayError(f"{workers} worker(s) x {threads} thread(s) x {gpus:g} GPU(s) need {workers * threads} CPUs "
                          f"and {workers * gpus:g} GPUs; the Ray cluster has {cpus:g} CPUs and {gpus_there:g} GPUs "
                          "(use fewer --workers, --threads-per-worker or --gpus-per-worker)")


def _dispatch(workers: list, tasks: dict[str, list[ReplaySequence]], keys: dict[str, dict], ledger, bar: tqdm,
              frames_done: int) -> dict[str, dict[str, tuple[dict, list[dict]]] | RayError]:
    """Run every task, one per idle worker; task name -> (sequence name -> (summary, rows)) or the
    error of its last attempt. The bar follows the ledger's frame count."""
    queue, idle, pending, outcomes = deque(tasks.items()), list(workers), {}, {}
    while queue or pending:
        while queue and idle:
            (name, task), worker = queue.popleft(), idle.pop()
            pending[worker.run.remote(name, task, {s.name: keys[s.name] for s in task}, ledger)] = (name, worker)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        bar.update(frames_done + ray.get(ledger.snapshot.remote())[1] - bar.n)
        for ref in ready:
            name, worker = pending.pop(ref)
            idle.append(worker)
            try:
                outcomes[name] = ray.get(ref)
            except RayError as error:
                outcomes[name] = error
    return outcomes


def _error_text(error: RayError) -> str:
    """One line: the task's own exception (type: message; for a worker's ``__init__``, the last line
    of its traceback), else the first line of Ray's error, said to be a dead worker process where it
    is one."""
    cause = error.cause if isinstance(error, RayTaskError) else None
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = str(error).strip().splitlines()
    if isinstance(error, RayActorError) and error.actor_init_failed and lines:
        kind, _, message = lines[-1].partition(": ")
        return f"{kind.rsplit('.', 1)[-1]}: {message}"
    dead = "the worker process died (killed, out of memory or crashed): " \
        if isinstance(error, (RayActorError, WorkerCrashedError)) else ""
    return f"{dead}{type(error).__name__}: {lines[0] if lines else ''}"
