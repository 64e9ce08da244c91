"""A new user's first remote run: credentials as ``modal setup`` writes them, and the reachability probe.

The modal client reads ``~/.modal.toml`` and ``MODAL_PROFILE`` once, at
``import modal``, so the tests of a real configuration file run in a fresh
interpreter with a HOME of their own and no ``MODAL_*`` variables.
``socket.create_connection`` is patched there: nothing leaves the machine,
and the hosts the probe tries are recorded.

The credential checks are compared with the modal client's own verdict
(``Client.from_env`` with its network step patched out), so ours accepts what
the client accepts and refuses what it refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import modal.client
import modal.config
import pytest

from colbert_modal.errors import ModalCredentialsError
from colbert_modal.remote import connection as remote

SRC = Path(__file__).resolve().parent.parent / "src"

#: What ``modal setup`` writes: one profile, a token, no server_url (the default list is used).
SETUP_TOML = """\
[my-workspace]
token_id = "ak-FIRSTRUNTOKENID"
token_secret = "as-FIRSTRUNSECRET"
active = true
"""

#: Run in the fresh interpreter: check credentials, probe with a fake connect, report as JSON.
PROBE_SCRIPT = textwrap.dedent(
    """
    import json, os, socket
    tried = []
    refuse = set(filter(None, os.environ.get("REFUSE_HOSTS", "").split(",")))

    class _Conn:
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False

    def fake_connect(address, timeout=None, *args, **kwargs):
        tried.append(list(address))
        if address[0] in refuse:
            raise OSError(f"refused by the test: {address[0]}")
        return _Conn()

    socket.create_connection = fake_connect
    from colbert_modal.remote import connection as client
    out = {"urls": client.server_urls(), "targets": sorted(client.probe_targets())}
    try:
        client.check_credentials()
        client.probe_server(2)
        out["error"] = None
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["tried"] = sorted(tried)
    print("RESULT " + json.dumps(out))
    """
)


def _first_run(home: Path, toml: str | None, **env: str) -> dict:
    """Run PROBE_SCRIPT with HOME=home (holding ``toml`` as .modal.toml) and only ``env`` set."""
    home.mkdir(parents=True, exist_ok=True)
    if toml is not None:
        (home / ".modal.toml").write_text(toml, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "COLBERT_MODAL_"))}
    clean.update(HOME=str(home), PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", **env)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT], env=clean, capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_modal_setup_profile_and_default_server_list(tmp_path: Path) -> None:
    out = _first_run(tmp_path / "home", SETUP_TOML)
    assert out["error"] is None
    # The client's default is a comma-separated list; both hosts are tried (raced), on 443.
    assert out["urls"] == ["https://api.modal.com", "https://api.modal2.com"]
    assert out["targets"] == [["api.modal.com", 443], ["api.modal2.com", 443]]
    assert out["tried"] and all(t in out["targets"] for t in out["tried"])


def test_one_reachable_host_of_the_list_is_enough(tmp_path: Path) -> None:
    out = _first_run(tmp_path / "home", SETUP_TOML, REFUSE_HOSTS="api.modal.com")
    assert out["error"] is None
    assert ["api.modal2.com", 443] in out["tried"]
    out = _first_run(tmp_path / "home", SETUP_TOML, REFUSE_HOSTS="api.modal.com,api.modal2.com")
    assert out["error"].startswith("RemoteUnavailableError")
    assert "api.modal.com:443" in out["error"] and "api.modal2.com:443" in out["error"]


def test_server_url_of_the_profile_picked_by_modal_profile(tmp_path: Path) -> None:
    toml = SETUP_TOML + textwrap.dedent(
        """
        [staging]
        token_id = "ak-STAGING"
        token_secret = "as-STAGINGSECRET"
        server_url = "https://api.staging.example:8443"
        """
    )
    out = _first_run(tmp_path / "home", toml)  # the active profile: the default list
    assert out["targets"] == [["api.modal.com", 443], ["api.modal2.com", 443]]
    out = _first_run(tmp_path / "home", toml, MODAL_PROFILE="staging")
    assert out["error"] is None
    assert out["tried"] == [["api.staging.example", 8443]]
    # MODAL_SERVER_URL wins over the profile, as in the client.
    out = _first_run(tmp_path / "home", toml, MODAL_PROFILE="staging", MODAL_SERVER_URL="http://127.0.0.1:9")
    assert out["tried"] == [["127.0.0.1", 9]]


def test_modal_profile_that_does_not_exist(tmp_path: Path) -> None:
    out = _first_run(tmp_path / "home", SETUP_TOML, MODAL_PROFILE="typo")
    assert out["error"].startswith("ModalCredentialsError")
    assert "'typo'" in out["error"] and "modal token new --profile typo" in out["error"]
    assert out["tried"] == []  # refused before any connection
    assert "FIRSTRUNSECRET" not in out["error"]


def test_no_configuration_at_all(tmp_path: Path) -> None:
    out = _first_run(tmp_path / "home", None)
    assert out["error"].startswith("ModalCredentialsError") and "modal setup" in out["error"]


# --- our verdict against the client's, in this process --------------------------

SECRET = "SECRET-VALUE-NEVER-SHOWN"


def _client_verdict() -> str | None:
    """The modal client's own verdict on the configuration: None (accepted) or its error message."""

    async def no_network(self: object) -> None:
        return None

    previous = modal.client._Client._client_from_env
    modal.client._Client._client_from_env = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(modal.client._Client, "_open", no_network)
            modal.client.Client.from_env()
        return None
    except Exception as exc:
        return str(exc)
    finally:
        modal.client._Client._client_from_env = previous


