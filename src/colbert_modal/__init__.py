"""ColBERT search over your own PDFs and notes, in-process or on Modal GPUs.

>>> from colbert_modal import ColbertIndexer
>>> idx = ColbertIndexer("papers")                      # doctest: +SKIP
>>> idx.index(["./pdfs"])                               # doctest: +SKIP
>>> idx.search("late interaction retrieval", k=5)       # doctest: +SKIP

Importing this package is cheap: torch, ragatouille and modal are imported
only when an index is built or searched.
"""


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
    RemoteUnavailableError,
    SettingsMismatchError,
    UnsupportedFileTypeError,
)
from .indexer import ColbertIndexer
from .models import (
    Chunk,
    Document,
    FileWarning,
    IndexInfo,
    IndexReport,
    Page,
    SearchResult,
    SearchResults,
    SkippedFile,
)
from .store import default_index_root, list_indexes

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
    "RemoteUnavailableError",
    "SearchResult",
    "SearchResults",
    "SettingsMismatchError",
    "SkippedFile",
    "UnsupportedFileTypeError",
    "__version__",
    "default_index_root",
    "list_indexes",
]
