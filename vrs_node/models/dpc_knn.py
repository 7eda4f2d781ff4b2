"""Chat-UniVi's parameter-free visual token merging: DPC-KNN clustering + cluster means.

Per frame, the CLIP patch tokens (256 x 1024 for ViT-L/14 at 224 px) are clustered three times,
each level clustering the previous level's merged tokens: 256 -> 64 (k=5) -> 32 (k=3) -> 16 (k=3),
and the three levels are concatenated [64 | 32 | 16] = 112 tokens (REFERENCE_VRSHQ_VIDEOLISA.md
§1.5; Chat-UniVi ``cluster.py`` ``cluster_dpc_knn`` / ``merge_tokens``).

DPC-KNN on tokens x (N x C), with d_ij = ||x_i - x_j|| / sqrt(C):

- density rho_i = exp(-mean of d_ij^2 over the k nearest j, i itself included);
- delta_i = min d_ij over j with rho_j > rho_i (max over all d when there is none);
- centres = the ``num_clusters`` tokens with the largest delta_i * rho_i, in that (descending)
  order, which fixes the output order; every token joins its nearest centre (a centre joins itself);
- merged token c = sum of its members / (member count + 1e-6), as ``merge_tokens`` computes it.

Deviation: the reference adds ``torch.rand * 1e-6`` to rho as a tie-breaker, which makes it
non-deterministic. Here the noise is drawn from an optional ``torch.Generator`` (seeded: the
reference's behaviour, reproducibly); without one no noise is added and ties go to the lower index.
"""

from __future__ import annotations

import torch

CHAT_UNIVI_LEVELS = ((64, 5), (32, 3), (16, 3))
"""(clusters, k nearest neighbours) of the three merging levels."""


def dpc_knn_cluster(x: torch.Tensor, num_clusters: int, k: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster tokens ``x`` (B x N x C). Returns (cluster id per token (B x N), centre indices
    (B x num_clusters), in score order)."""
    batch, n, channels = x.shape
    if not 1 <= num_clusters <= n or not 1 <= k <= n:
        raise ValueError(f"need 1 <= num_clusters, k <= N={n}, got {num_clusters} clusters, k={k}")
    dist = torch.cdist(x.float(), x.float()) / channels ** 0.5
    nearest, _ = torch.topk(dist, k=k, dim=-1, largest=False)
    density = torch.exp(-(nearest ** 2).mean(dim=-1))
    if generator is not None:
        density = density + torch.rand(density.shape, generator=generator).to(density) * 1e-6
    higher = density[:, None, :] > density[:, :, None]  # [b, i, j]: rho_j > rho_i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(higher, dist, dist_max).min(dim=-1).values
    centres = torch.topk(delta * density, k=num_clusters, dim=-1).indices
    to_centres = torch.gather(dist, 1, centres[:, :, None].expand(-1, -1, n))  # B x K x N
    cluster = to_centres.argmin(dim=1)
    cluster.scatter_(1, centres, torch.arange(num_clusters, device=x.device).expand(batch, -1))
    return cluster, centres


def merge_clusters(x: torch.Tensor, cluster: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Cluster means (B x num_clusters x C): sum of members / (count + 1e-6)."""
    batch, n, channels = x.shape
    counts = torch.zeros(batch, num_clusters, 1, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, cluster[:, :, None], torch.ones(batch, n, 1, dtype=x.dtype, device=x.device))
    sums = torch.zeros(batch, num_clusters, channels, dtype=x.dtype, device=x.device)
    weights = 1.0 / (counts.gather(1, cluster[:, :, None]) + 1e-6)
    sums.scatter_add_(1, cluster[:, :, None].expand(-1, -1, channels), x * weights)
    return sums


def merge_visual_tokens(x: torch.Tensor, levels=CHAT_UNIVI_LEVELS,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Chat-UniVi's multi-level merge of per-frame tokens (B x N x C) -> B x sum(clusters) x C."""
    merged, current = [], x
    for num_clusters, k in levels:
        cluster, _ = dpc_knn_cluster(current, num_clusters, k, generator)
        current = merge_clusters(current, cluster, num_clusters)
        merged.append(current)
    return torch.cat(merged, dim=1)
