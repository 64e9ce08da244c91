"""The Modal app, offline: its real function/class bodies run through ``.local()``.

A tmp directory stands in for the Volume mount ($COLBERT_MODAL_VOLUME_PATH);
the engine is the real one on the tiny lexical checkpoint. What only Modal's
cloud can run (image build, Volume reload/commit, app.run) is listed in
docs/remote.md and exercised by the opt-in ``remote`` test in test_remote_client.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

from colbert_modal import modal_app
from colbert_modal.remote import VOLUME_MOUNT, gpu_setting
from colbert_modal.remote import server as remote
from colbert_modal.chunking import Chunker, load_tokenizer
from colbert_modal.errors import IndexLockedError, IndexNotFoundError
from colbert_modal.records import IndexInfo, IndexReport
from colbert_modal.pipeline import Settings, UpdatePlan, plan_update
from colbert_modal.store import Manifest

@pytest.fixture
def volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory standing in for the Volume mount, seen by the Modal bodies."""
    path = tmp_path / "volume"
    path.mkdir()
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", str(path))
    return path


def _plan(paths, ckpt: Path, name: str, manifest: Manifest | None) -> UpdatePlan:
    """Plan on the 'client', as remote.index does; the plan then crosses the wire (pickled)."""
    settings = Settings(str(ckpt), 256, 38)
    plan = plan_update(
        paths,
        name=name,
        settings=settings,
        manifest=manifest,
        chunker=lambda: Chunker(load_tokenizer(settings.model), max_tokens=256, overlap=38),
    )
    return cloudpickle.loads(cloudpickle.dumps(plan))


def _remote_manifest(name: str) -> Manifest | None:
    data = modal_app.manifest.local(name)
    json.dumps(data)  # plain JSON
    return Manifest.from_json(data) if data is not None else None


# --- import and definitions ------------------------------------------------


