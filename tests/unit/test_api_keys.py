"""API keys and exposure checks: what a header grants, loopback detection, config refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from plane.api.keys import Access, ApiKeys
from plane.config import ConfigError, PlaneConfig, is_loopback

FULL = "full-key-0123456789"
READ = "read-key-0123456789"


def test_access_by_header() -> None:
    keys = ApiKeys(full=FULL, read=READ)
    assert keys.access(f"Bearer {FULL}") is Access.FULL
    assert keys.access(f"bearer  {FULL} ") is Access.FULL
    assert keys.access(f"Bearer {READ}") is Access.READ
    for header in [
        None,
        "",
        "Bearer",
        f"Basic {FULL}",
        f"Bearer {FULL}x",
        FULL,
        f"Bearer {READ[:-1]}",
    ]:
        assert keys.access(header) is Access.NONE, header
    assert ApiKeys().access(None) is Access.FULL  # no key: open


def test_reload_is_all_or_nothing(tmp_path: Path) -> None:
    full_file, read_file = tmp_path / "full", tmp_path / "read"
    full_file.write_text(FULL + "\n")
    read_file.write_text(READ)
    keys = ApiKeys.load(key_file=full_file, read_key_file=read_file)
    assert (keys.full, keys.read) == (FULL, READ)
    full_file.write_text("new-full-key-000")
    read_file.write_text("bad key with spaces")
    with pytest.raises(ConfigError, match="--read-key-file"):
        keys.reload()
    assert (keys.full, keys.read) == (FULL, READ), "a failed reload changes nothing"
    read_file.write_text("new-full-key-000")
    with pytest.raises(ConfigError, match="must differ"):
        keys.reload()
    read_file.write_text("new-read-key-000")
    keys.reload()
    assert (keys.full, keys.read) == ("new-full-key-000", "new-read-key-000")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_config_refuses_an_exposed_api_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        PlaneConfig(api_listen="0.0.0.0:8080")
    assert PlaneConfig(api_listen="0.0.0.0:8080", insecure_no_auth=True).exposed_without_auth
    assert not PlaneConfig(api_listen="0.0.0.0:8080", api_key=FULL).exposed_without_auth
    assert not PlaneConfig(api_listen="[::1]:8080").exposed_without_auth
    with pytest.raises(ConfigError, match="give one"):
        PlaneConfig(api_key=FULL, api_key_file=tmp_path / "k")
    with pytest.raises(ConfigError, match="needs a full key"):
        PlaneConfig(read_key_file=tmp_path / "k")
