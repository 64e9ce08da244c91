"""Moving indexes between this machine and the Modal Volume: pull, push, and the Volume's files.

``pull`` copies the published generation (and, for a sharded index, every
shard generation it names) into a local index root under its lock; ``push``
uploads a local generation (and its shards) and asks the Writer to adopt it.
:class:`VolumeFiles` is what both need of a Volume: :class:`ModalVolume`
(a real ``modal.Volume``, from outside any container) or
:class:`DirectoryVolume` (``inprocess`` sessions). Imports modal inside
functions only; the session is passed in.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, IndexNotFoundError
from ..records import IndexInfo
from ..sharding import adopt_shards, shard_generation
from ..store import Generation, IndexStore
from . import VOLUME_NAME
from .connection import translated

if TYPE_CHECKING:  # pragma: no cover
    from .client import RemoteSession

__all__ = ["DirectoryVolume", "ModalVolume", "VolumeFiles", "check_remote_model", "pull", "push"]


def check_remote_model(model: str, session: RemoteSession) -> None:
    """Refuse a local checkpoint directory for a session that runs on Modal (it cannot see it)."""
    if session.transport.runs_here:
        return  # the bodies run here; a local checkpoint directory is fine
    p = Path(model).expanduser()
    if p.is_dir() or p.is_absolute() or model.startswith((".", "~")):
        raise ConfigurationError(
            f"model {model!r} is a local checkpoint directory; remote mode runs on Modal, which cannot "
            "see your files. Use a Hugging Face hub id (e.g. 'colbert-ir/colbertv2.0', baked into the "
            "image at a pinned revision; more via COLBERT_MODAL_MODELS at deploy time), or mode='local'."
        )


class VolumeFiles:
    """The few Volume operations pull/push need, with paths relative to the Volume root."""

    def read(self, path: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def files(self, path: str) -> list[str]:  # pragma: no cover - interface
        """Every file under ``path`` (recursively), relative to the Volume root."""
        raise NotImplementedError

    def upload(self, local_dir: Path, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def remove(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class DirectoryVolume(VolumeFiles):
    """A directory standing in for the Volume (``inprocess`` sessions)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, path: str) -> bytes:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(path) from None

    def files(self, path: str) -> list[str]:
        base = self.root / path
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def upload(self, local_dir: Path, path: str) -> None:
        shutil.copytree(local_dir, self.root / path)

    def remove(self, path: str) -> None:
        target = self.root / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


class ModalVolume(VolumeFiles):
    """A real ``modal.Volume``, used from outside any container."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume

    def read(self, path: str) -> bytes:
        import modal.exception

        try:
            return b"".join(self.volume.read_file(path))
        except (FileNotFoundError, modal.exception.NotFoundError):  # the client raises the builtin
            raise FileNotFoundError(path) from None

    def files(self, path: str) -> list[str]:
        from modal.types import FileEntryType

        return sorted(e.path for e in self.volume.listdir(path, recursive=True) if e.type == FileEntryType.FILE)

    def upload(self, local_dir: Path, path: str) -> None:
        with self.volume.batch_upload() as batch:
            batch.put_directory(str(local_dir), path)

    def remove(self, path: str) -> None:
        self.volume.remove_file(path, recursive=True)


def pull(session: RemoteSession, store: IndexStore, *, overwrite: bool = True, lock_timeout: float = 0.0) -> Path:
    """Copy the published index ``store.name`` from the Volume into ``store``; returns its path."""
    vol = session.volume()
    name = store.name
    if store.exists() and not overwrite:
        raise ConfigurationError(
            f"a local index named {name!r} already exists under {store.root}; pass overwrite=True to replace it"
        )
    with translated(f"pulling {name!r}"):
        try:
            gen_name = vol.read(f"{name}/CURRENT").decode("utf-8").strip()
        except FileNotFoundError:
            raise IndexNotFoundError(f"no index named {name!r} on the Modal Volume {VOLUME_NAME!r}") from None
        prefix = f"{name}/generations/{gen_name}"
        with store.lock(lock_timeout):
            staging = store.staging_dir()
            _download(vol, prefix, staging)
            # a sharded index: each shard's generation the top one names, into the local shard's next one
            adopt_shards(store, staging,
                         lambda sid, gen, dest: _download(vol, f"{name}/shards/{sid}/generations/{gen}", dest))
            store.adopt(staging)
    return store.path


def _download(vol: VolumeFiles, prefix: str, dest_dir: Path) -> None:
    """Every file under ``prefix`` on the Volume, into ``dest_dir`` (same relative paths)."""
    for rel in vol.files(prefix):
        dest = dest_dir / PurePosixPath(rel).relative_to(prefix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(vol.read(rel))


def push(session: RemoteSession, generation: Generation) -> IndexInfo:
    """Copy a local generation to the Volume and publish it there (replacing the remote index)."""
    name = generation.manifest.name
    check_remote_model(generation.manifest.model, session)
    upload = uuid.uuid4().hex
    with translated(f"pushing {name!r}"):
        vol = session.volume()
        vol.upload(generation.path, f"{name}/uploads/{upload}")
        for sid in generation.manifest.shards or {}:  # a sharded index: every shard's live generation too
            part = shard_generation(generation, sid)
            if part is not None:
                vol.upload(part.path, f"{name}/uploads/{upload}/shards/{sid}")
    return session.adopt(name, upload)
