"""The HTTP API (colbert_modal.http): every endpoint, its errors, the token, the size limit, concurrency, serve()."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from colbert_modal import ColbertIndexer, ConfigurationError, IndexStorageError
from colbert_modal.http import MAX_BODY_BYTES, create_app, error_body, serve
from colbert_modal.store import IndexStore

pytestmark = pytest.mark.slow


@pytest.fixture
def client(shared: tuple[Path, ColbertIndexer]):
    root, _ = shared
    with TestClient(create_app(index_root=root)) as c:
        yield c


def _error(response: Any, status: int, kind: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert error["type"] == kind, error
    assert error["field"] == field, error
    return error


def test_healthz_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/search", "/search_batch", "/indexes", "/indexes/{name}", "/healthz"} <= set(schema["paths"])
    assert "/indexes/{name}/index" not in schema["paths"]  # writes are off
    assert {"SearchResult", "IndexInfo", "IndexReport", "SkippedFile", "Error"} <= set(schema["components"])
    assert "securitySchemes" not in schema["components"]


def test_indexes_and_info(client: TestClient, shared: tuple[Path, ColbertIndexer], built_index: Any) -> None:
    root, indexer = shared
    assert client.get("/indexes").json() == {"indexes": ["shared"]}
    info = client.get("/indexes/shared").json()
    assert info == indexer.info().model_dump(mode="json")
    assert info["chunks"] == built_index[1].chunks_total
    _error(client.get("/indexes/missing"), 404, "IndexNotFoundError")
    error = _error(client.get("/indexes/bad%20name"), 400, "InvalidIndexNameError", "name")
    assert error["types"] == ["InvalidIndexNameError", "ConfigurationError", "ColbertModalError"]
    with TestClient(create_app(index_root=root, names=["shared", "later"])) as c:
        assert c.get("/indexes").json() == {"indexes": ["shared"]}
        _error(c.get("/indexes/later"), 404, "IndexNotFoundError")


def test_search_and_search_batch_match_the_library(client: TestClient, shared: tuple[Path, ColbertIndexer]) -> None:
    _, indexer = shared
    r = client.post("/search", json={"index": "shared", "query": "penguin umbrella", "k": 3})
    assert r.status_code == 200, r.text
    expected = [h.model_dump(mode="json") for h in indexer.search("penguin umbrella", k=3)]
    assert r.json() == {"index": "shared", "query": "penguin umbrella", "hits": expected}
    assert len(expected) == 3

    where = {"source": {"$glob": "*.pdf"}, "page": {"$gte": 2}}
    r = client.post("/search", json={"index": "shared", "query": "glacier", "where": where})
    hits = r.json()["hits"]
    assert hits == [h.model_dump(mode="json") for h in indexer.search("glacier", where=where)]
    assert hits and all(h["source"].endswith(".pdf") and max(h["pages"]) >= 2 for h in hits)

    queries = ["meteor", "walrus penguin"]
    r = client.post("/search_batch", json={"index": "shared", "queries": queries, "k": 2})
    assert r.status_code == 200, r.text
    batch = indexer.search_batch(queries, k=2)
    assert r.json()["results"] == [
        {"query": q, "hits": [h.model_dump(mode="json") for h in hits]} for q, hits in zip(queries, batch, strict=True)
    ]
    assert client.post("/search_batch", json={"index": "shared", "queries": []}).json()["results"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"index": "shared", "query": "x", "k": 0}, "k"),
        ({"index": "shared", "query": "x", "k": 1001}, "k"),
        ({"index": "shared", "query": "x", "k": -3}, "k"),
        ({"index": "shared", "query": "x", "k": "5"}, "k"),
        ({"index": "shared", "query": "x", "k": True}, "k"),
        ({"index": "shared", "query": "x", "k": 2.5}, "k"),
        ({"index": "shared"}, "query"),
        ({"index": "shared", "query": 5}, "query"),
        ({"index": "shared", "query": "   "}, "query"),
        ({"query": "x"}, "index"),
        ({"index": 7, "query": "x"}, "index"),
        ({"index": "../etc", "query": "x"}, "index"),
        ({"index": "shared", "query": "x", "limit": 3}, "limit"),
        ({"index": "shared", "query": "x", "where": "year=2023"}, "where"),
        ({"index": "shared", "query": "x", "where": {"year": {"$bogus": 1}}}, "where"),
        ({"index": "shared", "query": "x", "where": {"page": {"$gte": [1]}}}, "where"),
    ],
)
def test_search_bad_fields_are_400_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    kind = "InvalidIndexNameError" if body.get("index") == "../etc" else "ConfigurationError"
    error = _error(client.post("/search", json=body), 400, kind, field)
    assert error["message"].startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"index": "shared", "queries": "one query"}, "queries"),
        ({"index": "shared", "queries": ["ok", ""]}, "queries[1]"),
        ({"index": "shared", "queries": ["ok", None]}, "queries[1]"),
        ({"index": "shared", "queries": ["ok"] * 1001}, "queries"),
        ({"index": "shared", "queries": ["ok"], "k": 0}, "k"),
        ({"index": "shared", "query": "x"}, "queries"),
    ],
)
def test_search_batch_bad_fields(client: TestClient, body: dict[str, Any], field: str) -> None:
    _error(client.post("/search_batch", json=body), 400, "ConfigurationError", field)


def test_malformed_json_unknown_index_unknown_route(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    for bad in (b'{"index": "shared", "query": ', b"\xff\xfe", b"", b'{"k": NaN}'):
        _error(client.post("/search", content=bad, headers=headers), 400, "ConfigurationError", "body")
    _error(client.post("/search", json=["shared", "x"]), 400, "ConfigurationError", "body")
    lone = b'{"index": "shared", "query": "bad \\ud800 text"}'  # valid JSON, not valid Unicode
    _error(client.post("/search", content=lone, headers=headers), 400, "ConfigurationError", "query")
    _error(client.post("/search", json={"index": "nope", "query": "x"}), 404, "IndexNotFoundError")
    _error(client.post("/search_batch", json={"index": "nope", "queries": ["x"]}), 404, "IndexNotFoundError")
    _error(client.get("/no/such/route"), 404, "NotFound")
    _error(client.get("/search"), 405, "MethodNotAllowed")


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    big = b'{"index": "shared", "query": "' + b"a" * MAX_BODY_BYTES + b'"}'
    _error(client.post("/search", content=big), 413, "PayloadTooLarge")

    def chunks():  # no Content-Length: the limit holds on the bytes streamed
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    _error(client.post("/search", content=chunks()), 413, "PayloadTooLarge")
    # just under the limit is read (and then judged on its content)
    ok = b'{"index": "shared", "query": "penguin"}' + b" " * (MAX_BODY_BYTES - 100)
    assert client.post("/search", content=ok).status_code == 200


def test_bearer_token(shared: tuple[Path, ColbertIndexer], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = shared
    secret = "s3cret-token-value"
    for app in (create_app(index_root=root, token=secret), _env_app(monkeypatch, root, secret)):
        with TestClient(app) as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {secret}"},
                            {"Authorization": "Bearer "}):
                for response in (c.get("/indexes", headers=headers),
                                 c.post("/search", json={"index": "shared", "query": "x"}, headers=headers)):
                    _error(response, 401, "Unauthorized")
                    assert secret not in response.text
                    assert response.headers["www-authenticate"].startswith("Bearer")
            good = {"Authorization": f"Bearer {secret}"}
            assert c.get("/indexes", headers=good).json() == {"indexes": ["shared"]}
            assert c.post("/search", json={"index": "shared", "query": "penguin"}, headers=good).status_code == 200
            assert c.get("/healthz").status_code == 200  # liveness needs no token
            assert "bearer" in c.get("/openapi.json").json()["components"]["securitySchemes"]


def _env_app(monkeypatch: pytest.MonkeyPatch, root: Path, secret: str) -> Any:
    monkeypatch.setenv("COLBERT_MODAL_TOKEN", secret)
    return create_app(index_root=root)


def test_concurrent_requests_share_one_indexer(client: TestClient, shared: tuple[Path, ColbertIndexer]) -> None:
    _, indexer = shared
    queries = ["penguin", "glacier harbour", "meteor", "walrus umbrella", "kangaroo lantern"]
    expected = {q: [h.model_dump(mode="json") for h in indexer.search(q, k=4)] for q in queries}
    failures: list[str] = []

    def worker(i: int) -> None:
        for j in range(4):
            q = queries[(i + j) % len(queries)]
            r = client.post("/search", json={"index": "shared", "query": q, "k": 4})
            if r.status_code != 200 or r.json()["hits"] != expected[q]:
                failures.append(f"{q}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    indexes = client.app.state.indexes  # type: ignore[attr-defined]
    assert indexes.get("shared", field="index") is indexes.get("shared", field="index")


def test_writes_are_refused_unless_allowed(client: TestClient, corpus_dir: Path) -> None:
    _error(client.post("/indexes/new/index", json={"paths": [str(corpus_dir)]}), 403, "Forbidden")
    _error(client.request("DELETE", "/indexes/shared/files", json={"paths": ["x"]}), 403, "Forbidden")


def test_writes_index_search_delete(tmp_path: Path, colbert_checkpoint: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("A walrus and a penguin share an umbrella.\n", encoding="utf-8")
    (docs / "b.md").write_text("# Notes\n\nThe meteor shower over the glacier.\n", encoding="utf-8")
    root = tmp_path / "root"
    app = create_app(index_root=root, allow_writes=True, indexer_options={"model": str(colbert_checkpoint)})
    with TestClient(app) as c:
        assert "/indexes/{name}/index" in c.get("/openapi.json").json()["paths"]
        _error(c.post("/indexes/notes/index", json={"paths": str(docs), "rebuild": "yes"}), 400,
               "ConfigurationError", "rebuild")
        _error(c.post("/indexes/notes/index", json={"paths": []}), 400, "ConfigurationError", "paths")
        _error(c.post("/indexes/notes/index", json={"paths": [str(tmp_path / "missing")]}), 422, "NoDocumentsError")
        r = c.post("/indexes/notes/index", json={"paths": [str(docs)]})
        assert r.status_code == 200, r.text
        assert sorted(Path(p).name for p in r.json()["indexed"]) == ["a.txt", "b.md"]
        assert c.get("/indexes").json() == {"indexes": ["notes"]}
        hits = c.post("/search", json={"index": "notes", "query": "penguin", "k": 1}).json()["hits"]
        assert Path(hits[0]["source"]).name == "a.txt"

        with IndexStore(root, "notes").lock():  # another writer holds the index
            _error(c.post("/indexes/notes/index", json={"paths": [str(docs)]}), 409, "IndexLockedError")

        r = c.request("DELETE", "/indexes/notes/files", json={"paths": [str(docs / "a.txt")]})
        assert r.status_code == 200, r.text
        assert [Path(p).name for p in r.json()["removed"]] == ["a.txt"]
        hits = c.post("/search", json={"index": "notes", "query": "penguin", "k": 5}).json()["hits"]
        assert [Path(h["source"]).name for h in hits] == ["b.md"]
        _error(c.request("DELETE", "/indexes/other/files", json={"paths": ["x"]}), 404, "IndexNotFoundError")


def test_a_damaged_index_is_a_500_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "root" / "broken"
    broken.mkdir(parents=True)
    (broken / "CURRENT").write_text("gen-000999\n", encoding="utf-8")
    with TestClient(create_app(index_root=tmp_path / "root")) as c:
        error = _error(c.get("/indexes/broken"), 500, "IndexStorageError")
        assert error["message"] and error["types"][-1] == "ColbertModalError"


def test_error_body_follows_the_error_tree() -> None:
    assert error_body(IndexStorageError("disk gone"))[0] == 500
    status, body = error_body(RuntimeError("secret internals /etc/passwd"))
    assert status == 500 and body["error"]["type"] == "InternalError"
    assert "secret" not in body["error"]["message"]


def test_serve_refuses_beyond_localhost_without_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    ran: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: ran.append((host, port)))
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(ConfigurationError, match="without a token"):
            serve(host, 8123, index_root=tmp_path)
        with pytest.raises(ConfigurationError):
            serve(host, 8123, index_root=tmp_path, token="")
    assert ran == []
    serve("127.0.0.1", 8123, index_root=tmp_path)
    serve("::1", 8124, index_root=tmp_path)
    serve("0.0.0.0", 8125, index_root=tmp_path, token="t")
    monkeypatch.setenv("COLBERT_MODAL_TOKEN", "from-env")
    serve("0.0.0.0", 8126, index_root=tmp_path)
    assert ran == [("127.0.0.1", 8123), ("::1", 8124), ("0.0.0.0", 8125), ("0.0.0.0", 8126)]


def test_cli_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn
    from click.testing import CliRunner

    from colbert_modal.cli import cli

    ran: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: ran.append((host, port)))
    runner = CliRunner()
    assert "serve" in runner.invoke(cli, ["--help"]).output
    result = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--index-root", str(tmp_path)])
    assert result.exit_code == 2 and "without a token" in result.output and ran == []
    result = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "9001", "--token", "t", "-n", "a"])
    assert result.exit_code == 0, result.output
    assert ran == [("0.0.0.0", 9001)]


def test_serve_answers_over_a_real_socket(shared: tuple[Path, ColbertIndexer], tmp_path: Path) -> None:
    """`colbert-modal serve` under uvicorn on a free local port: a search over HTTP, then the process is stopped."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    root, indexer = shared
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "COLBERT_MODAL_TOKEN": "tok"}
    args = ["serve", "--index-root", str(root), "--port", str(port), "-n", "shared"]
    proc = subprocess.Popen([sys.executable, "-c", "from colbert_modal.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        body = {"index": "shared", "query": "penguin", "k": 2}
        assert httpx.post(f"{base}/search", json=body, timeout=60).status_code == 401
        r = httpx.post(f"{base}/search", json=body, headers={"Authorization": "Bearer tok"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["hits"] == [h.model_dump(mode="json") for h in indexer.search("penguin", k=2)]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_an_unexpected_error_is_a_500_without_its_details(shared: tuple[Path, ColbertIndexer]) -> None:
    root, _ = shared
    app = create_app(index_root=root)

    def broken() -> list[str]:
        raise RuntimeError("secret internals at /srv/private")

    app.state.indexes.available = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/indexes")
        _error(r, 500, "InternalError")
        assert "secret" not in r.text
