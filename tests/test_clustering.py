"""PLAID's k-means (``engine.clustering.kmeans``) and how a PLAID build is routed to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from colbert_modal import ColbertIndexer
from colbert_modal.engine import clustering, import_ragatouille, plaid
from colbert_modal.engine.clustering import kmeans


def blobs(n_per: int, centers: torch.Tensor, spread: float = 0.02, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = centers.repeat_interleave(n_per, 0)
    return (pts + spread * torch.randn(pts.shape, generator=g)).half()


CENTERS = torch.eye(8)[:6] * 3  # six clusters, far apart


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points.float(), centroids.float()).min(1).values


def objective(points: torch.Tensor, centroids: torch.Tensor) -> float:
    return float(nearest(points, centroids).pow(2).mean())


def many_blobs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    return blobs(50, centers, spread=0.05, seed=seed)  # 3,200 points


def test_lloyd_iterations_lower_the_objective_and_are_deterministic() -> None:
    x = many_blobs()
    objs = [objective(x, kmeans(x, 128, it)) for it in (0, 1, 3, 10)]  # 0 iterations: the random start
    assert all(a >= b for a, b in zip(objs, objs[1:])), objs
    assert objs[-1] < 0.6 * objs[0], objs
    assert torch.equal(kmeans(x, 128, 3), kmeans(x, 128, 3))


def test_as_good_as_faiss() -> None:
    """faiss (colbert-ai's own k-means) as the yardstick: same data, k and
    iterations. Both land in local minima that depend on the random start, so
    compare the mean over several data sets (measured: 0.040 ours, 0.042 faiss)."""
    faiss = pytest.importorskip("faiss")
    ours, theirs = [], []
    for seed in range(6):
        x = many_blobs(seed)
        km = faiss.Kmeans(16, 128, niter=10, seed=123, verbose=False)
        km.train(x.float().numpy())
        ours.append(objective(x, kmeans(x, 128, 10)))
        theirs.append(objective(x, torch.from_numpy(km.centroids)))
    assert sum(ours) <= 1.1 * sum(theirs), (ours, theirs)


def test_centroids_sit_on_clusters() -> None:
    x = blobs(200, CENTERS)
    c = kmeans(x, 12, 10)  # over-partitioned, as colbert-ai's PLAID is
    assert c.shape == (12, 8) and c.dtype == torch.float32 and c.device.type == "cpu"
    assert nearest(x, c).max() < 0.2  # no point left far from every centroid


def test_blocks_and_streamed_samples_give_the_same_centroids(monkeypatch: pytest.MonkeyPatch) -> None:
    x = blobs(300, CENTERS)  # 1,800 float16 points
    whole = kmeans(x, 12, 5)
    from_resident: list[bool] = []  # per block scored: a view of the copy made once?
    real_addmm = torch.addmm

    def spy(bias: torch.Tensor, pts: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        from_resident.append(pts._base is not None)
        return real_addmm(bias, pts, c)

    monkeypatch.setattr(torch, "addmm", spy)
    monkeypatch.setattr(clustering, "_KMEANS_BLOCK_BYTES", 1)  # blocks of 256 points
    blocked = kmeans(x, 12, 5)
    assert len(from_resident) == 5 * 6 and all(from_resident)  # 1,536 points trained on: 6 blocks per iteration
    from_resident.clear()
    monkeypatch.setattr(clustering, "_KMEANS_RESIDENT_BYTES", 0)  # convert block by block
    streamed = kmeans(x, 12, 5)
    assert len(from_resident) == 5 * 6 and not any(from_resident)
    assert torch.allclose(whole, blocked, atol=1e-5) and torch.allclose(whole, streamed, atol=1e-5)


def test_fewer_points_than_centroids() -> None:
    x = blobs(1, CENTERS[:3])  # three points, eight centroids
    c = kmeans(x, 8, 4)
    assert c.shape == (8, 8) and torch.isfinite(c).all()
    assert nearest(x, c).max() < 1e-3  # every point is a centroid


def test_empty_clusters_are_reseeded_not_nan() -> None:
    # 97 copies of one point and three others: centroids that start on the
    # same point tie, all but one go empty and must be moved, never 0/0
    x = torch.cat([torch.ones(97, 4), torch.eye(4)[:3] * 5]).half()
    c = kmeans(x, 5, 6)
    assert torch.isfinite(c).all()
    assert nearest(x, c).max() < 0.05


def test_training_points_are_capped_per_centroid(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_addmm = torch.addmm

    def counting(bias: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return real_addmm(bias, x, c)

    monkeypatch.setattr(torch, "addmm", counting)
    c = kmeans(blobs(500, CENTERS), 6, 1, max_points_per_centroid=10)
    assert sum(seen) == 60 and torch.isfinite(c).all()


def test_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="0 points"):
        kmeans(torch.empty(0, 8), 4, 2)


def test_gpu_route_patches_faiss_kmeans_and_restores_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU colbert-ai's faiss k-means (ragatouille's route from 75k passages)
    becomes ours, and ragatouille's 5 s faiss-cpu pause is skipped; all undone after."""
    import_ragatouille()
    import colbert.indexing.collection_indexer as ci
    import ragatouille.models.index as rag_index
    import ragatouille.models.torch_kmeans as rag_kmeans
    from colbert.indexing.collection_encoder import CollectionEncoder

    before = (ci.compute_faiss_kmeans, rag_kmeans.compute_pytorch_kmeans, rag_index.time, CollectionEncoder.encode_passages)
    monkeypatch.setattr(plaid, "_cuda_available", lambda: True)
    with plaid.plaid_build_patches("fp32"):
        assert ci.compute_faiss_kmeans is not before[0] and rag_kmeans.compute_pytorch_kmeans is not before[1]
        rag_index.time.sleep(5)  # returns at once
        x = blobs(50, CENTERS)
        c = ci.compute_faiss_kmeans(8, 12, 8, [[x]])  # colbert-ai's call shape (CPU here: no CUDA)
        assert torch.equal(c, kmeans(x, 12, 8))
        c2 = rag_kmeans.compute_pytorch_kmeans(x, 8, 12, 8, False)  # ragatouille's call shape
        assert torch.equal(c, c2)
    assert (ci.compute_faiss_kmeans, rag_kmeans.compute_pytorch_kmeans, rag_index.time,
            CollectionEncoder.encode_passages) == before


@pytest.mark.slow
def test_small_plaid_build_clusters_with_ours(
    colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below FAISS_KMEANS_MIN_CHUNKS on a CPU, ragatouille would use fast_pytorch_kmeans
    (a centroids x points mask per iteration); the build must use ours instead."""
    calls: list[tuple[int, int, int]] = []
    real = clustering.kmeans

    def spy(sample: torch.Tensor, k: int, niters: int, **kw: object) -> torch.Tensor:
        calls.append((sample.shape[0], k, niters))
        return real(sample, k, niters, **kw)

    monkeypatch.setattr(clustering, "kmeans", spy)  # plaid calls clustering.kmeans
    idx = ColbertIndexer("km", model=colbert_checkpoint, index_root=tmp_path, backend="plaid", progress=False)
    idx.index([corpus_dir / "bestiary.pdf", corpus_dir / "atlas.pdf"])
    assert len(calls) == 1
    points, k, niters = calls[0]
    assert points > 0 and k >= 1 and niters == 20  # ragatouille's iterations below 50k passages
    hits = idx.search("umbrella volcano walrus", k=1)
    assert Path(hits[0].source).name == "bestiary.pdf" and hits[0].pages == [2]


def test_concurrent_plaid_builds_take_turns() -> None:
    """The patches are process-wide: a second build waits for the first, and
    everything is restored after both (not left half-patched)."""
    import threading
    import time

    import_ragatouille()
    from colbert.indexing.collection_encoder import CollectionEncoder

    before = CollectionEncoder.encode_passages
    first_in, log = threading.Event(), []

    def build(name: str) -> None:
        with plaid.plaid_build_patches("fp32"):
            log.append((name, "in", CollectionEncoder.encode_passages is not before))
            first_in.set()
            time.sleep(0.2)
            log.append((name, "out", True))

    a = threading.Thread(target=build, args=("a",))
    a.start()
    first_in.wait(5)
    b = threading.Thread(target=build, args=("b",))
    b.start()
    a.join(5)
    b.join(5)
    assert log == [("a", "in", True), ("a", "out", True), ("b", "in", True), ("b", "out", True)]
    assert CollectionEncoder.encode_passages is before
