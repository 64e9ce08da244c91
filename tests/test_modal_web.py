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
