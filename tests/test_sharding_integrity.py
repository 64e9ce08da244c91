"""A sharded index's top manifest is checked, not trusted: checksum, counts that add up, repair.

Each corruption of the top manifest (a shard entry dropped or set to null,
a file's shard edited, a shard pointed at its older generation, ``shards``
as a list) raises IndexStorageError naming the manifest, from search and
from an update, with the checksum file written at publish and without it
(a top manifest written before it); ``rebuild=True``, ``drop()`` and
``colbert-modal delete --yes`` work whatever it holds. The real engine
runs with the tiny checkpoint (exact backend, local mode).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from colbert_modal import ColbertIndexer
from colbert_modal.cli import cli
from colbert_modal.errors import IndexStorageError
from colbert_modal.integrity import CHECKSUM_KEY, manifest_digest

TEXTS = {
    "a.txt": "aardvark bicycle carousel",
    "b.txt": "penguin quartz walrus",
    "c.txt": "meteor glacier harbour",
    "d.txt": "umbrella volcano",
    "e.txt": "kangaroo lantern nebula",
    "f.txt": "hello font letters",
}


def _kw(root: Path, checkpoint: Path) -> dict:
    return {"model": str(checkpoint), "index_root": str(root), "progress": False, "backend": "exact"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path) -> tuple[Path, Path]:
    """A 3-shard index of six one-line files, updated once (a.txt changed): (index root, docs)."""
    base = tmp_path_factory.mktemp("sharded-integrity")
    docs = base / "docs"
    docs.mkdir()
    for name, text in TEXTS.items():
        (docs / name).write_text(text + "\n", encoding="utf-8")
    idx = ColbertIndexer("ix", shards=3, **_kw(base / "root", colbert_checkpoint))
    idx.index([docs])
    (docs / "a.txt").write_text(TEXTS["a.txt"] + " zeppelin\n", encoding="utf-8")
    assert idx.index([docs]).indexed == [str(docs / "a.txt")]
    return base / "root", docs


@pytest.fixture
def sharded(pristine: tuple[Path, Path], tmp_path: Path, colbert_checkpoint: Path):
    """A fresh copy of the pristine index, and its files (put back as they were afterwards): (indexer, docs)."""
    root, docs = pristine
    shutil.copytree(root, tmp_path / "root")
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in docs.iterdir()}
    yield ColbertIndexer("ix", **_kw(tmp_path / "root", colbert_checkpoint)), docs
    for p in docs.iterdir():
        if p not in saved:
            p.unlink()
    for p, (content, mtime) in saved.items():
        p.write_bytes(content)
        os.utime(p, ns=(mtime, mtime))


def _top_dir(idx: ColbertIndexer) -> Path:
    return idx.store.path / "generations" / (idx.store.path / "CURRENT").read_text().strip()


def _edit_top(idx: ColbertIndexer, edit: Callable[[dict, ColbertIndexer], None], *, checksum: bool) -> None:
    """Apply ``edit`` to the top manifest; without ``checksum``, as a top generation written before checksums."""
    path = _top_dir(idx) / "manifest.json"
    data = json.loads(path.read_text())
    edit(data, idx)
    if not checksum:
        data.pop(CHECKSUM_KEY, None)
    path.write_text(json.dumps(data, indent=1))


def _shard_of(data: dict, name: str) -> str:
    return next(e["shard"] for p, e in data["files"].items() if p.endswith(name))


def _drop_shard(data: dict, idx: ColbertIndexer) -> None:
    del data["shards"][_shard_of(data, "b.txt")]


def _null_shard(data: dict, idx: ColbertIndexer) -> None:
    data["shards"][_shard_of(data, "b.txt")] = None


def _move_file(data: dict, idx: ColbertIndexer) -> None:
    path = next(p for p in data["files"] if p.endswith("b.txt"))
    data["files"][path]["shard"] = next(s for s in data["shards"] if s != data["files"][path]["shard"])


def _older_generation(data: dict, idx: ColbertIndexer) -> None:
    sid = _shard_of(data, "a.txt")  # a.txt changed: its shard has an older generation, kept for readers
    gens = sorted(p.name for p in (idx.store.path / "shards" / sid / "generations").iterdir())
    assert len(gens) == 2 and data["shards"][sid]["generation"] == gens[1]
    data["shards"][sid]["generation"] = gens[0]


def _shards_as_list(data: dict, idx: ColbertIndexer) -> None:
    data["shards"] = list(data["shards"].values())


CORRUPTIONS = {
    "shard-dropped": _drop_shard,
    "shard-null": _null_shard,
    "file-moved": _move_file,
    "older-generation": _older_generation,
    "shards-list": _shards_as_list,
}


def test_top_generation_is_sealed_with_a_checksum_that_file_refreshes_keep(sharded) -> None:
    idx, docs = sharded
    top = _top_dir(idx)
    data = json.loads((top / "manifest.json").read_text())
    assert data[CHECKSUM_KEY] == manifest_digest(data)
    os.utime(docs / "c.txt", (1_000_000_000, 1_000_000_000))  # same content, new mtime: recorded in place
    report = idx.index([docs])
    assert report.indexed == [] and _top_dir(idx) == top
    refreshed = json.loads((top / "manifest.json").read_text())
    assert refreshed != data and refreshed[CHECKSUM_KEY] == data[CHECKSUM_KEY]  # the mtime changed...
    assert idx.search("meteor glacier", k=1)[0].source == str(docs / "c.txt")  # ...and it still opens


@pytest.mark.parametrize("checksum", [True, False], ids=["checksummed", "before-checksums"])
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_top_manifest_is_refused_by_search_and_update(sharded, corruption: str, checksum: bool) -> None:
    idx, docs = sharded
    before = (idx.store.path / "CURRENT").read_text()
    _edit_top(idx, CORRUPTIONS[corruption], checksum=checksum)
    manifest = str(_top_dir(idx) / "manifest.json")
    with pytest.raises(IndexStorageError, match="is damaged") as info:
        idx.search("penguin quartz walrus")
    assert manifest in str(info.value) and "rebuild" in str(info.value)
    (docs / "g.txt").write_text("dolphin flamingo\n", encoding="utf-8")
    with pytest.raises(IndexStorageError, match="is damaged") as info:
        idx.index([docs])  # never an update that shrinks the index to what the damaged manifest says
    assert manifest in str(info.value)
    assert (idx.store.path / "CURRENT").read_text() == before


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_top_manifest_is_rebuilt_dropped_and_deleted(sharded, corruption: str, tmp_path: Path) -> None:
    idx, docs = sharded
    spare = tmp_path / "spare"
    shutil.copytree(idx.store.root, spare)
    _edit_top(idx, CORRUPTIONS[corruption], checksum=True)
    shutil.copytree(idx.store.root, spare, dirs_exist_ok=True)  # the same damage, to delete from the CLI

    report = idx.index([docs], rebuild=True)
    assert report.documents_total == len(TEXTS) and report.skipped == []
    assert idx.search("penguin quartz walrus", k=1)[0].source == str(docs / "b.txt")
    idx.drop()
    assert not idx.store.path.exists()

    result = CliRunner().invoke(cli, ["delete", "ix", "--yes", "--index-root", str(spare)])
    assert result.exit_code == 0, result.output
    assert not (spare / "ix").exists()


def test_a_damaged_remote_index_is_rebuilt_through_the_modal_bodies(
    sharded, inprocess: Path, colbert_checkpoint: Path, tmp_path: Path
) -> None:
    idx, docs = sharded
    _edit_top(idx, _drop_shard, checksum=True)
    shutil.copytree(idx.store.path, inprocess / "ix")  # the damaged index on the "Volume"
    remote = ColbertIndexer("ix", mode="remote", **_kw(tmp_path / "local", colbert_checkpoint))
    with pytest.raises(IndexStorageError, match="manifest.json"):
        remote.search("penguin")
    with pytest.raises(IndexStorageError, match="manifest.json"):
        remote.index([docs])  # only a rebuild repairs it
    report = remote.index([docs], rebuild=True)
    assert report.documents_total == len(TEXTS)
    assert remote.search("penguin quartz walrus", k=1)[0].source == str(docs / "b.txt")
    remote.close()


def test_top_generation_written_before_checksums_opens_and_updates(sharded) -> None:
    idx, docs = sharded
    path = _top_dir(idx) / "manifest.json"
    data = json.loads(path.read_text())
    del data[CHECKSUM_KEY]
    path.write_text(json.dumps(data, indent=1))
    assert idx.search("penguin quartz walrus", k=1)[0].source == str(docs / "b.txt")
    (docs / "g.txt").write_text("dolphin flamingo\n", encoding="utf-8")
    assert idx.index([docs]).indexed == [str(docs / "g.txt")]
    assert CHECKSUM_KEY in json.loads((_top_dir(idx) / "manifest.json").read_text())
    assert idx.info().documents == len(TEXTS) + 1


def test_a_shard_manifest_that_disagrees_with_the_top_is_named(sharded) -> None:
    """A shard's own manifest edited (it has no checksum of its own): the counts no longer add up."""
    idx, docs = sharded
    data = json.loads((_top_dir(idx) / "manifest.json").read_text())
    sid = _shard_of(data, "b.txt")
    shard_manifest = idx.store.path / "shards" / sid / "generations" / data["shards"][sid]["generation"] / "manifest.json"
    shard = json.loads(shard_manifest.read_text())
    shard["files"] = {}  # chunks.jsonl then holds chunks the manifest does not list, too
    shard_manifest.write_text(json.dumps(shard))
    with pytest.raises(IndexStorageError, match=f"does not agree with shard {sid}"):
        idx.search("penguin quartz walrus")
    with pytest.raises(IndexStorageError, match=f"does not agree with shard {sid}"):
        idx.index([docs])


def test_full_disk_in_a_shard_build_is_a_storage_error(sharded, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's promise for a full disk holds for a sharded update: IndexStorageError, "free space"."""
    idx, docs = sharded
    before = (idx.store.path / "CURRENT").read_text()
    from colbert_modal.engine import exact

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exact, "build", full)
    (docs / "b.txt").write_text("penguin quartz walrus zeppelin\n", encoding="utf-8")
    with pytest.raises(IndexStorageError, match="free space") as info:
        idx.index([docs])
    assert "shard s0" in str(info.value) and "unchanged" in str(info.value)
    assert (idx.store.path / "CURRENT").read_text() == before
    monkeypatch.undo()
    assert idx.index([docs]).indexed == [str(docs / "b.txt")]
