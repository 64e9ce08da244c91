"""The HTTP API as the Modal web endpoint (colbert_modal.modal_web): its app in-process, its definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from colbert_modal import ColbertIndexer, ConfigurationError, modal_app
from colbert_modal.remote import VOLUME_MOUNT, VOLUME_NAME
from modal_standin import TIMEOUT, StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixtures)
from test_standin_remote import (  # noqa: F401 (fixtures)
    HUB_ID,
    _put_papers,
    _remote,
    _volume,
    hub_model,
    papers_index,
    standin,
)

# Imported here with the endpoint off: a `web` function added to modal_app.app in this process would go
# with every app.run() of the other tests (and its Secret to the stand-in). The definitions are checked in
# subprocesses below.
_saved = os.environ.get("COLBERT_MODAL_WEB")
os.environ["COLBERT_MODAL_WEB"] = "off"
try:
    modal_web = pytest.importorskip("colbert_modal.modal_web")
finally:
    if _saved is None:
        del os.environ["COLBERT_MODAL_WEB"]
    else:
        os.environ["COLBERT_MODAL_WEB"] = _saved
assert not hasattr(modal_web, "web")

pytestmark = pytest.mark.slow


@pytest.fixture
def shared(built_index: tuple[dict[str, Any], Any], monkeypatch: pytest.MonkeyPatch) -> ColbertIndexer:
    """The shared index's root stands in for the Volume the web endpoint mounts."""
    kwargs, _ = built_index
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", kwargs["index_root"])
    monkeypatch.delenv("COLBERT_MODAL_TOKEN", raising=False)
    monkeypatch.setattr(modal_web, "WEB", "proxy")  # Modal's proxy checks the caller; the app has no token
    return ColbertIndexer("shared", **kwargs)