CASES = {
    "token env": {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": SECRET},
    "token id only": {"MODAL_TOKEN_ID": "ak-x"},
    "oauth secret": {
        "MODAL_OAUTH_REFRESH_TOKEN": SECRET,
        "MODAL_OAUTH_CLIENT_ID": "client-1",
        "MODAL_OAUTH_CLIENT_SECRET": SECRET,
    },
    "oauth jwt key": {"MODAL_OAUTH_REFRESH_TOKEN": SECRET, "MODAL_OAUTH_CLIENT_ID": "c", "MODAL_OAUTH_JWT_KEY": SECRET},
    "oauth incomplete": {"MODAL_OAUTH_REFRESH_TOKEN": SECRET},
    "oauth both secrets": {
        "MODAL_OAUTH_REFRESH_TOKEN": SECRET,
        "MODAL_OAUTH_CLIENT_ID": "c",
        "MODAL_OAUTH_CLIENT_SECRET": SECRET,
        "MODAL_OAUTH_JWT_KEY": SECRET,
    },
    "token and oauth": {
        "MODAL_TOKEN_ID": "ak-x",
        "MODAL_TOKEN_SECRET": SECRET,
        "MODAL_OAUTH_REFRESH_TOKEN": SECRET,
        "MODAL_OAUTH_CLIENT_ID": "c",
        "MODAL_OAUTH_CLIENT_SECRET": SECRET,
    },
    "nothing": {},
}


@pytest.mark.parametrize("env", CASES.values(), ids=CASES.keys())
def test_credentials_agree_with_the_client(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modal.config, "_user_config", {})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client_says = _client_verdict()
    try:
        remote.check_credentials()
        ours = None
    except ModalCredentialsError as exc:
        ours = str(exc)
    assert (ours is None) == (client_says is None), (ours, client_says)
    if ours is not None:
        assert SECRET not in ours


def test_credentials_from_a_profile_agree_with_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modal.config, "_user_config", {"work": {"token_id": "ak-w", "token_secret": SECRET}})
    monkeypatch.setattr(modal.config, "_profile", "work")
    assert _client_verdict() is None
    remote.check_credentials()
    monkeypatch.setattr(modal.config, "_profile", "other")  # as MODAL_PROFILE=other would at import
    monkeypatch.setenv("MODAL_PROFILE", "other")
    assert "other" in (_client_verdict() or "")
    with pytest.raises(ModalCredentialsError, match="'other'") as info:
        remote.check_credentials()
    assert SECRET not in str(info.value)
