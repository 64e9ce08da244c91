"""The Modal app of remote mode: image, Volume and the GPU code.

The only module of colbert_modal that imports modal at top level. It is kept
thin: every body calls the server half, :mod:`colbert_modal.remote.server`, which
uses the same pipeline and engine code as local mode.

Deploy it (for ``COLBERT_MODAL_REMOTE_APP=deployed``) with::

    modal deploy -m colbert_modal.modal_app

Configuration read when this module is imported (so: at ``modal deploy`` time
for deployed apps, in your process for ephemeral ones):

``COLBERT_MODAL_GPU``
    GPU for indexing (and search), e.g. ``A100`` or a fallback list
    ``L4,A10``; ``cpu`` for none (parsed by :func:`colbert_modal.remote.gpu_setting`). Default: :data:`DEFAULT_GPUS`.
``COLBERT_MODAL_SEARCH_GPU``
    GPU for the search containers if it should differ (``cpu`` for none).
``COLBERT_MODAL_MODELS``
    Hub models baked into the image, ``repo@revision`` comma-separated.
    Default: ``colbert-ir/colbertv2.0`` at a pinned revision.
``COLBERT_MODAL_TIMEOUT``
    Seconds an index build may run (default two hours); a single indexer
    can raise it with ``ColbertIndexer(remote_timeout=...)``.
``COLBERT_MODAL_WRITER_MEMORY`` / ``COLBERT_MODAL_WRITER_CPU``
    The Writer's reservation in MiB / cores (default :data:`WRITER_MEMORY_MB`,
    :data:`WRITER_CPU`); containers may burst above it.

Both images install exact versions from the locks shipped next to this
module (``image.lock``, ``image-client.lock``; ``scripts/lock-image``
regenerates them) with a pinned uv. Neither installs modal: Modal mounts
the client that deployed the app into every container (``/pkg``), and that
copy comes first on the path.

No torch or ragatouille import happens here: they exist only in the image
(``with image.imports()``).
"""

# No `from __future__ import annotations` here: Modal's decorators read the
# real annotation objects of modal.parameter() fields.
import os
from pathlib import Path
from typing import Any

import modal

from colbert_modal.errors import IndexLockedError, IndexNotFoundError
from colbert_modal.hub import DEFAULT_MODEL
from colbert_modal.remote import (
    API_VERSION,
    APP_NAME,
    UV_VERSION,
    VOLUME_MOUNT,
    VOLUME_NAME,
    ApplyFinished,
    gpu_setting,
    server,
)
from colbert_modal.sharding import ShardAnswer

MINUTES = 60  # seconds

VOLUME_PATH = VOLUME_MOUNT
MODELS_DIR = "/models"
#: colbert-ai's compiled extensions, one folder per device (``cuda``, ``cpu``):
#: it has two different extensions named ``decompress_residuals_cpp`` (the
#: CUDA one for indexing, a C++ one for CPU search) that would overwrite
#: each other's build in one folder. See ``engine.prepare_environment``.
TORCH_EXTENSIONS_ROOT = "/root/torch_extensions"
IMAGE_LOCK = Path(__file__).with_name("image.lock")
CLIENT_IMAGE_LOCK = Path(__file__).with_name("image-client.lock")
OCR_IMAGE_LOCK = Path(__file__).with_name("image-ocr.lock")

DEFAULT_MODEL_REVISION = "c1e84128e85ef755c096a95bdb06b47793b13acf"
#: Cheap GPUs with 16-24 GB that fit ColBERT (BERT-base) encoding at the
#: engine's batch size; Modal takes the first one available. (Modal's GPU
#: list names the A10 "A10"; "A10G" is its older alias.)
DEFAULT_GPUS = ["L4", "A10", "T4"]
#: Compute capabilities the CUDA extensions are compiled for at build time:
#: T4 7.5, A100 8.0, A10G 8.6, L4/L40S 8.9, H100 9.0 (+PTX for newer cards).
CUDA_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"


