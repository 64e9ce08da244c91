"""The HTTP API: local indexes searched over JSON (a Starlette app, served by uvicorn).

::

    from colbert_modal.http import create_app, serve
    serve("127.0.0.1", 8000)                       # every index under the index root
    app = create_app(names=["papers"], token="s3cret")  # any ASGI server

Endpoints: ``GET /`` (a search page), ``POST /search`` and ``POST /search_batch``, ``GET /indexes``,
``GET /indexes/{name}``, ``GET /indexes/{name}/chunks/{chunk_id}/page.png`` (a hit's page,
the passage highlighted; the ``view`` extra), ``GET /healthz``, ``GET /openapi.json``; with
``allow_writes=True`` also ``POST /indexes/{name}/index`` and
``DELETE /indexes/{name}/files``. Each index name gets one
:class:`~colbert_modal.ColbertIndexer`, created on first use and kept (the
index is loaded once); searches run in worker threads (``.aio``), so
concurrent requests are served side by side.

Errors are JSON, ``{"error": {"type", "types", "message", "field"}}``:
``type`` is the library's error class (``types`` its bases in
:mod:`colbert_modal.errors`, most specific first) and the status follows the
tree (ConfigurationError 400, IndexNotFoundError 404, IndexLockedError 409,
LoadError / NoDocumentsError 422, others 500). ``field`` names the request
field at fault. Never a traceback: an unexpected error is logged here and
answered ``InternalError``.

With a token (``token=`` or ``$COLBERT_MODAL_TOKEN``) every endpoint but
``/``, ``/healthz`` and ``/openapi.json`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import io
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import __version__, errors
from .errors import (
    ColbertModalError,
    ConfigurationError,
    DependencyMissingError,
    IndexLockedError,
    IndexNotFoundError,
    LoadError,
    NoDocumentsError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from .filters import parse_where
from .indexer import ColbertIndexer
from .keyword import MODE_SCHEMA, request_how
from .records import Chunk, IndexInfo, IndexReport, SearchResult
from .sharding import shard_generation
from .store import IndexStore, default_index_root, list_indexes, validate_index_name

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - the serve extra is not installed
    raise DependencyMissingError(
        "the HTTP API needs starlette and uvicorn: pip install 'colbert-modal[serve]'"
    ) from exc

__all__ = ["LOCAL_HOSTS", "MAX_BODY_BYTES", "MAX_K", "MAX_QUERIES", "create_app", "resolve_token", "serve"]

log = logging.getLogger(__name__)

#: Request bodies larger than this are refused (413).
MAX_BODY_BYTES = 1 << 20
#: ``k`` must lie in [1, MAX_K].
MAX_K = 1000
#: At most this many queries in one ``/search_batch`` request.
MAX_QUERIES = 1000
#: Hosts :func:`serve` listens on without a token.
LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

#: Library error -> HTTP status, most specific first (anything else of the library: 500).
STATUS: tuple[tuple[type[ColbertModalError], int], ...] = (
    (IndexNotFoundError, 404),
    (IndexLockedError, 409),
    (ConfigurationError, 400),
    (LoadError, 422),
    (NoDocumentsError, 422),
    (DependencyMissingError, 501),
    (RemoteTimeoutError, 504),
    (RemoteUnavailableError, 503),
    (RemoteError, 502),
)


class FieldError(ConfigurationError):
    """A request field is missing, of the wrong type or out of range (400, naming the field)."""

    def __init__(self, field: str, message: str, like: type[ConfigurationError] = ConfigurationError) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.like = like  # the library error it stands for (InvalidIndexNameError, ...)


class HTTPError(Exception):
    """An HTTP-level refusal (401, 403, 413, ...) that is not a library error."""

    def __init__(self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, dict(headers or {})


def resolve_token(token: str | None) -> str | None:
    """``token``, else ``$COLBERT_MODAL_TOKEN``; an empty string means none."""
    if token is None:
        token = os.environ.get("COLBERT_MODAL_TOKEN")
    return token or None


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and JSON body that answer ``exc``."""
    if isinstance(exc, HTTPError):
        return exc.status, {"error": {"type": exc.kind, "types": [exc.kind], "message": str(exc), "field": None}}
    if not isinstance(exc, ColbertModalError):
        message = "internal server error (the server's log has the details)"
        return 500, {"error": {"type": "InternalError", "types": ["InternalError"], "message": message, "field": None}}
    status = next((code for cls, code in STATUS if isinstance(exc, cls)), 500)
    message = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate cannot go out
    cls = exc.like if isinstance(exc, FieldError) else type(exc)
    types = [c.__name__ for c in cls.__mro__ if c.__name__ in errors.__all__]
    field = getattr(exc, "field", None)  # a FieldError's, or keyword.check_mode's
    return status, {"error": {"type": types[0], "types": types, "message": message, "field": field}}


