"""examples/quickstart.ipynb: committed without outputs, and runs headless with a table, images and no error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "strip the notebook's outputs"


def execute_notebook(env_model: str, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("COLBERT_MODAL_MODEL", env_model)  # the kernel inherits the environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


@pytest.mark.slow
def test_notebook_runs_and_shows_hits(colbert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute_notebook(str(colbert_checkpoint), monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o.data["text/html"] for o in outputs if "data" in o and "text/html" in o.data]
    assert any("<th>rank</th>" in h and "<mark>" in h for h in html), "no hits table"
    assert any("skipped" in h or "indexed" in h for h in html), "no report"
    assert any("data:image/png;base64," in h for h in html), "no page thumbnail next to a hit"
    assert any("data" in o and "image/png" in o.data for o in outputs), "no page image"
    assert_filtered_cells(nb)


HIT_ROW = re.compile(r'<a href="[^"]*" title="([^"]*)">[^<]*</a></td><td class="cm-num">([^<]*)</td>')


def filtered_hits(nb, marker: str) -> list[tuple[str, str]]:
    """(source path, pages as shown) of each row in the hits table of the one cell whose source has ``marker``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"one cell searching with {marker!r}"
    html = [o.data["text/html"] for o in cells[0].outputs if "data" in o and "text/html" in o.data]
    assert len(html) == 1 and "<th>rank</th>" in html[0], "the filtered search shows a hits table"
    return HIT_ROW.findall(html[0])


def shown_pages(text: str) -> list[int]:
    """'p. 3' -> [3]; 'pp. 2-4' -> [2, 3, 4]."""
    nums = [int(n) for n in re.findall(r"\d+", text)]
    return list(range(nums[0], nums[-1] + 1))


def assert_filtered_cells(nb) -> None:
    unfiltered = filtered_hits(nb, "hits = indexer.search(")
    names = {Path(src).name for src, _ in unfiltered}
    assert "scotus-transcript-p1.pdf" in names and len(names) > 1, unfiltered  # so that the filters below exclude some
    by_kind = filtered_hits(nb, 'where={"kind": "transcript"}')
    assert by_kind, "the metadata filter finds the transcript"
    assert all(Path(src).name == "scotus-transcript-p1.pdf" for src, _ in by_kind), by_kind
    assert min(max(shown_pages(pages)) for _, pages in unfiltered) == 1, unfiltered
    by_page = filtered_hits(nb, 'where={"page": {"$gte": 2}}')
    assert by_page, "the page filter finds later pages"
    assert all(max(shown_pages(pages)) >= 2 for _, pages in by_page), by_page
