"""Which frames of the window the MLLM sees: VRS-HQ's dense lattice through the anchor frame
(:func:`anchor_lattice`) and VideoLISA's optional sparse frames (:func:`sparse_sample`).

Pure functions of frame counts (numpy for VideoLISA's ``linspace`` rounding).
"""

from __future__ import annotations

import math

import numpy as np

VRSHQ_MAX_DENSE_FRAMES = 11
"""VRS-HQ's frame budget for the lattice: its hard-coded ``max_image_token = 12`` minus one
(``sample_frames`` in ``model/VISA_multiseg_cliptree_bf16.py``)."""


def anchor_lattice(num_frames: int, anchor: int, max_frames: int = VRSHQ_MAX_DENSE_FRAMES) -> list[int]:
    """VRS-HQ frame choice: the uniform lattice through the anchor frame.

    With T = ``num_frames``::

        step  = ceil(T / max_frames)
        start = anchor mod step
        indices = [start, start + step, start + 2·step, ...]   (all < T)

    The anchor is always included, at most ``max_frames`` indices are returned, and every frame
    is returned when T ≤ ``max_frames``; VRS-HQ's is the default, :data:`VRSHQ_MAX_DENSE_FRAMES`.
    Example: T = 100, anchor 37 → step 10 → [7, 17, ..., 97].

    Raises ValueError unless T ≥ 1, 0 ≤ anchor < T and max_frames ≥ 1.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= anchor < num_frames:
        raise ValueError(f"anchor must be in [0, {num_frames}), got {anchor}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    step = math.ceil(num_frames / max_frames)
    return list(range(anchor % step, num_frames, step))


def _bin_centres(stop: int, num_bins: int) -> list[int]:
    """Middle of each of ``num_bins`` integer bins over [0, stop), as VideoLISA computes them.

    Bin edges e_i = int(linspace(0, stop, num_bins + 1)[i]); bin i covers [e_i, e_{i+1} - 1] and
    its centre is floor((e_i + e_{i+1} - 1) / 2). The edges go through ``np.linspace`` on purpose:
    its float rounding sometimes truncates an edge one below the exact i·stop/num_bins (e.g.
    stop = 58, num_bins = 50), and the upstream code has that rounding too.
    """
    edges = np.linspace(0, stop, num_bins + 1).astype(int).tolist()
    return [(lo + hi - 1) // 2 for lo, hi in zip(edges[:-1], edges[1:])]


def sparse_sample(num_frames: int, num_sparse: int) -> list[int]:
    """VideoLISA's sparse sampling: ``num_sparse`` frame indices over [0, ``num_frames``), sorted.

    With T = ``num_frames``, S = ``num_sparse`` and ``centres(n, k)`` the middles of k integer bins
    over [0, n) (:func:`_bin_centres`): T > S: ``centres(T, S)``; T ≤ S: every frame ⌊S / T⌋
    times plus ``centres(T, S mod T)``, sorted (repeats adjacent). Example: T = 100, S = 32 →
    [1, 4, 7, 10, ..., 94, 97].

    Reproduces ``uniform_sample`` and ``get_sparse_indices`` in VideoLISA's ``chat.py`` (L71-99),
    including their float ``linspace`` edges (for S = 32 these equal the exact edges i·T/S rounded
    down, at least for T ≤ 100 000; for S = 50 they do not always). VideoLISA's scripts use S = 32.
    Raises ValueError unless T ≥ 1 and S ≥ 1 (upstream does not validate).
    """
    if num_frames < 1 or num_sparse < 1:
        raise ValueError(f"need num_frames >= 1 and num_sparse >= 1, got {num_frames}, {num_sparse}")
    if num_frames > num_sparse:
        return _bin_centres(num_frames, num_sparse)
    repeats, extra = divmod(num_sparse, num_frames)
    return sorted(list(range(num_frames)) * repeats + _bin_centres(num_frames, extra))
