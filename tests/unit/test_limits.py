"""plane.limits: the caps drawn from the file-descriptor limit, and refusals by name."""

from __future__ import annotations

import resource

import pytest

from plane.config import ConfigError
from plane.limits import (
    FDS_PER_PROXY_CONNECTION,
    OVERCAP_FDS,
    RESERVED_FDS,
    FdLimit,
    budget,
    raise_fd_limit,
)
from plane.proxy.server import MAX_REJECTING


def fds(n: int) -> FdLimit:
    return FdLimit(soft=n, hard=n, before=n)


def test_defaults_fit_in_the_limit_with_room_kept() -> None:
    for limit in (1024, 20000, 65536, 1 << 20):
        caps = budget(fds(limit), proxy_max_connections=None, api_max_streams=None)
        used = caps.proxy_max_connections * FDS_PER_PROXY_CONNECTION + caps.api_max_streams
        assert used + RESERVED_FDS + OVERCAP_FDS <= limit
        assert caps.api_max_streams >= 16
        assert caps.proxy_max_connections >= (limit - RESERVED_FDS - OVERCAP_FDS) // 2 - 4096
    assert OVERCAP_FDS == MAX_REJECTING


def test_a_low_limit_says_so() -> None:
    low = budget(fds(1024), proxy_max_connections=None, api_max_streams=None)
    assert low.low and "LOW" in low.summary()
    high = budget(fds(1 << 20), proxy_max_connections=None, api_max_streams=None)
    assert not high.low and "LOW" not in high.summary()
    raised = budget(
        FdLimit(soft=1 << 20, hard=1 << 20, before=1024),
        proxy_max_connections=None,
        api_max_streams=None,
    )
    assert "raised from 1,024" in raised.summary()


def test_given_caps_are_kept_and_streams_fit_around_them() -> None:
    caps = budget(fds(20000), proxy_max_connections=9000, api_max_streams=None)
    assert caps.proxy_max_connections == 9000
    assert 16 <= caps.api_max_streams <= 20000 - RESERVED_FDS - OVERCAP_FDS - 18000
    caps = budget(fds(20000), proxy_max_connections=None, api_max_streams=100)
    assert caps.api_max_streams == 100
    assert caps.proxy_max_connections == (20000 - RESERVED_FDS - OVERCAP_FDS - 100) // 2


@pytest.mark.parametrize(
    ("proxy", "streams", "named"),
    [
        (50000, None, "--proxy-max-connections 50000"),
        (None, 30000, "--api-max-streams 30000"),
        (9000, 5000, "--proxy-max-connections 9000 and --api-max-streams 5000"),
    ],
)
def test_caps_the_limit_cannot_hold_are_refused_by_name(
    proxy: int | None, streams: int | None, named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as raised:
        budget(fds(20000), proxy_max_connections=proxy, api_max_streams=streams)
    assert "ulimit -n" in str(raised.value)


def test_raise_fd_limit_takes_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
            result = raise_fd_limit()
            assert result.before == 256
            assert result.soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        again = raise_fd_limit()
        assert again.soft == again.before  # already at the hard limit: nothing to do
    finally:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard)
        )
