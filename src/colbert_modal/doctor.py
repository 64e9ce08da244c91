"""``colbert-modal doctor``: check each step a first run needs, say which one fails and what to do.

Without ``remote``: the engine imports, the index root is writable, the
model's checkpoint is here (or can be fetched: offline, this fails at once,
see :func:`colbert_modal.hub.hub_unreachable`), a tiny index is built,
searched and dropped in a temporary folder.

With ``remote``: Modal credentials (never printing a secret), reachability
of Modal's API, whether the app is deployed, then a tiny index, a search
and the deletion of a throwaway index on the Volume. That round trip uses
the deployed app where there is one; otherwise it needs an ephemeral run,
which builds the image on a first run (minutes), so it runs only when asked
(``build_image=True``). Each step reports its time and, for steps that hold
a GPU container, an approximate cost.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import ColbertModalError, ConfigurationError, RemoteError
from .indexer import ColbertIndexer

if TYPE_CHECKING:  # pragma: no cover
    from .remote.client import RemoteSession

__all__ = ["GPU_DOLLARS_PER_HOUR", "Step", "check_local", "check_remote"]

#: Modal's list price of an L4 (the default GPU) when this was written, for the
#: rough cost of a step that holds a GPU container; check modal.com/pricing.
GPU_DOLLARS_PER_HOUR = 0.80

_TEXT = (
    "ColBERT scores a query against every token of a passage. "
    "The doctor writes this note to check that indexing and search work."
)
_QUERY = "doctor note indexing search"


@dataclass
class Step:
    """One check: ``ok`` True (passed), False (failed) or None (skipped, or a warning); ``fix``: what to do."""

    name: str
    ok: bool | None
    detail: str
    seconds: float = 0.0
    gpu: bool = False
    fix: str = ""

    @property
    def cost(self) -> float | None:
        """Approximate dollars for a step that held a GPU container (at :data:`GPU_DOLLARS_PER_HOUR`)."""
        return self.seconds * GPU_DOLLARS_PER_HOUR / 3600 if self.gpu else None


@contextlib.contextmanager
def _timed(steps: list[Step], name: str, *, gpu: bool = False, fix: str = "") -> Iterator[Step]:
    """Run the block as one step: failures become ``ok=False`` with the error's message."""
    step = Step(name, True, "", gpu=gpu, fix=fix)
    started = time.perf_counter()
    try:
        yield step
    except ColbertModalError as exc:
        step.ok, step.detail = False, " ".join(str(exc).split())
    except Exception as exc:  # the doctor reports, it does not crash
        step.ok, step.detail = False, f"{type(exc).__name__}: {exc}"
    step.seconds = time.perf_counter() - started
    steps.append(step)


def _round_trip(indexer: ColbertIndexer, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "doctor-note.txt").write_text(_TEXT + "\n", encoding="utf-8")
    report = indexer.index(folder)
    hits = indexer.search(_QUERY, k=1)
    if not hits:
        raise RemoteError(f"the tiny index {indexer.name!r} was built ({report.chunks_written} chunks) but found nothing")
    return f"{report.chunks_written} chunk(s) indexed, top hit score {hits[0].score:.2f}"


def check_local(*, index_root: str | os.PathLike[str] | None = None, model: str | None = None) -> list[Step]:
    """Local mode: engine importable, index root writable, model found, a tiny index built, searched and dropped."""
    from .store import default_index_root

    steps: list[Step] = []
    fix_extra = "Install the local extra: pip install 'colbert-modal[local]'."
    with _timed(steps, "engine", fix=fix_extra) as step:
        step.detail = _engine_versions()
    root = Path(index_root).expanduser().absolute() if index_root is not None else default_index_root()
    with _timed(steps, "index root", fix="Pass --index-root DIR or set COLBERT_MODAL_INDEX_ROOT to a writable folder.") as step:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
        step.detail = f"{root} is writable"
    if steps[0].ok:
        with _timed(steps, "model", fix="Point at a local checkpoint: --model DIR or COLBERT_MODAL_MODEL=DIR.") as step:
            step.detail = _model_detail(model)
    if any(s.ok is False for s in steps):
        steps.append(Step("tiny index", None, "skipped: fix the steps above first"))
        return steps
    fix = "See the error above; run with -v for the library's logs."
    with _timed(steps, "tiny index", fix=fix) as step, tempfile.TemporaryDirectory(prefix="colbert-doctor-") as tmp:
        indexer = ColbertIndexer(
            f"doctor-{uuid.uuid4().hex[:8]}", model=model, index_root=Path(tmp) / "indexes", progress=False
        )
        try:
            step.detail = _round_trip(indexer, Path(tmp) / "docs") + " (dropped)"
        finally:
            indexer.close()
            indexer.drop()
    return steps


