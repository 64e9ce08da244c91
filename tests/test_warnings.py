"""The library keeps to itself: index() and search() leave the host's warning filters as they were."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer


def _docs(folder: Path) -> Path:
    folder.mkdir()
    for i in range(8):
        (folder / f"note{i}.txt").write_text(
            f"Note {i}: a walrus and a penguin share an umbrella near the volcano and the glacier.\n", encoding="utf-8"
        )
    return folder


@pytest.mark.parametrize("backend", ["exact", pytest.param("plaid", marks=pytest.mark.slow)])
def test_index_and_search_leave_warning_filters_alone(
    backend: str, colbert_checkpoint: Path, tmp_path: Path
) -> None:
    import numpy  # noqa: F401 - the host's own imports (numpy adds filters of its own when imported)
    import torch  # noqa: F401

    docs = _docs(tmp_path / "docs")
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.filters[:] = before  # as the host has them (the recording swaps in a copy)
        warnings.simplefilter("always", UserWarning)  # every engine warning would show here
        warnings.simplefilter("always", FutureWarning)
        inside = list(warnings.filters)
        idx = ColbertIndexer("w", model=str(colbert_checkpoint), index_root=tmp_path / "root", backend=backend,
                             progress=False)
        idx.index([docs])
        assert idx.search("walrus umbrella", k=1)
        again = ColbertIndexer("w", index_root=tmp_path / "root", progress=False)  # a fresh open
        assert again.search("penguin glacier", k=2)
        assert warnings.filters == inside
    assert warnings.filters == before
    noisy = [str(w.message) for w in seen if issubclass(w.category, (UserWarning, FutureWarning))]
    assert not [m for m in noisy if "CUDA" in m or "amp" in m], noisy
