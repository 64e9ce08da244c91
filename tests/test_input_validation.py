"""Bad input met before any work, with a short message naming the cause: metadata, index_root.

(The ``where`` language's hostile values are in test_filters.py; a full disk
in a sharded update in test_sharding_integrity.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.errors import ConfigurationError, IndexStorageError


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("A walrus and a penguin share an umbrella.\n", encoding="utf-8")
    (folder / "b.txt").write_text("The meteor shower over the glacier.\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("form", ["mapping", "callable"])
def test_metadata_with_a_lone_surrogate_is_refused_before_any_work(
    docs: Path, tmp_path: Path, colbert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    from colbert_modal.engine import Engine

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before the metadata was checked")

    monkeypatch.setattr(Engine, "build_exact", no_encoding)
    bad = {"label": "caf\ud800"}
    spec = {"a.txt": bad} if form == "mapping" else (lambda p: bad if p.name == "a.txt" else {})
    idx = ColbertIndexer("ix", model=str(colbert_checkpoint), index_root=tmp_path / "root", progress=False)
    with pytest.raises(ConfigurationError, match="not valid Unicode") as info:
        idx.index([docs], metadata=spec)
    assert str(docs / "a.txt") in str(info.value) and len(str(info.value)) < 400
    assert not idx.store.exists()


def test_index_root_that_is_a_file_says_so(tmp_path: Path, docs: Path, colbert_checkpoint: Path) -> None:
    root = tmp_path / "not-a-folder"
    root.write_text("x\n", encoding="utf-8")
    idx = ColbertIndexer("ix", model=str(colbert_checkpoint), index_root=root, progress=False)
    for call in (lambda: idx.search("walrus"), idx.info, lambda: idx.index([docs])):
        with pytest.raises(IndexStorageError, match="is not a directory") as info:
            call()
        assert str(root) in str(info.value) and "damaged" not in str(info.value)
