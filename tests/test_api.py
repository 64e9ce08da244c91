"""The public surface: exports, error tree, records, cheap import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pydantic
import pytest

import colbert_modal
from colbert_modal import errors, models


def test_all_is_exactly_the_public_names() -> None:
    public = {n for n in dir(colbert_modal) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(colbert_modal, n))}
    assert set(colbert_modal.__all__) == (public - modules) | {"__version__"}
    assert colbert_modal.__all__ == sorted(colbert_modal.__all__)
    assert {"rerank", "RerankResult"} <= set(colbert_modal.__all__)
    assert inspect.isfunction(colbert_modal.rerank)  # the function, not the module that defines it


def test_every_error_is_a_colbert_modal_error_and_documented() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ColbertModalError)
        assert name in doc, f"{name} missing from the error tree docstring"
        assert getattr(colbert_modal, name) is cls


def test_errors_subclass_builtins_where_it_helps() -> None:
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.IndexNotFoundError, LookupError)
    assert issubclass(errors.DependencyMissingError, ImportError)
    assert issubclass(errors.FileAccessError, OSError)


def test_records_forbid_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        models.SearchResult(rank=1, score=1.0, text="t", source="s", pages=[1], chunk_id="c", document_id="d", pgae=3)
    with pytest.raises(pydantic.ValidationError):
        models.Page(number=0, text="page numbers are 1-based")


def test_search_results_render_as_a_table() -> None:
    r = models.SearchResult(rank=1, score=2.5, text="<b>walrus</b>", source="/a.pdf", pages=[3], chunk_id="c", document_id="d")
    html = models.SearchResults([r])._repr_html_()
    assert "<table" in html and "&lt;b&gt;walrus" in html and "/a.pdf" in html
    assert r.page == 3


def test_import_is_cheap() -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import colbert_modal\n"
        "heavy = [m for m in ('torch', 'ragatouille', 'modal', 'transformers', 'pypdf', 'pydantic') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "colbert_modal.ColbertIndexer  # the names still resolve on first use\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_version_is_single_sourced() -> None:
    from importlib.metadata import version

    assert version("colbert-modal") == colbert_modal.__version__


def test_suite_uses_the_plugin_checkpoint_with_its_own_words(colbert_checkpoint) -> None:
    """The suite does not shadow the plugin's ``colbert_checkpoint``; it only adds words."""
    import conftest

    assert not hasattr(conftest, "colbert_checkpoint")
    vocab = set((colbert_checkpoint / "vocab.txt").read_text(encoding="utf-8").split())
    assert {"aardvark", "zeppelin", "[unused0]", "[unused1]"} <= vocab


def test_records_keep_their_old_module_name_for_imports_and_pickles() -> None:
    """``colbert_modal.models`` was the records' module; user code and pickles name it."""
    import pickle

    from colbert_modal import models, records

    assert models.SearchResult is records.SearchResult and set(models.__all__) == set(records.__all__)
    hit = records.SearchResult(rank=1, score=1.0, text="t", source="s.pdf", pages=[1], chunk_id="c",
                               document_id="d", metadata={})
    old = pickle.dumps(hit, protocol=2).replace(b"colbert_modal.records", b"colbert_modal.models")  # as an older release wrote it
    assert b"colbert_modal.models" in old and pickle.loads(old) == hit
