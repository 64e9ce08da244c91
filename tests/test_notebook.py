"""examples/quickstart.ipynb: committed without outputs, and runs headless with a table, images and no error."""

from __future__ import annotations

import json
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