def _model_specs(value):
    """``"repo@rev,repo2@rev2"`` -> ``[("repo", "rev"), ...]`` (revision required)."""
    specs = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        repo, sep, revision = item.partition("@")
        if not sep or not revision:
            raise ValueError(f"COLBERT_MODAL_MODELS: pin a revision, e.g. {repo}@<commit sha>; got {item!r}")
        specs.append((repo, revision))
    return specs or [(DEFAULT_MODEL, DEFAULT_MODEL_REVISION)]


GPU = gpu_setting(os.environ.get("COLBERT_MODAL_GPU"), DEFAULT_GPUS)
SEARCH_GPU = gpu_setting(os.environ.get("COLBERT_MODAL_SEARCH_GPU"), GPU)
MODELS = _model_specs(os.environ.get("COLBERT_MODAL_MODELS"))

app = modal.App(APP_NAME)
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
#: The write leases of the indexes (``server.WriteLease``): one entry per
#: index being written, shared by every app and container, so writers from
#: two apps or two ``with_options`` variants never build one index at once.
LEASES_NAME = "colbert-modal-leases"
leases = modal.Dict.from_name(LEASES_NAME, create_if_missing=True)


def download_models(specs):
    """Image build step: fetch each ``(repo, revision)`` to ``/models/<repo>``."""
    from huggingface_hub import snapshot_download

    for repo, revision in specs:
        snapshot_download(
            repo,
            revision=revision,
            local_dir=f"{MODELS_DIR}/{repo}",
            ignore_patterns=["*.h5", "*.onnx", "*.msgpack", "*.ot", "*.tflite", "onnx/*"],
        )


def compile_extensions(model):
    """Image build step: load the model, build and search a tiny index (compiles colbert-ai's extensions)."""
    print("warm-up hits:", server.warm_up(model))


# The base is NVIDIA's CUDA *devel* image: colbert-ai compiles its CUDA
# extensions with torch.utils.cpp_extension, which needs nvcc and the CUDA
# headers (the runtime images and debian_slim have neither). CUDA 12.8 matches
# the torch 2.8.0 wheel (cu128; nvcc's major version must match torch's), and
# Modal's GPU drivers run CUDA 12.x.
image = (
    modal.Image.from_registry("nvidia/cuda:12.8.1-devel-ubuntu22.04", add_python="3.11")
    .entrypoint([])  # silence the CUDA image's banner
    .apt_install("git", "build-essential")
    # pyproject's `local` extra and core dependencies, every package at the
    # locked version (CUDA 12.8 torch), installed by a pinned uv.
    .uv_pip_install(requirements=[str(IMAGE_LOCK)], uv_version=UV_VERSION)
    .env(
        {
            "COLBERT_MODAL_MODELS_DIR": MODELS_DIR,
            "COLBERT_MODAL_TORCH_EXTENSIONS_ROOT": TORCH_EXTENSIONS_ROOT,
            "TORCH_CUDA_ARCH_LIST": CUDA_ARCH_LIST,
            "GIT_PYTHON_REFRESH": "quiet",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        }
    )
    # Weights are baked into the image at a pinned revision: they are ~0.4 GB,
    # change only with the pin, and the next step needs them anyway. (A
    # weights Volume pays off for multi-GB models or ones swapped without a
    # rebuild.)
    .run_function(download_models, args=(MODELS,))
    # Compile the CUDA variants (on a GPU) and the CPU variants of
    # colbert-ai's extensions once, at build time.
    .run_function(compile_extensions, args=(DEFAULT_MODEL,), gpu=DEFAULT_GPUS[0])
    .run_function(compile_extensions, args=(DEFAULT_MODEL,))
    # Last, so that editing colbert_modal does not rebuild the layers above.
    .add_local_python_source("colbert_modal")
)

