"""``vrs-replay --workers N`` on Ray (issue 16): the same figures and files as one process, resume
from completion records, a killed worker retried and counted, a sequence failing twice reported
without aborting the run, clear errors for bad parallel options.

One Ray (2 CPUs, no GPU, no dashboard) is started for the module; the command uses it as it is.
Predictors other than the models are defined here and sent to the workers by value. Expected
values come from a single-process run, the ground truth or the test's own bookkeeping, never from
the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import DAVIS, REPO
from PIL import Image

from vrs_node.eval.replay import run
from vrs_node.eval.resume import RECORD_NAME
from vrs_node.eval.sequences import Prediction

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the predictors below, into the workers

SEQUENCES = ("blackswan", "car-shadow")
TIMING = {"latency_ms", "query_latency_ms"}
"""Measured times: the only figures that may differ between two runs."""
RUN_SECTIONS = {"parallel", "failures", "resume"}
"""Sections only a Ray or resumed run has."""


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One local Ray for the module: 2 CPUs (the machine's), no GPU, no dashboard."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=128 * 2**20,
             logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def dataset_args(out, *extra, limit=4):
    return ["--dataset", str(DAVIS), "--sequences", ",".join(SEQUENCES), "--limit", str(limit), "--out", str(out),
            "--quiet", *extra]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def comparable(summary: dict, out) -> dict:
    """The summary without measured times, the Ray and resume sections and ``out``'s path (JSON as on disk)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING | RUN_SECTIONS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(json.loads(json.dumps(summary).replace(str(out.resolve()), "<out>")))


def oracle(sequence):
    """The ground truth itself."""
    for frame in sequence.frames():
        yield Prediction(frame, frame.gt, status="oracle")


class Faulty:
    """The ground truth, but on ``victim``: SIGKILL its own worker process (``fault="kill"``) or
    raise (``"raise"``) after two frames, on the first ``times`` attempts (counted in files, across
    processes, under ``marks``)."""

    def __init__(self, victim: str, fault: str, times: int, marks):
        self.victim, self.fault, self.times, self.marks = victim, fault, times, marks
        self.name = f"faulty-{fault}"

    def __call__(self, sequence):
        attempt = len(list(self.marks.glob(f"{sequence.name}.*"))) + 1
        (self.marks / f"{sequence.name}.{attempt}").touch()
        for frame in sequence.frames():
            if sequence.name == self.victim and attempt <= self.times and frame.index == 2:
                if self.fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise ValueError(f"broken frame {frame.name} of {sequence.name}")
            yield Prediction(frame, frame.gt, status="oracle")


def test_two_workers_give_the_single_process_summary_and_files(tmp_path):
    model = ["--image-size", "128", "--device", "cpu"]
    single = run(dataset_args(tmp_path / "one", *model))
    parallel = run(dataset_args(tmp_path / "two", *model, "--workers", "2"))
    assert comparable(parallel, tmp_path / "two") == comparable(single, tmp_path / "one")
    assert list(parallel["sequences"]) == list(SEQUENCES) and parallel["overall"]["frames"] == 8
    assert parallel["parallel"]["workers"] == 2 and parallel["parallel"]["retries_total"] == 0
    assert parallel["failures"] == [] and "parallel" not in single
    on_disk = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert on_disk["overall"] == parallel["overall"] and on_disk["parallel"] == parallel["parallel"]
    for name in SEQUENCES:
        one, two = read_csv(tmp_path / "one" / name / "frames.csv"), read_csv(tmp_path / "two" / name / "frames.csv")
        assert len(one) == 4 and all(float(r["latency_ms"]) > 0 for r in two)
        assert [{k: v for k, v in r.items() if k != "latency_ms"} for r in two] == \
            [{k: v for k, v in r.items() if k != "latency_ms"} for r in one]
        for row in one:
            masks = [np.array(Image.open(tmp_path / run_dir / name / f"{row['frame']}.png")) for run_dir in ("one", "two")]
            assert np.array_equal(*masks)
        assert (tmp_path / "two" / name / "overlay.mp4").stat().st_size > 0
        assert (tmp_path / "two" / name / RECORD_NAME).is_file()
    assert all(p.is_file() for p in map(Path, parallel["files"]["plots"].values()))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resume_skips_matching_records_and_reruns_a_mismatch_with_a_note(tmp_path, workers):
    args = dataset_args(tmp_path, "--prompt", "gt-mask", "--workers", workers)
    first = run(args, predictor=oracle)
    # a sentinel in each folder survives only if the sequence is skipped (a re-run replaces the folder)
    for name in SEQUENCES:
        (tmp_path / name / "sentinel").touch()
    record_path = tmp_path / "car-shadow" / RECORD_NAME
    record = json.loads(record_path.read_text())
    record["key"]["instruction"] = "another instruction"
    record_path.write_text(json.dumps(record))

    resumed = run([*args, "--resume"], predictor=oracle)
    assert (tmp_path / "blackswan" / "sentinel").exists() and not (tmp_path / "car-shadow" / "sentinel").exists()
    assert resumed["resume"]["skipped"] == ["blackswan"]
    [note] = resumed["resume"]["notes"]
    assert note.startswith("car-shadow:") and "instruction 'another instruction'" in note and "re-run" in note
    assert json.loads(record_path.read_text())["key"]["instruction"] != "another instruction"
    assert comparable(resumed, tmp_path) == comparable(first, tmp_path)
    if workers == "2":
        assert resumed["parallel"]["workers"] == 1  # one sequence left to run
    else:
        assert "parallel" not in resumed

    # everything done: nothing runs, Ray is not needed, the same table again
    again = run([*args, "--resume"], predictor=oracle)
    assert again["resume"] == {"skipped": list(SEQUENCES), "notes": []} and "parallel" not in again
    assert comparable(again, tmp_path) == comparable(first, tmp_path)
    # another setting: every record differs, everything re-runs (here, to keep the test short)
    other = run([*dataset_args(tmp_path, "--prompt", "gt-mask", limit=3), "--resume"], predictor=oracle)
    assert other["resume"]["skipped"] == [] and all("frames 4 -> 3" in n for n in other["resume"]["notes"])
    assert other["overall"]["frames"] == 6


