"""plane.addresses: the one HOST:PORT parser and formatter."""

from __future__ import annotations

import pytest

from plane.addresses import join_host_port, split_host_port
from plane.config import ConfigError, parse_listen
from plane.tokens import is_backend_id, new_backend_id


def test_split_host_port_is_strict_by_default() -> None:
    assert split_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_host_port("[::1]:80") == ("::1", 80)
    for bad in ["127.0.0.1", ":80", "127.0.0.1:0", "127.0.0.1:x", "127.0.0.1:70000", "h:+1"]:
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_split_host_port_defaults_the_host_when_asked() -> None:
    assert split_host_port(":8080", default_host="10.0.0.1") == ("10.0.0.1", 8080)
    assert split_host_port("8080", default_host="10.0.0.1") == ("10.0.0.1", 8080)
    assert split_host_port("h:0", allow_port_zero=True) == ("h", 0)


def test_join_is_the_inverse_of_split() -> None:
    for host, port in [("127.0.0.1", 80), ("::1", 8080), ("example.com", 1)]:
        assert split_host_port(join_host_port(host, port)) == (host, port)
    assert join_host_port("::1", 80) == "[::1]:80"


def test_parse_listen_names_the_option() -> None:
    assert parse_listen(":0", "--api-listen") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="--api-listen"):
        parse_listen("host:99999", "--api-listen")
    with pytest.raises(ConfigError, match="--proxy-listen"):
        parse_listen("host:port", "--proxy-listen")


def test_one_backend_id_rule() -> None:
    assert is_backend_id(new_backend_id())
    assert is_backend_id("a" * 64)
    for bad in ["", "a" * 65, "-a", "a/b", "a\n", "ä"]:
        assert not is_backend_id(bad), bad
