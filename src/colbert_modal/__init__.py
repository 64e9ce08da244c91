"""ColBERT search over your own PDFs and notes, in-process or on Modal GPUs.

>>> from colbert_modal import ColbertIndexer
>>> idx = ColbertIndexer("papers")                      # doctest: +SKIP
>>> idx.index(["./pdfs"])                               # doctest: +SKIP
>>> idx.search("late interaction retrieval", k=5)       # doctest: +SKIP

Importing this package is cheap: torch, ragatouille and modal are imported
only when an index is built or searched.
"""


from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .errors import (
    ColbertModalError,
    ConfigurationError,
    CorruptFileError,
    DependencyMissingError,
    EmptyDocumentError,
    EncryptedPDFError,
    EngineError,
    FileAccessError,
    IndexLockedError,
    IndexNotFoundError,
    IndexStorageError,
    InvalidIndexNameError,
    LoadError,
    ModalCredentialsError,
    ModelLoadError,
    NoDocumentsError,
    NoTextLayerError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    SettingsMismatchError,
    ShardBuildError,
    UnsupportedFileTypeError,
)

# Everything else is imported on first use (PEP 562), so `import colbert_modal`
# stays cheap: pydantic, pypdf, tokenizers, torch and modal load only when needed.
_LAZY = {
    "ColbertIndexer": ".indexer",
    "Chunk": ".records",
    "Document": ".records",
    "FileWarning": ".records",
    "IndexInfo": ".records",
    "IndexReport": ".records",
    "Page": ".records",
    "RerankResult": ".records",
    "SearchResult": ".records",
    "SearchResults": ".records",
    "SkippedFile": ".records",
    "TextRecord": ".records",
    "default_index_root": ".store",
    "list_indexes": ".store",
    "rerank": ".reranking",
}

if _TYPE_CHECKING:
    from .indexer import ColbertIndexer
    from .records import (
        Chunk,
        Document,
        FileWarning,
        IndexInfo,
        IndexReport,
        Page,
        RerankResult,
        SearchResult,
        SearchResults,
        SkippedFile,
        TextRecord,
    )
    from .reranking import rerank
    from .store import default_index_root, list_indexes


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'colbert_modal' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "ColbertIndexer",
    "ColbertModalError",
    "ConfigurationError",
    "CorruptFileError",
    "DependencyMissingError",
    "Document",
    "EmptyDocumentError",
    "EncryptedPDFError",
    "EngineError",
    "FileAccessError",
    "FileWarning",
    "IndexInfo",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexReport",
    "IndexStorageError",
    "InvalidIndexNameError",
    "LoadError",
    "ModalCredentialsError",
    "ModelLoadError",
    "NoDocumentsError",
    "NoTextLayerError",
    "Page",
    "RemoteError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "RerankResult",
    "SearchResult",
    "SearchResults",
    "SettingsMismatchError",
    "ShardBuildError",
    "SkippedFile",
    "TextRecord",
    "UnsupportedFileTypeError",
    "__version__",
    "default_index_root",
    "list_indexes",
    "rerank",
]
