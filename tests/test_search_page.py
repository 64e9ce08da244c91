"""The search page (GET /) and the page images it shows (GET /indexes/{name}/chunks/{id}/page.png), in a real browser too."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

import httpx
from starlette.testclient import TestClient

from colbert_modal import ColbertIndexer
from colbert_modal.http import create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def client(shared: tuple[Path, ColbertIndexer]) -> Iterator[TestClient]:
    with TestClient(create_app(index_root=shared[0])) as c:
        yield c


def test_the_page_is_served_without_a_token_and_calls_the_api(shared: tuple[Path, ColbertIndexer]) -> None:
    with TestClient(create_app(index_root=shared[0], token="tok")) as c:
        r = c.get("/")
        assert c.get("/indexes").status_code == 401  # the data still needs the token
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<input id="query"' in page and '<select id="index"' in page
    assert 'api("indexes")' in page  # the index picker
    assert 'api("search", {' in page and 'method: "POST"' in page  # POST /search, relative to the page
    assert '"/chunks/"' in page and '"/page.png"' in page  # the page image of a hit
    assert '"Authorization"] = "Bearer "' in page  # the token goes as a bearer header
    assert "<mark>" in page  # query words highlighted
    # self-contained: nothing loaded from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page loads something from the internet"
    assert "@import" not in page and "<link" not in page


def _a_pdf_hit(indexer: ColbertIndexer) -> Any:
    hits = indexer.search("penguin umbrella", k=10, where={"source": {"$glob": "*.pdf"}})
    assert hits
    return hits[0]


def test_page_png_is_the_hits_page_with_the_passage_highlighted(
    client: TestClient, shared: tuple[Path, ColbertIndexer]
) -> None:
    pytest.importorskip("pypdfium2")
    from PIL import Image

    hit = _a_pdf_hit(shared[1])
    r = client.get(f"/indexes/shared/chunks/{hit.chunk_id}/page.png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    import io

    got = Image.open(io.BytesIO(r.content)).convert("RGB")
    assert got.size == hit.page_image().size
    r2 = client.get(f"/indexes/shared/chunks/{hit.chunk_id}/page.png?dpi=144")
    assert Image.open(io.BytesIO(r2.content)).size[0] == 2 * got.size[0]


def test_page_png_errors_are_json(client: TestClient, shared: tuple[Path, ColbertIndexer]) -> None:
    hit = _a_pdf_hit(shared[1])
    r = client.get("/indexes/shared/chunks/nope-0/page.png")
    assert r.status_code == 404 and r.json()["error"]["type"] == "ChunkNotFound"
    r = client.get("/indexes/missing/chunks/x-0/page.png")
    assert r.status_code == 404 and r.json()["error"]["type"] == "IndexNotFoundError"
    r = client.get(f"/indexes/shared/chunks/{hit.chunk_id}/page.png?dpi=abc")
    assert r.status_code == 400 and r.json()["error"]["field"] == "dpi"
    note = shared[1].search("meteor glacier harbour", k=20, where={"source": {"$glob": "*.md"}})[0]
    r = client.get(f"/indexes/shared/chunks/{note.chunk_id}/page.png")
    assert r.status_code == 400 and "PDF" in r.json()["error"]["message"]
    with TestClient(create_app(index_root=shared[0], token="tok")) as c:
        assert c.get(f"/indexes/shared/chunks/{hit.chunk_id}/page.png").status_code == 401
        ok = c.get(f"/indexes/shared/chunks/{hit.chunk_id}/page.png", headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def start_server(root: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """`colbert-modal serve` on a free localhost port, once it answers /healthz."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "COLBERT_MODAL_TOKEN"}
    cmd = [sys.executable, "-c", "from colbert_modal.cli import main; main()", "serve", "--index-root", str(root),
           "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server did not come up: {proc.communicate()[0].decode(errors='replace')}")
        time.sleep(0.2)


def browse(browser: str, url: str, *flags: str) -> str:
    """The DOM of ``url`` after its scripts ran (headless Chromium, --dump-dom)."""
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--virtual-time-budget=20000", "--window-size=1100,900", *flags, "--dump-dom", url],
        capture_output=True, timeout=120,
    )
    return out.stdout.decode("utf-8", errors="replace")


def test_the_page_in_a_real_browser_shows_hits_and_a_page_image(shared: tuple[Path, ColbertIndexer]) -> None:
    """Headless Chromium opens /?q=...&index=...&open=N: the hits appear, highlighted, and the page image of hit N
    (the first PDF hit; a hit from a text file offers no page)."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium found (scripts/install-chromium installs Debian's chromium)")
    pytest.importorskip("pypdfium2")
    root, indexer = shared
    expected = indexer.search("penguin umbrella", k=3)
    first_pdf = next(i for i, h in enumerate(expected, 1) if h.source.endswith(".pdf"))
    proc, base = start_server(root, "-n", "shared")
    try:
        # warm the index up, so the browser's virtual-time budget is spent on the page, not on loading the model
        warm = httpx.post(f"{base}/search", json={"index": "shared", "query": "penguin umbrella", "k": 3}, timeout=120)
        assert warm.status_code == 200, warm.text
        dom = browse(browser, f"{base}/?q=penguin+umbrella&index=shared&k=3&open={first_pdf}")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert 'data-state="done"' in dom, dom[-3000:]
    assert len(re.findall(r'class="hit( pdf)?"', dom)) == 3
    assert dom.count('class="hit pdf"') == sum(h.source.endswith(".pdf") for h in expected)
    for hit in expected:
        assert Path(hit.source).name in dom
        assert f"score {hit.score:.2f}" in dom
    assert "<mark>penguin</mark>" in dom.lower() or "<mark>umbrella</mark>" in dom.lower()
    assert f'data-page="{expected[first_pdf - 1].chunk_id}"' in dom, dom[-3000:]  # its page image loaded
    assert re.search(r'<img alt="[^"]+" src="blob:', dom)
