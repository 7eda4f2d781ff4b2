#!/usr/bin/env python3
"""Benchmark: vrs_node's StreamingTracker vs sam2's SAM2VideoPredictor (same weights, same frames).

Two parts, one invocation:

* **Timing** (``--profile``, default ``hiera-t-512-random``): per-frame cost of the streaming tracker
  (``encode`` + ``track`` + upsampling the logits to camera resolution, as the predictor does every
  frame) against ``SAM2VideoPredictor`` (``init_state`` on a JPEG folder, ``add_new_mask`` on frame 0,
  ``propagate_in_video``; per-frame time = time spent inside ``next()`` of the propagate loop).
  Both run in this process, one frame of each in turn (round 1: the predictor's frame k then the
  tracker's frame k; round 2: the other way round), so machine noise hits both alike; figures are
  medians / p90 over the steady-state frames (frame index >= ``--warmup-frames``, i.e. memory bank
  and pointer history full) of all rounds, plus the median of the per-frame paired ratios. The
  predictor's frame decoding (``init_state``) is reported separately; the tracker's per-frame time
  *includes* its pre-processing (the transform's device backend: resize + normalisation), which the
  predictor does inside ``init_state`` -- reported separately too.
* **Memory** (``--memory-frames``, default 1000, at ``--memory-size`` px with the ``tiny-random``
  profile): the tracker's ``state_size()`` and the predictor's inference-state size (tensor bytes of
  ``inference_state["images"]`` + every ``output_dict_per_obj`` entry + the shared ``maskmem_pos_enc``)
  and process RSS every ``--sample-every`` frames. Each side runs in its own subprocess (this script
  re-invoked with ``--_worker``) so the RSS figures are not mixed. The predictor gets a folder of
  ``--memory-frames`` JPEGs and decodes them all up front (that is what it does); the tracker reads
  and decodes one JPEG per frame from the same folder, as a camera stream would deliver them.

Frames: the DAVIS-2016 ``blackswan`` JPEGs (looped when more frames are needed), copied into temp
folders as ``00000.jpg``...; prompt: ``Annotations/00000.png`` as a mask on frame 0.

Random weights: the figures say nothing about segmentation quality, only cost and state size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import DAVIS  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

DEFAULT_DAVIS = DAVIS / "blackswan"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def silence_predictor() -> None:
    """Hide the per-frame fill_hole UserWarning (no sam2._C on CPU) and sam2's own tqdm bars."""
    warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step",
                            category=UserWarning)
    import functools

    import sam2.sam2_video_predictor as svp
    import sam2.utils.misc as misc
    quiet = functools.partial(tqdm, disable=True)
    svp.tqdm = quiet
    misc.tqdm = quiet


