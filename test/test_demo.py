"""The README's main job: ``vrs-demo`` on the bundled sample writes masks, an overlay video, a log."""

from __future__ import annotations

import json

import cv2
import numpy as np

from vrs_node.ros.demo import SAMPLE, run


def test_demo_on_the_bundled_sample_in_sync_mode(tmp_path, capsys):
    summary = run(["--out", str(tmp_path), "--mode", "sync", "--limit", "6", "--image-size", "128"])
    assert summary["frames_published"] == 6 and summary["masks_received"] == 6
    names = sorted(p.stem for p in (SAMPLE / "JPEGImages").glob("*.jpg"))[:6]
    assert sorted(p.stem for p in (tmp_path / "masks").glob("*.png")) == names
    mask = cv2.imread(str(tmp_path / "masks" / f"{names[-1]}.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (480, 854) and set(np.unique(mask)) <= {0, 255} and mask.any()
    video = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    statuses = [json.loads(line) for line in (tmp_path / "status.jsonl").read_text().splitlines()]
    frames = [s for s in statuses if s.get("event") != "query"]
    queries = [s for s in statuses if s.get("event") == "query"]
    assert [s["status"] for s in frames] == ["tracking"] * 6
    assert all(s["instruction"] == "the black swan" for s in frames)
    assert [q["trigger"] for q in queries][:1] == ["instruction"] and summary["grounding_queries"] == len(queries)
    assert json.loads((tmp_path / "summary.json").read_text())["masks_received"] == 6
    printed = capsys.readouterr().out
    assert str(tmp_path / "masks") in printed and "6 masks for 6 frames" in printed


def test_demo_with_a_box_prompt_instead_of_an_instruction(tmp_path):
    summary = run(["--out", str(tmp_path), "--mode", "sync", "--limit", "3", "--image-size", "128",
                   "--prompt-mask", str(SAMPLE / "Annotations" / "00000.png")])
    assert summary["masks_received"] == 3 and summary["grounding_queries"] == 0
    assert summary["prompt"]["box"][2] > summary["prompt"]["box"][0]


def test_demo_with_two_instructions_draws_two_targets(tmp_path):
    """``--instruction`` twice: one ``set`` command on ``targets``; every frame's status lists both
    targets with their labels, and the overlay video shows them in two colours."""
    summary = run(["--out", str(tmp_path), "--mode", "sync", "--limit", "3", "--image-size", "128",
                   "--instruction", "the black swan", "--instruction", "the water"])
    assert summary["masks_received"] == 3 and summary["prompt"] == {"instructions": ["the black swan", "the water"]}
    statuses = [json.loads(line) for line in (tmp_path / "status.jsonl").read_text().splitlines()]
    frames = [s for s in statuses if "frame_index" in s]
    assert len(frames) == 3
    for status in frames:
        assert [(t["id"], t["label"]) for t in status["targets"]] == [(1, "the black swan"), (2, "the water")]
    queries = [s for s in statuses if s.get("event") == "query"]
    assert sorted((q["target_id"], q["instruction"]) for q in queries[:2]) == [(1, "the black swan"), (2, "the water")]
    video = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
