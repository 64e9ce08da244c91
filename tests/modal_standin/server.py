"""The stand-in's servers and state: gRPC (grpclib) and a small HTTP endpoint (aiohttp).

Both listen on 127.0.0.1 on free ports and run on one asyncio loop in a
background thread. The HTTP endpoint stands in for the presigned S3 URLs that
Modal hands out: blobs (arguments and results over 2 MiB) and the blocks of
Volume files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from grpclib.server import Server

from .containers import Container, ContainerKilled, Kill, View, install_patches, running_in
from .images import ImageBuilds
from .servicer import TIMEOUT, AppRecord, Call, FunctionCallRecord, FunctionRecord, Servicer

__all__ = ["TIMEOUT", "Container", "ContainerKilled", "Injection", "Kill", "StandIn"]

TOKEN = ("ak-standin-token", "as-standin-secret")


@dataclass
class Injection:
    """A failure waiting for the call it targets (see :meth:`StandIn.inject`)."""

    tag: str
    outcome: Any
    index: int | None = None
    match: Callable[[tuple, dict], bool] | None = None
    times: int = 1

    def targets(self, tag: str, base_tag: str, idx: int, args: tuple, kwargs: dict) -> bool:
        if self.tag not in (tag, base_tag):
            return False
        if self.index is not None and self.index != idx:
            return False
        return self.match is None or bool(self.match(args, kwargs))


class StandIn:
    """A stand-in for Modal's API server, for the real modal client.

    Volumes live in directories: the Volume named ``x`` is ``volumes_root / x``.

    Test hooks (all reset by :meth:`reset`):

    - ``inject(tag, exc)``: the next call of ``tag`` ("manifest", "Writer.apply",
      or "Writer.*" for any method) raises ``exc`` in the "container", which the
      client re-raises; ``inject(tag, TIMEOUT)`` makes it answer a function timeout
      without running the body. ``index=n`` targets the input of index n of a
      ``.map()``/``.starmap()`` (0-based), ``match=lambda args, kwargs: ...`` the
      call whose arguments it accepts; ``times=k`` fails k calls (retries).
    - ``timeouts[tag] = seconds``: overrides the function's ``timeout=``; a body
      that runs longer answers TIMEOUT (the thread itself runs on).
    - ``calls``: every input (tag, arguments, its index in its function call,
      class parameters, ``with_options`` options, GPUs, the "container" that ran it,
      retries, status); ``function_calls``: each ``.remote()``, ``.spawn()``,
      ``.map()`` or ``.starmap()`` with its inputs; ``rpcs``: every RPC name
      received; ``unimplemented``: RPCs asked for that the stand-in lacks.
    - ``token``: the (id, secret) every RPC must carry, or None to accept any.
    - ``build_images(fail_on=..., failure=[...])``: images not built yet build
      (their logs streamed by ``ImageJoinStreaming``), see :mod:`.images`;
      ``builds.played`` lists the builds streamed.
    """

    def __init__(self, volumes_root: Path) -> None:
        self.volumes_root = Path(volumes_root)
        self.token: tuple[str, str] | None = TOKEN
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.http_port = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self._clear()

    def _clear(self) -> None:
        self.apps: dict[str, AppRecord] = {}
        self.deployed: dict[str, str] = {}
        self.functions: dict[str, FunctionRecord] = {}
        self.calls: list[Call] = []
        self.calls_by_id: dict[str, Call] = {}
        self.function_calls: dict[str, FunctionCallRecord] = {}
        self.inputs_by_jwt: dict[str, Call] = {}
        self.blobs: dict[str, bytes] = {}
        self.blob_outputs: list[str] = []
        self.blocks: dict[bytes, bytes] = {}
        self.reads: dict[str, tuple[Path, int, int]] = {}
        self.images: list[Any] = []
        self.builds = ImageBuilds()
        for box in getattr(self, "all_containers", {}).values():
            box.die("the stand-in was reset")  # a previous test's leftovers publish nothing more
        self.containers = 0  # class instances made so far
        self.function_containers = 0  # function containers made so far
        self.all_containers: dict[int | str, Container] = {}
        self.volume_lock = threading.Lock()  # commits and view copies, one at a time
        #: 2 (VolumeFS v2, the default of new Volumes) or 1: what VolumeGetOrCreate answers
        self.volume_version = 2
        self.volume_events: list[tuple[str, int | str, str]] = []  # ("reload" | "commit", container, volume id)
        self.mount_files: dict[str, bytes] = {}  # content by sha256 (mounts, Volume v1 uploads)
        self.dicts: dict[str, dict[bytes, bytes]] = {}  # named Dicts: serialized key -> serialized value
        self.injections: list[Injection] = []
        self.timeouts: dict[str, float] = {}
        self.rpcs: list[str] = []
        self.unimplemented: list[str] = []
        self.disconnects: list[tuple[str, int, str]] = []

    # --- lifecycle --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        """The environment variables that point the modal client here."""
        env = {"MODAL_SERVER_URL": self.url}
        if self.token is not None:
            env["MODAL_TOKEN_ID"], env["MODAL_TOKEN_SECRET"] = self.token
        if urllib.request.getproxies():
            env["MODAL_DISABLE_API_PROXY"] = "1"  # loopback must not go through a proxy
        return env

    def start(self) -> StandIn:
        install_patches()
        self.volumes_root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._serve, name="modal-standin", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("the Modal stand-in did not start") from self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self._thread = None

    def reset(self, volumes_root: Path | None = None) -> None:
        """Forget apps, functions, calls and hooks; optionally move the Volumes elsewhere."""
        self._clear()
        self.token = TOKEN
        if volumes_root is not None:
            self.volumes_root = Path(volumes_root)
            self.volumes_root.mkdir(parents=True, exist_ok=True)

    def volume_dir(self, name: str) -> Path:
        """The Volume's committed files (what the client's Volume calls and a fresh container see)."""
        return self.volumes_root / name

    def view_dir(self, container: int | str, name: str) -> Path:
        """Where container ``container`` sees Volume ``name`` (its own copy, see :mod:`.containers`)."""
        return self.volumes_root.with_name(self.volumes_root.name + "-containers") / f"c{container}" / name

    def dict_items(self, name: str) -> dict[Any, Any]:
        """The entries of the named Dict, deserialized."""
        from modal._serialization import deserialize

        return {deserialize(k, None): deserialize(v, None) for k, v in self.dicts.get(name, {}).items()}

    def dict_put(self, name: str, key: Any, value: Any) -> None:
        """Set an entry of the named Dict directly (as another app would)."""
        from modal._serialization import serialize

        self.dicts.setdefault(name, {})[serialize(key)] = serialize(value)  # no lock: inject's match may call this

    @contextlib.contextmanager
    def inside(self, mounts: Mapping[str, str], function_id: str = "") -> Iterator[Container]:
        """Run the ``with`` body (and the threads it starts) in a new container of a function the stand-in does
        not call itself, e.g. a web endpoint whose ASGI app the test serves in-process: ``mounts``
        ({mount path: Volume name}) viewed as a container sees them (taken now), ``modal.is_local()`` False,
        its Volume calls its own. The container dies at the end of the block."""
        with self.lock:
            self.function_containers += 1
            box = Container(f"f{self.function_containers}", function_id, dict(mounts))
            self.all_containers[box.id] = box
            for name in sorted(set(box.mounts.values())):
                box.views[name] = View(self.volume_dir(name), self.view_dir(box.id, name), self.volume_lock)
        try:
            with running_in(box):
                yield box
        finally:
            box.die("its block ended")

    def kill(self, container: int | str, why: str = "killed by the test") -> None:
        """Kill a container now (see :meth:`.containers.Container.die`)."""
        self.all_containers[container].die(why)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the server loop (called from the loop)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- test hooks -------------------------------------------------------------

    def inject(
        self,
        tag: str,
        outcome: BaseException | object,
        *,
        index: int | None = None,
        match: Callable[[tuple, dict], bool] | None = None,
        times: int = 1,
    ) -> None:
        """The next call of ``tag`` raises ``outcome`` in the container, or times out if it is TIMEOUT.

        ``index``: only the input of that index in its function call (the n-th input of a
        ``.map()``/``.starmap()``, 0-based; a ``.remote()`` or ``.spawn()`` is index 0).
        ``match``: only a call whose ``(args, kwargs)`` it accepts. ``times``: how many calls
        it fails (a retried input is a new call). Injections are used in the order given.
        """
        self.injections.append(Injection(tag, outcome, index, match, times))

    def take_injection(self, tag: str, base_tag: str, idx: int, args: tuple, kwargs: dict) -> Any:
        """The outcome injected for this call (used up), or None."""
        with self.lock:
            for injection in self.injections:
                if injection.targets(tag, base_tag, idx, args, kwargs):
                    injection.times -= 1
                    if injection.times <= 0:
                        self.injections.remove(injection)
                    return injection.outcome
        return None

    def build_images(self, *, fail_on: str | None = None, failure: list[str] | None = None) -> None:
        """From now on an image not built yet builds, failing at the first step containing ``fail_on``."""
        self.builds = ImageBuilds(enabled=True, fail_on=fail_on, failure=list(failure or []))

    def calls_of(self, tag: str) -> list[Call]:
        return [c for c in self.calls if c.tag == tag or (tag.endswith(".*") and c.tag.startswith(tag[:-1]))]

    # --- the loop thread --------------------------------------------------------

    def _serve(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_servers())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._stop_servers())
            loop.close()

    async def _start_servers(self) -> None:
        self._grpc = Server([Servicer(self)])
        await self._grpc.start("127.0.0.1", 0)
        self.port = self._grpc._server.sockets[0].getsockname()[1]

        app = web.Application(client_max_size=1 << 31)
        app.router.add_put("/blob/{blob_id}", self._put_blob)
        app.router.add_get("/blob/{blob_id}", self._get_blob)
        app.router.add_put("/block/{sha256}", self._put_block)
        app.router.add_get("/read/{token}", self._read)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = self._runner.addresses[0][1]

    async def _stop_servers(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._grpc.close()
        await self._grpc.wait_closed()
        await self._runner.cleanup()

    # --- HTTP handlers ----------------------------------------------------------

    async def _put_blob(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.blobs[request.match_info["blob_id"]] = data
        return web.Response(headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def _get_blob(self, request: web.Request) -> web.Response:
        data = self.blobs.get(request.match_info["blob_id"])
        if data is None:
            return web.Response(status=404, text="no such blob")
        return web.Response(body=data)

    async def _put_block(self, request: web.Request) -> web.Response:
        data = await request.read()
        digest = bytes.fromhex(request.match_info["sha256"])
        if hashlib.sha256(data).digest() != digest:
            return web.Response(status=400, text="block does not match its sha256")
        self.blocks[digest] = data
        return web.Response(body=b"stored")

    async def _read(self, request: web.Request) -> web.Response:
        entry = self.reads.get(request.match_info["token"])
        if entry is None:
            return web.Response(status=404, text="no such read")
        path, offset, length = entry
        with path.open("rb") as fh:
            fh.seek(offset)
            return web.Response(body=fh.read(length))
