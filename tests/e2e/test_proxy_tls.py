"""A stand-alone ``plane proxy`` fed over ``wss://`` through a TLS-terminating
front proxy, as the README shows for proxies on other hosts.

Real processes and sockets: ``plane serve`` with its API on plain HTTP, a TLS
front (trio's ``SSLStream``, a certificate issued by a test CA from
``trustme``) forwarding bytes to the API, and ``plane proxy --controller
https://localhost:<front>``.  With ``--ca-file`` naming the test CA the proxy
syncs and routes; without it the certificate is not trusted, the proxy never
syncs (``/ready`` 503) and its log says why.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from plane.testing.proxy_process import PlaneProxy
from tests.e2e.conftest import echo, start_serve, via, wait_for

pytestmark = pytest.mark.slow


async def splice(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    """Copy ``source`` to ``sink`` until ``source`` ends."""
    while data := await source.receive_some(65536):
        await sink.send_all(data)
    if isinstance(sink, trio.SocketStream):
        await sink.send_eof()


async def serve_tls_front(
    ssl_context: ssl.SSLContext,
    upstream_port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Terminate TLS on a port of 127.0.0.1 and forward the bytes to the API."""

    async def forward(client: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            async with client:
                api = await trio.open_tcp_stream("127.0.0.1", upstream_port)
                async with api, trio.open_nursery() as nursery:
                    nursery.start_soon(splice, api, client)
                    await splice(client, api)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a client that goes away (or a failed handshake) ends its own copy only

    listeners = await trio.open_ssl_over_tcp_listeners(0, ssl_context, host="127.0.0.1")
    transport = listeners[0].transport_listener
    assert isinstance(transport, trio.SocketListener)
    port: int = transport.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(port)
        await trio.serve_listeners(forward, listeners, handler_nursery=nursery)


@pytest.fixture
def test_ca() -> trustme.CA:
    return trustme.CA()


async def test_the_feed_runs_over_wss_with_the_certificate_verified(
    tmp_path: Path, key_file: Path, test_ca: trustme.CA
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    test_ca.cert_pem.write_to_path(str(ca_file))

    serve = start_serve(tmp_path, key_file, "--terminate-on-exit")
    api_port = int(serve.urls["api"].rsplit(":", 1)[1])
    trusted: PlaneProxy | None = None
    untrusted: PlaneProxy | None = None
    try:
        async with trio.open_nursery() as nursery:
            front = await nursery.start(serve_tls_front, server_context, api_port)
            controller = f"https://localhost:{front}"
            trusted = PlaneProxy(
                controller, key_file, "--ca-file", str(ca_file), log_path=tmp_path / "t.log"
            )
            untrusted = PlaneProxy(controller, key_file, log_path=tmp_path / "u.log")
            backend = serve.connect(echo("tls"))
            serve.wait_status(backend["backend_id"], "ready")
            async with httpx.AsyncClient(timeout=10) as http:

                async def ready(proxy: PlaneProxy) -> bool:
                    return (await http.get(proxy.url + "/ready")).status_code == 200

                await wait_for(lambda: ready(trusted), "the trusted proxy's sync over wss")
                url = via(backend["url"], serve, trusted.url)
                answer = await http.get(url)
                assert answer.status_code == 200, answer.text

                # the other proxy does not trust the certificate: it never syncs
                log = tmp_path / "u.log"
                await wait_for(
                    lambda: "CERTIFICATE_VERIFY_FAILED" in log.read_text(),
                    "the untrusted proxy to say why it cannot connect",
                )
                assert not await ready(untrusted)
                refused = await http.get(via(backend["url"], serve, untrusted.url))
                assert refused.status_code == 503
                assert refused.json()["kind"] == "ProxyNotReady"
            nursery.cancel_scope.cancel()
    finally:
        for proxy in (trusted, untrusted):
            if proxy is not None:
                proxy.stop()
        serve.stop()