def test_a_killed_worker_is_replaced_and_its_sequence_retried_and_counted(tmp_path):
    clean = run(dataset_args(tmp_path / "clean", "--prompt", "gt-mask"), predictor=oracle)  # one process
    marks = tmp_path / "marks"
    marks.mkdir()
    faulty = Faulty("car-shadow", "kill", 1, marks)
    summary = run(dataset_args(tmp_path / "killed", "--prompt", "gt-mask", "--workers", "2"), predictor=faulty)
    assert sorted(p.name for p in marks.iterdir()) == ["blackswan.1", "car-shadow.1", "car-shadow.2"]
    assert summary["parallel"]["retries"] == {"car-shadow": 1} and summary["parallel"]["retries_total"] == 1
    assert summary["failures"] == []
    assert comparable(summary, tmp_path / "killed") == comparable(clean, tmp_path / "clean") | {"profile": "faulty-kill"}
    assert len(read_csv(tmp_path / "killed" / "car-shadow" / "frames.csv")) == 4


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_sequence_failing_twice_is_a_failure_and_the_run_goes_on(tmp_path, fault):
    marks = tmp_path / "marks"
    marks.mkdir()
    summary = run(dataset_args(tmp_path / "out", "--prompt", "gt-mask", "--workers", "2"),
                  predictor=Faulty("blackswan", fault, 2, marks))
    [failure] = summary["failures"]
    assert failure["sequence"] == "blackswan" and failure["attempts"] == 2
    if fault == "raise":
        assert failure["error"] == "ValueError: broken frame 00002 of blackswan"
    else:
        assert failure["error"].startswith("the worker process died (killed, out of memory or crashed): Actor")
    assert sorted(p.name for p in marks.iterdir()) == ["blackswan.1", "blackswan.2", "car-shadow.1"]
    assert list(summary["sequences"]) == ["car-shadow"] and summary["overall"]["J&F"] == 1.0
    assert summary["parallel"]["retries"] == {"blackswan": 1}
    assert not (tmp_path / "out" / "blackswan" / RECORD_NAME).exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failures"] == summary["failures"]


def test_bad_parallel_options_end_with_clear_errors(tmp_path, capsys):
    for extra, message in ((["--workers", "0"], "--workers and --threads-per-worker must be >= 1"),
                           (["--threads-per-worker", "2"], "are for --workers N > 1"),
                           (["--ray-address", "auto"], "are for --workers N > 1")):
        with pytest.raises(SystemExit):
            run(dataset_args(tmp_path, *extra))
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="need 2 CPUs and 2 GPUs; the Ray cluster has 2 CPUs and 0 GPUs"):
        run(dataset_args(tmp_path, "--prompt", "gt-mask", "--workers", "2", "--gpus-per-worker", "1"), predictor=oracle)
    with pytest.raises(SystemExit, match="need 4 CPUs"):
        run(dataset_args(tmp_path, "--prompt", "gt-mask", "--workers", "2", "--threads-per-worker", "2"),
            predictor=oracle)
    # models a worker cannot load: the error of one process, said once, before any sequence runs
    no_checkpoint = ["--profile", "sam2.1-hiera-t", "--prompt", "gt-box", "--device", "cpu"]
    with pytest.raises(SystemExit) as single:
        run(dataset_args(tmp_path / "one", *no_checkpoint))
    with pytest.raises(SystemExit) as parallel:
        run(dataset_args(tmp_path / "two", *no_checkpoint, "--workers", "2"))
    reason = str(single.value).removeprefix("vrs-replay: error: ")
    assert "needs a SAM-2 checkpoint" in reason
    assert str(parallel.value) == f"vrs-replay: error: a Ray worker could not start: ReplayError: {reason}"
    assert not (tmp_path / "two" / "blackswan").exists()


def test_help_imports_neither_ray_nor_torch():
    code = ("import sys\nfrom vrs_node.eval.replay import parse_args\ntry:\n    parse_args(['--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "--workers" in done.stdout and "--ray-address" in done.stdout and "--resume" in done.stdout
    assert done.stdout.strip().endswith("[]")
