"""Remote mode's client half: credentials, sessions, errors, planning, pull/push.

The round trips use ``COLBERT_MODAL_REMOTE_APP=inprocess``: the real Modal
bodies run here through ``.local()`` on a directory standing in for the
Volume, with every argument and result pickled as on the wire.

``test_remote_round_trip_on_modal`` talks to Modal's cloud: it runs only with
Modal credentials and ``COLBERT_MODAL_RUN_REMOTE=1`` (or ``--run-remote`` if
the conftest registers that option).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import cloudpickle
import modal.config
import modal.exception
import pytest

from colbert_modal import ColbertIndexer
from colbert_modal.remote import client as remote
from colbert_modal.remote import connection
from colbert_modal.remote import volumes
from colbert_modal.errors import (
    ColbertModalError,
    ConfigurationError,
    IndexLockedError,
    IndexNotFoundError,
    ModalCredentialsError,
    NoDocumentsError,
    RemoteError,
    RemoteUnavailableError,
)
from colbert_modal.pipeline import Settings, plan_update
from colbert_modal.chunking import Chunker, load_tokenizer

# Captured at import, before the autouse fixture hides the developer's Modal settings.
_MODAL_ENV = {k: v for k, v in os.environ.items() if k.startswith("MODAL_")}
_RUN_REMOTE = os.environ.get("COLBERT_MODAL_RUN_REMOTE", "").lower() in ("1", "true", "yes")


@pytest.fixture
def no_modal_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from a ~/.modal.toml read at `import modal` either."""
    monkeypatch.setattr(modal.config, "_user_config", {})


@pytest.fixture
def fake_token(monkeypatch: pytest.MonkeyPatch, no_modal_config: None) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- credentials and reachability --------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda i, p: i.index.remote([p]),
        lambda i, p: i.search.remote("penguin"),
        lambda i, p: i.search_batch.remote(["penguin"]),
        lambda i, p: i.delete.remote([p]),
        lambda i, p: i.info.remote(),
        lambda i, p: i.pull(),
        lambda i, p: i.push(),
    ],
    ids=["index", "search", "search_batch", "delete", "info", "pull", "push"],
)
def test_missing_credentials_fail_fast_and_clearly(no_modal_config: None, tmp_path: Path, call) -> None:
    indexer = ColbertIndexer("docs", mode="remote", index_root=tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModalCredentialsError) as info:
        call(indexer, tmp_path)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "modal setup" in message and "MODAL_TOKEN_ID" in message and "MODAL_TOKEN_SECRET" in message
    assert indexer._remote is None


def test_credentials_from_modal_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modal.config, "_user_config", {modal.config._profile: {"token_id": "a", "token_secret": "b"}})
    connection.check_credentials()  # no error
    monkeypatch.setattr(modal.config, "_user_config", {modal.config._profile: {"token_id": "a"}})
    with pytest.raises(ModalCredentialsError):
        connection.check_credentials()


