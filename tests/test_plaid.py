"""PLAID indexes on disk: opened with a checkpoint at another path (a pulled index), hostile index files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer, IndexStorageError
from colbert_modal.search import OpenGeneration
from colbert_modal.store import IndexStore, file_checksum, load_generation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plaid_root(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path, corpus_dir: Path) -> Path:
    """A PLAID index 'papers' of the corpus, built with a checkpoint at a path that is then removed
    (as in a Modal container: the index records a path that is not here)."""
    base = tmp_path_factory.mktemp("plaid")
    built_with = base / "container-checkpoint"
    shutil.copytree(colbert_checkpoint, built_with)
    root = base / "root"
    ColbertIndexer("papers", model=str(built_with), index_root=root, backend="plaid", progress=False).index([corpus_dir])
    shutil.rmtree(built_with)
    return root


def _copy(plaid_root: Path, dest: Path) -> Path:
    shutil.copytree(plaid_root / "papers", dest / "papers")
    return dest / "papers"


def _metadata(gen_path: Path) -> Path:
    (meta,) = gen_path.glob("engine/**/plaid/metadata.json")
    return meta


def test_pulled_index_opens_and_searches_again_and_again(plaid_root: Path, colbert_checkpoint: Path, tmp_path: Path) -> None:
    _copy(plaid_root, tmp_path / "pulled")
    gen = IndexStore(tmp_path / "pulled", "papers").current()
    meta = _metadata(gen.path)
    recorded = json.loads(meta.read_text(encoding="utf-8"))["config"]["checkpoint"]
    assert recorded != str(colbert_checkpoint) and not Path(recorded).exists()
    before = meta.read_bytes()
    tops = []
    for _ in range(3):  # each a fresh open of the generation, checksums verified each time
        opened = OpenGeneration(load_generation(gen.path), model=str(colbert_checkpoint))
        (results,) = opened.search_batch(["umbrella volcano walrus"], k=2)
        tops.append((Path(results[0].source).name, results[0].pages))
    assert tops == [("bestiary.pdf", [2])] * 3
    assert meta.read_bytes() == before  # the published generation is never written
    load_generation(gen.path).verified_chunks()


class _Payload:
    """Unpickled, it creates the file ``marker`` (as any code could run there)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_pickle_payload_in_an_index_file_never_runs(
    plaid_root: Path, colbert_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    _copy(plaid_root, tmp_path / "hostile")
    gen = IndexStore(tmp_path / "hostile", "papers").current()
    target = _metadata(gen.path).parent / "centroids.pt"
    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), target)
    # whoever planted it fixed the checksum up too
    manifest = json.loads((gen.path / "manifest.json").read_text(encoding="utf-8"))
    rel = target.relative_to(gen.path).as_posix()
    assert rel in manifest["checksums"]
    manifest["checksums"][rel] = file_checksum(target)
    (gen.path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    # torch < 2.6 unpickles anything by default; this variable gives that behaviour back
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    opened = OpenGeneration(load_generation(gen.path), model=str(colbert_checkpoint))
    with pytest.raises(IndexStorageError, match=r"centroids\.pt") as info:
        opened.search_batch(["umbrella volcano walrus"], k=2)
    assert "rebuild" in str(info.value)
    assert not marker.exists()