def _error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    headers = exc.headers if isinstance(exc, HTTPError) else None
    return JSONResponse(body, status_code=status, headers=headers)


class Indexes:
    """One :class:`ColbertIndexer` per index name, created once (thread-safe), never for a missing index.

    Subclass it to serve indexes some other way (``modal_app.web`` searches through the Searcher):
    :meth:`make` returns anything with ColbertIndexer's ``name``, ``search_batch.aio``,
    ``info.aio`` and ``close()``.
    """

    def __init__(self, root: Path, names: Iterable[str] | None, options: Mapping[str, Any]) -> None:
        self.root = root
        self.names = None if names is None else [validate_index_name(n) for n in names]
        self.options = dict(options)
        self._indexers: dict[str, ColbertIndexer] = {}
        self._lock = threading.Lock()

    def available(self) -> list[str]:
        """The served indexes that exist now."""
        if self.names is None:
            return list_indexes(self.root)
        return [n for n in self.names if self.exists(n)]

    def exists(self, name: str) -> bool:
        return IndexStore(self.root, name).exists()

    def make(self, name: str) -> Any:
        return ColbertIndexer(name, index_root=self.root, progress=False, **self.options)

    def get(self, name: Any, *, field: str, must_exist: bool = True) -> Any:
        if not isinstance(name, str):
            raise FieldError(field, f"must be an index name (a string), got {_kind(name)}")
        try:
            name = validate_index_name(name)
        except ConfigurationError as exc:
            raise FieldError(field, str(exc), like=type(exc)) from None
        if self.names is not None and name not in self.names:
            raise IndexNotFoundError(f"no index named {name!r} is served here")
        with self._lock:
            indexer = self._indexers.get(name)
            if indexer is None:
                if must_exist and not self.exists(name):
                    raise IndexNotFoundError(f"no index named {name!r} is served here")
                indexer = self.make(name)
                self._indexers[name] = indexer
        return indexer

    def close(self) -> None:
        with self._lock:
            indexers, self._indexers = list(self._indexers.values()), {}
        for indexer in indexers:
            indexer.close()


