"""plane.proxy: token -> backend routing, the HTTP/1.1 and WebSocket relay.

The public face is four names::

    ctx = ProxyContext(store, emit, clock, metrics, ProxySettings())
    port = await nursery.start(serve_proxy, ctx, "127.0.0.1", 0)

(:class:`ProxyServer` is the running proxy behind :func:`serve_proxy`; tests
build one to look at its table, pool and tracker.)

The modules behind it, each with one job:

* :mod:`~plane.proxy.routes`: the routing table, a pure projection of the log;
* :mod:`~plane.proxy.table_feed`: tails the store into the table;
* :mod:`~plane.proxy.remote`: feeds the table from a controller over the network;
* :mod:`~plane.proxy.headers`: the header rules (dropped, added, forwarded);
* :mod:`~plane.proxy.parsing`: httptools callbacks into queued pieces;
* :mod:`~plane.proxy.relay`: what the sessions share (the receive buffer too);
* :mod:`~plane.proxy.session`: one client connection, request by request;
* :mod:`~plane.proxy.framing`: the response framing rules (pure);
* :mod:`~plane.proxy.exchange`: a plain request's upstream exchange;
* :mod:`~plane.proxy.upgrade`: upgrades (the 101, then the byte splice);
* :mod:`~plane.proxy.upstream`: the pool of kept-alive backend connections;
* :mod:`~plane.proxy.sockio`: non-blocking socket I/O on trio's waits;
* :mod:`~plane.proxy.tracking` and :mod:`~plane.proxy.activity`: connection
  events, coalesced HTTP activity, metrics;
* :mod:`~plane.proxy.errors`: the proxy's own error responses;
* :mod:`~plane.proxy.settings`: limits and timeouts;
* :mod:`~plane.proxy.deadlines`: the sessions' timeouts, filed by time;
* :mod:`~plane.proxy.server`: binding, accepting, the connection cap;
* :mod:`~plane.proxy.standalone` and :mod:`~plane.proxy.workers`: ``plane proxy``,
  a proxy process (or several sharing one socket) fed by a controller.
"""

from plane.proxy.server import ProxyContext, ProxyServer, serve_proxy
from plane.proxy.settings import ProxySettings

__all__ = ["ProxyContext", "ProxyServer", "ProxySettings", "serve_proxy"]