#: For the light functions (manifest, info): the client's dependencies, no
#: CUDA, no torch; starts in seconds where the GPU image takes far longer.
client_image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(requirements=[str(CLIENT_IMAGE_LOCK)], uv_version=UV_VERSION)
    .env({"TOKENIZERS_PARALLELISM": "false"})
    .add_local_python_source("colbert_modal")
)

#: For OCR of scanned pages in remote mode (``ocr_page``): the client's dependencies and the ``ocr``
#: extra (RapidOCR 3 with onnxruntime, its models in the wheel; pypdfium2), no torch. rapidocr 3
#: requires opencv-python-headless, which needs neither libGL nor libglib: nothing to apt install.
ocr_image = (
    modal.Image.debian_slim(python_version="3.11")
    .uv_pip_install(requirements=[str(OCR_IMAGE_LOCK)], uv_version=UV_VERSION)
    .env({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    .add_local_python_source("colbert_modal")
)

#: Seconds an index build may run before Modal stops it.
WRITER_TIMEOUT = int(os.environ.get("COLBERT_MODAL_TIMEOUT") or 120 * MINUTES)
#: The memory reservation (MiB) and cores of an index build (the Writer, each
#: ShardWriter). A PLAID build's host peak fits 1.55 GB + 0.335 MB per passage
#: of colbert-ai's k-means sample, min(n, 16 sqrt(120 n)): 4.9 / 11.6 / 20.1 GB
#: at 10k / 30k / 100k chunks (BENCHMARKS.md, "Sharded indexes"), so 16 GiB
#: covers the 50k chunks of a default shard (~14.7 GB) with room to ~70k;
#: exact builds hold one batch of embeddings. Containers may burst above it.
WRITER_MEMORY_MB = int(os.environ.get("COLBERT_MODAL_WRITER_MEMORY") or 16384)
WRITER_CPU = float(os.environ.get("COLBERT_MODAL_WRITER_CPU") or 4.0)


def _reload_volume():
    if not modal.is_local():  # pragma: no cover - inside a Modal container
        volume.reload()


#: For colbert_modal.modal_web (the HTTP endpoint): see what was published since the container started.
reload_volume = _reload_volume


def _commit_volume():
    if not modal.is_local():  # pragma: no cover - inside a Modal container
        volume.commit()


def _volume_hooks():
    """``reload``/``commit`` for :func:`server.apply_plan` in a container (none in ``.local()`` runs)."""
    return {} if modal.is_local() else {"reload": _reload_volume, "commit": _commit_volume}


def _leases():
    """Where write leases live: the Dict in Modal; a folder of the Volume directory in ``.local()`` runs."""
    if modal.is_local():
        return server.DirectoryLeases(server.volume_path() / ".leases")
    return leases  # pragma: no cover - inside a Modal container


def _owner():
    """This writer, as another writer's IndexLockedError names it."""
    if modal.is_local():
        return server.default_owner()
    return f"app {app.app_id or APP_NAME}, container {os.environ.get('MODAL_TASK_ID', '?')}"  # pragma: no cover


def _lease(index_name, lock_timeout=0.0):
    return server.write_lease(_leases(), index_name, owner=_owner(), timeout=lock_timeout)


@app.function(image=client_image, timeout=MINUTES)
def app_version():
    """The API version this deployment speaks (``colbert_modal.remote.API_VERSION``); clients check it once."""
    return API_VERSION


# --- what only Modal can show, checked by `colbert-modal doctor --remote` ------------------------------


@app.function(image=client_image, volumes={VOLUME_PATH: volume}, timeout=5 * MINUTES)
def probe_write(token: str):
    """Write ``.doctor/<token>`` on the Volume and commit (one container; :func:`probe_read` is another)."""
    path = server.volume_path() / ".doctor" / token
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token, encoding="utf-8")
    _commit_volume()


@app.function(image=client_image, volumes={VOLUME_PATH: volume}, timeout=5 * MINUTES)
def probe_read(token: str):
    """After ``reload()``, what :func:`probe_write` committed from its container (None: not seen); then remove it."""
    _reload_volume()
    path = server.volume_path() / ".doctor" / token
    seen = path.read_text(encoding="utf-8") if path.is_file() else None
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # unless another doctor's probe is there
    except OSError:
        pass
    _commit_volume()
    return seen


@app.function(image=client_image, timeout=5 * MINUTES)
def probe_lease(token: str):
    """The write lease in the Dict: held once, refused to a second writer, free again once released.

    Returns None where it behaves so, else what went wrong.
    """
    name = f"doctor-{token}"
    with _lease(name):
        try:
            with _lease(name):
                return "a second writer got the lease while it was held"
        except IndexLockedError:
            pass
    with _lease(name):
        return None


#: The most OCR containers at once (``$COLBERT_MODAL_OCR_CONTAINERS``): a thousand scanned pages at
#: ~5 s of one core each take about a minute at 100.
OCR_CONTAINERS = int(os.environ.get("COLBERT_MODAL_OCR_CONTAINERS") or 100)


@app.function(image=ocr_image, cpu=1.0, memory=2048, timeout=5 * MINUTES, max_containers=OCR_CONTAINERS)
def ocr_page(job):
    """OCR one scanned page (an ``ocr.OcrJob``: the page as a one-page PDF); remote mode maps it over pages."""
    from colbert_modal import ocr

    return ocr.run_job(job)


@app.function(image=client_image, volumes={VOLUME_PATH: volume}, timeout=5 * MINUTES)
def manifest(index_name: str):
    """The published manifest of ``index_name`` as JSON, or None (for planning on the client)."""
    _reload_volume()
    return server.read_manifest(server.volume_path(), index_name)


@app.function(image=client_image, volumes={VOLUME_PATH: volume}, timeout=5 * MINUTES)
def shards(index_name: str):
    """The shard ids of the published index (None: unsharded), for searching shard by shard."""
    _reload_volume()
    return server.read_shards(server.volume_path(), index_name)


@app.function(image=client_image, volumes={VOLUME_PATH: volume}, timeout=5 * MINUTES)
def info(index_name: str):
    """:class:`~colbert_modal.records.IndexInfo` of the published index."""
    _reload_volume()
    return server.read_info(server.volume_path(), index_name)


#: What an index build gets: the Writer, and each ShardWriter of a sharded index.
BUILD_RESOURCES: dict[str, Any] = dict(
    image=image,
    gpu=GPU,
    volumes={VOLUME_PATH: volume},
    timeout=WRITER_TIMEOUT,
    memory=WRITER_MEMORY_MB,
    cpu=WRITER_CPU,
    scaledown_window=2 * MINUTES,
)


def _apply_events(plan, backend, lock_timeout, shard_options):
    """The Writer's build: under the index's write lease, reload, build, check the lease, commit."""
    return server.stream_apply(
        server.volume_path(), plan, backend=backend, lock_timeout=lock_timeout, leases=_leases(), owner=_owner(),
        build_shards=_shard_builder(shard_options), **_volume_hooks(),
    )


# One writer container per app; across apps and with_options variants, the
# index's write lease (the `leases` Dict) serialises writers.
@app.cls(**BUILD_RESOURCES, max_containers=1)
class Writer:
    """Builds and publishes index generations on the Volume."""

    @modal.method()
    def apply(self, plan, backend: str = "auto", lock_timeout: float = 0.0, shard_options=None):
        """Apply an :class:`~colbert_modal.pipeline.UpdatePlan` made on the client; commit the Volume.

        ``shard_options``: ``with_options`` for the ShardWriters of a sharded index (the client's GPU choice).
        """
        for event in _apply_events(plan, backend, lock_timeout, shard_options):
            if isinstance(event, ApplyFinished):
                return event.report
        raise RuntimeError("the build ended without a result")  # pragma: no cover - stream_apply always yields one

    @modal.method()
    def apply_stream(self, plan, backend: str = "auto", lock_timeout: float = 0.0, shard_options=None):
        """:meth:`apply` as a generator: progress events as they happen, then the report (``remote.ApplyItem``).

        The client reads it with ``.remote_gen()`` (``.local()`` in tests) to
        show the container's stages; see :func:`colbert_modal.remote.server.stream_apply`.
        """
        yield from _apply_events(plan, backend, lock_timeout, shard_options)

    @modal.method()
    def adopt(self, index_name: str, upload: str):
        """Publish a generation that ``push()`` uploaded; commit the Volume."""
        with _lease(index_name) as lease:
            _reload_volume()
            result = server.adopt_upload(server.volume_path(), index_name, upload)
            if lease is not None:
                lease.check()
            _commit_volume()
        return result


@app.function(image=client_image, volumes={VOLUME_PATH: volume}, timeout=15 * MINUTES)
def delete(index_name: str):
    """Delete ``index_name`` from the Volume under its write lease (no writer is building it meanwhile);
    False if there was none."""
    with _lease(index_name) as lease:
        _reload_volume()
        found = server.delete_index(server.volume_path(), index_name)
        if lease is not None:
            lease.check()
        _commit_volume()
    return found


#: The most ShardWriter containers (GPUs) a sharded build runs at once (``$COLBERT_MODAL_MAX_GPUS``; set
#: it to the account's GPU limit): more shards run in waves, which the Coordinator's timeout covers.
MAX_GPUS = int(os.environ.get("COLBERT_MODAL_MAX_GPUS") or 10)
#: What the Coordinator of a sharded build gets: no GPU, little memory (it plans, maps, publishes).
COORDINATOR_MEMORY_MB = 2048
COORDINATOR_CPU = 1.0


@app.cls(image=image, volumes={VOLUME_PATH: volume}, memory=COORDINATOR_MEMORY_MB, cpu=COORDINATOR_CPU,
         timeout=server.MAX_FUNCTION_TIMEOUT, scaledown_window=2 * MINUTES)
class Coordinator:
    """Coordinates a sharded build from a CPU container: the Writer's work, without a GPU or a shard's memory.

    The client calls it for a sharded update with ``with_options(timeout=server.coordinator_timeout(
    shards, shard timeout, MAX_GPUS))``, which covers the waves of ShardWriters. If it dies (timeout,
    crash), its ShardWriters may run on (Modal does not document cancelling a dead parent's map): each
    checks this build's write lease before it commits, so once the lease lapses and another writer
    takes it, none of them commits.
    """

    @modal.method()
    def apply_stream(self, plan, backend: str = "auto", lock_timeout: float = 0.0, shard_options=None):
        """:meth:`Writer.apply_stream` (same events, same lease), here."""
        yield from _apply_events(plan, backend, lock_timeout, shard_options)


#: Seconds a ShardWriter stays warm after its build: shard builds come one per
#: update, and a wide build's idle windows are billed (BENCHMARKS.md, "Sharded indexes").
SHARD_SCALEDOWN_S = 20


@app.cls(**{**BUILD_RESOURCES, "scaledown_window": SHARD_SCALEDOWN_S}, max_containers=MAX_GPUS)
class ShardWriter:
    """Builds one shard of a sharded index's update (the Writer maps its shards over these)."""

    @modal.method()
    def build(self, job, lease_token=None):
        """Seal the next generation of ``job.shard`` on the Volume; commit. The Writer publishes it.

        ``lease_token``: the Writer's write lease; the shard commits only while it is still held (a
        Writer that timed out or died may leave its shard containers running)."""
        _reload_volume()
        check = None
        if lease_token is not None and not modal.is_local():
            def check():
                server.check_lease(_leases(), job.index, lease_token)
        result = server.build_shard_job(server.volume_path(), job, before_commit=check)
        _commit_volume()
        return result


def _shard_builder(options=None):
    """How the Writer builds a sharded index's shards: in parallel, one ShardWriter container
    each (``.map``, failures returned), on Modal; in the Writer's own process when its body runs
    through ``.local()`` (the handle is not hydrated there).

    Outputs come in job order, so each failure is tagged with its own job's shard: an error
    cannot carry its shard itself (a timeout or a dead container is raised by modal's client,
    and our errors' pickling keeps only their arguments)."""
    if modal.is_local() or not getattr(ShardWriter, "_is_hydrated", False):
        return None  # a .local() run (ShardWriter may still be hydrated by an app run that has ended)
    cls = ShardWriter.with_options(**options) if options else ShardWriter  # type: ignore[attr-defined]

    def build(jobs):
        # the Writer holds the index's lease while it maps: its entry's token is this build's
        token = (_leases().get(jobs[0].index) or {}).get("token") if jobs else None
        outputs = cls().build.map(jobs, kwargs={"lease_token": token}, order_outputs=True, return_exceptions=True)
        for job, out in zip(jobs, outputs, strict=True):
            if isinstance(out, BaseException):
                try:
                    out.shard = job.shard  # type: ignore[attr-defined]
                except AttributeError:  # an exception type with __slots__: matched by elimination
                    pass
            yield out

    return build


@app.cls(
    image=image,
    gpu=SEARCH_GPU,
    volumes={VOLUME_PATH: volume},
    timeout=10 * MINUTES,
    scaledown_window=10 * MINUTES,
)
@modal.concurrent(max_inputs=4)
class Searcher:
    """Warm search of one index (or of one shard of a sharded index): model and index loaded once per container."""

    index_name: str = modal.parameter()
    #: a sharded index's shard this container searches ("" : the whole index)
    shard: str = modal.parameter(default="")

    @modal.enter()
    def load(self):
        self.index_server = server.IndexServer(
            server.volume_path(), self.index_name, reload=_reload_volume, shard=self.shard or None
        )
        self.index_server.load_model()
        if self.index_server.store.exists():
            self.index_server.refresh()

    @modal.method()
    def search_batch(self, queries, k: int = 10, min_generation=None, where=None, mode="colbert",
                     keyword_weight=1.0):
        """One result list per query; switches to a newer published generation first. ``where``: a filter;
        ``mode``: "colbert", "keyword" or "hybrid" (``keyword_weight``: BM25's weight in the fusion)."""
        return self.index_server.search_batch(queries, k, min_generation=min_generation, where=where, mode=mode,
                                              keyword_weight=keyword_weight)

    @modal.method()
    def search_shard(self, queries, k: int = 10, min_generation=None, where=None, mode="colbert", stats=None):
        """:meth:`search_batch` and the generation it served: a ``sharding.ShardAnswer``. ``mode`` other than
        "colbert": this shard's part of a keyword or hybrid search (``search.search_part``; ``stats``: the
        whole index's BM25 statistics)."""
        if mode != "colbert":
            generation, results = self.index_server.search_part(queries, k, part=mode, stats=stats,
                                                                min_generation=min_generation, where=where)
        else:
            generation, results = self.index_server.search(queries, k, min_generation=min_generation, where=where)
        loaded = self.index_server.loaded
        shard_count = len(loaded.manifest.shards or {}) if loaded is not None else 0
        return ShardAnswer(generation, results, shard_count)

    @modal.method()
    def rerank(self, query, items, k=None, model=None, max_tokens=None):
        """``items`` (``reranking.Item`` s) scored for ``query``: with this index's model unless ``model``."""
        return self.index_server.rerank(query, items, k, model=model, max_tokens=max_tokens)

    @modal.method()
    def generation(self):
        """The generation this container serves, after checking for a newer one."""
        try:
            self.index_server.refresh()
        except IndexNotFoundError:
            pass
        return self.index_server.generation

    @modal.exit()
    def close(self):  # pragma: no cover - @modal.exit never runs locally
        self.index_server.close()
