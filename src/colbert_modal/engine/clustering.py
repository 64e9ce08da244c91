"""k-means for PLAID builds (:func:`kmeans`): torch only, bounded memory, on a GPU or a CPU.

Named ``clustering`` rather than ``kmeans`` so that the function re-exported
as ``colbert_modal.engine.kmeans`` does not hide its own module.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KMEANS_MAX_POINTS_PER_CENTROID", "kmeans"]

#: k-means trains on a random subsample of at most this many token vectors
#: per centroid. colbert-ai's sample gives ~150-300 per centroid and its own
#: comment there says it means to subsample "to 100 * num_partitions" (faiss
#: caps at 256 and warns below 39). The cap halves k-means time from ~30k
#: chunks (BENCHMARKS.md, "PLAID builds on a GPU").
KMEANS_MAX_POINTS_PER_CENTROID = 128
#: Size of one block of point-to-centroid scores, the only large temporary.
_KMEANS_BLOCK_BYTES = 256 << 20
#: Training samples whose working copy is up to this size are copied to the
#: device once; larger ones are converted block by block, so memory stays bounded.
_KMEANS_RESIDENT_BYTES = 4 << 30


def kmeans(
    sample: Any,
    k: int,
    niters: int,
    *,
    device: str = "cpu",
    seed: int = 123,
    max_points_per_centroid: int = KMEANS_MAX_POINTS_PER_CENTROID,
) -> Any:
    """Lloyd's k-means of ``sample`` (n x dim tensor, on the CPU) into ``k`` centroids.

    This replaces the two k-means colbert-ai's PLAID build can get through
    ragatouille: ``fast_pytorch_kmeans`` (below 75k passages) builds a
    centroids x points mask each iteration (10 GB at 979 chunks on a CPU;
    with more than 15k centroids it only sees one random minibatch of 16k
    points per iteration), and colbert-ai's faiss k-means (75k passages and
    up) asks for a GPU index that the faiss-cpu wheel lacks, so a GPU build
    clusters on the CPU. Here:

    - memory is bounded: scores are computed in blocks of ~256 MB; the
      sample is copied to ``device`` (and the matmul dtype) once when that
      copy is under 4 GB, and converted block by block otherwise;
    - it trains on at most ``max_points_per_centroid`` random points per
      centroid (see :data:`KMEANS_MAX_POINTS_PER_CENTROID`), starts from
      distinct random points (as faiss does) and gives empty clusters a
      perturbed copy of a populous one;
    - scores use float16 matrix products on a GPU, float32 on a CPU.

    Returns float32 centroids on the CPU (colbert-ai normalises them).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    n, dim = sample.shape
    if n == 0 or k <= 0:
        raise ValueError(f"k-means needs points and centroids, got {n} points and k={k}")
    if n > k * max_points_per_centroid:
        sample = sample[torch.randperm(n, generator=gen)[: k * max_points_per_centroid]]
        n = sample.shape[0]
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    itemsize = torch.empty((), dtype=dtype).element_size()
    resident = sample.to(dev, dtype) if n * dim * itemsize <= _KMEANS_RESIDENT_BYTES else None
    if n >= k:
        first = torch.randperm(n, generator=gen)[:k]
    else:  # fewer points than centroids: every point, then repeats
        first = torch.cat([torch.randperm(n, generator=gen), torch.randint(n, (k - n,), generator=gen)])
    centroids = sample[first].to(dev, torch.float32)
    block = max(256, _KMEANS_BLOCK_BYTES // (k * itemsize))
    with torch.inference_mode():
        for _ in range(niters):
            sums = torch.zeros(k, dim, device=dev, dtype=torch.float32)
            counts = torch.zeros(k, device=dev, dtype=torch.int64)
            c = centroids.to(dtype)
            # argmin ||x - c||^2 == argmax (x . c - ||c||^2 / 2)
            bias = (-0.5 * (centroids * centroids).sum(1)).to(dtype)
            for start in range(0, n, block):
                if resident is not None:
                    x = resident[start : start + block]
                else:
                    x = sample[start : start + block].to(dev, dtype, non_blocking=True)
                assign = torch.addmm(bias, x, c.T).argmax(1)
                sums.index_add_(0, assign, x.float())
                counts += torch.bincount(assign, minlength=k)
            empty = counts == 0
            centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
            n_empty = int(empty.sum())
            if n_empty:
                donors = torch.multinomial(counts.double().cpu(), n_empty, replacement=True, generator=gen)
                jitter = 1e-3 * torch.randn(n_empty, dim, generator=gen)
                centroids[empty] = centroids[donors.to(dev)] + jitter.to(dev)
    return centroids.float().cpu()