def check_remote(
    *, model: str | None = None, build_image: bool = False, on_step: Callable[[Step], None] | None = None
) -> list[Step]:
    """Remote mode, step by step; a failed step skips the ones that need it."""
    from .remote import APP_NAME, VOLUME_NAME
    from .remote.client import RemoteSession
    from .remote.connection import (
        CREDENTIALS_HELP,
        check_credentials,
        credential_source,
        probe_server,
        probe_targets,
    )

    steps: list[Step] = []

    def done() -> None:
        if on_step is not None:
            on_step(steps[-1])

    with _timed(steps, "credentials", fix=CREDENTIALS_HELP) as step:
        check_credentials()
        step.detail = credential_source()
    done()
    if steps[-1].ok:
        where = ", ".join(f"{h}:{p}" for h, p in probe_targets())
        with _timed(steps, "reachability", fix="Check your network or proxy (HTTPS to Modal's API).") as step:
            probe_server()
            step.detail = f"Modal's API answers ({where})"
        done()
    if not all(s.ok for s in steps):
        steps.append(Step("app, image, round trip", None, "skipped: fix the steps above first"))
        done()
        return steps

    deployed = False
    with _timed(steps, "deployed app") as step:
        deployed = _is_deployed(APP_NAME)
        if deployed:
            step.detail = f"{APP_NAME!r} is deployed (COLBERT_MODAL_REMOTE_APP=deployed uses it)"
        else:
            step.ok, step.detail = None, f"{APP_NAME!r} is not deployed: fine for ephemeral runs (the default)"
            step.fix = "For warm containers across processes: `colbert-modal deploy`, then COLBERT_MODAL_REMOTE_APP=deployed."
    done()
    if not deployed and not build_image:
        steps.append(
            Step(
                "image and round trip",
                None,
                "skipped: a first ephemeral run builds the image (several minutes, once)",
                fix="Run `colbert-modal doctor --remote --build-image`, or `colbert-modal deploy` first.",
            )
        )
        done()
        return steps

    kind: Literal["ephemeral", "deployed"] = "deployed" if deployed else "ephemeral"
    name = f"doctor-{uuid.uuid4().hex[:8]}"
    session = RemoteSession(kind)
    with tempfile.TemporaryDirectory(prefix="colbert-doctor-") as tmp:
        indexer = ColbertIndexer(
            name, mode="remote", remote_app=kind, model=model, index_root=Path(tmp) / "indexes", progress=False
        )
        try:
            if kind == "ephemeral":
                with _timed(steps, "image", fix="See Modal's build log: `colbert-modal -v doctor ...`.") as step:
                    session.start()  # the indexer's session joins this run
                    step.detail = "built (or already built), app started"
                done()
                if not steps[-1].ok:
                    return steps
            fix = "See the error above; `colbert-modal -v doctor --remote` shows the library's logs."
            with _timed(steps, "tiny index + search", gpu=True, fix=fix) as step:
                step.detail = _round_trip(indexer, Path(tmp) / "docs") + f" ({kind} app)"
            done()
            if steps[-1].ok:
                _modal_semantics(session, steps, done)
                vol_fix = f"Delete it yourself: `modal volume rm -r {VOLUME_NAME} {name}`."
                with _timed(steps, "delete", fix=vol_fix) as step:
                    session.drop(name)  # under the index's write lease
                    step.detail = f"throwaway index {name!r} removed from the Volume {VOLUME_NAME!r}"
                done()
        finally:
            indexer.close()
            session.close()
    return steps


def _modal_semantics(session: RemoteSession, steps: list[Step], done: Callable[[], None]) -> None:
    """The two things the library relies on that only Modal's cloud can show (the tests use a stand-in)."""
    token = uuid.uuid4().hex[:12]
    fix = "The remote data-safety guarantees rest on this; report it with `colbert-modal -v doctor --remote`."
    with _timed(steps, "Volume: a commit seen elsewhere", fix=fix) as step:
        session.call_function("probe_write", token, what="writing a probe file")
        seen = session.call_function("probe_read", token, what="reading the probe file")
        if seen != token:
            raise RuntimeError("a file committed by one container was not seen by another after reload()")
        step.detail = "committed in one container, seen by another after reload()"
    done()
    with _timed(steps, "write lease (Modal Dict)", fix=fix) as step:
        problem = session.call_function("probe_lease", token, what="checking the write lease")
        if problem:
            raise RuntimeError(problem)
        step.detail = "held once, refused to a second writer, free once released"
    done()


def _model_detail(model: str | None) -> str:
    """Where the model's checkpoint is (a local folder, the hub cache, a download); fails fast offline."""
    from .hub import DEFAULT_MODEL, resolve_model

    name = model or os.environ.get("COLBERT_MODAL_MODEL") or DEFAULT_MODEL
    path = resolve_model(name)
    return name if os.path.abspath(name) == path else f"{name} ({path})"


def _engine_versions() -> str:
    """The engine's packages and their versions, found without importing them (``ragatouille`` is slow)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("torch", "ragatouille", "colbert-ai"):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            raise ConfigurationError(f"{dist} is not installed: local mode needs the local extra") from None
    return ", ".join(found)


def _is_deployed(app_name: str) -> bool:
    """Whether ``app_name`` is deployed (a lookup of one of its functions succeeds)."""
    import modal
    import modal.exception

    from .remote.connection import translated

    with translated(f"looking up the deployed app {app_name!r}"):
        try:
            modal.Function.from_name(app_name, "manifest").hydrate()
        except modal.exception.NotFoundError:
            return False
    return True