def test_unreachable_modal_fails_within_the_probe_timeout(fake_token: None, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MODAL_SERVER_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("COLBERT_MODAL_PROBE_TIMEOUT", "2")
    indexer = ColbertIndexer("docs", mode="remote", index_root=tmp_path)
    start = time.perf_counter()
    with pytest.raises(RemoteUnavailableError, match="cannot reach Modal at 127.0.0.1"):
        indexer.search.remote("penguin")
    assert time.perf_counter() - start < 2.5


def test_probe_accepts_a_listening_server(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("MODAL_SERVER_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        connection.probe_server(2)
    connection.probe_server(0)  # disabled


# --- choosing the session -------------------------------------------------------


def test_session_kind_selection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    indexer = ColbertIndexer("docs", mode="remote", index_root=tmp_path)
    assert remote.session_kind(indexer.remote_app) == "ephemeral"
    monkeypatch.setenv("COLBERT_MODAL_DEPLOYED", "1")
    assert remote.session_kind(indexer.remote_app) == "deployed"
    monkeypatch.setenv("COLBERT_MODAL_REMOTE_APP", "InProcess")
    assert remote.session_kind(indexer.remote_app) == "inprocess"
    indexer.remote_app = "ephemeral"  # type: ignore[attr-defined]
    assert remote.session_kind(indexer.remote_app) == "ephemeral"
    monkeypatch.setenv("COLBERT_MODAL_REMOTE_APP", "cloud")
    indexer.remote_app = None
    with pytest.raises(ConfigurationError, match="COLBERT_MODAL_REMOTE_APP"):
        remote.session_kind(indexer.remote_app)
    with pytest.raises(ConfigurationError):
        remote.RemoteSession("cloud")


def test_deployed_session_uses_deployed_lookups_and_gpu_override(
    fake_token: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLBERT_MODAL_PROBE_TIMEOUT", "0")
    session = remote.RemoteSession("deployed", gpu="A100")
    session.transport.connected = True  # lookups only: the app's version check needs Modal (see test_standin_remote)
    try:
        writer = session._handle("Writer", cls=True, options={"gpu": "A100"})
        assert session._handle("Writer", cls=True, options={"gpu": "A100"}) is writer  # cached
        assert "Writer" in repr(writer)
        assert session._handle("manifest", cls=False) is not None
        assert "deployed" in repr(session)
    finally:
        session.close()
    session.close()  # idempotent
    with pytest.raises(RemoteError, match="closed"):
        session.call(None, what="anything")


def test_local_checkpoint_cannot_go_to_modal(
    fake_token: None, monkeypatch: pytest.MonkeyPatch, colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLBERT_MODAL_REMOTE_APP", "deployed")
    monkeypatch.setenv("COLBERT_MODAL_PROBE_TIMEOUT", "0")
    indexer = ColbertIndexer("docs", model=colbert_checkpoint, mode="remote", index_root=tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigurationError, match="local checkpoint directory.*hub id"):
        indexer.index([corpus_dir])
    assert time.perf_counter() - start < 1.0
    session = indexer._remote.session if indexer._remote else None
    for model in ("./ckpt", "~/ckpt", "/abs/ckpt"):
        with pytest.raises(ConfigurationError):
            volumes.check_remote_model(model, session)
    volumes.check_remote_model("colbert-ir/colbertv2.0", session)
    indexer.close()
    assert session.closed


# --- error translation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected", "text"),
    [
        (modal.exception.AuthError("bad token"), ModalCredentialsError, "modal setup"),
        (modal.exception.NotFoundError("App 'colbert-modal' not found"), RemoteUnavailableError, "modal deploy"),
        (modal.exception.ConnectionError("down"), RemoteUnavailableError, "cannot be reached"),
        (TimeoutError("slow"), RemoteUnavailableError, "cannot be reached"),
        (modal.exception.ExecutionError("not running"), RemoteError, "failed on Modal"),
        (RuntimeError("boom"), RemoteError, "RuntimeError: boom"),
    ],
)
def test_modal_errors_are_translated(exc: Exception, expected: type, text: str) -> None:
    with pytest.raises(expected, match=text) as info:
        with connection.translated("searching 'docs'"):
            raise exc
    assert info.value.__cause__ is exc
    assert type(info.value) is expected


def test_own_errors_pass_through() -> None:
    err = IndexNotFoundError("nope")
    assert connection.translate_error(err, "x") is err
    with pytest.raises(IndexNotFoundError):
        with connection.translated("x"):
            raise err


# --- pickling: what crosses the wire -----------------------------------------------


def test_everything_sent_to_modal_pickles(colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path) -> None:
    settings = Settings(str(colbert_checkpoint), 256, 38)
    plan = plan_update(
        [corpus_dir, tmp_path / "missing.pdf"],
        name="docs",
        settings=settings,
        manifest=None,
        chunker=Chunker(load_tokenizer(settings.model), max_tokens=256, overlap=38),
    )
    assert plan.new_chunks and plan.skipped  # the image-only PDF and the missing file
    back = cloudpickle.loads(cloudpickle.dumps(plan))
    assert back == plan
    for err in (
        ModalCredentialsError("x"),
        RemoteUnavailableError("y"),
        IndexLockedError("z"),
        IndexNotFoundError("w"),
    ):
        again = cloudpickle.loads(cloudpickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)


# --- full round trips through the real bodies (inprocess) ------------------------


@pytest.mark.slow
def test_remote_mode_round_trip(
    inprocess: Path, colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(corpus_dir, docs)
    local_root = tmp_path / "local"
    with ColbertIndexer("papers", model=colbert_checkpoint, mode="remote", index_root=local_root, progress=False) as idx:
        report = idx.index(docs)
        assert report.chunks_total > 0 and not (local_root / "papers").exists()  # the index lives on the "Volume"
        assert (inprocess / "papers" / "CURRENT").is_file()
        session = idx._remote_runner().session
        assert session.kind == "inprocess"

        hits = idx.search("penguin quartz rhubarb", k=2)
        assert hits[0].source == str(docs / "bestiary.pdf") and hits[0].rank == 1
        batch = idx.search_batch(["aardvark bicycle carousel", "meteor glacier harbour"], k=1)
        assert [b[0].source for b in batch] == [str(docs / "atlas.pdf"), str(docs / "notes" / "meteor.md")]
        assert idx.search_batch.remote([], k=1) == []

        info = idx.info()
        assert info.generation == 1 and info.documents == report.documents_total

        again = idx.index(docs)  # nothing changed: planned locally, no engine work
        assert not again.changed and again.chunks_written == 0
        assert idx.info().generation == 1

        (docs / "quantum.txt").write_text("quantum kernel gpu modal vector\n", encoding="utf-8")
        update = idx.index(docs)
        assert update.indexed == [str(docs / "quantum.txt")] and update.chunks_written == 1
        assert idx.search("quantum kernel gpu", k=1)[0].source == str(docs / "quantum.txt")  # warm searcher noticed

        removed = idx.delete([docs / "quantum.txt"])
        assert removed.removed == [str(docs / "quantum.txt")]
        assert idx.info().generation == 3
        assert all(h.source != str(docs / "quantum.txt") for h in idx.search("quantum kernel gpu", k=5))

        # pull: the remote index becomes a local one, searchable in-process
        path = idx.pull()
        assert path == local_root / "papers"
        assert idx.search.local("penguin quartz rhubarb", k=1)[0].source == str(docs / "bestiary.pdf")
        with pytest.raises(ConfigurationError, match="overwrite=True"):
            idx.pull(overwrite=False)
        assert idx.pull(overwrite=True) == path

    assert session.closed


@pytest.mark.slow
def test_push_local_index_then_search_remotely(
    inprocess: Path, colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    local = ColbertIndexer("notes", model=colbert_checkpoint, index_root=tmp_path / "local", progress=False)
    local.index(corpus_dir / "notes")
    local.mode = "remote"
    local.push()
    assert (inprocess / "notes" / "CURRENT").read_text().strip() == "g000001"
    assert not (inprocess / "notes" / "uploads").exists()
    assert local.search("walrus umbrella", k=1)[0].source == str(corpus_dir / "notes" / "plain.txt")
    local.push()  # pushing again publishes the next generation
    assert local.info.remote().generation == 2
    local.close()


@pytest.mark.slow
def test_remote_errors_for_missing_index(inprocess: Path, colbert_checkpoint: Path, tmp_path: Path) -> None:
    idx = ColbertIndexer("ghost", model=colbert_checkpoint, mode="remote", index_root=tmp_path / "local")
    with pytest.raises(IndexNotFoundError, match="Modal Volume"):
        idx.delete(["/nowhere.pdf"])
    with pytest.raises(IndexNotFoundError):
        idx.search("anything")
    with pytest.raises(IndexNotFoundError, match="Modal Volume"):
        idx.pull()
    with pytest.raises(IndexNotFoundError):
        idx.info()
    with pytest.raises(IndexNotFoundError):
        idx.push()  # nothing local to push either
    idx.close()


def test_nothing_to_index_is_reported_before_any_gpu_work(inprocess: Path, colbert_checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    idx = ColbertIndexer("empty", model=colbert_checkpoint, mode="remote", index_root=tmp_path / "local")
    with pytest.raises(NoDocumentsError, match="nothing to index") as info:
        idx.index(empty)
    assert [s.path for s in info.value.report.skipped] == [str(empty / "blank.txt")]
    assert not (inprocess / "empty").exists()
    idx.close()


def test_remote_bodies_failing_unexpectedly_become_remote_errors(inprocess: Path, tmp_path: Path) -> None:
    (inprocess / "broken" / "generations").mkdir(parents=True)
    (inprocess / "broken" / "CURRENT").write_text("g000001\n")
    idx = ColbertIndexer("broken", mode="remote", index_root=tmp_path)
    with pytest.raises(ColbertModalError, match="damaged"):
        idx.info()
    idx.close()


# --- opt-in: the real thing --------------------------------------------------------


def _has_modal_credentials() -> bool:
    if _MODAL_ENV.get("MODAL_TOKEN_ID") and _MODAL_ENV.get("MODAL_TOKEN_SECRET"):
        return True
    return bool(modal.config.config.get("token_id", use_env=False) and modal.config.config.get("token_secret", use_env=False))


@pytest.mark.remote
def test_remote_round_trip_on_modal(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wanted = _RUN_REMOTE
    try:
        wanted = wanted or bool(request.config.getoption("--run-remote"))
    except ValueError:  # the option is not registered
        pass
    if not wanted:
        pytest.skip("talks to Modal: set COLBERT_MODAL_RUN_REMOTE=1 (or pass --run-remote)")
    if not _has_modal_credentials():
        pytest.skip("no Modal credentials (run `modal setup`)")
    for key, value in _MODAL_ENV.items():
        if key != "MODAL_CONFIG_PATH":
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    from colbert_modal import modal_app
    from helpers import make_text_pdf

    docs = tmp_path / "pdfs"
    docs.mkdir()
    make_text_pdf(docs / "a.pdf", ["Late interaction retrieval scores every query token.", "Second page."])
    make_text_pdf(docs / "b.pdf", ["Modal volumes keep files between container runs."])
    name = f"test-{uuid.uuid4().hex[:10]}"
    idx = ColbertIndexer(name, mode="remote", index_root=tmp_path / "local", progress=False)
    try:
        report = idx.index(docs)
        assert report.documents_total == 2
        assert idx.search("late interaction retrieval", k=1)[0].source == str(docs / "a.pdf")
        assert idx.info().generation == 1
        idx.pull()
    finally:
        idx.close()
        modal_app.volume.remove_file(name, recursive=True)


def test_example_reports_missing_credentials(no_modal_config: None, tmp_path: Path, capsys) -> None:
    import runpy

    example = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "remote_pdfs.py"))
    assert example["main"]([str(tmp_path), "some query", "--name", "docs"]) == 1
    assert "modal setup" in capsys.readouterr().err


def test_fan_out_asks_lagging_shards_again_and_looks_shards_up_after_a_rebuild() -> None:
    """The rounds of a sharded remote search (shared by the sync and async paths), without Modal."""
    from colbert_modal.records import SearchResult, SearchResults
    from colbert_modal.remote.client import FanOut
    from colbert_modal.sharding import ShardAnswer

    def hit(src: str, score: float) -> SearchResults:
        return SearchResults([SearchResult(rank=1, score=score, text=src, source=src, pages=[1], chunk_id=f"{src}:0",
                                           document_id=src, metadata={})], query="q")

    fan = FanOut("ix", ["s000", "s001"], None)
    assert fan.todo() == ["s000", "s001"]
    assert fan.answered(["s000", "s001"], [ShardAnswer(3, [hit("a", 1.0)], 2), ShardAnswer(2, [hit("b", 2.0)], 2)],
                        ["q"], 5) is None
    assert fan.target == 3 and fan.todo() == ["s001"]  # only the shard behind is asked again, for generation 3
    (merged,) = fan.answered(["s001"], [ShardAnswer(3, [hit("b", 2.0)], 2)], ["q"], 5)
    assert [h.source for h in merged] == ["b", "a"]
    rebuilt = FanOut("ix", ["s000", "s001"], None)
    assert rebuilt.answered(["s000", "s001"], [ShardAnswer(5, [], 3), ShardAnswer(5, [], 3)], ["q"], 5) is None
    assert rebuilt.stale and rebuilt.target == 5  # three shards now: look them up again
    rebuilt.restart(["s000", "s001", "s002"])
    assert not rebuilt.stale and rebuilt.todo() == ["s000", "s001", "s002"]
    assert "try again" in str(rebuilt.gave_up())