def proc_status_kib(*keys: str) -> dict[str, int]:
    """VmRSS / VmHWM etc. of this process in KiB, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0])
    return out


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    st = proc_status_kib("VmRSS", "VmHWM")
    return st["VmRSS"] / 1024, st["VmHWM"] / 1024


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stats_ms(seconds: list[float]) -> dict:
    a = np.asarray(seconds, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median": round(float(np.median(a)), 2),
            "p90": round(float(np.percentile(a, 90)), 2), "mean": round(float(a.mean()), 2),
            "min": round(float(a.min()), 2), "max": round(float(a.max()), 2)}


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def machine_info() -> dict:
    cpu = "unknown"
    flags = []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo") as fh:
            mem_total = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        from importlib.metadata import version
        sam2_version = version("sam2")
    except Exception:  # noqa: BLE001
        sam2_version = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                                    capture_output=True, text=True).stdout.strip())
    except Exception:  # noqa: BLE001
        commit, dirty = None, None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_flags_of_note": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")),
        "mem_total_gib": mem_total,
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "sam2_version": sam2_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "vrs_node_commit": commit,
        "vrs_node_worktree_dirty": dirty,
    }


def make_jpeg_folder(src_dir: Path, count: int, dest: Path) -> list[Path]:
    """``count`` JPEGs named 00000.jpg... copied from ``src_dir`` (looped)."""
    srcs = sorted(src_dir.glob("*.jpg"))
    if not srcs:
        raise SystemExit(f"no JPEGs in {src_dir}")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        p = dest / f"{i:05d}.jpg"
        shutil.copyfile(srcs[i % len(srcs)], p)
        out.append(p)
    return out


def load_rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def load_prompt_mask(davis_seq: Path) -> np.ndarray:
    return np.array(Image.open(davis_seq / "Annotations" / "00000.png")) > 0


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------

def build_pair(profile_name: str, image_size: int | None):
    """(StreamingTracker, SAM2VideoPredictor) on identical weights, CPU."""
    import dataclasses

    from sam2.build_sam import build_sam2_video_predictor

    from vrs_node.core.tracker import StreamingTracker
    from vrs_node.models.profiles import build_sam2_for_profile, get_profile
    from vrs_node.models.sam2_build import SAM2_CONFIGS

    profile = get_profile(profile_name)
    model, transform = build_sam2_for_profile(profile, device="cpu", image_size=image_size)
    tracker = StreamingTracker(model, transform)
    spec = dataclasses.replace(profile.sam2, image_size=model.image_size)
    # build_sam2_video_predictor adds the binarize / dynamic-multimask / fill_hole overrides itself;
    # pass only the resolution overrides (the first three), as test/test_tracker.py does.
    predictor = build_sam2_video_predictor(SAM2_CONFIGS[spec.arch], device="cpu",
                                           hydra_overrides_extra=spec.hydra_overrides()[:3])
    predictor.load_state_dict(model.state_dict())
    predictor.eval()
    return tracker, predictor


# --------------------------------------------------------------------------------------------
# one run of each side
# --------------------------------------------------------------------------------------------

def run_tracker(tracker, frames, mask, desc: str, source=None, sample_every: int = 0,
                n_frames: int | None = None) -> dict:
    """Condition on frame 0, track the rest. ``frames``: list of RGB arrays, or None with
    ``source`` (list of JPEG paths decoded one per frame). Returns per-frame times (s)."""
    from vrs_node.core.prompts import MaskPrompt

    tracker.reset()
    n = n_frames if n_frames is not None else len(frames)
    enc_t, trk_t, tot_t, samples = [], [], [], []
    nonempty = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for i in tqdm(range(n), desc=desc, unit="f", leave=False):
            image = frames[i] if frames is not None else load_rgb(source[i])
            t0 = time.perf_counter()
            feats = tracker.encode(image)
            t1 = time.perf_counter()
            result = tracker.condition(feats, MaskPrompt(mask)) if i == 0 else tracker.track(feats)
            logits = result.camera_logits()  # the predictor upsamples to video size every frame too
            t2 = time.perf_counter()
            nonempty += bool((logits > 0).any())
            enc_t.append(t1 - t0)
            trk_t.append(t2 - t1)
            tot_t.append(t2 - t0)
            if sample_every and ((i + 1) % sample_every == 0 or i in (0, n - 1)):
                entries, nbytes = tracker.state_size()
                rss, hwm = rss_mib()
                samples.append({"frames": i + 1, "state_entries": entries, "state_bytes": nbytes,
                                "rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1)})
    wall = time.perf_counter() - wall0
    return {"encode_s": enc_t, "track_s": trk_t, "frame_s": tot_t, "nonempty_frames": nonempty,
            "wall_s": wall, "cpu_util": (time.process_time() - cpu0) / wall, "samples": samples}


def predictor_state_size(state) -> dict:
    """Tensor bytes the predictor's inference state holds for frames and per-frame outputs."""
    images = state["images"]
    img_bytes = tensor_bytes(images) if isinstance(images, torch.Tensor) else 0
    out_bytes, entries = 0, 0
    for obj_dict in state["output_dict_per_obj"].values():
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for out in obj_dict[key].values():
                entries += 1
                # tensors stored per entry; maskmem_pos_enc is a list of expanded views of one shared
                # copy (state["constants"]), counted once below -- same rule as state_size().
                out_bytes += sum(tensor_bytes(v) for v in out.values() if isinstance(v, torch.Tensor))
    shared = sum(tensor_bytes(t) for t in state["constants"].get("maskmem_pos_enc", []) or [])
    return {"images_bytes": img_bytes, "outputs_bytes": out_bytes + shared, "entries": entries,
            "state_bytes": img_bytes + out_bytes + shared}


