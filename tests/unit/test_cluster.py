"""The cluster name, subdomains and handed-out URLs (pure)."""

from __future__ import annotations

import pytest

from plane.cluster import (
    ClusterName,
    ClusterNameError,
    backend_url,
    cluster_of_url,
    parse_cluster,
    refusal,
    subdomain_problem,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plane.example.com", ClusterName("plane.example.com")),
        ("Plane.Example.com:9090", ClusterName("plane.example.com", 9090)),
        ("localhost:80", ClusterName("localhost", 80)),
        ("127.0.0.1:9090", ClusterName("127.0.0.1", 9090)),
        ("[::1]:9090", ClusterName("::1", 9090)),
    ],
)
def test_cluster_names_parse(text: str, expected: ClusterName) -> None:
    assert parse_cluster(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://plane.test",
        "plane.test/x",
        "a@plane.test",
        "plane.test:x",
        "plane.test:0",
        "pla ne.test",
        "-plane.test",
        "plane.test:70000",
        "plane_test",
    ],
)
def test_what_is_not_host_port_is_refused(text: str) -> None:
    with pytest.raises(ClusterNameError):
        parse_cluster(text)


def test_str_round_trips_and_knows_ip_hosts() -> None:
    for text in ("plane.test", "plane.test:9090", "127.0.0.1:1", "[::1]:2"):
        assert str(parse_cluster(text)) == text
    assert parse_cluster("127.0.0.1").is_ip and parse_cluster("[::1]:2").is_ip
    assert not parse_cluster("localhost").is_ip


def test_the_default_cluster_is_the_public_urls_host_and_port() -> None:
    assert cluster_of_url("http://127.0.0.1:9090") == ClusterName("127.0.0.1", 9090)
    assert cluster_of_url("https://Plane.Example.com/base/") == ClusterName("plane.example.com")


@pytest.mark.parametrize("good", ["a", "doc-1", "0", "a" * 63, "x-y-z9"])
def test_valid_subdomains(good: str) -> None:
    assert subdomain_problem(good) is None


@pytest.mark.parametrize("bad", ["", "-a", "a-", "A", "a.b", "a_b", "é", "a" * 64, "a b"])
def test_invalid_subdomains_say_why(bad: str) -> None:
    assert subdomain_problem(bad)


def test_refusal_names_the_field() -> None:
    named = parse_cluster("plane.test:9090")
    assert refusal(named, None, None) is None
    assert refusal(named, "PLANE.test:9090", "doc") is None
    kind, message = refusal(named, "other.test:9090", None) or ("", "")
    assert kind == "InvalidClusterName" and message.endswith("@ $.spawn_config.cluster")
    kind, message = refusal(named, "not a name", None) or ("", "")
    assert kind == "InvalidClusterName" and message.endswith("@ $.spawn_config.cluster")
    kind, message = refusal(parse_cluster("127.0.0.1:9090"), None, "doc") or ("", "")
    assert kind == "InvalidRequest" and message.endswith("@ $.spawn_config.subdomain")
    assert refusal(parse_cluster("127.0.0.1:9090"), "127.0.0.1:9090", None) is None


def test_backend_urls() -> None:
    named = parse_cluster("plane.test:9090")
    assert backend_url("http://127.0.0.1:9090/", "tok", subdomain=None, cluster=named) == (
        "http://127.0.0.1:9090/tok/"
    )
    assert backend_url("http://127.0.0.1:9090", "tok", subdomain="doc", cluster=named) == (
        "http://doc.plane.test:9090/tok/"
    )
    assert backend_url(
        "https://edge.example.com/plane/", "s.tok", subdomain="doc", cluster=parse_cluster("x.io")
    ) == ("https://doc.x.io/plane/s.tok/")
