"""Benchmark loaders: the DAVIS-2016/2017, ReVOS, MeViS and ReasonVOS layouts of
``shared/design/EVALUATION.md`` §2.

ROS-free: numpy, Pillow and pycocotools. Loaders read only json files and folder listings;
images and ground-truth masks are decoded when asked for, one frame at a time.

- :class:`VideoSample`: one DAVIS sequence (frames + label-map annotations), the input of
  :func:`vrs_node.eval.metrics.davis_object_scores`.
- :class:`Expression`: one language query on a video: text, subset tag, frames, and per frame the
  ground truth as one boolean mask (the union of the expression's objects), the input of
  :func:`vrs_node.eval.metrics.expression_jf`.

Layouts (names as on disk):

- DAVIS official: ``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png`` (2017: palette
  PNGs, index k = object k, 255 = void; 2016: 0/255 grayscale). The shared sample
  (``shared/data/davis2016``) has ``<seq>/JPEGImages`` and ``<seq>/Annotations`` instead, and a
  ``meta_expressions.json`` in the ReVOS schema without ``anno_id`` (the GT is object ``obj_id``).
- ReVOS: ``JPEGImages/<vid>/<frame>.jpg``; ``meta_expressions_valid_.json``
  ``{"videos": {vid: {"frames": [...], "expressions": {id: {"exp", "obj_id", "anno_id": [...],
  "type_id"}}}}}``; ``mask_dict.json`` ``{anno_id: [COCO RLE or null, one per frame]}``.
- MeViS: ``<split>/JPEGImages``, ``<split>/meta_expressions.json`` (``exp``, ``obj_id`` [...],
  ``anno_id`` [...]), ``<split>/mask_dict.json`` (absent for ``valid``, whose GT is not public).
- ReasonVOS: ``JPEGImages/<vid>/``, ``Annotations/<source>_<vid>_<obj_id>/<frame>.png`` (binary),
  ``meta_expressions.json`` ``{"videos": {vid: {"source", "frames", "is_sent", "expressions":
  {id: {"obj_id", "exp_text"}}}}}`` as VideoLISA's ``benchmark_check.py`` and
  ``eval_reason_vos.py`` read it; EVALUATION.md §2 writes ``expressions`` as a list of
  ``{obj_id, exp_id, exp_text, is_sent}``, and both forms are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

TYPE_SUBSETS = {0: "referring", 1: "reasoning", 2: "no-target"}
"""ReVOS ``type_id`` → subset tag of :class:`Expression`."""


def image_files(folder: Path | str) -> list[Path]:
    """The JPEG/PNG files of ``folder`` (suffix case-insensitive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path: Path | str) -> np.ndarray:
    """An image file as an H×W×3 uint8 RGB array (decoded with Pillow)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def read_label_png(path: Path | str) -> np.ndarray:
    """A DAVIS annotation PNG as an (H, W) uint8 label map.

    A palette ("P") PNG keeps its indices (k = object k, 0 = background, 255 = void; DAVIS-2017).
    Any other mode is a binary mask (DAVIS-2016 stores 0/255 grayscale): non-zero → object 1. This
    is the 255 → 1 mapping EVALUATION.md §1.1 asks for, without which 2016 GT would be all void.
    """
    with Image.open(path) as image:
        labels = np.array(image)
        palette = image.mode == "P"
    if labels.ndim != 2:
        labels = labels.reshape(labels.shape[0], labels.shape[1], -1).max(axis=2)
    return labels.astype(np.uint8) if palette else (labels != 0).astype(np.uint8)


def _stem(name: str) -> str:
    """A frame name without its image suffix (``"00000.jpg"`` → ``"00000"``; ``"00000"`` unchanged)."""
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else name


def _as_tuple(value: Any) -> tuple:
    """A json id or list of ids as a tuple (``3`` → ``(3,)``, ``[1, 2]`` → ``(1, 2)``, None → ``()``)."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _read_json(path: Path) -> Any:
    """Parsed json of ``path``; FileNotFoundError names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with path.open() as handle:
        return json.load(handle)


@dataclass(frozen=True, eq=False)
class VideoSample:
    """One DAVIS sequence: frame image paths and, per frame, its annotation PNG (None if absent)."""

    name: str
    frame_paths: tuple[Path, ...] = field(repr=False)
    annotation_paths: tuple[Path | None, ...] = field(repr=False)

    @property
    def frames(self) -> tuple[str, ...]:
        """Frame names (file stems), in order."""
        return tuple(p.stem for p in self.frame_paths)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` as H×W×3 uint8 RGB."""
        return read_rgb(self.frame_paths[index])

    def labels(self, index: int) -> np.ndarray | None:
        """Annotation of frame ``index`` as a label map (:func:`read_label_png`), None if not annotated."""
        path = self.annotation_paths[index]
        return None if path is None else read_label_png(path)

    def object_ids(self) -> tuple[int, ...]:
        """Object ids of the first annotated frame (0 and void 255 excluded), as DAVIS counts objects."""
        for index, path in enumerate(self.annotation_paths):
            if path is not None:
                ids = np.unique(self.labels(index))
                return tuple(int(i) for i in ids if i not in (0, 255))
        return ()


