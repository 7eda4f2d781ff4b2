"""Chat-UniVi's parameter-free visual token merging: DPC-KNN clustering + cluster means.

Per frame, the CLIP patch tokens (256 x 1024 for ViT-L/14 at 224 px) are clustered three times,
each level clustering the previous level's merged tokens: 256 -> 64 (k=5) -> 32 (k=3) -> 16 (k=3),
and the three levels are concatenated [64 | 32 | 16] = 112 tokens (REFERENCE_VRSHQ_VIDEOLISA.md
§1.5; Chat-UniVi ``cluster.py`` ``cluster_dpc_knn`` / ``merge_tokens``, called from
``ChatUniViMetaForCausalLM.project`` once per image).

DPC-KNN on tokens x (N x C), with d = ``torch.cdist(x.float(), x.float()) / sqrt(C)`` (the
reference's call: matrix-product distances, so d_ii is not exactly 0 -- kept, it enters the kNN):

- density rho_i = exp(-mean of d_ij^2 over the k smallest d_ij, j = i included);
- optional tie-breaking noise: rho += U[0, 1) * 1e-6 (float32 draw, see below);
- delta_i = min d_ij over j with rho_j > rho_i (the largest entry of d when there is none);
- centres = the ``num_clusters`` tokens with the largest delta_i * rho_i, in descending order, which
  fixes the output order; every token joins its nearest centre (first centre in that order on a
  tie), a centre joins itself;
- merged token c = sum over members of x / (member count + 1e-6) (each member is scaled before the
  sum, in x's dtype, as ``merge_tokens`` computes it).

Measured against the reference (golden ``clip_patch_features_2frames`` -> ``dpc_knn_tokens_2frames``,
fp32, blackswan lattice frames 1 and 3): max |diff| 0, with and without the noise below, on an Intel
CPU like the golden's. ``torch.cdist``'s matrix-product distances round by the CPU's kernels: on an
AMD EPYC the exact tie below is 1 ulp apart, and without noise (or with seed 1's) its two merged
tokens come in the other order, as the reference's own code would order them there.

Differences from the reference and what was done about them:

- **Noise / RNG stream.** The reference adds ``torch.rand(density.shape) * 1e-6`` from the global
  RNG at every clustering; here the noise comes only from an explicit ``torch.Generator`` (none:
  no noise, deterministic). It matters: in the golden frame 3 two tokens have *exactly* equal
  float32 scores at the first level (centre ranks 48/49), so the noise decides the order of two
  merged tokens (|diff| 2.34 when it goes the other way; in the reference 5 of seeds 0..11 flip it,
  seed 0 -- the golden's -- does not, nor does running without noise).
  To reproduce a reference run, draw exactly the reference's sequence: it projects one image at a
  time (batch 1) and per image runs ``ctm0``..``ctm2`` and then ``ctm3`` (the temporal-rate CTM:
  1/16 of the 16 third-level tokens -> one cluster, k=1), whose output the image path discards but
  whose noise draw still advances the RNG. :func:`merge_visual_tokens` with a generator therefore
  goes frame by frame, in batch order, drawing shapes (1, 256), (1, 64), (1, 32) and the discarded
  (1, 16) per frame (``reference_draws=True``). With ``torch.Generator().manual_seed(s)`` and the
  dense frames in prompt order this equals the reference after ``torch.manual_seed(s)`` if nothing
  else drew from the RNG in between (the golden, seed 0, is consistent with that). The draws are
  made on the generator's device (a CUDA run draws from the CUDA generator: pass one). Drawing one
  (B, N) block per level instead (the previous code) gives the wrong order for seed 0 here.
- **Per-frame clustering.** Frames are clustered one at a time (batch 1, as the reference), so the
  distances come from the same single-frame ``cdist`` call; batched ``cdist`` was bit-identical on
  the CPU tested, but nothing guarantees that on other devices.
- **Centre ties.** ``torch.topk`` does not specify which of equal scores comes first; without
  noise exact ties do occur (above), so centres are ordered with a stable descending sort (lower
  token index first); with the noise, exact ties practically never survive.
- Token masks / padded tokens (``token_mask``) and the unused ``idx_token`` / ``agg_weight``
  bookkeeping of ``merge_tokens`` are not implemented (the image path passes ``mask=None``).
"""

from __future__ import annotations

import torch

CHAT_UNIVI_LEVELS = ((64, 5), (32, 3), (16, 3))
"""(clusters, k nearest neighbours) of the three merging levels."""

def _noise(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``torch.rand(shape) * 1e-6`` drawn from ``generator`` on its own device, as ``like``."""
    noise = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(like) * 1e-6


def centre_scores(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN's distances (B x N x N) and centre scores delta * rho (B x N) of tokens ``x``
    (B x N x C), as the module docstring defines them; with ``generator`` one (B, N) noise block
    is drawn into the densities."""
    channels = x.shape[-1]
    dist = torch.cdist(x.float(), x.float()) / channels ** 0.5
    nearest, _ = torch.topk(dist, k=k, dim=-1, largest=False)
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    if generator is not None:
        density = density + _noise(density.shape, generator, density)
    higher = density[:, None, :] > density[:, :, None]  # [b, i, j]: rho_j > rho_i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(higher, dist, dist_max).min(dim=-1).values
    return dist, delta * density


def dpc_knn_cluster(x: torch.Tensor, num_clusters: int, k: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster tokens ``x`` (B x N x C). Returns (cluster id per token (B x N), centre indices
    (B x num_clusters), in score order). With ``generator`` one (B, N) noise block is drawn."""
    batch, n, _ = x.shape
    if not 1 <= num_clusters <= n or not 1 <= k <= n:
        raise ValueError(f"need 1 <= num_clusters, k <= N={n}, got {num_clusters} clusters, k={k}")
    dist, score = centre_scores(x, k, generator)
    centres = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :num_clusters]
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


def merge_frame_tokens(x: torch.Tensor, levels=CHAT_UNIVI_LEVELS, generator: torch.Generator | None = None,
                       reference_draws: bool = True) -> torch.Tensor:
    """One frame's tokens (N x C) -> (sum(clusters) x C). With ``generator`` each level draws (1, N_level)
    noise values and, if ``reference_draws``, one more (1, N_last) block for the reference's discarded
    ``ctm3`` clustering, so that consecutive frames consume the reference's RNG stream."""
    merged, current = [], x[None]
    for num_clusters, k in levels:
        cluster, _ = dpc_knn_cluster(current, num_clusters, k, generator)
        current = merge_clusters(current, cluster, num_clusters)
        merged.append(current)
    if generator is not None and reference_draws:
        _noise(tuple(current.shape[:2]), generator, current)
    return torch.cat(merged, dim=1)[0]


def merge_visual_tokens(x: torch.Tensor, levels=CHAT_UNIVI_LEVELS, generator: torch.Generator | None = None,
                        reference_draws: bool = True) -> torch.Tensor:
    """Chat-UniVi's multi-level merge of per-frame tokens (B x N x C) -> B x sum(clusters) x C.

    Frames are merged one after another in batch order (see the module doc for the noise stream:
    pass a freshly seeded generator and the frames in prompt order to reproduce the reference)."""
    if x.ndim != 3:
        raise ValueError(f"expected B x N x C tokens, got shape {tuple(x.shape)}")
    return torch.stack([merge_frame_tokens(frame, levels, generator, reference_draws) for frame in x])
