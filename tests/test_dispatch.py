"""``colbert_modal.dispatch``: one method, run in the object's mode or forced with ``.local`` / ``.remote``."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.dispatch import Mode, dispatchable, mode_of
from colbert_modal.errors import IndexNotFoundError, ModalCredentialsError


class Thing:
    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode

    @dispatchable
    def where(self, x: int, *, twice: bool = False) -> str:
        """Where it ran."""
        return f"{mode_of(self)}:{x * (2 if twice else 1)}"

    @dispatchable
    def nested(self, other: Thing) -> tuple[str, str]:
        return self.where(1), other.where(1)


def test_a_call_runs_in_the_objects_mode_and_local_remote_force_a_side() -> None:
    t = Thing("remote")
    assert t.where(2) == "remote:2"
    assert t.where.local(2, twice=True) == "local:4"
    assert Thing("local").where.remote(3) == "remote:3"
    assert t.where(2) == "remote:2"  # the forced side ends with the call


def test_nested_calls_keep_the_forced_side_for_the_same_object_only() -> None:
    a, b = Thing("remote"), Thing("remote")
    assert a.nested.local(b) == ("local:1", "remote:1")


def test_the_bound_method_keeps_name_doc_and_signature() -> None:
    import inspect

    t = Thing("local")
    assert t.where.__name__ == "where" and t.where.__doc__ == "Where it ran."
    assert list(inspect.signature(t.where).parameters) == ["x", "twice"]
    assert list(inspect.signature(t.where.local).parameters) == ["args", "kwargs"]  # mypy knows better, see below
    assert "Thing.where" in repr(t.where)


def test_indexer_local_on_a_remote_indexer_never_opens_a_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import modal.config

    monkeypatch.setattr(modal.config, "_user_config", {})  # no token from a ~/.modal.toml
    idx = ColbertIndexer("docs", mode="remote", index_root=tmp_path)
    with pytest.raises(IndexNotFoundError):
        idx.info.local()
    with pytest.raises(IndexNotFoundError):
        idx.search.local("penguin")  # search -> search_batch stays local
    assert idx._remote is None
    with pytest.raises(ModalCredentialsError):
        idx.info()  # the indexer's own mode


def test_mypy_sees_each_methods_signature_through_local_and_remote(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "use.py"
    snippet.write_text(textwrap.dedent("""
        from colbert_modal import ColbertIndexer
        idx = ColbertIndexer("docs")
        reveal_type(idx.search.local("q", k=3))
        reveal_type(idx.index.remote(["a.pdf"], rebuild=True))
        idx.search.remote("q", kk=3)
        idx.search_batch.local("q", k="3")
    """), encoding="utf-8")
    out, _, status = api.run([str(snippet), "--no-incremental", "--cache-dir=/dev/null", "--follow-imports=silent"])
    assert status == 1, out
    assert re.search(r'use.py:4: note: Revealed type is "(builtins\.)?list\[colbert_modal\.\w+\.SearchResult\]"', out), out
    assert re.search(r'use.py:5: note: Revealed type is "colbert_modal\.\w+\.IndexReport"', out), out
    assert 'Unexpected keyword argument "kk"' in out
    assert 'Argument "k" to "local" of "Dispatch" has incompatible type "str"; expected "int"' in out