def test_imports_without_torch_or_ragatouille() -> None:
    code = textwrap.dedent(
        """
        import sys
        for mod in ("torch", "ragatouille", "colbert", "transformers"):
            sys.modules[mod] = None  # any import of them raises ImportError
        import colbert_modal.modal_app as m
        assert m.app.name == "colbert-modal"
        assert m.VOLUME_NAME == "colbert-modal-indexes"
        import colbert_modal.remote.client, colbert_modal.remote.server
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_app_definitions() -> None:
    assert modal_app.app.name == "colbert-modal"
    assert modal_app.GPU == ["L4", "A10", "T4"]
    assert modal_app.SEARCH_GPU == modal_app.GPU
    assert modal_app.MODELS == [("colbert-ir/colbertv2.0", modal_app.DEFAULT_MODEL_REVISION)]
    rev = modal_app.DEFAULT_MODEL_REVISION
    assert len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)
    assert modal_app.VOLUME_PATH == VOLUME_MOUNT == "/indexes"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, ["L4"]), ("", ["L4"]), ("A100", "A100"), ("L4, A10G", ["L4", "A10G"]), ("cpu", None), ("None", None)],
)
def test_gpu_setting(value: str | None, expected: object) -> None:
    assert gpu_setting(value, ["L4"]) == expected


def test_model_specs() -> None:
    assert modal_app._model_specs("") == [(modal_app.DEFAULT_MODEL, modal_app.DEFAULT_MODEL_REVISION)]
    assert modal_app._model_specs("a/b@1, c/d@2") == [("a/b", "1"), ("c/d", "2")]
    with pytest.raises(ValueError, match="pin a revision"):
        modal_app._model_specs("a/b")


def test_gpu_env_is_read_at_definition_time() -> None:
    code = "import colbert_modal.modal_app as m; print(repr((m.GPU, m.SEARCH_GPU)))"
    env = {**os.environ, "COLBERT_MODAL_GPU": "A100", "COLBERT_MODAL_SEARCH_GPU": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('A100', None)"


def test_container_model_prefers_baked_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    baked = tmp_path / "models" / "org" / "model"
    baked.mkdir(parents=True)
    (baked / "config.json").write_text("{}")
    monkeypatch.setenv("COLBERT_MODAL_MODELS_DIR", str(tmp_path / "models"))
    assert remote.container_model("org/model") == str(baked)
    assert remote.container_model("org/other") == "org/other"
    monkeypatch.delenv("COLBERT_MODAL_MODELS_DIR")
    assert remote.container_model("org/model") == "org/model"


def test_volume_path_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLBERT_MODAL_VOLUME_PATH", raising=False)
    assert remote.volume_path() == Path("/indexes")


# --- the bodies, through .local() ------------------------------------------


@pytest.mark.slow
def test_index_search_and_notice_new_generation(
    volume: Path, colbert_checkpoint: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLBERT_MODAL_REFRESH_INTERVAL", "3600")  # no time-based refresh during the test
    name = "papers"
    assert _remote_manifest(name) is None

    plan = _plan([corpus_dir], colbert_checkpoint, name, None)
    report = modal_app.Writer().apply.local(plan, backend="exact")
    assert isinstance(report, IndexReport)
    assert report.chunks_written > 0
    assert (volume / name / "CURRENT").read_text().strip() == "g000001"

    manifest = _remote_manifest(name)
    assert manifest is not None and manifest.generation == 1
    info = modal_app.info.local(name)
    assert isinstance(info, IndexInfo) and info.generation == 1 and info.documents == report.documents_total

    searcher = modal_app.Searcher(index_name=name)
    hits = searcher.search_batch.local(["penguin quartz rhubarb"], k=3)
    assert hits[0][0].source.endswith("bestiary.pdf")
    assert searcher.generation.local() == 1

    # A second, incremental update published while the searcher is warm.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "quantum.txt").write_text("quantum kernel gpu modal vector\n", encoding="utf-8")
    plan2 = _plan([corpus_dir, extra], colbert_checkpoint, name, manifest)
    assert plan2.base_generation == 1 and list(plan2.new_files) == [str(extra / "quantum.txt")]
    report2 = modal_app.Writer().apply.local(plan2, backend="exact")
    assert report2.chunks_written == 1

    # Within the refresh interval a search container serves what it has loaded
    # (bounded staleness: no Volume reload per search) ...
    assert remote.DEFAULT_REFRESH_INTERVAL > 0
    hits = searcher.search_batch.local(["quantum kernel gpu"], k=1)
    assert hits[0][0].source != str(extra / "quantum.txt") and searcher.generation.local() == 1
    # ... and a client that has just published generation 2 reads its own write.
    hits = searcher.search_batch.local(["quantum kernel gpu"], k=1, min_generation=2)
    assert hits[0][0].source == str(extra / "quantum.txt")
    assert searcher.generation.local() == 2
    assert searcher.search_batch.local([], k=3) == []

    # A plan made against generation 1 is refused now (optimistic concurrency).
    stale = _plan([corpus_dir, extra], colbert_checkpoint, name, manifest)
    stale.base_generation = 1
    stale.rebuild = True
    with pytest.raises(IndexLockedError, match="changed while this update was prepared"):
        modal_app.Writer().apply.local(stale)


def test_searcher_without_index(volume: Path) -> None:
    searcher = modal_app.Searcher(index_name="missing")
    assert searcher.generation.local() is None
    with pytest.raises(IndexNotFoundError, match="missing"):
        searcher.search_batch.local(["anything"], k=1)
    with pytest.raises(IndexNotFoundError):
        modal_app.info.local("missing")


@pytest.mark.slow
def test_searcher_keeps_serving_when_reload_fails(
    volume: Path, colbert_checkpoint: Path, corpus_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = _plan([corpus_dir / "notes"], colbert_checkpoint, "notes", None)
    modal_app.Writer().apply.local(plan)

    def broken_reload() -> None:
        raise RuntimeError("there are open files")

    server = remote.IndexServer(volume, "notes", reload=broken_reload, min_refresh_interval=60)
    try:
        server.load_model()
        assert server.refresh() is True
        assert server.generation == 1
        assert server.refresh() is False  # throttled
        assert server.refresh(force=True) is False  # same generation
        assert "Volume reload failed" in caplog.text
        assert server.search_batch(["walrus umbrella"], k=1)[0][0].source.endswith("plain.txt")
    finally:
        server.close()
    remote.IndexServer(volume, "nothing-here").load_model()  # no index: nothing to load


def test_a_searcher_of_an_exact_index_warms_the_lean_query_encoder_only(
    volume: Path, colbert_checkpoint: Path, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container's warm-up loads what its searches use: for an exact index, not RAGatouille."""
    from colbert_modal import engine

    plan = _plan([corpus_dir / "notes"], colbert_checkpoint, "notes", None)
    modal_app.Writer().apply.local(plan)
    monkeypatch.setattr(engine, "_ENGINES", {})  # a fresh container: nothing loaded yet
    server = remote.IndexServer(volume, "notes")
    try:
        server.load_model()
        (loaded,) = engine._ENGINES.values()
        assert loaded.query_encoder is not None and loaded._rag is None
        assert server.search_batch(["walrus umbrella"], k=1)[0][0].source.endswith("plain.txt")
        assert loaded._rag is None  # searching an exact index never loaded it either
    finally:
        server.close()


def test_adopt_unknown_upload(volume: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="upload"):
        modal_app.Writer().adopt.local("papers", "nope")


@pytest.mark.slow
def test_compile_extensions_step_runs_plaid_and_exact(colbert_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """The image's build step (load, tiny PLAID + exact index, search) on the tiny checkpoint."""
    assert remote.warm_up(str(colbert_checkpoint), tmp_path) == {"plaid": 3, "exact": 3}
    modal_app.compile_extensions(str(colbert_checkpoint))
    assert "warm-up hits: {'plaid': 3, 'exact': 3}" in capsys.readouterr().out