def run_predictor(predictor, folder: Path, mask, desc: str, sample_every: int = 0,
                  n_expected: int | None = None) -> dict:
    """init_state(folder) + add_new_mask(frame 0) + propagate_in_video; per-frame times (s)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    samples = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        state = predictor.init_state(str(folder))
        t1 = time.perf_counter()
        predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
        t2 = time.perf_counter()
        n = state["num_frames"]
        rss_after_init = rss_mib()
        frame_t, nonempty = [], 0
        last = time.perf_counter()
        bar = tqdm(total=n_expected or n, desc=desc, unit="f", leave=False)
        for i, (idx, _, video_res) in enumerate(predictor.propagate_in_video(state)):
            now = time.perf_counter()
            frame_t.append(now - last)  # frame 0: preflight (memory encoding of the prompt frame)
            nonempty += bool((video_res > 0).any())
            bar.update(1)
            if sample_every and ((i + 1) % sample_every == 0 or i in (0, n - 1)):
                size = predictor_state_size(state)
                rss, hwm = rss_mib()
                samples.append({"frames": i + 1, "state_entries": size["entries"],
                                "state_bytes": size["state_bytes"], "images_bytes": size["images_bytes"],
                                "outputs_bytes": size["outputs_bytes"],
                                "rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1)})
            last = time.perf_counter()  # exclude our own sampling from the next frame's time
        bar.close()
    wall = time.perf_counter() - wall0
    result = {"init_state_s": t1 - t0, "add_new_mask_s": t2 - t1, "frame_s": frame_t,
              "num_frames": n, "nonempty_frames": nonempty, "wall_s": wall,
              "cpu_util": (time.process_time() - cpu0) / wall, "samples": samples,
              "rss_after_init_state_mib": round(rss_after_init[0], 1),
              "final_state": predictor_state_size(state)}
    del state
    return result


# --------------------------------------------------------------------------------------------
# part a: timing
# --------------------------------------------------------------------------------------------

def run_interleaved(tracker, predictor, folder: Path, frames, mask, predictor_first: bool,
                    desc: str) -> dict:
    """Both sides on the same frames, one frame of each in turn (frame k of the predictor, then
    frame k of the tracker, or the other way round), so machine noise hits both alike.

    Predictor frame time = time inside ``next()`` of ``propagate_in_video`` (frame 0 also runs the
    preflight memory encoding of the prompt frame). Tracker frame time = ``encode`` (incl. the
    device pre-processing: resize + normalise) + ``condition``/``track`` + ``camera_logits()`` (the predictor upsamples
    to video resolution every frame too).
    """
    from vrs_node.core.prompts import MaskPrompt

    n = len(frames)
    rec = {"predictor_first": predictor_first}
    p_t, t_t, enc_t, trk_t = [], [], [], []
    cpu = {"predictor": 0.0, "tracker": 0.0}
    nonempty = {"predictor": 0, "tracker": 0}
    with torch.inference_mode():
        t0 = time.perf_counter()
        state = predictor.init_state(str(folder))
        t1 = time.perf_counter()
        predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
        rec["predictor_init_state_s"] = t1 - t0
        rec["predictor_add_new_mask_s"] = time.perf_counter() - t1
        gen = predictor.propagate_in_video(state)
        tracker.reset()

        def predictor_frame(i):
            c, a = time.process_time(), time.perf_counter()
            idx, _, video_res = next(gen)
            p_t.append(time.perf_counter() - a)
            cpu["predictor"] += time.process_time() - c
            assert idx == i, (idx, i)
            nonempty["predictor"] += bool((video_res > 0).any())

        def tracker_frame(i):
            c, a = time.process_time(), time.perf_counter()
            feats = tracker.encode(frames[i])
            b = time.perf_counter()
            result = tracker.condition(feats, MaskPrompt(mask)) if i == 0 else tracker.track(feats)
            logits = result.camera_logits()
            e = time.perf_counter()
            cpu["tracker"] += time.process_time() - c
            enc_t.append(b - a)
            trk_t.append(e - b)
            t_t.append(e - a)
            nonempty["tracker"] += bool((logits > 0).any())

        steps = (predictor_frame, tracker_frame) if predictor_first else (tracker_frame, predictor_frame)
        for i in tqdm(range(n), desc=desc, unit="f", leave=False):
            for step in steps:
                step(i)
        assert next(gen, None) is None, "the predictor yielded more frames than expected"
        gen.close()  # its frame holds the predictor's state
        del state
    rec.update({
        "predictor_frame_s": p_t, "tracker_frame_s": t_t, "tracker_encode_s": enc_t,
        "tracker_track_s": trk_t, "nonempty_frames": nonempty,
        "cpu_util": {"predictor": cpu["predictor"] / sum(p_t), "tracker": cpu["tracker"] / sum(t_t)},
    })
    return rec


def timing_part(args, davis: Path, tmp: Path) -> dict:
    silence_predictor()
    folder = tmp / "timing_frames"
    paths = make_jpeg_folder(davis / "JPEGImages", args.frames, folder)
    frames = [load_rgb(p) for p in paths]  # decoded once, outside the timed loop
    mask = load_prompt_mask(davis)
    t0 = time.perf_counter()
    tracker, predictor = build_pair(args.profile, None)
    build_s = time.perf_counter() - t0
    size = tracker.model.image_size

    # warm-up (untimed): a few frames through each, so one-time costs hit neither side in round 1
    warm = tmp / "warmup_frames"
    make_jpeg_folder(davis / "JPEGImages", 3, warm)
    run_interleaved(tracker, predictor, warm, frames[:3], mask, True, "warm-up")

    pre_t = []  # the tracker's own pre-processing (device backend: resize + normalise), inside encode()
    for image in frames[: min(len(frames), 20)]:
        a = time.perf_counter()
        tracker.transform(image)
        pre_t.append(time.perf_counter() - a)

    w = args.warmup_frames
    rounds = []
    for r in range(args.rounds):
        la = loadavg()
        rec = run_interleaved(tracker, predictor, folder, frames, mask, predictor_first=(r % 2 == 0),
                              desc=f"timing round {r + 1}/{args.rounds}")
        rec.update({"round": r + 1, "loadavg_before": la, "loadavg_after": loadavg()})
        rounds.append(rec)
        p = np.median(rec["predictor_frame_s"][w:])
        t = np.median(rec["tracker_frame_s"][w:])
        tqdm.write(f"round {r + 1} ({'predictor' if r % 2 == 0 else 'tracker'} first in each frame pair): "
                   f"predictor {p * 1e3:.0f} ms/frame, tracker {t * 1e3:.0f} ms/frame, ratio {t / p:.3f}, "
                   f"cpu_util P {rec['cpu_util']['predictor']:.2f} T {rec['cpu_util']['tracker']:.2f}")

    def pooled(key):
        return [x for rec in rounds for x in rec[key][w:]]

    pre = stats_ms(pre_t)
    paired = [t / p for rec in rounds
              for p, t in zip(rec["predictor_frame_s"][w:], rec["tracker_frame_s"][w:])]
    summary = {
        "predictor_ms_per_frame": stats_ms(pooled("predictor_frame_s")),
        "tracker_ms_per_frame": stats_ms(pooled("tracker_frame_s")),
        "tracker_encode_ms": stats_ms(pooled("tracker_encode_s")),
        "tracker_track_ms": stats_ms(pooled("tracker_track_s")),
        "tracker_preprocess_ms": pre,
        "predictor_init_state_s": [round(rec["predictor_init_state_s"], 3) for rec in rounds],
        "predictor_init_state_ms_per_frame": round(
            1000 * float(np.median([rec["predictor_init_state_s"] for rec in rounds])) / args.frames, 2),
        "predictor_add_new_mask_ms": [round(1000 * rec["predictor_add_new_mask_s"], 1) for rec in rounds],
        "predictor_frame0_ms": [round(1000 * rec["predictor_frame_s"][0], 1) for rec in rounds],
        "tracker_frame0_condition_ms": [round(1000 * rec["tracker_frame_s"][0], 1) for rec in rounds],
        "cpu_util": {side: [round(rec["cpu_util"][side], 2) for rec in rounds]
                     for side in ("predictor", "tracker")},
        "nonempty_frames": {side: [rec["nonempty_frames"][side] for rec in rounds]
                            for side in ("predictor", "tracker")},
    }
    tm, pm = summary["tracker_ms_per_frame"], summary["predictor_ms_per_frame"]
    summary["ratio_tracker_over_predictor"] = {
        "of_medians": round(tm["median"] / pm["median"], 3),
        "of_p90": round(tm["p90"] / pm["p90"], 3),
        "median_of_paired_frames": round(float(np.median(paired)), 3),
        "p10_p90_of_paired_frames": [round(float(np.percentile(paired, 10)), 3),
                                     round(float(np.percentile(paired, 90)), 3)],
        "of_medians_without_tracker_preprocess": round((tm["median"] - pre["median"]) / pm["median"], 3),
        "per_round_of_medians": [round(float(np.median(rec["tracker_frame_s"][w:])
                                             / np.median(rec["predictor_frame_s"][w:])), 3)
                                 for rec in rounds],
    }
    for rec in rounds:  # keep the per-frame lists, in ms
        for k in [k for k in rec if k.endswith("_frame_s") or k in ("tracker_encode_s", "tracker_track_s")]:
            rec[k[:-2] + "_ms"] = [round(x * 1000, 2) for x in rec.pop(k)]
    return {"profile": args.profile, "image_size": size, "frames": args.frames,
            "steady_state_from_frame": w, "rounds": args.rounds, "build_s": round(build_s, 2),
            "summary": summary, "per_round": rounds,
            "notes": [
                "both sides run in this process on the same frames and weights, one frame of each in "
                "turn; round 1 runs the predictor's frame first in each pair, round 2 the tracker's",
                "per-frame figures pool frames >= steady_state_from_frame of every round",
                "predictor frame time = time inside next() of propagate_in_video (includes the "
                "upsampling to video resolution and the failed fill_hole attempt)",
                "tracker frame time = encode (incl. device resize + normalise) + track + camera_logits() "
                "(upsampling to video resolution); JPEGs decoded before the loop",
                "the predictor's frame decoding/resizing happens in init_state, reported separately",
            ]}


# --------------------------------------------------------------------------------------------
# part b: memory (one subprocess per side)
# --------------------------------------------------------------------------------------------

def memory_worker(args) -> None:
    """Subprocess body: one side, ``--memory-frames`` frames, samples written to ``--_result``."""
    silence_predictor()
    folder = Path(args._folder)
    paths = sorted(folder.glob("*.jpg"))
    mask = load_prompt_mask(Path(args.davis))
    rss_start = rss_mib()
    tracker, predictor = build_pair("tiny-random", args.memory_size)
    if args._worker == "tracker":
        del predictor
    else:
        del tracker
    import gc
    gc.collect()
    rss_model = rss_mib()
    t0 = time.perf_counter()
    if args._worker == "tracker":
        res = run_tracker(tracker, None, mask, "memory: tracker", source=paths,
                          sample_every=args.sample_every, n_frames=len(paths))
        res["keep_non_cond"] = tracker.keep_non_cond
        res["max_cond_frames"] = tracker.max_cond_frames
    else:
        res = run_predictor(predictor, folder, mask, "memory: predictor",
                            sample_every=args.sample_every, n_expected=len(paths))
    res["total_s"] = time.perf_counter() - t0
    w = args.warmup_frames
    res["ms_per_frame_steady"] = stats_ms(res["frame_s"][w:])
    for k in ("frame_s", "encode_s", "track_s"):
        res.pop(k, None)
    res["rss_at_start_mib"] = round(rss_start[0], 1)
    res["rss_after_model_build_mib"] = round(rss_model[0], 1)
    res["peak_rss_mib"] = round(rss_mib()[1], 1)
    res["frames"] = len(paths)
    res["torch_num_threads"] = torch.get_num_threads()
    Path(args._result).write_text(json.dumps(res))


def memory_part(args, davis: Path, tmp: Path) -> dict:
    folder = tmp / "memory_frames"
    make_jpeg_folder(davis / "JPEGImages", args.memory_frames, folder)
    out = {"profile": "tiny-random", "image_size": args.memory_size, "frames": args.memory_frames,
           "sample_every": args.sample_every,
           "notes": [
               f"profile tiny-random (SAM-2.1 Hiera-T, seeded random weights) at image_size={args.memory_size}",
               "each side in its own subprocess (fresh interpreter), RSS from /proc/self/status",
               "predictor: all frames decoded into inference_state['images'] by init_state before tracking",
               "tracker: one JPEG read + decoded per frame from the same folder (no frame store)",
               "state bytes: tracker = StreamingTracker.state_size(); predictor = images + all "
               "output_dict_per_obj entries (tensor values) + the shared maskmem_pos_enc once",
               "ms_per_frame_steady here is a side figure (256 px, not interleaved): use the timing part",
           ]}
    for side in ("tracker", "predictor"):
        result = tmp / f"mem_{side}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", side, "--_folder", str(folder),
               "--_result", str(result), "--memory-size", str(args.memory_size),
               "--sample-every", str(args.sample_every), "--warmup-frames", str(args.warmup_frames),
               "--davis", str(davis)]
        la = loadavg()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        d = json.loads(result.read_text())
        d["subprocess_wall_s"] = round(time.perf_counter() - t0, 1)
        d["loadavg_before"], d["loadavg_after"] = la, loadavg()
        out[side] = d
        last = d["samples"][-1]
        tqdm.write(f"memory {side}: {last['frames']} frames, state {last['state_bytes'] / 2**20:.2f} MiB "
                   f"({last['state_entries']} entries), RSS {last['rss_mib']:.0f} MiB, "
                   f"peak {d['peak_rss_mib']:.0f} MiB, {d['subprocess_wall_s']:.0f} s")
    return out


# --------------------------------------------------------------------------------------------
# plot + main
# --------------------------------------------------------------------------------------------

def plot(memory: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"tracker": "tab:blue", "predictor": "tab:red"}
    for side in ("tracker", "predictor"):
        s = memory[side]["samples"]
        x = [d["frames"] for d in s]
        label = "StreamingTracker" if side == "tracker" else "SAM2VideoPredictor"
        ax1.plot(x, [d["state_bytes"] / 2**20 for d in s], "o-", ms=3, color=colors[side],
                 label=f"{label} (state)")
        if side == "predictor":
            ax1.plot(x, [d["outputs_bytes"] / 2**20 for d in s], "s--", ms=3, color=colors[side],
                     alpha=0.6, label=f"{label} (outputs only, no images)")
        ax2.plot(x, [d["rss_mib"] for d in s], "o-", ms=3, color=colors[side], label=label)
        ax2.axhline(memory[side]["rss_after_model_build_mib"], ls=":", color=colors[side],
                    label=f"{label}: after imports + model build")
    ax1.set_yscale("log")
    ax1.set_xlabel("frames processed")
    ax1.set_ylabel("state tensors [MiB] (log)")
    ax1.set_title("inference state size")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    ax2.set_xlabel("frames processed")
    ax2.set_ylabel("RSS [MiB]")
    ax2.set_title("process RSS (separate processes)")
    ax2.legend(fontsize=8)
    ax2.grid(True, alpha=0.3)
    fig.suptitle(f"tiny-random SAM-2.1 Hiera-T @ {memory['image_size']} px, "
                 f"{memory['frames']} frames, random weights, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--profile", default="hiera-t-512-random", help="model profile of the timing part")
    ap.add_argument("--frames", type=int, default=40, help="frames per timing run")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved rounds (the order within each frame pair alternates per round)")
    ap.add_argument("--warmup-frames", type=int, default=16,
                    help="frame indices below this are excluded from per-frame statistics "
                         "(bank of 6 memories + 15 pointers not yet full)")
    ap.add_argument("--memory-frames", type=int, default=1000, help="frames of the memory part")
    ap.add_argument("--memory-size", type=int, default=256,
                    help="image_size of the memory part (tiny-random profile)")
    ap.add_argument("--sample-every", type=int, default=50, help="memory sampling period (frames)")
    ap.add_argument("--davis", default=str(DEFAULT_DAVIS), help="DAVIS sequence folder (JPEGImages/, Annotations/)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "tracker_vs_predictor.json"),
                    help="JSON with all figures; the plot goes next to it (.png)")
    ap.add_argument("--skip-timing", action="store_true", help="memory part only")
    ap.add_argument("--skip-memory", action="store_true", help="timing part only (no plot)")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the PNG from an existing --out JSON (no measurement)")
    ap.add_argument("--_worker", choices=("tracker", "predictor"), help=argparse.SUPPRESS)
    ap.add_argument("--_folder", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        memory_worker(args)
        return 0
    davis = Path(args.davis)
    out_path = Path(args.out)
    if args.replot:
        plot(json.loads(out_path.read_text())["memory"], out_path.with_suffix(".png"))
        print(f"wrote {out_path.with_suffix('.png')}")
        return 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "StreamingTracker vs SAM2VideoPredictor",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loadavg_before": loadavg(),
        "davis_sequence": str(davis),
        "weights": "seeded random (profile object-score bias +5): cost and state size only, no quality",
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_tracker_") as tmp:
        tmp = Path(tmp)
        if not args.skip_timing:
            report["timing"] = timing_part(args, davis, tmp)
            report["loadavg_after_timing"] = loadavg()
        if not args.skip_memory:
            report["memory"] = memory_part(args, davis, tmp)
    report["loadavg_after"] = loadavg()
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    report["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    out_path.write_text(json.dumps(report, indent=1))
    print(f"wrote {out_path}")
    if "memory" in report:
        png = out_path.with_suffix(".png")
        plot(report["memory"], png)
        print(f"wrote {png}")
    if "timing" in report:
        s = report["timing"]["summary"]
        print(f"timing @{report['timing']['image_size']} px: predictor "
              f"{s['predictor_ms_per_frame']['median']} ms/frame (p90 {s['predictor_ms_per_frame']['p90']}), "
              f"tracker {s['tracker_ms_per_frame']['median']} ms/frame (p90 {s['tracker_ms_per_frame']['p90']}), "
              f"ratio of medians {s['ratio_tracker_over_predictor']['of_medians']}, "
              f"median paired ratio {s['ratio_tracker_over_predictor']['median_of_paired_frames']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
