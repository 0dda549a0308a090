"""The response framing rules (plane.proxy.framing), as a table."""

from __future__ import annotations

import pytest

from plane.proxy.framing import (
    Body,
    Framing,
    interim_forwarded,
    response_framing,
    upstream_reusable,
)

CLOSE = b"connection: close\r\n"
KEEP = b"connection: keep-alive\r\n"

# (HEAD?, HTTP/1.0?, keep-alive asked, status, has length, chunked)
#   -> (body, send length, until close, keep client, connection line)
TABLE = [
    # sized bodies pass as they are
    ((False, False, True, 200, True, False), (Body.LENGTH, True, False, True, b"")),
    ((False, False, False, 200, True, False), (Body.LENGTH, True, False, False, CLOSE)),
    ((False, True, True, 200, True, False), (Body.LENGTH, True, False, True, KEEP)),
    ((False, True, False, 200, True, False), (Body.LENGTH, True, False, False, CLOSE)),
    # chunked from the backend: re-chunked to 1.1, close-delimited to 1.0
    ((False, False, True, 200, False, True), (Body.CHUNKED, False, False, True, b"")),
    ((False, True, True, 200, False, True), (Body.CLOSE, False, False, False, CLOSE)),
    # close-delimited from the backend: the upstream cannot be reused
    ((False, False, True, 200, False, False), (Body.CHUNKED, False, True, True, b"")),
    ((False, True, True, 200, False, False), (Body.CLOSE, False, True, False, CLOSE)),
    ((False, True, False, 500, False, False), (Body.CLOSE, False, True, False, CLOSE)),
    # HEAD: no body, the length kept
    ((True, False, True, 200, True, False), (Body.NONE, True, False, True, b"")),
    ((True, False, True, 200, False, True), (Body.NONE, False, False, True, b"")),
    ((True, True, True, 200, False, False), (Body.NONE, False, False, True, KEEP)),
    # 204: no body, never a length
    ((False, False, True, 204, True, False), (Body.NONE, False, False, True, b"")),
    ((False, False, True, 204, False, False), (Body.NONE, False, False, True, b"")),
    # 304: no body, its length kept
    ((False, False, True, 304, True, False), (Body.NONE, True, False, True, b"")),
    ((False, True, False, 304, False, False), (Body.NONE, False, False, False, CLOSE)),
    # other statuses frame like 200
    ((False, False, True, 404, True, False), (Body.LENGTH, True, False, True, b"")),
    ((False, False, True, 503, False, True), (Body.CHUNKED, False, False, True, b"")),
]


@pytest.mark.parametrize(("given", "expected"), TABLE)
def test_response_framing(
    given: tuple[bool, bool, bool, int, bool, bool],
    expected: tuple[Body, bool, bool, bool, bytes],
) -> None:
    head, v10, keep, status, has_length, chunked = given
    framing = response_framing(
        head_request=head,
        version_10=v10,
        keep_alive=keep,
        status=status,
        has_length=has_length,
        chunked=chunked,
    )
    assert framing == Framing(*expected)


def test_head_lines_say_chunked_and_connection() -> None:
    chunked = response_framing(
        head_request=False,
        version_10=False,
        keep_alive=False,
        status=200,
        has_length=False,
        chunked=True,
    )
    assert chunked.head_lines == b"transfer-encoding: chunked\r\n" + CLOSE
    sized = response_framing(
        head_request=False,
        version_10=True,
        keep_alive=True,
        status=200,
        has_length=True,
        chunked=False,
    )
    assert sized.head_lines == KEEP


@pytest.mark.parametrize(
    ("status", "v10", "forwarded"),
    [(100, False, True), (103, False, True), (100, True, False), (101, False, False)],
)
def test_interim(status: int, v10: bool, forwarded: bool) -> None:
    assert interim_forwarded(status, v10) is forwarded


@pytest.mark.parametrize(
    ("until_close", "upstream_keep", "reusable"),
    [(False, True, True), (False, False, False), (True, True, False)],
)
def test_upstream_reusable(until_close: bool, upstream_keep: bool, reusable: bool) -> None:
    framing = Framing(Body.CHUNKED, False, until_close, True, b"")
    assert upstream_reusable(framing, upstream_keep) is reusable
