"""Every error colbert_modal raises, in one tree.

Catch :class:`ColbertModalError` to catch them all. Upstream errors (pypdf,
ragatouille/colbert-ai, torch, huggingface_hub, modal) are translated where
they cross into this library, with the original kept as ``__cause__``.

::

    ColbertModalError
    ├── ConfigurationError (ValueError)      an argument or setting is wrong
    │   ├── InvalidIndexNameError            name with '/', '..', spaces, ...
    │   └── SettingsMismatchError            model/chunking differ from the index's
    ├── DependencyMissingError (ImportError) an optional extra is not installed
    ├── LoadError                            one input file could not be used
    │   ├── FileAccessError (OSError)        missing, unreadable, symlink loop
    │   ├── UnsupportedFileTypeError         extension we do not read
    │   ├── EmptyDocumentError               zero bytes, or no text at all
    │   │   └── NoTextLayerError             a PDF of scanned images
    │   ├── EncryptedPDFError                no password, or a wrong one
    │   └── CorruptFileError                 truncated, malformed, not a PDF
    ├── NoDocumentsError                     a batch had nothing indexable
    ├── IndexNotFoundError (LookupError)     no index of that name
    ├── IndexStorageError (OSError)          index root not writable, damaged index
    ├── IndexLockedError                     another process is writing the index
    ├── ShardBuildError                      a shard of a sharded index failed to build
    ├── ModelLoadError                       checkpoint cannot be fetched or loaded
    ├── EngineError                          ragatouille/colbert-ai failed
    └── RemoteError                          the Modal side failed
        ├── ModalCredentialsError            no Modal token configured
        ├── RemoteTimeoutError               a Modal function ran past its time limit
        └── RemoteUnavailableError           Modal cannot be reached / app missing

Per-file :class:`LoadError` subclasses are normally not raised out of
:meth:`ColbertIndexer.index`: they end up, one per file, in
:attr:`IndexReport.skipped` while the rest of the batch is indexed. They are
raised by the single-file loader :func:`colbert_modal.loaders.load_file`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ColbertModalError",
    "ConfigurationError",
    "CorruptFileError",
    "DependencyMissingError",
    "EmptyDocumentError",
    "EncryptedPDFError",
    "EngineError",
    "FileAccessError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexStorageError",
    "InvalidIndexNameError",
    "LoadError",
    "ModalCredentialsError",
    "ModelLoadError",
    "NoDocumentsError",
    "NoTextLayerError",
    "RemoteError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "SettingsMismatchError",
    "ShardBuildError",
    "UnsupportedFileTypeError",
]


class ColbertModalError(Exception):
    """Base class of every error raised by colbert_modal."""


class ConfigurationError(ColbertModalError, ValueError):
    """An argument, environment variable or setting is invalid."""


class InvalidIndexNameError(ConfigurationError):
    """An index name is not a plain name (letters, digits, '-', '_')."""


class SettingsMismatchError(ConfigurationError):
    """The model or chunk settings differ from those the index was built with."""


class DependencyMissingError(ColbertModalError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class LoadError(ColbertModalError):
    """One input file could not be loaded. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across processes and Modal
        return (type(self), (self.path, self.reason))


class FileAccessError(LoadError, OSError):
    """The path is missing, unreadable, or a symlink loop."""

    def __str__(self) -> str:  # OSError would otherwise format its own args
        return f"{self.path}: {self.reason}"


class UnsupportedFileTypeError(LoadError):
    """The file's extension is not one colbert_modal reads."""


class EmptyDocumentError(LoadError):
    """The file holds no text at all (zero bytes, whitespace only)."""


class NoTextLayerError(EmptyDocumentError):
    """A PDF whose pages carry no extractable text (scanned images); OCR it first."""


class EncryptedPDFError(LoadError):
    """The PDF is encrypted and no (or a wrong) password was given."""


class CorruptFileError(LoadError):
    """The file is truncated, malformed, or not what its extension says."""


class NoDocumentsError(ColbertModalError):
    """A call to ``index`` found nothing it could index.

    ``report`` holds the :class:`~colbert_modal.records.IndexReport` with the
    reason for every file that was skipped.
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # keep the report when raised in a Modal container
        return (type(self), (str(self), self.report))


class IndexNotFoundError(ColbertModalError, LookupError):
    """No index of that name exists under the index root."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "index not found"


class IndexStorageError(ColbertModalError, OSError):
    """The index root cannot be written, or an index on disk is damaged."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "index storage error"


class IndexLockedError(ColbertModalError):
    """Another process holds the write lock of this index."""


class ShardBuildError(ColbertModalError):
    """One or more shards of a sharded index failed to build; nothing was published.

    ``failures`` maps each failed shard's id to its error. The index keeps
    its previous generation, whole and searchable.
    """

    def __init__(self, message: str, failures: dict[str, BaseException] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})

    def __reduce__(self):  # keep the failures when raised in a Modal container
        return (type(self), (str(self), self.failures))


class ModelLoadError(ColbertModalError):
    """The ColBERT checkpoint cannot be fetched or loaded."""


class EngineError(ColbertModalError):
    """The ColBERT engine (ragatouille / colbert-ai / torch) failed."""


class RemoteError(ColbertModalError):
    """Running on Modal failed."""


class ModalCredentialsError(RemoteError):
    """No Modal credentials are configured on this machine."""


class RemoteTimeoutError(RemoteError):
    """A Modal function (e.g. the index build) ran past its time limit; the message says how to raise it."""


class RemoteUnavailableError(RemoteError):
    """Modal cannot be reached, or the deployed app is missing."""
