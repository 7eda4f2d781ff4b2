"""The soak (``scripts/soak.sh``, :mod:`vrs_node.eval.soak`): CI's 1,500-frame run passes, and its
checks fail a run that grows."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO

from vrs_node.eval.soak import Bounds, Sample, check, report

CI_FRAMES = 1500


def test_a_1500_frame_soak_passes():
    """tiny-random at 128 px, a prompt and an instruction re-queried every second in turn; RSS at
    the end within 5 % of RSS at 1,000 frames and every bound kept. Its own process, as
    scripts/soak.sh runs it, so that nothing of other tests is in its RSS."""
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "vrs_node.eval.soak", str(CI_FRAMES)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    print(f"\n{run.stdout}\n(soak of {CI_FRAMES} frames: {time.monotonic() - started:.0f} s)")
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
    lines = run.stdout.splitlines()
    assert lines[-1] == "PASS"
    (last,) = [line.split() for line in lines if line.split()[:1] == [str(CI_FRAMES)] and len(line.split()) == 9]
    instruction_frames = CI_FRAMES // 2  # segments of 250 frames: prompt, instruction, prompt, ...
    assert int(last[6]) >= instruction_frames // 30, "the instruction was re-queried every 30 frames (1 s)"


def samples(rss_mib, bank_entries=16, window_features=16, errors=0):
    return [Sample(frame, int(rss * 2**20), bank_entries, bank_entries * 14_000, 16, window_features, 10, 0, errors)
            for frame, rss in zip((500, 1000, 1500), rss_mib)]


BOUNDS = Bounds(max_rss_ratio=1.05, window_frames=16, window_features=48, bank_entries=19)


def test_the_checks_fail_a_run_that_grows():
    assert check(samples((1000, 1010, 1040)), BOUNDS, 1000)[0] == []
    failures, table = check(samples((1000, 1010, 1100)), BOUNDS, 1000)
    assert failures == ["RSS(end) / RSS(1000) 1.089 > 1.05"]
    assert report(samples((1000, 1010, 1100)), table, failures, 1000, 60.0).splitlines()[-1] == \
        "FAIL: RSS(end) / RSS(1000) 1.089 > 1.05"
    assert [f.split(" ")[0] for f in check(samples((1000,) * 3, bank_entries=20), BOUNDS, 1000)[0]] == \
        ["memory", "memory"]  # entries, and bytes beyond entries x bytes per entry
    assert check(samples((1000,) * 3, window_features=49), BOUNDS, 1000)[0] == ["window cached features 49 > 48"]
    assert check(samples((1000,) * 3, errors=1), BOUNDS, 1000)[0] == ["frame errors 1 > 0"]
