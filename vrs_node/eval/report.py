"""Plots and the printed table of a ``vrs-replay`` run (:mod:`vrs_node.eval.replay`).

Matplotlib's object-oriented API on the Agg canvas only (no ``pyplot``): nothing global is
changed, no display is needed, and plots can be drawn from any thread.

- :func:`plot_jf_over_time`: per-frame J&F = (J + F) / 2 against the frame index, one line per
  sequence (unscored frames, those without ground truth, are gaps);
- :func:`plot_latency_histogram`: per-frame latencies in ms, all sequences stacked;
- :func:`plot_time_to_first_mask`: one bar per sequence (``realtime`` mode);
- :func:`write_plots`: the three above as PNGs in one folder;
- :func:`format_report`: the summary as the text table ``vrs-replay`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PLOT_FILES = {
    "jf_over_time": "jf_over_time.png",
    "latency_histogram": "latency_histogram.png",
    "time_to_first_mask": "time_to_first_mask.png",
}
"""Plot name -> file name inside the plot folder."""


def _figure(width: float = 8.0, height: float = 4.5) -> tuple[Figure, object]:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _no_data(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def _title(axes, title: str, note: str | None) -> None:
    axes.set_title(title if not note else f"{title}\n{note}", fontsize=10)


def plot_jf_over_time(per_frame: Mapping[str, Sequence[Mapping]], path: Path | str,
                      note: str | None = None) -> Path:
    """Per-frame J&F of every sequence against the frame index (``per_frame``: name -> rows with
    ``index``, ``J``, ``F``; J/F None = not scored). Returns the PNG path."""
    figure, axes = _figure()
    drawn = 0
    for name, rows in per_frame.items():
        index = np.array([row["index"] for row in rows], dtype=float)
        jf = np.array([np.nan if row["J"] is None else (row["J"] + row["F"]) / 2 for row in rows], dtype=float)
        if np.isfinite(jf).any():
            axes.plot(index, jf, marker="." if len(rows) <= 60 else None, linewidth=1.2, label=name)
            drawn += 1
    if drawn:
        axes.set_ylim(-0.02, 1.02)
        if drawn <= 12:
            axes.legend(fontsize=8, loc="lower left")
    else:
        _no_data(axes, "no ground truth: nothing scored")
    axes.set_xlabel("frame")
    axes.set_ylabel("J&F = (J + F) / 2")
    axes.grid(alpha=0.3)
    _title(axes, "J&F over time", note)
    return _save(figure, Path(path))


def plot_latency_histogram(latencies_ms: Mapping[str, Sequence[float]], path: Path | str,
                           note: str | None = None) -> Path:
    """Histogram of per-frame latencies (ms), one stacked colour per sequence. Returns the PNG path."""
    figure, axes = _figure()
    data = {name: [v for v in values if v is not None and math.isfinite(v)] for name, values in latencies_ms.items()}
    data = {name: values for name, values in data.items() if values}
    if data:
        every = np.concatenate([np.asarray(v, dtype=float) for v in data.values()])
        bins = np.histogram_bin_edges(every, bins=min(40, max(5, int(np.sqrt(every.size)) * 2)))
        axes.hist(list(data.values()), bins=bins, stacked=True, label=list(data))
        for q, style in ((50, "--"), (95, ":")):
            value = float(np.percentile(every, q))
            axes.axvline(value, color="k", linestyle=style, linewidth=1, label=f"p{q} {value:.1f} ms")
        axes.legend(fontsize=8)
    else:
        _no_data(axes, "no latency recorded")
    axes.set_xlabel("latency per frame (ms)")
    axes.set_ylabel("frames")
    axes.grid(alpha=0.3)
    _title(axes, "per-frame latency", note)
    return _save(figure, Path(path))


def plot_time_to_first_mask(seconds: Mapping[str, float | None], path: Path | str,
                            note: str | None = None) -> Path:
    """Bar per sequence: wall-clock seconds from the first frame to the first non-empty mask
    (None: no mask during the replay, drawn as an empty slot labelled "none")."""
    figure, axes = _figure(max(5.0, 0.6 * len(seconds) + 3), 4.5)
    names = list(seconds)
    values = [seconds[n] if seconds[n] is not None else 0.0 for n in names]
    if names:
        bars = axes.bar(range(len(names)), values, color="tab:red")
        for bar, name in zip(bars, names):
            label = "none" if seconds[name] is None else f"{seconds[name]:.2f} s"
            axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=8)
        axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    else:
        _no_data(axes, "no sequence")
    axes.set_ylabel("seconds (wall clock)")
    axes.grid(alpha=0.3, axis="y")
    _title(axes, "time to first mask", note)
    return _save(figure, Path(path))


def write_plots(out_dir: Path | str, per_frame: Mapping[str, Sequence[Mapping]],
                first_mask_s: Mapping[str, float | None] | None = None, note: str | None = None) -> dict[str, str]:
    """Write the plots of one replay into ``out_dir``; returns plot name -> absolute path.

    ``per_frame``: sequence -> rows with ``index``, ``J``, ``F``, ``latency_ms``;
    ``first_mask_s`` (realtime mode only): sequence -> time to first mask.
    """
    out_dir = Path(out_dir)
    paths = {
        "jf_over_time": plot_jf_over_time(per_frame, out_dir / PLOT_FILES["jf_over_time"], note),
        "latency_histogram": plot_latency_histogram(
            {name: [row["latency_ms"] for row in rows] for name, rows in per_frame.items()},
            out_dir / PLOT_FILES["latency_histogram"], note),
    }
    if first_mask_s is not None:
        paths["time_to_first_mask"] = plot_time_to_first_mask(
            first_mask_s, out_dir / PLOT_FILES["time_to_first_mask"], note)
    return {name: str(path.resolve()) for name, path in paths.items()}


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(summary: Mapping) -> str:
    """The replay summary as the text ``vrs-replay`` prints: one row per sequence, the overall
    row, the protocol in one line, and where the files are."""
    realtime = summary["mode"] == "realtime"
    name_width = max([len("overall")] + [len(n) for n in summary["sequences"]]) + 2
    head = f"  {'sequence':<{name_width}}{'frames':>7}{'scored':>8}{'J':>8}{'F':>8}{'J&F':>8}{'1st mask':>10}"
    head += f"{'lat p50':>10}" + (f"{'TTFM s':>9}{'dropped':>9}" if realtime else "")
    lines = [
        f"vrs-replay: {len(summary['sequences'])} sequence(s), {summary['overall']['frames']} frames, "
        f"mode {summary['mode']}, prompt {summary['prompt']}, profile {summary['profile']}",
    ]
    if summary.get("warning"):
        lines.append(f"  WARNING: {summary['warning']}")
    lines.append(head)
    for name, seq in summary["sequences"].items():
        first = "-" if seq["first_mask_frame"] is None else f"#{seq['first_mask_frame']}"
        row = (f"  {name:<{name_width}}{seq['frames']:>7}{seq['scored_frames']:>8}{_num(seq['J']):>8}"
               f"{_num(seq['F']):>8}{_num(seq['J&F']):>8}{first:>10}{_num(seq['latency_ms']['p50'], 1):>10}")
        if realtime:
            row += f"{_num(seq.get('time_to_first_mask_s'), 2):>9}{str(seq.get('dropped', '-')):>9}"
        lines.append(row)
    overall = summary["overall"]
    lines.append(f"  {'overall':<{name_width}}{overall['frames']:>7}{overall['scored_frames']:>8}"
                 f"{_num(overall['J']):>8}{_num(overall['F']):>8}{_num(overall['J&F']):>8}")
    lines.append(f"  scored: {summary['protocol']['frames_scored']}")
    lines.append(f"  summary: {summary['files']['summary']}")
    for name, seq in summary["sequences"].items():
        bag = seq["bag"]
        lines.append(f"  {name}: {seq['out_dir']} (masks, frames.csv, overlay.mp4, {Path(bag['path']).name} "
                     f"with the masks on {bag['topics']['masks']})")
    for name, path in summary["files"]["plots"].items():
        lines.append(f"  plot {name}: {path}")
    return "\n".join(lines)
