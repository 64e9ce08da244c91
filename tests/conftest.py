from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_text_pdf

# Session fixtures (built before the per-test environment) keep their OCR cache out of the user's cache too.
os.environ.setdefault("COLBERT_MODAL_OCR_CACHE", tempfile.mkdtemp(prefix="colbert-modal-ocr-cache-"))

DATA = Path(__file__).parent / "data"
PDFS = DATA / "pdfs"

#: Words the tiny checkpoint's vocabulary gets on top of its base list, so that
#: keyword queries over the test corpus have whole-word tokens.
CORPUS_WORDS = (
    "aardvark bicycle carousel dolphin espresso flamingo glacier harbour igloo jasmine "
    "kangaroo lantern meteor nebula origami penguin quartz rhubarb saffron tornado "
    "umbrella volcano walrus xylophone yodel zeppelin hello information font letters "
    "alphabet language nonsense printed meaning background"
).split()

_FILLER = " ".join(
    ["the state of the world is good and very well made for people."] * 14
)  # ~200 tokens, so each page of the corpus PDFs becomes its own chunk

CORPUS_PAGES = {
    "atlas.pdf": [
        "aardvark bicycle carousel dolphin espresso",
        "flamingo glacier harbour igloo jasmine",
        "kangaroo lantern meteor nebula origami",
    ],
    "bestiary.pdf": [
        "penguin quartz rhubarb saffron tornado",
        "umbrella volcano walrus xylophone yodel zeppelin",
    ],
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-remote", action="store_true", default=False,
        help="run the tests marked 'remote' (they talk to Modal and need credentials)",
    )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's Modal token, index root or model settings."""
    for key in list(os.environ):
        if key.startswith(("COLBERT_MODAL_", "MODAL_")):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLBERT_MODAL_INDEX_ROOT", str(tmp_path / "default-index-root"))
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    # beside tmp_path, not in it: tests that chdir there check that nothing else is written to the working directory
    monkeypatch.setenv("COLBERT_MODAL_OCR_CACHE", str(tmp_path.parent / f"{tmp_path.name}-ocr-cache"))


@pytest.fixture
def inprocess(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Remote mode with the Modal bodies run here (``.local()``) on a directory standing in for the Volume."""
    volume = tmp_path / "volume"
    volume.mkdir()
    monkeypatch.setenv("COLBERT_MODAL_REMOTE_APP", "inprocess")
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", str(volume))
    return volume


@pytest.fixture(scope="session")
def colbert_checkpoint_words() -> list[str]:
    """The test corpus's words, whole tokens in the plugin's ``colbert_checkpoint`` (colbert_modal.testing)."""
    return CORPUS_WORDS


def write_corpus(folder: Path) -> Path:
    """A small corpus: generated PDFs with known words per page, real PDFs, notes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, pages in CORPUS_PAGES.items():
        make_text_pdf(folder / name, [f"{p}. {_FILLER}" for p in pages])
    for name in ("minimal-document.pdf", "pdflatex-4-pages.pdf", "images-only-imagemagick.pdf"):
        shutil.copy(PDFS / name, folder / name)
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "meteor.md").write_text(
        "# Field notes\n\nThe meteor shower over the glacier was seen from the harbour.\n", encoding="utf-8"
    )
    (folder / "notes" / "plain.txt").write_text("A walrus and a penguin share an umbrella.\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="session")
def built_index(tmp_path_factory: pytest.TempPathFactory, colbert_checkpoint: Path, corpus_dir: Path):
    """One exact index of the corpus, built once per session: (indexer kwargs, report)."""
    from colbert_modal import ColbertIndexer

    root = tmp_path_factory.mktemp("shared-index-root")
    kwargs = {"model": str(colbert_checkpoint), "index_root": str(root), "progress": False}
    report = ColbertIndexer("shared", **kwargs).index([corpus_dir])
    return kwargs, report


@pytest.fixture
def shared(built_index: tuple[dict[str, Any], Any]) -> tuple[Path, Any]:
    """(index root, an indexer of the session's shared index ``shared``): what the HTTP tests serve."""
    from colbert_modal import ColbertIndexer

    kwargs, _ = built_index
    return Path(kwargs["index_root"]), ColbertIndexer("shared", **kwargs)