# --- request bodies ------------------------------------------------------------------


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; 413 past ``limit`` bytes (declared or streamed), 400 if not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise FieldError("body", "the Content-Length header is not a number")
        if int(declared) > limit:
            raise HTTPError(413, "PayloadTooLarge", f"the request body is over {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPError(413, "PayloadTooLarge", f"the request body is over {limit} bytes")
    try:
        body = json.loads(bytes(data), parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise FieldError("body", f"not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise FieldError("body", f"must be a JSON object, got {_kind(body)}")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_fields(body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    for name in required:
        if name not in body:
            raise FieldError(name, "is required")
    for name in body:
        if name not in required and name not in optional:
            raise FieldError(name, f"is not a field of this request (fields: {', '.join(required + optional)})")


def check_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise FieldError("k", f"must be an integer from 1 to {MAX_K}, got {json.dumps(value)[:40]}")
    return value


def check_query(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(field, f"must be a non-empty string, got {json.dumps(value)[:40]}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FieldError(field, "holds characters that are not valid Unicode (lone surrogates)") from None
    return value


def check_queries(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise FieldError("queries", f"must be an array of strings, got {_kind(value)}")
    if len(value) > MAX_QUERIES:
        raise FieldError("queries", f"at most {MAX_QUERIES} queries per request, got {len(value)}")
    return [check_query(q, f"queries[{i}]") for i, q in enumerate(value)]


def check_where(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError("where", f"must be an object of conditions, got {_kind(value)}")
    try:
        parse_where(value)
    except ConfigurationError as exc:
        raise FieldError("where", str(exc)) from None
    return value


def check_paths(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise FieldError("paths", "must be a non-empty array of paths (strings) on the server")
    return value


def check_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise FieldError(name, f"must be true or false, got {_kind(value)}")
    return value


def find_chunk(store: IndexStore, chunk_id: str) -> Chunk:
    """The chunk ``chunk_id`` of the index's current generation (in its shard, if sharded); 404 if none."""
    top = store.current()
    generation: Any = top
    if top.manifest.shards:
        shard = next((e.shard for e in top.manifest.files.values() if chunk_id in e.chunk_ids), None)
        generation = shard_generation(top, shard) if shard else None
    for chunk in generation.iter_chunks() if generation is not None else ():
        if chunk.id == chunk_id:
            return chunk
    raise HTTPError(404, "ChunkNotFound", f"index {store.name!r} has no chunk {chunk_id!r}")


def page_png(chunk: Chunk, dpi: float) -> bytes:
    """The chunk's first page as PNG, its passage highlighted (colbert_modal.view)."""
    from .view import render_page

    if not chunk.pages:
        raise ConfigurationError(f"chunk {chunk.id!r} has no page to show")
    out = io.BytesIO()
    render_page(chunk.source, chunk.pages[0], chunk.text, dpi=dpi).save(out, format="PNG", optimize=True)
    return out.getvalue()


def search_page() -> str:
    """The HTML of ``GET /`` (search_page.html, next to this module)."""
    return (Path(__file__).parent / "search_page.html").read_text(encoding="utf-8")


def _hits(hits: Iterable[SearchResult]) -> list[dict[str, Any]]:
    return [hit.model_dump(mode="json") for hit in hits]


# --- the app -------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    *,
    index_root: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
    token: str | None = None,
    allow_writes: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    indexer_options: Mapping[str, Any] | None = None,
    indexes: Indexes | None = None,
) -> Starlette:
    """The ASGI app serving the indexes under ``index_root`` (default: the library's).

    ``names``: serve only these indexes (default: every index under the
    root, as it is now). ``token``: the bearer token (default
    ``$COLBERT_MODAL_TOKEN``; none: no authentication). ``allow_writes``:
    expose indexing and deletion (else 403). ``indexer_options``: keyword
    arguments for each :class:`ColbertIndexer` (e.g. ``backend``, ``model``).
    ``indexes``: an :class:`Indexes` (subclass) to serve instead of the three before.
    """
    if indexes is None:
        root = Path(index_root).expanduser().absolute() if index_root is not None else default_index_root()
        indexes = Indexes(root, names, indexer_options or {})
    expected = resolve_token(token)

    def authorise(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="colbert-modal"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPError(401, "Unauthorized", "a bearer token is required (Authorization: Bearer <token>)",
                            challenge)
        if not hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8")):
            raise HTTPError(401, "Unauthorized", "the bearer token is not valid", challenge)

    def endpoint(fn: Handler, *, public: bool = False, writes: bool = False) -> Handler:
        @functools.wraps(fn)
        async def run(request: Request) -> Response:
            try:
                if not public:
                    authorise(request)
                if writes and not allow_writes:
                    raise HTTPError(403, "Forbidden", "writes are disabled on this server (allow_writes=False)")
                return await fn(request)
            except (ColbertModalError, HTTPError) as exc:
                return _error_response(exc)
            except ClientDisconnect:  # nobody is left to answer
                raise
            except Exception as exc:
                log.exception("%s %s failed", request.method, request.url.path)
                return _error_response(exc)

        return run

    async def home(request: Request) -> Response:
        return HTMLResponse(search_page())

    async def page_image(request: Request) -> Response:
        indexer = indexes.get(request.path_params["name"], field="name")
        dpi = request.query_params.get("dpi", "72")
        if not dpi.isdigit() or not 20 <= int(dpi) <= 300:
            raise FieldError("dpi", f"must be an integer from 20 to 300, got {dpi[:20]!r}")
        store = IndexStore(indexes.root, indexer.name)
        chunk = await asyncio.to_thread(find_chunk, store, request.path_params["chunk_id"])
        png = await asyncio.to_thread(page_png, chunk, int(dpi))
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_schema(allow_writes=allow_writes, token=expected is not None))

    async def list_(request: Request) -> Response:
        return JSONResponse({"indexes": await asyncio.to_thread(indexes.available)})

    async def info(request: Request) -> Response:
        indexer = indexes.get(request.path_params["name"], field="name")
        result: IndexInfo = await indexer.info.aio()
        return JSONResponse(result.model_dump(mode="json"))

    async def search(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        check_fields(body, ("index", "query"), ("k", "where", "mode", "keyword_weight"))
        indexer = indexes.get(body["index"], field="index")
        query, k, where = check_query(body["query"], "query"), check_k(body.get("k", 10)), check_where(body.get("where"))
        hits = (await indexer.search_batch.aio([query], k=k, where=where, **request_how(body)))[0]
        return JSONResponse({"index": indexer.name, "query": query, "hits": _hits(hits)})

    async def search_batch(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        check_fields(body, ("index", "queries"), ("k", "where", "mode", "keyword_weight"))
        indexer = indexes.get(body["index"], field="index")
        queries, k, where = check_queries(body["queries"]), check_k(body.get("k", 10)), check_where(body.get("where"))
        results = await indexer.search_batch.aio(queries, k=k, where=where, **request_how(body)) if queries else []
        out = [{"query": q, "hits": _hits(hits)} for q, hits in zip(queries, results, strict=True)]
        return JSONResponse({"index": indexer.name, "results": out})

    async def index(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        check_fields(body, ("paths",), ("rebuild", "keep_missing", "metadata"))
        indexer = indexes.get(request.path_params["name"], field="name", must_exist=False)
        paths, metadata = check_paths(body["paths"]), body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise FieldError("metadata", f"must be an object (path or glob -> metadata), got {_kind(metadata)}")
        report: IndexReport = await indexer.index.aio(
            paths, rebuild=check_bool(body, "rebuild"), keep_missing=check_bool(body, "keep_missing"),
            metadata=metadata,
        )
        return JSONResponse(report.model_dump(mode="json"))

    async def delete_files(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        check_fields(body, ("paths",), ())
        indexer = indexes.get(request.path_params["name"], field="name")
        report: IndexReport = await indexer.delete.aio(check_paths(body["paths"]))
        return JSONResponse(report.model_dump(mode="json"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return _error_response(HTTPError(exc.status_code, kind, str(exc.detail), exc.headers))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            indexes.close()

    routes = [
        Route("/", endpoint(home, public=True), methods=["GET"]),
        Route("/healthz", endpoint(healthz, public=True), methods=["GET"]),
        Route("/openapi.json", endpoint(openapi, public=True), methods=["GET"]),
        Route("/indexes", endpoint(list_), methods=["GET"]),
        Route("/indexes/{name}", endpoint(info), methods=["GET"]),
        Route("/indexes/{name}/chunks/{chunk_id}/page.png", endpoint(page_image), methods=["GET"]),
        Route("/search", endpoint(search), methods=["POST"]),
        Route("/search_batch", endpoint(search_batch), methods=["POST"]),
        Route("/indexes/{name}/index", endpoint(index, writes=True), methods=["POST"]),
        Route("/indexes/{name}/files", endpoint(delete_files, writes=True), methods=["DELETE"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.indexes = indexes
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Run :func:`create_app` under uvicorn until interrupted.

    Refuses (:class:`~colbert_modal.ConfigurationError`) to listen on any
    host but 127.0.0.1, ::1 or localhost without a token (``token`` or
    ``$COLBERT_MODAL_TOKEN``). ``options``: as for :func:`create_app`.
    """
    token = resolve_token(token)
    if host.strip("[]") not in LOCAL_HOSTS and token is None:
        raise ConfigurationError(
            f"refusing to listen on {host!r} without a token: anyone who can reach it could search your "
            "indexes; pass token= (or set COLBERT_MODAL_TOKEN), or listen on 127.0.0.1"
        )
    app = create_app(token=token, **options)
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - the serve extra is not installed
        raise DependencyMissingError("serving needs uvicorn: pip install 'colbert-modal[serve]'") from exc
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level=log_level)


# --- OpenAPI -------------------------------------------------------------------------


def _error_responses(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    words = {400: "Bad request (field names the culprit)", 401: "Missing or wrong bearer token",
             403: "Writes are disabled", 404: "No such index", 409: "The index is locked by a writer",
             413: "Request body too large", 422: "Nothing could be indexed", 500: "Server-side failure"}
    return {str(c): {"description": words[c], **ref} for c in codes}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(ref: str) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def openapi_schema(*, allow_writes: bool, token: bool) -> dict[str, Any]:
    """The API's OpenAPI 3.1 description (the records' schemas come from their pydantic models)."""
    components: dict[str, Any] = {}
    for model in (SearchResult, IndexInfo, IndexReport):
        record = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(record.pop("$defs", {}))
        components[model.__name__] = record
    k = {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}
    where = {"type": ["object", "null"], "description": "Metadata conditions, e.g. {\"year\": 2023}"}
    hits = {"type": "array", "items": {"$ref": "#/components/schemas/SearchResult"}}
    components.update({
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "type": {"type": "string"}, "types": {"type": "array", "items": {"type": "string"}},
            "message": {"type": "string"}, "field": {"type": ["string", "null"]}}}}},
        "SearchRequest": {"type": "object", "required": ["index", "query"], "additionalProperties": False,
                          "properties": {"index": {"type": "string"}, "query": {"type": "string"}, "k": k,
                                         "where": where, **MODE_SCHEMA}},
        "SearchBatchRequest": {"type": "object", "required": ["index", "queries"], "additionalProperties": False,
                               "properties": {"index": {"type": "string"}, "k": k, "where": where, **MODE_SCHEMA,
                                              "queries": {"type": "array", "maxItems": MAX_QUERIES,
                                                          "items": {"type": "string"}}}},
        "SearchResponse": {"type": "object", "properties": {"index": {"type": "string"},
                                                            "query": {"type": "string"}, "hits": hits}},
        "SearchBatchResponse": {"type": "object", "properties": {"index": {"type": "string"}, "results": {
            "type": "array", "items": {"type": "object", "properties": {"query": {"type": "string"}, "hits": hits}}}}},
        "IndexList": {"type": "object", "properties": {"indexes": {"type": "array", "items": {"type": "string"}}}},
        "Health": {"type": "object", "properties": {"status": {"type": "string"}, "version": {"type": "string"}}},
    })
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness (no token needed)", "security": [], "responses": {"200": _ok("Health")}}},
        "/indexes": {"get": {"summary": "The served indexes", "responses": {"200": _ok("IndexList"),
                                                                           **_error_responses(401)}}},
        "/indexes/{name}": {"get": {"summary": "What an index holds", "parameters": name,
                                    "responses": {"200": _ok("IndexInfo"), **_error_responses(400, 401, 404, 500)}}},
        "/indexes/{name}/chunks/{chunk_id}/page.png": {"get": {
            "summary": "A hit's page as PNG, its passage highlighted (the view extra)",
            "parameters": name + [{"name": "chunk_id", "in": "path", "required": True, "schema": {"type": "string"}},
                                  {"name": "dpi", "in": "query", "schema": {"type": "integer", "default": 72}}],
            "responses": {"200": {"description": "PNG", "content": {"image/png": {}}},
                          **_error_responses(400, 401, 404, 422, 500)}}},
        "/search": {"post": {"summary": "The k best passages for a query",
                             "requestBody": _json_body({"$ref": "#/components/schemas/SearchRequest"}),
                             "responses": {"200": _ok("SearchResponse"),
                                           **_error_responses(400, 401, 404, 413, 500)}}},
        "/search_batch": {"post": {"summary": "One hit list per query",
                                   "requestBody": _json_body({"$ref": "#/components/schemas/SearchBatchRequest"}),
                                   "responses": {"200": _ok("SearchBatchResponse"),
                                                 **_error_responses(400, 401, 404, 413, 500)}}},
    }
    if allow_writes:
        paths_body = {"type": "object", "required": ["paths"], "properties": {
            "paths": {"type": "array", "items": {"type": "string"}, "description": "Files or folders on the server"},
            "rebuild": {"type": "boolean"}, "keep_missing": {"type": "boolean"}, "metadata": {"type": "object"}}}
        paths["/indexes/{name}/index"] = {"post": {
            "summary": "Index files and folders on the server", "parameters": name,
            "requestBody": _json_body(paths_body),
            "responses": {"200": _ok("IndexReport"), **_error_responses(400, 401, 403, 409, 413, 422, 500)}}}
        paths["/indexes/{name}/files"] = {"delete": {
            "summary": "Remove the chunks of these files", "parameters": name,
            "requestBody": _json_body({"type": "object", "required": ["paths"], "properties": {
                "paths": {"type": "array", "items": {"type": "string"}}}}),
            "responses": {"200": _ok("IndexReport"), **_error_responses(400, 401, 403, 404, 409, 413, 500)}}}
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "colbert-modal", "version": __version__,
                 "description": "ColBERT search over your own files. Errors: {error: {type, types, message, field}}."},
        "paths": paths,
        "components": components,
    }
    if token:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema
