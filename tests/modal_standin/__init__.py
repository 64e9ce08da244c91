"""A stand-in for Modal's API server, so that tests drive the real modal client offline.

Use the ``modal_standin`` fixture (import the two fixture functions into the
test module; pytest finds fixtures among a module's names)::

    from modal_standin import standin_fixture, standin_server_fixture  # noqa: F401

    def test_manifest(modal_standin):
        with modal_app.app.run():
            assert modal_app.manifest.remote("papers") is None

The fixture points the modal client at the stand-in (``MODAL_SERVER_URL``,
``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``), gives each test its own Volume
directories, and sets ``$COLBERT_MODAL_VOLUME_PATH`` to the directory of the
app's Volume: its *committed* files, which the client's Volume calls
(``read_file``, ``listdir``, ``batch_upload``, ``remove_file``) and
``inprocess`` sessions use.

Volumes and Dicts behave as Modal's do (:mod:`.containers` quotes the modal
source each rule comes from). Each container (a class instance, a warm slot of
a function) has its **own view** of each Volume it mounts, a private copy
taken when the container starts and at ``Volume.reload()``; the bodies see
``modal.is_local()`` False and ``colbert_modal``'s ``volume_path()`` at that
view. ``Volume.commit()`` publishes the view's changes (last write wins per
path, deletions included, a deleted folder with what others committed into
it); ``reload()`` commits, then brings the view up to the committed files in
place (a path there before and after never vanishes meanwhile), and fails
while the container has a file open under its mount. ``StandIn.volume_version`` (2, or
1) is the version ``VolumeGetOrCreate`` answers; v1 Volumes use the v1 RPCs
(``VolumeListFiles``, ``VolumePutFiles`` with ``MountPutFile`` contents,
``VolumeRemoveFile``). Named ``modal.Dict`` s are served (``DictGetOrCreate``,
``DictUpdate`` with ``if_not_exists`` for ``put(skip_if_exists=True)``,
``DictGet``, ``DictPop``, ``DictContains``, ``DictLen``, ``DictClear``); their
entries never expire (Modal: after 7 days of inactivity), see
``StandIn.dict_items``.

Containers die: ``inject(tag, Kill(at))`` kills the container of the next such
call at its Volume commit (``"commit"``: nothing published, the body's work
lost; ``"mid-commit"``: the first half of its changes published) or reload;
the input answers INTERNAL_FAILURE (which modal's client retries for
``.remote()``). A call past its timeout answers TIMEOUT and its container is
killed too. A dead container's Volume and Dict calls (and ``volume_path()``)
raise ``ContainerKilled`` in its threads, so nothing it does later is seen; its
threads are not stopped (they end at such a call, or run on unseen). Calls it started are **not** cancelled: the children of a
timed-out parent (its ``.map``) run on and commit (whether Modal cancels them
is not documented; this is the unkind answer).

One server serves the whole session (a module-level Volume that the client
has hydrated keeps its client and id across tests, as it would against Modal);
each test starts from a reset state. See :class:`StandIn` for the hooks
(``inject``, ``timeouts``, ``calls``, ``function_calls``, ``rpcs``, ``token``).

Calls: ``.remote()``, ``.remote_gen()``, ``.spawn()`` + ``FunctionCall.get()``
(``cancel()`` answers TERMINATED), ``.map()`` / ``.starmap()`` / ``.for_each()``
(FunctionMap, FunctionPutInputs, FunctionGetOutputs in completion order), on
functions, on methods of a parametrized class, and on ``with_options`` variants;
also from inside a body (the test process has the app running, so the body's
handles are hydrated, as in a container). Every input runs in its own thread as
it arrives, so the inputs of a map run concurrently. A class variant (class
parameters + ``with_options``) keeps its instances, each a warm
container: an input takes one with room or makes one (``@enter`` runs once per
instance, before any of its inputs, as Modal runs it when a container starts); a container runs one input at a time, or up to ``n`` with
``@modal.concurrent(max_inputs=n)``. Bodies see
``modal.current_input_id()`` and ``modal.current_function_call_id()`` as in a
container, and a call made from a body records it as ``Call.parent_input_id``.
Retries (``retries=`` or ``with_options(retries=...)``): the client retries
``.remote()`` and map inputs (FunctionRetryInputs), the stand-in those of
``.spawn()``; each attempt is a new call for ``inject`` (``times=``).

Image builds happen only where a test asks (``build_images``, see
:mod:`.images`); otherwise every image is "built". What it does not model:
the input plane, autoscaling limits (``max_containers`` does not serialise
calls), background commits and the commit at container shutdown (a body that does not
commit loses its writes), ``@exit``, and output expiry (outputs are kept).
A generator body (``.remote_gen()``) runs to its end in its thread, each item
sent on the call's ``data_out`` stream as it comes, then ``GeneratorDone``.
A call that is cancelled answers TERMINATED but its thread runs on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .containers import Container, ContainerKilled, Kill
from .server import TOKEN, Injection, StandIn
from .servicer import TIMEOUT, Call, FunctionCallRecord

__all__ = [
    "TIMEOUT",
    "TOKEN",
    "Call",
    "Container",
    "ContainerKilled",
    "FunctionCallRecord",
    "Injection",
    "Kill",
    "StandIn",
    "reset_modal_client",
    "standin_fixture",
    "standin_server_fixture",
]


def reset_modal_client() -> None:
    """Make the next modal call build the process-wide client afresh from the environment.

    The modal client keeps one ``Client.from_env()`` per process, made from the
    configuration (server URL, credentials) at its first use; a test that
    changes either needs a new one. The old client is dropped, not closed:
    objects it hydrated (a module-level Volume) keep working, as they would in
    a long-lived process.
    """
    from modal._environments import ENVIRONMENT_CACHE
    from modal.client import _Client

    _Client._client_from_env = None
    ENVIRONMENT_CACHE.clear()


def _client_fits(server: StandIn) -> bool:
    from modal.client import _Client

    client = _Client._client_from_env
    return (
        client is not None
        and not client.is_closed()
        and client.server_url == server.url
        and client._credentials == server.token
    )


#: The one server of the process, and how many fixture instances use it: each test module that imports
#: the fixture defines one of its own, but objects the modal client hydrated (a module-level Volume or
#: Dict) keep talking to the server they were hydrated against, so every module must share it.
_SHARED: list = []


@pytest.fixture(scope="session", name="modal_standin_server")
def standin_server_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StandIn]:
    """The session's stand-in server (use ``modal_standin`` in tests)."""
    if not _SHARED:
        _SHARED[:] = [StandIn(tmp_path_factory.mktemp("modal-standin")).start(), 0]
    _SHARED[1] += 1
    try:
        yield _SHARED[0]
    finally:
        _SHARED[1] -= 1
        if not _SHARED[1]:
            reset_modal_client()
            _SHARED.pop(0).stop()
            _SHARED.clear()


@pytest.fixture(name="modal_standin")
def standin_fixture(
    modal_standin_server: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StandIn]:
    """The stand-in, reset, with the modal client and $COLBERT_MODAL_VOLUME_PATH pointed at it."""
    from colbert_modal import modal_app

    server = modal_standin_server
    server.reset(tmp_path / "modal-volumes")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    volume = server.volume_dir(modal_app.VOLUME_NAME)
    volume.mkdir(parents=True)
    monkeypatch.setenv("COLBERT_MODAL_VOLUME_PATH", str(volume))
    if not _client_fits(server):
        reset_modal_client()
    yield server
    assert not server.unimplemented, f"the code path needs RPCs the stand-in lacks: {server.unimplemented}"
