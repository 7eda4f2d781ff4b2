"""Chat-UniVi DPC-KNN merging against a plain-Python transcription; shapes, order, determinism."""

from __future__ import annotations

import math

import torch

from vrs_node.models.dpc_knn import dpc_knn_cluster, merge_clusters, merge_visual_tokens


def transcribed(points, num_clusters, k):
    """DPC-KNN written out with loops (no noise): (cluster ids, centres in score order, means)."""
    n, c = len(points), len(points[0])
    d = [[math.dist(p, q) / math.sqrt(c) for q in points] for p in points]
    rho = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in d]
    dmax = max(max(row) for row in d)
    delta = [min([d[i][j] for j in range(n) if rho[j] > rho[i]] or [dmax]) for i in range(n)]
    score = [delta[i] * rho[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: -score[i])[:num_clusters]
    ids = [min(range(num_clusters), key=lambda m: d[centres[m]][i]) for i in range(n)]
    for m, centre in enumerate(centres):
        ids[centre] = m
    means = []
    for m in range(num_clusters):
        members = [points[i] for i in range(n) if ids[i] == m]
        means.append([sum(v) / (len(members) + 1e-6) for v in zip(*members)])
    return ids, centres, means


def test_clustering_and_merge_equal_the_transcription():
    x = torch.randn(1, 24, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cluster, centres = dpc_knn_cluster(x, 5, 3)
    want_ids, want_centres, want_means = transcribed(x[0].tolist(), 5, 3)
    assert centres[0].tolist() == want_centres
    assert cluster[0].tolist() == want_ids
    merged = merge_clusters(x, cluster, 5)
    assert torch.allclose(merged[0], torch.tensor(want_means, dtype=torch.float64), atol=1e-12)


def test_chat_univi_levels_give_112_tokens_per_frame_in_score_order():
    frames = torch.randn(3, 256, 32, generator=torch.Generator().manual_seed(1))
    merged = merge_visual_tokens(frames)
    assert merged.shape == (3, 112, 32)
    cluster, centres = dpc_knn_cluster(frames, 64, 5)
    assert torch.allclose(merged[:, :64], merge_clusters(frames, cluster, 64))
    # each centre belongs to its own cluster, numbered by its rank in the score order
    assert torch.equal(cluster.gather(1, centres), torch.arange(64).expand(3, -1))


def test_merging_is_deterministic_without_noise_and_with_a_seeded_generator():
    frames = torch.randn(2, 256, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(merge_visual_tokens(frames), merge_visual_tokens(frames))
    a = merge_visual_tokens(frames, generator=torch.Generator().manual_seed(5))
    b = merge_visual_tokens(frames, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_identical_tokens_merge_to_themselves_with_the_tie_breaking_noise():
    """Exact ties in density are what the reference's 1e-6 noise is for."""
    x = torch.tensor([[[1.0, 0.0]] * 4 + [[0.0, 5.0]] * 4])
    cluster, _ = dpc_knn_cluster(x, 2, 2, generator=torch.Generator().manual_seed(0))
    merged = merge_clusters(x, cluster, 2)
    assert sorted(merged[0].round(decimals=4).tolist()) == [[0.0, 5.0], [1.0, 0.0]]
