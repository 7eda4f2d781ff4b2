"""``vrs-replay`` end to end on shared DAVIS blackswan frames: a bag and the dataset folder replayed in
stream, offline and realtime modes with tiny-random models at 128 px; a ground-truth oracle through
the same writing and scoring code; clear errors for damaged bags, missing topics and datasets.

Expected values come from the ground truth and from numpy computed here (IoU by hand), never from
the code under test.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import DAVIS, REPO, make_grounder, make_tracker
from PIL import Image

from vrs_node.eval.bag import COMPRESSED, IMAGE, IMAGE_TOPIC, read_images, read_masks, topics, write_bag
from vrs_node.eval.bag import GROUND_TRUTH_MASK_TOPIC as GT_TOPIC
from vrs_node.eval.outputs import BAG_DIR
from vrs_node.eval.outputs import PREDICTED_MASK_TOPIC as PRED_TOPIC
from vrs_node.eval.replay import REPLAY_MODES, run
from vrs_node.eval.sequences import Prediction

FRAMES = 8
BLACKSWAN = DAVIS / "blackswan"
NAMES = [f"{i:05d}" for i in range(FRAMES)]
COMMON = ["--image-size", "128", "--device", "cpu", "--quiet"]


def gt_mask(name: str) -> np.ndarray:
    return np.array(Image.open(BLACKSWAN / "Annotations" / f"{name}.png")) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def png(path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def bag8(tmp_path_factory):
    """The first 8 blackswan frames with their ground truth, as `vrs-bag make` writes them."""
    bag = tmp_path_factory.mktemp("bags") / "blackswan"
    assert write_bag(bag, BLACKSWAN / "JPEGImages", BLACKSWAN / "Annotations", limit=FRAMES) == FRAMES
    return bag


def bag_args(bag, out, *extra):
    return ["--bag", str(bag), "--gt-topic", GT_TOPIC, "--out", str(out), *COMMON, *extra]


# --- stream mode on a bag ------------------------------------------------------------------------


def test_a_bag_replays_end_to_end_in_stream_mode_reproducibly(bag8, tmp_path, capsys):
    args = ["--prompt", "instruction", "--instruction", "the black swan", "--mode", "stream"]
    first = run(bag_args(bag8, tmp_path / "a", *args))
    printed = capsys.readouterr().out
    second = run(bag_args(bag8, tmp_path / "b", *args))
    seq_dir = tmp_path / "a" / "blackswan"
    input_stamps = [stamp for stamp, _, _ in read_images(bag8, IMAGE_TOPIC)]
    assert len(input_stamps) == FRAMES

    # one mask PNG per frame, named after the frame, at ground-truth size, 0/255
    assert sorted(p.stem for p in seq_dir.glob("*.png")) == NAMES
    masks = {name: png(seq_dir / f"{name}.png") for name in NAMES}
    for name, mask in masks.items():
        assert mask.shape == gt_mask(name).shape == (480, 854)
        assert set(np.unique(mask)) <= {0, 255}

    # masks_bag (a rosbag2 folder, no ROS 1 ".bag" name): the input frames, the predicted masks on the
    # node's topic and the ground truth, each on its own topic with the input's type, the input stamps
    out_bag = seq_dir / BAG_DIR
    assert BAG_DIR == "masks_bag" and PRED_TOPIC == "/vrs/mask" and (out_bag / "metadata.yaml").is_file()
    assert {t.name: t.msgtype for t in topics(out_bag)} == {IMAGE_TOPIC: IMAGE, PRED_TOPIC: IMAGE, GT_TOPIC: IMAGE}
    assert first["sequences"]["blackswan"]["bag"] == {"path": str(out_bag.resolve()), "topics": {
        "frames": IMAGE_TOPIC, "masks": PRED_TOPIC, "ground_truth": GT_TOPIC}}
    assert f"{seq_dir} (masks, frames.csv, overlay.mp4, masks_bag with the masks on /vrs/mask)" in printed
    predicted = list(read_masks(out_bag, PRED_TOPIC))
    assert [stamp for stamp, _, _ in predicted] == input_stamps
    for (_, _, mask), name in zip(predicted, NAMES):
        assert np.array_equal(mask, masks[name] > 0)
    replayed = list(read_images(out_bag, IMAGE_TOPIC))
    assert [s for s, _, _ in replayed] == input_stamps
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(replayed, read_images(bag8, IMAGE_TOPIC)))

    # overlay video and frames.csv: one frame / row per input frame
    video = cv2.VideoCapture(str(seq_dir / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    rows = read_csv(seq_dir / "frames.csv")
    assert [r["frame"] for r in rows] == NAMES
    assert [int(r["stamp_ns"]) for r in rows] == input_stamps
    assert list(rows[0])[:7] == ["frame", "stamp_ns", "J", "F", "object_score", "status", "latency_ms"]
    for row in rows:  # J of each frame, recomputed by hand from the written PNG and the DAVIS GT
        assert float(row["J"]) == pytest.approx(iou(masks[row["frame"]] > 0, gt_mask(row["frame"])), abs=1e-6)
        assert float(row["latency_ms"]) > 0 and row["status"] in ("tracking", "target_absent")

    # summary: sequence means of the per-frame rows, overall = the one sequence, files listed
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(first))
    seq = first["sequences"]["blackswan"]
    assert seq["frames"] == seq["scored_frames"] == FRAMES
    assert seq["J"] == pytest.approx(np.mean([float(r["J"]) for r in rows]), abs=1e-6)
    assert seq["F"] == pytest.approx(np.mean([float(r["F"]) for r in rows]), abs=1e-6)
    assert seq["J&F"] == pytest.approx((seq["J"] + seq["F"]) / 2)
    assert first["overall"]["J&F"] == pytest.approx(seq["J&F"]) and seq["queries"] >= 1
    assert "ALL frames" in first["protocol"]["frames_scored"] and "first and the last" in first["protocol"]["frames_scored"]
    assert "EMPTY" in first["protocol"]["empty_frames"] and "RANDOM" in first["warning"]
    assert first["random_weights"] is True and first["profile"] == "tiny-random" and first["mode"] == "stream"
    assert set(first["files"]["plots"]) == {"jf_over_time", "latency_histogram"}
    for path in first["files"]["plots"].values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert first["files"]["summary"] in printed and str(seq_dir) in printed

    # reproducible: identical masks and scores on a second run
    for name in NAMES:
        assert np.array_equal(png(tmp_path / "b" / "blackswan" / f"{name}.png"), masks[name])
    assert second["overall"]["J&F"] == first["overall"]["J&F"]
    assert second["sequences"]["blackswan"]["J"] == seq["J"]


# --- the ground truth as prediction --------------------------------------------------------------


def oracle(sequence):
    """The ground truth itself (empty where a frame has none)."""
    for frame in sequence.frames():
        yield Prediction(frame, frame.gt if frame.gt is not None else np.zeros(frame.image.shape[:2], bool),
                         object_score=None, status="oracle")


def shifted_oracle(sequence):
    """The ground truth moved 12 px to the right: a known, imperfect prediction."""
    for frame in sequence.frames():
        yield Prediction(frame, np.roll(frame.gt, 12, axis=1), status="shifted")


def test_the_ground_truth_as_prediction_scores_one_through_the_same_pipeline(bag8, tmp_path):
    summary = run(bag_args(bag8, tmp_path / "gt", "--prompt", "gt-mask"), predictor=oracle)
    seq_dir = tmp_path / "gt" / "blackswan"
    assert summary["overall"]["J"] == summary["overall"]["F"] == summary["overall"]["J&F"] == 1.0
    assert summary["davis_all_frames"]["J&F-Mean"] == 1.0 and summary["davis_all_frames"]["J-Recall"] == 1.0
    assert summary["sequences"]["blackswan"]["scored_frames"] == FRAMES
    assert all(float(r["J"]) == 1.0 and float(r["F"]) == 1.0 for r in read_csv(seq_dir / "frames.csv"))
    for name in NAMES:
        assert np.array_equal(png(seq_dir / f"{name}.png") > 0, gt_mask(name))
    assert all(np.array_equal(m, gt_mask(n)) for (_, _, m), n in zip(read_masks(seq_dir / BAG_DIR, PRED_TOPIC), NAMES))
    assert "custom predictor" in summary["warning"]

    # a known error is scored as such: J by hand, F below 1, means over frames
    shifted = run(bag_args(bag8, tmp_path / "shifted", "--prompt", "gt-mask"), predictor=shifted_oracle)
    rows = read_csv(tmp_path / "shifted" / "blackswan" / "frames.csv")
    expected = [iou(np.roll(gt_mask(n), 12, axis=1), gt_mask(n)) for n in NAMES]
    assert [float(r["J"]) for r in rows] == pytest.approx(expected, abs=1e-6)
    assert shifted["overall"]["J"] == pytest.approx(np.mean(expected), abs=1e-6) and shifted["overall"]["J"] < 0.95
    assert 0 < shifted["overall"]["F"] < 1


def test_output_names_a_bag_folder_without_bag_and_a_topic_per_message_type(tmp_path):
    """An input "x.bag" gives the sequence "x"; frames re-encoded to another type than the input's
    get that type's image_transport name (CompressedImage on <topic>/compressed), never the input's;
    a mask topic that would share the frames' name is refused."""
    compressed = tmp_path / "swan.bag"
    write_bag(compressed, BLACKSWAN / "JPEGImages", BLACKSWAN / "Annotations", compressed="jpeg",
              image_topic=IMAGE_TOPIC + "/compressed", limit=3)
    summary = run(["--bag", str(compressed), "--image-topic", IMAGE_TOPIC + "/compressed", "--gt-topic", GT_TOPIC,
                   "--prompt", "gt-mask", "--out", str(tmp_path / "out"), "--quiet"], predictor=oracle)
    assert list(summary["sequences"]) == ["swan"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["plots", "summary.json", "swan"]
    out_bag = tmp_path / "out" / "swan" / BAG_DIR
    assert {t.name: t.msgtype for t in topics(out_bag)} == {IMAGE_TOPIC: IMAGE, PRED_TOPIC: IMAGE, GT_TOPIC: IMAGE}
    decoded = [image for _, _, image in read_images(compressed, IMAGE_TOPIC + "/compressed")]
    assert all(np.array_equal(a, b) for (_, _, a), b in zip(read_images(out_bag, IMAGE_TOPIC), decoded, strict=True))

    raw = tmp_path / "raw"
    write_bag(raw, BLACKSWAN / "JPEGImages", BLACKSWAN / "Annotations", limit=3)
    run(["--bag", str(raw), "--gt-topic", GT_TOPIC, "--prompt", "gt-mask", "--bag-images", "jpeg",
         "--out", str(tmp_path / "out_jpeg"), "--quiet"], predictor=oracle)
    assert {t.name: t.msgtype for t in topics(tmp_path / "out_jpeg" / "raw" / BAG_DIR)} == \
        {IMAGE_TOPIC + "/compressed": COMPRESSED, PRED_TOPIC: IMAGE, GT_TOPIC: IMAGE}
    with pytest.raises(SystemExit, match="bag topics must differ: {'frames': '/camera/image_raw', 'masks': "
                                         "'/camera/image_raw', 'ground_truth': '/camera/gt_mask'}"):
        run(["--bag", str(raw), "--gt-topic", GT_TOPIC, "--prompt", "gt-mask", "--mask-topic", IMAGE_TOPIC,
             "--out", str(tmp_path / "clash"), "--quiet"], predictor=oracle)


@pytest.mark.parametrize("width, height", [(65, 49), (65, 48), (64, 49)])
def test_the_overlay_video_keeps_every_pixel_of_odd_sizes(tmp_path, width, height):
    """MPEG-4 needs even sizes: the last column/row is repeated, not dropped. The frames are black
    with a white last column and a grey last row; the prediction and ground truth are empty."""
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    image = np.zeros((height, width, 3), np.uint8)
    image[:, -1], image[-1, :-1] = 255, 128
    for i in range(3):
        Image.fromarray(image).save(frames / f"{i:05d}.png")
        Image.fromarray(np.zeros((height, width), np.uint8)).save(masks / f"{i:05d}.png")
    write_bag(tmp_path / "odd", frames, masks)

    def empty(sequence):
        for frame in sequence.frames():
            yield Prediction(frame, np.zeros(frame.image.shape[:2], bool))

    run(["--bag", str(tmp_path / "odd"), "--gt-topic", GT_TOPIC, "--prompt", "gt-mask", "--out", str(tmp_path / "out"),
         "--quiet"], predictor=empty)
    video = cv2.VideoCapture(str(tmp_path / "out" / "odd" / "overlay.mp4"))
    shown = [video.read()[1] for _ in range(3)]
    for frame in shown:
        assert frame.shape == (height + height % 2, width + width % 2, 3)
        gray = frame.mean(axis=2)
        assert gray[: height - 1, : width - 1].mean() < 10  # the black inside
        for column in range(width - 1, frame.shape[1]):  # the last column and its copy: white
            assert gray[: height - 1, column].mean() > 230, column
        for row in range(height - 1, frame.shape[0]):  # the last row and its copy: grey
            assert abs(gray[row, : width - 2].mean() - 128) < 12, row


def test_a_predictor_that_skips_a_frame_is_refused(bag8, tmp_path):
    def skipping(sequence):
        for prediction in oracle(sequence):
            if prediction.frame.index != 3:
                yield prediction

    with pytest.raises(RuntimeError, match="answered frame 4, expected 3"):
        run(bag_args(bag8, tmp_path, "--prompt", "gt-mask"), predictor=skipping)


def test_dataset_expressions_all_use_the_revos_layout_and_subset_table(tmp_path):
    summary = run(["--dataset", str(DAVIS), "--sequences", "blackswan", "--expression", "all", "--limit", "3",
                   "--prompt", "gt-mask", "--out", str(tmp_path), "--quiet"], predictor=oracle)
    meta = json.loads((DAVIS / "meta_expressions.json").read_text())["videos"]["blackswan"]["expressions"]
    assert sorted(summary["sequences"]) == sorted(f"blackswan/{i}" for i in meta)
    for exp_id, entry in meta.items():
        seq = summary["sequences"][f"blackswan/{exp_id}"]
        assert seq["instruction"] == entry["exp"] and seq["frames"] == 3
        assert sorted(p.name for p in (tmp_path / "blackswan" / exp_id).glob("*.png")) == [f"{n}.png" for n in NAMES[:3]]
    assert set(summary["by_subset"]) == {"referring", "reasoning", "revos_overall"}
    assert summary["by_subset"]["revos_overall"]["J&F"] == 1.0


# --- dataset, offline and realtime modes with the models -----------------------------------------


def test_dataset_mode_follows_the_expressions_of_meta_expressions(tmp_path):
    summary = run(["--dataset", str(DAVIS), "--sequences", "blackswan", "--limit", "6", "--out", str(tmp_path), *COMMON])
    expression = next(iter(json.loads((DAVIS / "meta_expressions.json").read_text())["videos"]["blackswan"]
                           ["expressions"].values()))
    seq = summary["sequences"]["blackswan"]
    assert list(summary["sequences"]) == ["blackswan"] and summary["input"]["kind"] == "dataset"
    assert seq["instruction"] == expression["exp"] and seq["frames"] == seq["scored_frames"] == 6
    assert seq["queries"] >= 1 and all(0 <= k < 6 for k in seq["keyframes"])
    frames = sorted(p.stem for p in (BLACKSWAN / "JPEGImages").glob("*.jpg"))[:6]
    assert sorted(p.stem for p in (tmp_path / "blackswan").glob("*.png")) == frames
    rows = read_csv(tmp_path / "blackswan" / "frames.csv")
    # the same stamps `vrs-bag make` gives at 30 Hz: 1.7e18 ns + i / 30 s
    assert [int(r["stamp_ns"]) for r in rows] == [1_700_000_000_000_000_000 + round(i * 1e9 / 30) for i in range(6)]
    assert png(tmp_path / "blackswan" / f"{frames[0]}.png").shape == (480, 854)


def test_offline_mode_with_a_ground_truth_mask_on_frame_0(bag8, tmp_path):
    summary = run(bag_args(bag8, tmp_path, "--prompt", "gt-mask", "--mode", "offline"))
    seq_dir = tmp_path / "blackswan"
    rows = read_csv(seq_dir / "frames.csv")
    assert len(rows) == FRAMES and sorted(p.stem for p in seq_dir.glob("*.png")) == NAMES
    assert [r["status"] for r in rows][0] == "keyframe" and summary["sequences"]["blackswan"]["prompt_frame"] == 0
    # frame 0 is what the tracker returns for the mask prompt, computed here with the same weights
    frames = [image for _, _, image in read_images(bag8, IMAGE_TOPIC)]
    tracker = make_tracker(128)
    expected = tracker.condition(tracker.encode(frames[0]), _mask_prompt(gt_mask("00000"))).mask()
    assert np.array_equal(png(seq_dir / "00000.png") > 0, expected)
    assert float(rows[0]["J"]) == pytest.approx(iou(expected, gt_mask("00000")), abs=1e-6)
    assert float(rows[0]["J"]) > 0.9  # 0.918 measured at 128 px: the prompt comes back through 32x32 logits


def _mask_prompt(mask):
    from vrs_node.core.prompts import MaskPrompt

    return MaskPrompt(mask)


def test_segment_offline_runs_the_reference_protocol_from_a_middle_keyframe(bag8):
    """``core.offline.segment_offline`` with a prompt on frame 3: forward from 3 over 4..7, then from
    a reset tracker backward over 2..0, each frame's first result kept; recomputed here with the
    tracker's own steps."""
    from vrs_node.core.offline import segment_offline
    from vrs_node.models.prompt import clean_instruction

    images = [image for _, _, image in read_images(bag8, IMAGE_TOPIC)]
    key, prompt = 3, _mask_prompt(gt_mask(NAMES[3]))
    answer = segment_offline(make_tracker(128), images, prompt, keyframe=key)
    assert answer.keyframe == key and answer.grounding is None and len(answer.results) == FRAMES
    tracker = make_tracker(128)
    feats = [tracker.encode(image) for image in images]
    expected = {}
    for order in (range(key + 1, FRAMES), range(key - 1, -1, -1)):
        tracker.reset()
        expected.setdefault(key, tracker.condition(feats[key], prompt))
        for t in order:
            expected[t] = tracker.track(feats[t])
    for t in range(FRAMES):
        assert np.array_equal(answer.results[t].mask(), expected[t].mask()), t
        assert answer.results[t].object_score == pytest.approx(expected[t].object_score, abs=1e-5), t
    with pytest.raises(ValueError, match="an instruction needs a grounder"):
        segment_offline(make_tracker(128), images, clean_instruction("the black swan"))
    with pytest.raises(ValueError, match="keyframe 8 is outside the 8 frames"):
        segment_offline(make_tracker(128), images, prompt, keyframe=FRAMES)


def test_offline_mode_grounds_once_and_propagates_both_ways_from_the_keyframe(bag8, tmp_path):
    summary = run(bag_args(bag8, tmp_path, "--instruction", "the black swan", "--mode", "offline"))
    seq = summary["sequences"]["blackswan"]
    rows = read_csv(tmp_path / "blackswan" / "frames.csv")
    key = seq["keyframes"][0]
    assert seq["queries"] == 1 and seq["window_frames"] == FRAMES and len(seq["dense_frames"]) <= 11
    assert [r["status"] == "keyframe" for r in rows] == [i == key for i in range(FRAMES)]
    # the reference protocol recomputed here: ground over all frames, then condition on the keyframe
    # with the query's TAK' token and track each direction from a reset tracker
    from vrs_node.core.frames import FrameWindow
    from vrs_node.core.offline import segment_offline
    from vrs_node.core.prompts import TokenPrompt
    from vrs_node.models.prompt import clean_instruction

    tracker = make_tracker(128)
    window = FrameWindow(FRAMES)
    feats = []
    for stamp, frame_id, image in read_images(bag8, IMAGE_TOPIC):
        feats.append(tracker.encode(image))
        window.set_feature(window.append(image, stamp, frame_id).index, "sam2", feats[-1])
    grounding = make_grounder(tracker).ground(window, clean_instruction("the black swan"))
    assert grounding.keyframe == key
    prompt = TokenPrompt(grounding.token)
    expected = {}
    for order in (range(key + 1, FRAMES), range(key - 1, -1, -1)):
        tracker.reset()
        expected[key] = tracker.condition(feats[key], prompt).mask()
        for t in order:
            expected[t] = tracker.track(feats[t]).mask()
    for t in range(FRAMES):
        assert np.array_equal(png(tmp_path / "blackswan" / f"{NAMES[t]}.png") > 0, expected[t]), t
    # core's segment_offline, which vrs-parity runs, answers the same
    images = [image for _, _, image in read_images(bag8, IMAGE_TOPIC)]
    tracker = make_tracker(128)
    answer = segment_offline(tracker, images, clean_instruction("the black swan"), make_grounder(tracker))
    assert answer.keyframe == answer.grounding.keyframe == key
    assert all(np.array_equal(answer.results[t].mask(), expected[t]) for t in range(FRAMES))


def test_realtime_mode_drops_frames_and_still_masks_every_frame(tmp_path):
    count = 40  # 33 ms apart: 1.3 s of stream, while one frame takes >= 100 ms to process here
    summary = run(["--dataset", str(DAVIS), "--sequences", "blackswan", "--limit", str(count), "--prompt", "gt-mask",
                   "--mode", "realtime", "--rate", "30", "--out", str(tmp_path), *COMMON])
    seq = summary["sequences"]["blackswan"]
    seq_dir = tmp_path / "blackswan"
    rows = read_csv(seq_dir / "frames.csv")
    assert len(rows) == count and len(list(seq_dir.glob("*.png"))) == count
    assert seq["pushed"] == count and seq["dropped"] >= 1 and seq["processed"] + seq["dropped"] == count
    first_result, first_mask = seq["time_to_first_result_s"], seq["time_to_first_mask_s"]
    assert first_mask is not None and first_mask > 0 and summary["overall"]["time_to_first_mask_s"]["count"] == 1
    assert rows[0]["status"] == "no_result" and not png(seq_dir / f"{rows[0]['frame']}.png").any()
    shown = 0
    for index, row in enumerate(rows):
        mask = png(seq_dir / f"{row['frame']}.png")
        assert mask.shape == (480, 854)
        if float(row["arrival_s"]) < first_result:  # nothing published yet: an empty mask, scored
            assert row["status"] == "no_result" and not mask.any() and row["mask_from_frame"] == ""
            assert float(row["J"]) == 0.0
        else:  # the latest result published before this frame arrived: an earlier frame's
            assert row["status"] != "no_result" and int(row["mask_from_frame"]) < index
            shown += 1
    assert shown > 0, "the first result should come within the 1.3 s of stream"
    assert [r["processed"] for r in rows].count("0") == seq["dropped"]
    assert "time_to_first_mask" in summary["files"]["plots"]


# --- errors --------------------------------------------------------------------------------------


def test_a_damaged_bag_ends_with_a_clear_error(bag8, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(bag8, cut)
    storage = next(cut.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    with pytest.raises(SystemExit, match=r"^vrs-replay: error: .*truncated or corrupt"):
        run(bag_args(cut, tmp_path / "out", "--instruction", "the black swan"))
    # as a command: one line on stderr, exit status 1, no traceback
    done = subprocess.run([sys.executable, "-m", "vrs_node.eval.replay", *bag_args(cut, tmp_path / "out2", "--instruction", "x")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("vrs-replay: error: ") and "truncated or corrupt" in done.stderr

    # damage found only while reading the frames (fewer messages than listed) stops the same way
    short = tmp_path / "short"
    write_bag(short, BLACKSWAN / "JPEGImages", storage="sqlite3", limit=3)
    metadata = short / "metadata.yaml"
    metadata.write_text(metadata.read_text().replace("message_count: 3", "message_count: 5"))
    with pytest.raises(SystemExit, match="ended after 3 of the 5 messages"):
        run(["--bag", str(short), "--instruction", "the black swan", "--out", str(tmp_path / "out3"), *COMMON])


def test_every_mode_has_its_predictor():
    from vrs_node.eval.predictors import PREDICTORS

    assert tuple(PREDICTORS) == REPLAY_MODES


def test_bad_settings_end_with_clear_errors_before_any_model_loads(bag8, tmp_path, monkeypatch):
    """The model and engine flags come from the settings' fields (old spellings kept); a value the
    settings refuse is one error line, and no model is loaded for it."""
    import vrs_node.models.profiles

    def refuse(config):
        raise AssertionError("models loaded")

    monkeypatch.setattr(vrs_node.models.profiles, "load_configured_models", refuse)
    out = ["--bag", str(bag8), "--instruction", "x", "--out", str(tmp_path / "out"), "--quiet"]
    with pytest.raises(SystemExit, match=r"^vrs-replay: error: window_frames must be >= 1, got 0$"):
        run([*out, "--window-frames", "0"])
    with pytest.raises(SystemExit, match=r"^vrs-replay: error: image_size must be >= 0, got -32$"):
        run([*out, "--profile", "tiny-random", "--no-compile", "--image-size", "-32"])
    with pytest.raises(AssertionError, match="models loaded"):
        run([*out, "--profile", "tiny-random", "--compile", "--sparse-frames", "2", "--max-cond-frames", "2"])
    assert not (tmp_path / "out").exists()


def test_missing_inputs_end_with_clear_errors(bag8, tmp_path):
    out = ["--out", str(tmp_path / "out"), *COMMON]
    with pytest.raises(SystemExit, match=r"no image topic '/nope'; the bag has: /camera/gt_mask .*/camera/image_raw"):
        run(["--bag", str(bag8), "--image-topic", "/nope", "--instruction", "x", *out])
    with pytest.raises(SystemExit, match=r"no ground-truth topic '/gt'; the bag has: .*/camera/image_raw"):
        run(["--bag", str(bag8), "--gt-topic", "/gt", "--instruction", "x", *out])
    with pytest.raises(SystemExit, match="no such bag"):
        run(["--bag", str(tmp_path / "nothing"), "--instruction", "x", *out])
    with pytest.raises(SystemExit, match="needs --instruction TEXT"):
        run(["--bag", str(bag8), *out])
    with pytest.raises(SystemExit, match="no meta_expressions.json"):
        run(["--dataset", str(BLACKSWAN), *out])
    with pytest.raises(SystemExit, match="sequence.* swan not found; available: blackswan, car-shadow"):
        run(["--dataset", str(DAVIS), "--sequences", "swan", *out])
    assert not (tmp_path / "out").exists(), "nothing is written before the input is checked"