@dataclass(frozen=True, eq=False)
class Expression:
    """One language query on a video, with its ground truth decoded lazily per frame.

    ``subset`` is ``"referring"``, ``"reasoning"`` or ``"no-target"``; ``object_ids`` and ``meta`` (the
    raw json entry of the expression, plus the video's ``source``/``is_sent`` where the format has
    them) are as the dataset gives them. :meth:`gt_mask` returns an (H, W) bool mask, the union of
    the expression's objects, or None where the frame has no ground truth (not scored).
    """

    video: str
    expression_id: str
    text: str
    subset: str
    frame_paths: tuple[Path, ...] = field(repr=False)
    gt_loader: Callable[[int], np.ndarray | None] = field(repr=False)
    object_ids: tuple = ()
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def frames(self) -> tuple[str, ...]:
        """Frame names (file stems), in order; prediction PNGs are named after them."""
        return tuple(p.stem for p in self.frame_paths)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` as H×W×3 uint8 RGB."""
        return read_rgb(self.frame_paths[index])

    def gt_mask(self, index: int) -> np.ndarray | None:
        """Ground truth of frame ``index``: (H, W) bool, or None if that frame is not annotated."""
        if not 0 <= index < len(self.frame_paths):
            raise IndexError(f"frame {index} out of range: {self.video} has {len(self.frame_paths)} frames")
        return self.gt_loader(index)


def _davis_dirs(root: Path, annotations: str, resolution: str) -> tuple[Path, Path]:
    """(image root, annotation root) holding one folder per sequence, for either DAVIS layout."""
    official = root / "JPEGImages" / resolution
    if official.is_dir():
        return official, root / annotations / resolution
    return root, root


def load_davis(
    root: Path | str,
    sequences: Iterable[str] | None = None,
    annotations: str = "Annotations",
    resolution: str = "480p",
) -> list[VideoSample]:
    """DAVIS sequences under ``root``, official layout (``JPEGImages/<resolution>/<seq>``) or per-sequence
    layout (``<seq>/JPEGImages``, ``<seq>/<annotations>``), detected from the folders.

    ``sequences`` defaults to every sequence folder (sorted); ``annotations`` picks e.g.
    ``Annotations_unsupervised``. A frame's annotation is the PNG with the frame's stem (None if
    absent). FileNotFoundError for an unknown sequence or a sequence without frames.
    """
    root = Path(root)
    image_root, annotation_root = _davis_dirs(root, annotations, resolution)
    official = image_root != root
    if sequences is None:
        sequences = sorted(
            p.name for p in image_root.iterdir() if p.is_dir() and (official or (p / "JPEGImages").is_dir())
        )
    samples = []
    for name in sequences:
        frame_dir = image_root / name if official else root / name / "JPEGImages"
        mask_dir = annotation_root / name if official else root / name / annotations
        frames = image_files(frame_dir) if frame_dir.is_dir() else []
        if not frames:
            raise FileNotFoundError(f"no frames for DAVIS sequence {name!r} in {frame_dir}")
        masks = {p.stem: p for p in image_files(mask_dir)} if mask_dir.is_dir() else {}
        samples.append(VideoSample(name, tuple(frames), tuple(masks.get(p.stem) for p in frames)))
    if not samples:
        raise FileNotFoundError(f"no DAVIS sequences under {root}")
    return samples


def _davis_gt(sample: VideoSample, indices: list[int], object_ids: tuple) -> Callable[[int], np.ndarray | None]:
    """GT loader on a DAVIS sequence: frame i is the label map of sample frame ``indices[i]`` ∈ ``object_ids``."""

    def load(index: int) -> np.ndarray | None:
        labels = sample.labels(indices[index])
        return None if labels is None else np.isin(labels, np.array(object_ids, dtype=np.int64))

    return load


def load_davis_expressions(
    root: Path | str, meta: str = "meta_expressions.json", **davis_options
) -> list[Expression]:
    """Expressions of ``<root>/<meta>`` (ReVOS schema; ``obj_id`` = DAVIS object id) on DAVIS sequences.

    The shared sample's format: ``{"videos": {seq: {"frames", "expressions": {id: {"exp", "obj_id",
    "type_id"}}}}}``. Frames are those listed (matched to the sequence's files by stem); the GT of a
    frame is its annotation label map equal to ``obj_id`` (a list means the union). ``davis_options``
    go to :func:`load_davis`. FileNotFoundError if a listed frame has no image.
    """
    root = Path(root)
    videos = _read_json(root / meta)["videos"]
    samples = {s.name: s for s in load_davis(root, sequences=list(videos), **davis_options)}
    expressions = []
    for name, video in videos.items():
        sample = samples[name]
        position = {stem: i for i, stem in enumerate(sample.frames)}
        stems = [_stem(f) for f in video["frames"]]
        if missing := [s for s in stems if s not in position]:
            raise FileNotFoundError(f"{name}: frames {missing[:5]} listed in {meta} have no image")
        indices = [position[s] for s in stems]
        paths = tuple(sample.frame_paths[i] for i in indices)
        for exp_id, entry in video["expressions"].items():
            ids = _as_tuple(entry["obj_id"])
            expressions.append(
                Expression(name, str(exp_id), entry["exp"], TYPE_SUBSETS[entry.get("type_id", 0)], paths,
                           _davis_gt(sample, indices, ids), ids, entry)
            )
    return expressions


def _rle_gt(
    rles_by_object: list[list], image_path: Callable[[int], Path]
) -> Callable[[int], np.ndarray]:
    """GT loader: union of the objects' COCO RLEs at a frame (null = object absent there).

    A frame where every object is null is all background, at the size of any RLE of these objects,
    else of the frame image.
    """

    def shape(index: int) -> tuple[int, int]:
        for rles in rles_by_object:
            for rle in rles:
                if rle:
                    return tuple(rle["size"])
        with Image.open(image_path(index)) as image:
            return image.height, image.width

    def load(index: int) -> np.ndarray:
        present = [rles[index] for rles in rles_by_object if rles[index]]
        if not present:
            return np.zeros(shape(index), dtype=bool)
        return coco_mask.decode(present).any(axis=2)  # (H, W, objects) -> union

    return load


def _no_gt(index: int) -> None:
    """GT loader of a split without public ground truth: no frame is annotated."""
    return None


def _load_rle_expressions(
    meta_path: Path, mask_path: Path | None, image_dir: Path, default_subset: str
) -> list[Expression]:
    """Expressions of the ReVOS/MeViS family; GT from ``mask_path`` (None: no public GT, gt_mask → None).

    Each ``anno_id`` must be in the mask dict with one entry per listed frame (KeyError/ValueError
    naming the video and expression otherwise).
    """
    videos = _read_json(meta_path)["videos"]
    masks = None if mask_path is None else _read_json(mask_path)
    expressions = []
    for name, video in videos.items():
        paths = tuple(image_dir / name / f"{_stem(f)}.jpg" for f in video["frames"])
        for exp_id, entry in video["expressions"].items():
            anno_ids = _as_tuple(entry.get("anno_id"))
            if masks is None:
                gt = _no_gt
            else:
                where = f"{name} expression {exp_id}"
                if unknown := [a for a in anno_ids if str(a) not in masks]:
                    raise KeyError(f"{where}: anno_id {unknown} not in {mask_path}")
                rles = [masks[str(a)] for a in anno_ids]
                if bad := [a for a, r in zip(anno_ids, rles, strict=True) if len(r) != len(paths)]:
                    raise ValueError(f"{where}: anno_id {bad} has not one mask per frame ({len(paths)})")
                gt = _rle_gt(rles, paths.__getitem__)
            subset = TYPE_SUBSETS[entry["type_id"]] if "type_id" in entry else default_subset
            object_ids = _as_tuple(entry.get("obj_id"))
            expressions.append(Expression(name, str(exp_id), entry["exp"], subset, paths, gt, object_ids, entry))
    return expressions


def load_revos(
    root: Path | str, meta: str = "meta_expressions_valid_.json", masks: str = "mask_dict.json"
) -> list[Expression]:
    """ReVOS expressions (subset from ``type_id``: 0 referring, 1 reasoning, 2 no-target); GT = union of
    the ``anno_id`` masks of ``<root>/<masks>`` per frame; frames ``<root>/JPEGImages/<vid>/<frame>.jpg``."""
    root = Path(root)
    return _load_rle_expressions(root / meta, root / masks, root / "JPEGImages", "referring")


def load_mevis(root: Path | str, split: str = "valid_u") -> list[Expression]:
    """MeViS expressions of ``<root>/<split>`` (subset ``"referring"``); GT = union of the ``anno_id``
    masks of ``mask_dict.json``, or None for every frame when the split has none (``valid``)."""
    split_dir = Path(root) / split
    mask_path = split_dir / "mask_dict.json"
    return _load_rle_expressions(
        split_dir / "meta_expressions.json", mask_path if mask_path.exists() else None,
        split_dir / "JPEGImages", "referring",
    )


def _reasonvos_entries(expressions: Mapping | list) -> list[tuple[str, dict]]:
    """(expression id, entry) pairs of a ReasonVOS video: dict keys, else ``exp_id`` (or position)."""
    if isinstance(expressions, Mapping):
        return [(str(key), entry) for key, entry in expressions.items()]
    return [(str(entry.get("exp_id", i)), entry) for i, entry in enumerate(expressions)]


def _png_gt(folder: Path, frame_paths: tuple[Path, ...]) -> Callable[[int], np.ndarray | None]:
    """GT loader: frame i is ``folder/<stem of frame i>.png`` non-zero, None if that PNG is absent."""

    def load(index: int) -> np.ndarray | None:
        path = folder / f"{frame_paths[index].stem}.png"
        return read_label_png(path) != 0 if path.is_file() else None

    return load


def load_reasonvos(root: Path | str, meta: str = "meta_expressions.json") -> list[Expression]:
    """ReasonVOS expressions (subset ``"reasoning"``).

    Frames: the video's ``frames`` list, else every JPEG of ``JPEGImages/<vid>``. GT of a frame:
    ``Annotations/<source>_<vid>_<obj_id>/<frame>.png`` non-zero (``<source>`` as written, else
    lower-case as ``benchmark_check.py`` builds it); None where that PNG (or folder) is missing: the
    official script scores only the GT PNG frames and skips objects without a folder. ``meta`` gets
    the video's ``source`` and ``is_sent`` (prompt style). Note: the official script keys results by
    (source, video, obj_id), so several expressions of one object count once there.
    """
    root = Path(root)
    videos = _read_json(root / meta)["videos"]
    expressions = []
    for name, video in videos.items():
        frame_dir = root / "JPEGImages" / name
        if "frames" in video:
            paths = tuple(frame_dir / f"{_stem(f)}.jpg" for f in video["frames"])
        else:
            paths = tuple(image_files(frame_dir))
        source = str(video.get("source", ""))
        for exp_id, entry in _reasonvos_entries(video["expressions"]):
            folder = root / "Annotations" / f"{source}_{name}_{entry['obj_id']}"
            if not folder.is_dir():
                folder = root / "Annotations" / f"{source.lower()}_{name}_{entry['obj_id']}"
            gt = _png_gt(folder, paths)
            info = {"source": source, "is_sent": video.get("is_sent"), **entry}
            object_ids = _as_tuple(entry["obj_id"])
            expressions.append(Expression(name, exp_id, entry["exp_text"], "reasoning", paths, gt, object_ids, info))
    return expressions