def test_web_app_serves_the_volume_through_the_searcher(shared: ColbertIndexer, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real = modal_app.Searcher

    def counting(**kwargs: Any) -> Any:
        made.append(kwargs["index_name"])
        return real(**kwargs)

    monkeypatch.setattr(modal_web, "Searcher", counting)
    with TestClient(modal_web.web_app()) as c:
        assert c.get("/").headers["content-type"].startswith("text/html")  # the search page
        assert c.get("/indexes").json() == {"indexes": ["shared"]}
        assert c.get("/indexes/shared").json() == shared.info().model_dump(mode="json")
        for query in ("penguin umbrella", "glacier"):
            r = c.post("/search", json={"index": "shared", "query": query, "k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["hits"] == [h.model_dump(mode="json") for h in shared.search(query, k=3)]
        r = c.post("/search_batch", json={"index": "shared", "queries": ["glacier"], "where": {"page": 2}})
        assert r.json()["results"][0]["hits"] == [
            h.model_dump(mode="json") for h in shared.search("glacier", where={"page": 2})
        ]
        assert c.post("/search", json={"index": "nope", "query": "x"}).status_code == 404
    assert made == ["shared"]  # one Searcher per index, answering every search


def test_web_app_token(shared: ColbertIndexer, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(modal_web.web_app(token="tok")) as c:
        assert c.get("/").status_code == 200
        assert c.post("/search", json={"index": "shared", "query": "penguin"}).status_code == 401
        ok = c.post("/search", json={"index": "shared", "query": "penguin"}, headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200
    monkeypatch.setattr(modal_web, "WEB", "token")
    monkeypatch.delenv("COLBERT_MODAL_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="must hold COLBERT_MODAL_TOKEN"):
        modal_web.web_app()  # token mode never serves without one
    monkeypatch.setenv("COLBERT_MODAL_TOKEN", "from-secret")
    with TestClient(modal_web.web_app()) as c:
        assert c.get("/indexes").status_code == 401
        assert c.get("/indexes", headers={"Authorization": "Bearer from-secret"}).status_code == 200


PROBE = """
import json
from modal._utils.async_utils import synchronizer
from colbert_modal import modal_app, modal_web
assert modal_web.app is modal_app.app
fn = getattr(modal_web, "web", None)
hook = synchronizer._translate_in(fn)._webhook_config if fn is not None else None
print(json.dumps({"web": fn is not None, "asgi": bool(fn is not None and fn._is_web_endpoint()),
                  "proxy": bool(hook and hook.requires_proxy_auth),
                  "secrets": len(getattr(modal_web, "web_secrets", []))}))
"""


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("off", {"web": False, "asgi": False, "proxy": False, "secrets": 0}),
        (None, {"web": True, "asgi": True, "proxy": False, "secrets": 1}),  # token is the default
        ("token", {"web": True, "asgi": True, "proxy": False, "secrets": 1}),
        ("proxy", {"web": True, "asgi": True, "proxy": True, "secrets": 0}),
    ],
)
def test_web_endpoint_is_declared_by_colbert_modal_web(setting: str | None, expected: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLBERT_MODAL_WEB"}
    if setting:
        env["COLBERT_MODAL_WEB"] = setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_a_bad_colbert_modal_web_is_refused() -> None:
    env = {**os.environ, "COLBERT_MODAL_WEB": "yes"}
    out = subprocess.run([sys.executable, "-c", "import colbert_modal.modal_web"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "COLBERT_MODAL_WEB must be off, token or proxy" in out.stderr


def _hits(results: Any) -> list[dict[str, Any]]:
    return [h.model_dump(mode="json") for h in results]


def test_web_endpoint_searches_through_the_searcher_on_the_standin(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (fixtures)
) -> None:
    """The deployed ``web`` endpoint's ASGI app, served in-process in a stand-in container of its own (its
    Volume view, ``modal.is_local()`` False), answers each search with ``Searcher.search_batch.remote.aio``:
    the same hits as the library's search, token enforced, an unknown index a 404 JSON error."""
    queries = ["penguin quartz rhubarb", "flamingo glacier"]
    with _remote(tmp_path, "papers", model=HUB_ID) as idx:  # indexed through the stand-in, as a user does
        idx.index(corpus_dir)
        expected = {q: _hits(idx.search(q, k=3)) for q in queries}
        expected_where = _hits(idx.search("glacier", k=5, where={"page": 2}))
        info = idx.info().model_dump(mode="json", exclude={"path"})  # each container's view is elsewhere here
    monkeypatch.setattr(modal_web, "WEB", "token")
    monkeypatch.setenv("COLBERT_MODAL_TOKEN", "from-the-secret")  # what modal.Secret puts in the environment
    auth = {"Authorization": "Bearer from-the-secret"}
    before = len(standin.calls_of("Searcher.search_batch"))  # the library's own searches above
    with modal_app.app.run(), standin.inside({VOLUME_MOUNT: VOLUME_NAME}) as box, TestClient(modal_web.web_app()) as c:
        assert c.get("/healthz").status_code == 200  # public
        for path in ("/indexes", "/indexes/papers"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.post("/search", json={"index": "papers", "query": queries[0]})
        assert r.status_code == 401 and "from-the-secret" not in r.text
        assert r.json()["error"]["type"] == "Unauthorized"
        assert c.get("/indexes", headers=auth).json() == {"indexes": ["papers"]}
        assert {k: v for k, v in c.get("/indexes/papers", headers=auth).json().items() if k != "path"} == info
        for q in queries:
            r = c.post("/search", json={"index": "papers", "query": q, "k": 3}, headers=auth)
            assert r.status_code == 200, r.text
            assert r.json()["hits"] == expected[q]
        r = c.post("/search_batch", json={"index": "papers", "queries": ["glacier"], "k": 5, "where": {"page": 2}},
                   headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["hits"] == expected_where
        # published by another container after this one started: found without a listing first
        import shutil

        monkeypatch.setattr(modal_web, "MISS_RELOAD_INTERVAL", 60.0, raising=False)
        shutil.copytree(_volume(standin) / "papers", _volume(standin) / "later")
        r = c.post("/search", json={"index": "later", "query": queries[0], "k": 3}, headers=auth)
        assert r.status_code == 200, r.text
        assert [h["text"] for h in r.json()["hits"]] == [h["text"] for h in expected[queries[0]]]
        reloads = standin.volume_events.count(("reload", box.id, f"vo-{VOLUME_NAME}"))
        for _ in range(2):
            r = c.post("/search", json={"index": "nope", "query": "x"}, headers=auth)
            assert r.status_code == 404 and r.json()["error"]["type"] == "IndexNotFoundError", r.text
            assert "nope" in r.json()["error"]["message"]
        assert standin.volume_events.count(("reload", box.id, f"vo-{VOLUME_NAME}")) == reloads  # one a minute
        standin.inject("Searcher.search_batch", TIMEOUT)  # Modal's errors answer as the library's do
        r = c.post("/search", json={"index": "papers", "query": "x"}, headers=auth)
        assert r.status_code == 504 and r.json()["error"]["type"] == "RemoteTimeoutError", r.text
    searches = standin.calls_of("Searcher.search_batch")[before:]
    assert len(searches) == len(queries) + 3  # each search a Searcher input, none run in the web container
    assert {c.params.get("index_name") for c in searches} == {"papers", "later"}
    assert all(c.box is not box for c in searches)
    assert ("reload", box.id, f"vo-{VOLUME_NAME}") in standin.volume_events  # the listing reloaded its view


def test_web_endpoint_in_proxy_mode_needs_no_bearer_token(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (fixtures)
) -> None:
    """``COLBERT_MODAL_WEB=proxy``: Modal's proxy checks the Modal-Key/Modal-Secret headers before a request
    reaches the app (the declaration is checked in a subprocess below); the app asks for no bearer token, even
    with ``COLBERT_MODAL_TOKEN`` set."""
    with _remote(tmp_path, "papers", model=HUB_ID) as idx:
        idx.index(corpus_dir)
        expected = _hits(idx.search("penguin", k=2))
    monkeypatch.setattr(modal_web, "WEB", "proxy")
    monkeypatch.setenv("COLBERT_MODAL_TOKEN", "unused")
    with modal_app.app.run(), standin.inside({VOLUME_MOUNT: VOLUME_NAME}), TestClient(modal_web.web_app()) as c:
        r = c.post("/search", json={"index": "papers", "query": "penguin", "k": 2})
        assert r.status_code == 200, r.text
        assert r.json()["hits"] == expected


def test_web_endpoint_volume_reads_and_reloads_of_concurrent_requests_take_turns(
    standin: StandIn, papers_index: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811 (fixtures)
) -> None:
    """The endpoint takes concurrent requests in one container (``@modal.concurrent``): one reads an index's
    info off the Volume (a file open) while another lists the indexes, which reloads. Modal refuses a reload
    while files are open; the two take turns and both answer."""
    import threading
    import time

    from colbert_modal.remote import server

    _put_papers(standin, papers_index)
    real = server.read_info
    reading = threading.Event()

    def slow_read(root: Any, name: str) -> Any:  # a slow Volume: the manifest stays open a while
        if not reading.is_set():
            with (Path(root) / name / "CURRENT").open("rb"):
                reading.set()
                time.sleep(1.0)
        return real(root, name)

    monkeypatch.setattr(server, "read_info", slow_read)
    monkeypatch.setattr(modal_web, "WEB", "proxy")
    out: dict[str, Any] = {}
    with modal_app.app.run(), standin.inside({VOLUME_MOUNT: VOLUME_NAME}), TestClient(modal_web.web_app()) as c:
        t = threading.Thread(target=lambda: out.setdefault("info", c.get("/indexes/papers")))
        t.start()
        assert reading.wait(30)
        listing = c.get("/indexes")
        t.join(60)
    assert listing.status_code == 200 and listing.json() == {"indexes": ["papers"]}, listing.text
    assert out["info"].status_code == 200 and out["info"].json()["name"] == "papers", out["info"].text
