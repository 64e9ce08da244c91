"""``colbert_modal.remote.transports``: how a session reaches Modal, chosen once, driven by the real
modal client against the stand-in (``tests/modal_standin``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from colbert_modal import ColbertIndexer, modal_app
from colbert_modal.errors import ConfigurationError, RemoteUnavailableError
from colbert_modal.remote import transports
from modal_standin import StandIn, standin_fixture, standin_server_fixture  # noqa: F401 (fixtures)
from test_standin_remote import HUB_ID, HubModel, _remote, hub_model, standin  # noqa: F401 (fixtures)


def test_the_kind_picks_one_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(transports.transport_for("inprocess")) is transports.InProcessTransport
    with pytest.raises(ConfigurationError, match="one of"):
        transports.transport_for("cloud")


def test_shards_against_an_app_never_deployed_says_deploy_not_redeploy(
    standin: StandIn, corpus_dir: Path, tmp_path: Path
) -> None:
    """Modal's ClassGet not-found text names the class for a missing app too: it is not read for 'ShardWriter'."""
    with _remote(tmp_path, "sharded", model=HUB_ID, shards=3, remote_app="deployed") as idx:
        with pytest.raises(RemoteUnavailableError) as info:
            idx.index([corpus_dir])
    message = str(info.value)
    assert "no deployed Modal app 'colbert-modal'" in message and "colbert-modal deploy" in message
    assert "predates" not in message and "redeploy" not in message
    assert not standin.calls_of("Writer.*")


def test_push_to_a_fresh_account_creates_the_volume(
    standin: StandIn, corpus_dir: Path, tmp_path: Path, colbert_checkpoint: Path, hub_model: HubModel
) -> None:
    volume = standin.volume_dir(modal_app.VOLUME_NAME)
    shutil.rmtree(volume, ignore_errors=True)  # a fresh account: nothing has run on it yet
    local = ColbertIndexer("pushed", model=HUB_ID, index_root=tmp_path / "local", backend="exact", progress=False)
    local.index([corpus_dir])
    with _remote(tmp_path, "pushed", model=HUB_ID) as idx:  # the default, ephemeral kind
        idx.push()
        assert idx.search("penguin", k=1)[0].source.endswith("bestiary.pdf")
    assert (volume / "pushed" / "CURRENT").is_file()
